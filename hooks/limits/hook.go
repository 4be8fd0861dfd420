package limits

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// HookID is the mochi hook ID of Hook.
const HookID = "ferry-limits"

// closedPoll is how often a throttled wait checks whether its client has
// gone, so a closed connection does not hold its goroutine for the whole
// wait.
const closedPoll = 100 * time.Millisecond

// maxLoggedTopic bounds how much of a topic goes into a log line: the
// topics this hook refuses can be 64 KiB.
const maxLoggedTopic = 256

// Hook is Ferry's limits mochi hook. Its place among the hooks does not
// matter for CONNECT: mochi runs every OnConnect before any
// OnConnectAuthenticate, so a refused client never reaches authentication.
//
// Its methods are safe for concurrent use. OnPacketRead may block the
// publishing client's own read goroutine for up to MaxThrottleWait when
// RateAction is "throttle"; nothing else blocks.
type Hook struct {
	mqtt.HookBase
	cfg       Config // defaults applied
	srv       *mqtt.Server
	log       *slog.Logger
	idPattern *regexp.Regexp // nil: any client id
	rateOn    bool
	heap      *heapGauge

	// clients maps *mqtt.Client to *clientState. An entry is created, read
	// and deleted only on that client's read goroutine (OnPacketRead and
	// OnDisconnect both run there), so clientState needs no lock.
	clients sync.Map

	stats      counters
	overloaded atomic.Bool // last guard verdict, to log only changes

	done     chan struct{} // closed by Stop: throttled waits end
	stopOnce sync.Once
}

// clientState is one client's token buckets; nil when that limit is off.
type clientState struct {
	msgs, bytes *bucket
}

var (
	_ mqtt.Hook             = (*Hook)(nil)
	_ mqtt.PacketReadFilter = (*Hook)(nil)
)

// New builds the hook from cfg, after applying defaults and validating it.
// srv is the server the hook will be added to: the hook writes CONNACK and
// DISCONNECT packets through it. A nil logger discards logs. New starts
// nothing.
func New(cfg Config, srv *mqtt.Server, logger *slog.Logger) (*Hook, error) {
	if srv == nil {
		return nil, errors.New("limits: nil server")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	cfg = cfg.WithDefaults()
	h := &Hook{
		cfg:    cfg,
		srv:    srv,
		log:    logger,
		rateOn: cfg.rateOn(),
		heap:   newHeapGauge(readHeapInUse),
		done:   make(chan struct{}),
	}
	if cfg.ClientIDPattern != "" {
		h.idPattern, _ = compilePattern(cfg.ClientIDPattern) // Validate compiled it
	}
	return h, nil
}

// ID returns HookID.
func (h *Hook) ID() string { return HookID }

// Provides reports the events the hook handles: OnConnect and OnPacketRead
// always (the client id and topic checks are always on), OnDisconnect only
// when a rate limit keeps per-client state to drop.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketRead:
		return true
	case mqtt.OnDisconnect:
		return h.rateOn
	}
	return false
}

// Stop ends every throttled wait; the waiting packets are dropped, as their
// clients are being closed by the server. Safe to call more than once.
func (h *Hook) Stop() error {
	h.stopOnce.Do(func() { close(h.done) })
	return nil
}

// OnConnect refuses a client whose identifier breaks the limits (0x85;
// MQTT 3: 0x02), whose will topic does (0x90; MQTT 3: closed without
// CONNACK), or any client while the broker is overloaded (0x89 server busy;
// MQTT 3: 0x03 server unavailable). mochi drops a connection whose OnConnect fails
// without a CONNACK, so the hook sends the CONNACK itself first.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	id := pk.Connect.ClientIdentifier
	if len(id) > h.cfg.ClientIDMaxLength || (h.idPattern != nil && !h.idPattern.MatchString(id)) {
		h.stats.refusedClientID.Add(1)
		h.log.Info("limits: client identifier refused", "client_id", truncate(id), "remote", cl.Net.Remote)
		return h.refuseConnect(cl, packets.ErrClientIdentifierNotValid)
	}
	if pk.Connect.WillFlag {
		// mochi publishes the will itself, not through OnPacketRead, so its
		// topic is checked here or never.
		if v := checkTopic(pk.Connect.WillTopic, h.cfg.MaxTopicLength, h.cfg.MaxTopicLevels, true); v != topicOK {
			h.stats.topic(v)
			h.log.Info("limits: will topic refused", "client_id", truncate(id), "reason", v.String(),
				"topic", truncate(pk.Connect.WillTopic))
			if cl.Properties.ProtocolVersion < 5 {
				// MQTT 3 has no CONNACK code for this: close without one,
				// as for a malformed CONNECT.
				return packets.ErrTopicNameInvalid
			}
			return h.refuseConnect(cl, packets.ErrTopicNameInvalid)
		}
	}
	if h.overload() {
		h.stats.refusedBusy.Add(1)
		h.log.Debug("limits: connection refused, broker overloaded", "client_id", truncate(id), "remote", cl.Net.Remote)
		code := packets.ErrServerBusy
		if cl.Properties.ProtocolVersion < 5 {
			// mochi maps 0x88 server unavailable, not 0x89, to MQTT 3's 0x03.
			code = packets.ErrServerUnavailable
		}
		return h.refuseConnect(cl, code)
	}
	return nil
}

// refuseConnect sends a failing CONNACK and returns the code for mochi to
// drop the connection with.
func (h *Hook) refuseConnect(cl *mqtt.Client, code packets.Code) error {
	if err := h.srv.SendConnack(cl, code, false, nil); err != nil {
		// The client may already be gone; it is refused either way.
		h.log.Debug("limits: send connack", "client_id", truncate(cl.ID), "err", err)
	}
	return code
}

// overload reports whether a guard is tripped, and logs when that changes.
func (h *Hook) overload() bool {
	var attrs []any
	if limit := h.cfg.MaxGoroutines; limit > 0 {
		if n := runtime.NumGoroutine(); n > limit {
			attrs = append(attrs, "goroutines", n, "max_goroutines", limit)
		}
	}
	if limit := h.cfg.MaxHeapBytes; limit > 0 {
		if n := h.heap.get(); n > limit {
			attrs = append(attrs, "heap_bytes", n, "max_heap_bytes", limit)
		}
	}
	if attrs != nil {
		if h.overloaded.CompareAndSwap(false, true) {
			h.log.Warn("limits: broker overloaded, refusing new connections", attrs...)
		}
		return true
	}
	if h.overloaded.CompareAndSwap(true, false) {
		h.log.Info("limits: broker no longer overloaded, accepting connections")
	}
	return false
}

// ReadsPacket tells the engine that OnPacketRead looks at PUBLISH and
// SUBSCRIBE only (mqtt.PacketReadFilter).
func (h *Hook) ReadsPacket(t byte) bool { return t == packets.Publish || t == packets.Subscribe }

// OnPacketRead checks PUBLISH and SUBSCRIBE packets before mochi processes
// them. A packet that breaks a limit is rejected and its client
// disconnected (MQTT 5, with the reason code) or closed (MQTT 3). A PUBLISH
// over the client's rate is delayed or rejected per RateAction.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return pk, h.checkPublish(cl, pk.TopicName, pk.FixedHeader.Remaining)
	case packets.Subscribe:
		return pk, h.checkSubscribe(cl, pk.Filters)
	}
	return pk, nil
}

// checkPublish checks one PUBLISH. This is the hot path: with rate limits
// off it must not allocate.
func (h *Hook) checkPublish(cl *mqtt.Client, topic string, size int) error {
	// An empty topic name means the client uses a topic alias, which mochi
	// resolves after this hook; the aliased topic was checked when the
	// alias was set.
	if topic != "" {
		if v := checkTopic(topic, h.cfg.MaxTopicLength, h.cfg.MaxTopicLevels, true); v != topicOK {
			h.stats.topic(v)
			// For a wildcard mochi itself would disconnect with 0x82
			// protocol error; 0x90 names the problem, and it is counted.
			return h.reject(cl, packets.ErrTopicNameInvalid, v.String(), topic)
		}
	}
	if !h.rateOn {
		return nil
	}
	return h.limitRate(cl, size)
}

// checkSubscribe checks one SUBSCRIBE's filters and the client's
// subscription count.
func (h *Hook) checkSubscribe(cl *mqtt.Client, filters []packets.Subscription) error {
	for _, sub := range filters {
		if v := checkTopic(sub.Filter, h.cfg.MaxTopicLength, h.cfg.MaxTopicLevels, false); v != topicOK {
			h.stats.topic(v)
			return h.reject(cl, packets.ErrTopicFilterInvalid, v.String(), sub.Filter)
		}
	}
	limit := h.cfg.MaxSubscriptions
	if limit < 0 {
		return nil
	}
	held := cl.State.Subscriptions.Len()
	if held+len(filters) <= limit {
		return nil
	}
	// Re-subscribing to a filter the client holds replaces it, and a filter
	// repeated in one packet counts once. Filters mochi will refuse (invalid,
	// denied by the ACL) are counted too: the limit errs on the strict side.
	if added := newFilters(cl, filters); held+added > limit {
		h.stats.tooManySubs.Add(1)
		h.log.Info("limits: disconnecting client", "client_id", truncate(cl.ID),
			"reason", "too many subscriptions", "held", held, "adding", added, "max_subscriptions", limit)
		h.disconnect(cl, packets.ErrQuotaExceeded)
		return packets.ErrRejectPacket
	}
	return nil
}

// newFilters counts the distinct filters in filters that cl does not hold.
func newFilters(cl *mqtt.Client, filters []packets.Subscription) int {
	seen := make(map[string]struct{}, len(filters))
	n := 0
	for _, sub := range filters {
		if _, dup := seen[sub.Filter]; dup {
			continue
		}
		seen[sub.Filter] = struct{}{}
		if _, held := cl.State.Subscriptions.Get(sub.Filter); !held {
			n++
		}
	}
	return n
}

// limitRate takes a message of size bytes from cl's buckets, waiting or
// disconnecting when they are empty.
func (h *Hook) limitRate(cl *mqtt.Client, size int) error {
	st := h.clientState(cl)
	now := time.Now()
	var wait time.Duration
	if st.msgs != nil {
		wait = st.msgs.reserve(now, 1)
	}
	if st.bytes != nil {
		wait = max(wait, st.bytes.reserve(now, float64(size)))
	}
	if wait <= 0 {
		return nil
	}
	if h.cfg.RateAction == RateDisconnect || wait > MaxThrottleWait {
		h.stats.rateDisconnects.Add(1)
		return h.reject(cl, packets.ErrMessageRateTooHigh, "publish rate too high", "")
	}
	h.stats.throttled.Add(1)
	if !h.sleep(cl, wait) {
		return packets.ErrRejectPacket // client or broker closing
	}
	return nil
}

// clientState returns cl's buckets, creating them at its first PUBLISH.
func (h *Hook) clientState(cl *mqtt.Client) *clientState {
	if v, ok := h.clients.Load(cl); ok {
		return v.(*clientState)
	}
	now := time.Now()
	st := &clientState{}
	if r := h.cfg.PublishRate; r > 0 {
		b := newBucket(r, float64(h.cfg.PublishBurst), now)
		st.msgs = &b
	}
	if r := h.cfg.PublishByteRate; r > 0 {
		b := newBucket(r, max(r, 1), now) // one second's worth
		st.bytes = &b
	}
	h.clients.Store(cl, st) // only cl's read goroutine gets here
	return st
}

// OnDisconnect drops the client's buckets.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.clients.Delete(cl)
}

// sleep waits d on cl's read goroutine. It returns false if cl was closed
// or the hook stopped meanwhile.
func (h *Hook) sleep(cl *mqtt.Client, d time.Duration) bool {
	deadline := time.Now().Add(d)
	t := time.NewTimer(min(d, closedPoll))
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return false
		case <-t.C:
		}
		if cl.Closed() {
			return false
		}
		left := time.Until(deadline)
		if left <= 0 {
			return true
		}
		t.Reset(min(left, closedPoll))
	}
}

// reject disconnects cl for breaking a limit and returns the error that
// makes mochi drop the packet.
func (h *Hook) reject(cl *mqtt.Client, code packets.Code, reason, topic string) error {
	if topic != "" {
		h.log.Info("limits: disconnecting client", "client_id", truncate(cl.ID), "reason", reason, "topic", truncate(topic))
	} else {
		h.log.Info("limits: disconnecting client", "client_id", truncate(cl.ID), "reason", reason)
	}
	h.disconnect(cl, code)
	return packets.ErrRejectPacket
}

// disconnect sends an MQTT 5 client DISCONNECT with code and closes it; an
// MQTT 3 client, which has no server DISCONNECT, is just closed.
func (h *Hook) disconnect(cl *mqtt.Client, code packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		// DisconnectClient returns code itself as its error: nothing to act on.
		_ = h.srv.DisconnectClient(cl, code)
	}
	// Also for MQTT 5: DisconnectClient leaves the connection open under
	// mochi's PassiveClientDisconnect compatibility option.
	cl.Stop(code)
}

// truncate shortens s for a log line, at a rune boundary.
func truncate(s string) string {
	if len(s) <= maxLoggedTopic {
		return s
	}
	n := maxLoggedTopic
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
