package persistence

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// HookID is the ID of the hook returned by NewHook.
const HookID = "ferry-persistence"

// Hook is the mochi storage hook backed by a Store. It restores sessions,
// subscriptions, queued/in-flight messages and retained messages when the
// server starts, and writes every change to them while it runs.
// See the package documentation for what is durable when.
//
// Add it to the server before Serve and after the auth hooks. The Store
// outlives the hook: close the server first, then the Store.
type Hook struct {
	mqtt.HookBase
	st  *Store
	srv *mqtt.Server
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	sessions map[string]*session      // persistent sessions, by client id
	pending  map[string][]*pendingMsg // publishes between OnRoute and OnPublished, by origin
	expiring map[string]*session      // sessions whose backlog holds messages that expire
	refs     map[uint64]int32         // queue refs per message body shared by more than one (see releaseBodyLocked)
	restored map[string]*restoredSession

	// stalled, when set, says that a client has stopped taking what is
	// written to it (SetStalled).
	stalled func(cl *mqtt.Client) bool

	owners     SessionOwners                            // nil: owners not stored (owner.go)
	mayRead    func(cl *mqtt.Client, topic string) bool // nil: everything readable
	aclDropped atomic.Uint64

	limits          QueueLimits
	droppedNewest   atomic.Uint64
	droppedOldest   atomic.Uint64
	expired         atomic.Uint64
	spilled         atomic.Uint64
	blocked         atomic.Uint64
	blockTimedOut   atomic.Uint64
	lastOverflowLog atomic.Int64

	loaded   atomic.Bool // the store is loaded into mochi: its listeners may serve
	started  atomic.Bool
	quit     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// session is the hook's view of one persistent session. Its queue is, in
// order: entries (in mochi's memory, at most the memory window), transfer
// (being moved from the store into mochi), backlog (in the store only).
type session struct {
	entries map[uint16]*entry // queue/in-flight records by mochi packet id
	// inbound holds the client's QoS 2 flows awaiting PUBREL (refPubrec), by
	// the client's packet id: MQTT numbers each direction on its own, so
	// the same id may also be in entries.
	inbound map[uint16]*entry

	backlog      spillQueue  // spilled messages, in queue order
	pendingSpill int         // spilled refs whose write has not returned yet
	transfer     []spillItem // handed to the engine's feed (NextStored), not yet filed
	// feedCl is the client whose feed batch is under way (NextStored to
	// QueuedStored): until it ends, new messages are spilled, so that
	// none overtakes the batch.
	feedCl *mqtt.Client

	count int   // PUBLISH messages queued: entries, transfer, backlog, pending
	bytes int64 // their topic and payload bytes

	// nextExpiry is the earliest spillItem.expires in backlog and transfer
	// (0: none); it may be earlier than that, never later.
	nextExpiry uint32
}

func newSession() *session {
	return &session{entries: map[uint16]*entry{}, inbound: map[uint16]*entry{}}
}

// entry maps one of mochi's in-flight packets to its q/ record.
type entry struct {
	seq     uint64
	msgID   uint64 // p/ body; 0 for refPubrel and refPubrec
	state   byte
	created int64
	size    uint32 // topic and payload bytes of a PUBLISH
}

// counted says whether e is a message in the session's queue count.
func (e *entry) counted() bool { return e.state == refPublish && e.msgID != 0 }

// restoredSession is a session loaded at start that has not reconnected:
// its expiry counts from the stored disconnect time, which mochi forgets.
type restoredSession struct {
	deadline int64
	willAt   int64 // when its will is due; 0 if it has none pending
	rec      sessionRec
	client   *mqtt.Client
}

// NewHook returns the storage hook for srv. It holds srv to look up
// subscribers and clients; it does not start anything until srv.Serve.
func NewHook(st *Store, srv *mqtt.Server) *Hook {
	return &Hook{
		st:       st,
		srv:      srv,
		log:      st.log.With("hook", HookID),
		now:      time.Now,
		sessions: map[string]*session{},
		pending:  map[string][]*pendingMsg{},
		expiring: map[string]*session{},
		refs:     map[uint64]int32{},
		restored: map[string]*restoredSession{},
		limits:   QueueLimits{}.withDefaults(),
		quit:     make(chan struct{}),
	}
}

// ID returns HookID.
func (h *Hook) ID() string { return HookID }

var provided = []byte{
	mqtt.OnStarted,
	mqtt.OnSessionEstablish,
	mqtt.OnSessionEstablished,
	mqtt.OnDisconnect,
	mqtt.OnSubscribed,
	mqtt.OnUnsubscribed,
	mqtt.OnRoute,
	mqtt.OnPublished,
	mqtt.OnRetainMessage,
	mqtt.OnRetainedExpired,
	mqtt.OnQosPublish,
	mqtt.OnQosComplete,
	mqtt.OnQosDropped,
	mqtt.OnPacketRead,
	mqtt.OnPacketSent,
	mqtt.OnWillSent,
	mqtt.OnClientExpired,
	mqtt.StoredClients,
	mqtt.StoredSubscriptions,
	mqtt.StoredInflightMessages,
	mqtt.StoredRetainedMessages,
}

// Provides reports the events the hook handles; not OnSysInfoTick or
// StoredSysInfo: $SYS values are not persisted.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(provided, b) >= 0 }

// Init checks the hook was built by NewHook; config is unused.
func (h *Hook) Init(any) error {
	if h.st == nil || h.srv == nil {
		return errors.New("persistence: hook must be created with NewHook")
	}
	return h.st.Ready()
}

// OnStarted starts the expiry of restored sessions (see restoredSession).
func (h *Hook) OnStarted() {
	h.mu.Lock()
	for id, r := range h.restored {
		r.client, _ = h.srv.Clients.Get(id)
	}
	h.mu.Unlock()
	h.loaded.Store(true)
	h.started.Store(true)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-h.quit:
				return
			case now := <-t.C:
				h.tickRestored(now.Unix())
				h.sweepSpilled(h.now().Unix())
			}
		}
	}()
}

// Stop stops the hook's goroutine. It does not close the Store.
func (h *Hook) Stop() error {
	h.stopOnce.Do(func() { close(h.quit) })
	h.wg.Wait()
	return nil
}

// tickRestored publishes the due wills of restored sessions (a will delay
// that was running when the broker stopped, or a will of a client that was
// connected when it crashed) and drops those whose expiry, counted from the
// stored disconnect time, has passed. A session that reconnected is left to
// mochi.
func (h *Hook) tickRestored(now int64) {
	type will struct {
		id  string
		rec sessionRec
	}
	var wills []will
	var expired []*mqtt.Client
	b := h.st.newBatch()
	h.mu.Lock()
	for id, r := range h.restored {
		cl, ok := h.srv.Clients.Get(id)
		if !ok || cl != r.client || !cl.Closed() {
			delete(h.restored, id)
			continue
		}
		if r.willAt > 0 && (now >= r.willAt || now > r.deadline) {
			wills = append(wills, will{id, r.rec})
			r.willAt, r.rec.WillFlag = 0, false
			b.set(sessionKey(id), r.rec.appendTo)
		}
		if now <= r.deadline {
			continue
		}
		if ss := h.sessions[id]; ss != nil {
			h.dropSessionLocked(id, ss, b)
		}
		delete(h.restored, id)
		expired = append(expired, cl)
	}
	h.mu.Unlock()
	h.write(b, false)
	for _, w := range wills {
		h.publishWill(w.id, &w.rec)
	}
	for _, cl := range expired {
		h.log.Info("session expired", "client_id", cl.ID)
		h.srv.Clients.Delete(cl.ID)
		cl.ClearInflights()
		h.srv.UnsubscribeClient(cl)
	}
}

// publishWill publishes a restored session's will through a throwaway
// inline client with the session's id (so No Local and Origin hold): mochi's
// own queue of delayed wills did not survive the restart.
func (h *Hook) publishWill(id string, rec *sessionRec) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: rec.WillQos, Retain: rec.WillRetain},
		TopicName:   rec.WillTopic,
		Payload:     rec.WillPayload,
		Properties:  packets.Properties{User: rec.WillUser},
	}
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // required by validation; an inline client is never acked
	}
	cl := h.srv.NewClient(nil, mqtt.LocalListener, id, true)
	if err := h.srv.InjectPacket(cl, pk); err != nil {
		h.log.Error("will not published", "client_id", id, "topic", rec.WillTopic, "err", err)
		return
	}
	h.log.Info("will published after restart", "client_id", id, "topic", rec.WillTopic)
}

// persistent says whether mochi keeps cl's session after it disconnects.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func takenOver(cl *mqtt.Client) bool {
	return cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
}

// write hands b to the store; wait is for records an acknowledgement
// depends on. Failures are logged here; the callers cannot refuse.
func (h *Hook) write(b *batch, wait bool) {
	var err error
	if wait {
		err = h.st.apply(b)
	} else {
		err = h.st.write(b, false)
	}
	h.logWriteError(err)
}

func (h *Hook) logWriteError(err error) {
	switch {
	case errors.Is(err, ErrClosed):
		h.log.Warn("storage closed before the broker: change not stored (close the server first)", "err", err)
	case err != nil:
		h.log.Error("storage write failed", "err", err)
	}
}

func (h *Hook) sessionRecord(cl *mqtt.Client, disconnectedAt int64) *sessionRec {
	p := &cl.Properties
	w := p.Will
	rec := &sessionRec{
		ProtocolVersion:        p.ProtocolVersion,
		Clean:                  p.Clean,
		ExpiryFlag:             p.Props.SessionExpiryIntervalFlag,
		ExpiryInterval:         p.Props.SessionExpiryInterval,
		DisconnectedAt:         disconnectedAt,
		Username:               p.Username,
		Listener:               cl.Net.Listener,
		AuthMethod:             p.Props.AuthenticationMethod,
		AuthData:               p.Props.AuthenticationData,
		RequestProblemInfo:     p.Props.RequestProblemInfo,
		RequestProblemInfoFlag: p.Props.RequestProblemInfoFlag,
		RequestResponseInfo:    p.Props.RequestResponseInfo,
		ReceiveMaximum:         p.Props.ReceiveMaximum,
		TopicAliasMaximum:      p.Props.TopicAliasMaximum,
		MaximumPacketSize:      p.Props.MaximumPacketSize,
		User:                   p.Props.User,
		WillFlag:               atomic.LoadUint32(&w.Flag) == 1,
		WillRetain:             w.Retain,
		WillQos:                w.Qos,
		WillDelay:              w.WillDelayInterval,
		WillTopic:              w.TopicName,
		WillPayload:            w.Payload,
		WillUser:               w.User,
	}
	h.setOwner(cl, rec)
	return rec
}

// dropSessionLocked forgets a session and queues the deletion of all its
// keys into b. h.mu must be held.
func (h *Hook) dropSessionLocked(id string, ss *session, b *batch) {
	for _, e := range ss.entries {
		h.releaseBodyLocked(e.msgID, b)
	}
	for _, it := range ss.backlog.items[ss.backlog.head:] {
		h.releaseBodyLocked(it.msgID, b)
	}
	for _, it := range ss.transfer {
		h.releaseBodyLocked(it.msgID, b)
	}
	ss.backlog, ss.transfer, ss.feedCl = spillQueue{}, nil, nil
	delete(h.sessions, id)
	delete(h.restored, id)
	b.delete(sessionKey(id))
	b.deletePrefix(clientPrefix(prefixSub, id))
	b.deletePrefix(clientPrefix(prefixQueue, id))
}

// releaseBodyLocked drops one queue ref of body msgID and deletes the body
// with its last. h.refs counts only bodies with more than one ref: a body
// absent from it has exactly one. Most bodies go to one session, and a
// spilled backlog of 100,000 would otherwise cost 2.6 MB of map.
func (h *Hook) releaseBodyLocked(msgID uint64, b *batch) {
	if msgID == 0 {
		return
	}
	switch n := h.refs[msgID]; {
	case n > 2:
		h.refs[msgID] = n - 1
	case n == 2:
		delete(h.refs, msgID)
	default:
		b.delete(b.messageKey(msgID))
	}
}

// setRefsLocked records that body msgID has n queue refs.
func (h *Hook) setRefsLocked(msgID uint64, n int) {
	if n > 1 {
		h.refs[msgID] = int32(n)
	} else {
		delete(h.refs, msgID)
	}
}

func (h *Hook) removeEntryLocked(id string, ss *session, pid uint16, b *batch) {
	e := ss.entries[pid]
	if e == nil {
		return
	}
	delete(ss.entries, pid)
	h.deleteEntryLocked(id, ss, e, b)
}

// removeInboundLocked forgets the client's QoS 2 flow pid.
func (h *Hook) removeInboundLocked(id string, ss *session, pid uint16, b *batch) {
	e := ss.inbound[pid]
	if e == nil {
		return
	}
	delete(ss.inbound, pid)
	h.deleteEntryLocked(id, ss, e, b)
}

func (h *Hook) deleteEntryLocked(id string, ss *session, e *entry, b *batch) {
	if e.counted() {
		ss.account(-1, e.size)
	}
	b.delete(b.queueKey(id, e.seq))
	h.releaseBodyLocked(e.msgID, b)
}

// OnSessionEstablish records a persistent session before its CONNACK, and
// drops what is stored for the client id when the new session starts clean
// or is not persistent.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	keep := persistent(cl)
	b := h.st.newBatch()
	h.mu.Lock()
	ss := h.sessions[cl.ID]
	if ss != nil && (pk.Connect.Clean || !keep) {
		h.dropSessionLocked(cl.ID, ss, b)
		ss = nil
	}
	delete(h.restored, cl.ID)
	if keep {
		if ss == nil {
			ss = newSession()
			h.sessions[cl.ID] = ss
		}
		rec := h.sessionRecord(cl, 0)
		b.set(sessionKey(cl.ID), rec.appendTo)
	}
	h.mu.Unlock()
	h.write(b, true)
}

// OnPacketSent forgets, once the CONNACK of a resumed session is written
// and before the engine resends its in-flight messages (in the order they
// were queued), the entries the engine no longer holds (reconcileLocked).
func (h *Hook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Connack || !pk.SessionPresent {
		return
	}
	b := h.st.newBatch()
	h.mu.Lock()
	if ss := h.sessions[cl.ID]; ss != nil {
		if cur, ok := h.srv.Clients.Get(cl.ID); ok && cur == cl {
			h.reconcileLocked(cl.ID, ss, cl, b)
		}
	}
	h.mu.Unlock()
	h.write(b, false)
}

// OnSessionEstablished has the engine feed the session's spilled backlog,
// once it has resent the session's in-flight messages.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ss := h.sessions[cl.ID]; ss != nil {
		h.feedLocked(cl.ID, ss)
	}
}

// OnDisconnect stores the disconnect time (session expiry counts from it)
// or, for a session that ends, deletes all of its keys.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !h.loaded.Load() || cl.Net.Inline || takenOver(cl) {
		// Before the load this is mochi's loadClients telling us about the
		// sessions we just returned: nothing changed on disk.
		return
	}
	h.dropPending(cl.ID)
	b := h.st.newBatch()
	h.mu.Lock()
	if ss := h.sessions[cl.ID]; ss != nil {
		if expire || !persistent(cl) {
			h.dropSessionLocked(cl.ID, ss, b)
		} else {
			rec := h.sessionRecord(cl, h.disconnectTime(cl))
			b.set(sessionKey(cl.ID), rec.appendTo)
			h.storeHandedLocked(cl, ss, b)
		}
	}
	h.mu.Unlock()
	h.write(b, true)
}

// storeHandedLocked stores the packet ids of the QoS 1 messages the ending
// connection held in flight, which OnQosPublish does not store for each
// delivery: they were sent, or queued to be, so after a restart they go out
// with DUP set (load.go). Only a crash loses that: then they go out again
// with DUP clear, at most a duplicate QoS 1 allows.
func (h *Hook) storeHandedLocked(cl *mqtt.Client, ss *session, b *batch) {
	for _, pk := range cl.State.Inflight.GetAll(false) {
		e := ss.entries[pk.PacketID]
		if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || pk.Expiry < 0 ||
			e == nil || e.state != refPublish || e.msgID == 0 {
			continue
		}
		rec := refRec{State: refPublish, Qos: 1, Retain: pk.FixedHeader.Retain, PacketID: pk.PacketID,
			MsgID: e.msgID, SubIDs: pk.Properties.SubscriptionIdentifier}
		b.set(b.queueKey(cl.ID, e.seq), rec.appendTo)
	}
}

func (h *Hook) disconnectTime(cl *mqtt.Client) int64 {
	if t := cl.StopTime(); t > 0 {
		return t
	}
	return h.now().Unix()
}

// OnWillSent stores the session without the will mochi just sent.
func (h *Hook) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if !h.loaded.Load() || takenOver(cl) {
		return
	}
	b := h.st.newBatch()
	h.mu.Lock()
	if h.sessions[cl.ID] != nil {
		var at int64
		if cl.Closed() {
			at = h.disconnectTime(cl)
		}
		rec := h.sessionRecord(cl, at)
		rec.WillFlag = false
		b.set(sessionKey(cl.ID), rec.appendTo)
	}
	h.mu.Unlock()
	h.write(b, false)
}

// OnClientExpired deletes every key of an expired session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) {
	b := h.st.newBatch()
	h.mu.Lock()
	if ss := h.sessions[cl.ID]; ss != nil {
		h.dropSessionLocked(cl.ID, ss, b)
	}
	h.mu.Unlock()
	h.write(b, false)
}

// OnSubscribed stores the granted subscriptions of a persistent session
// before the SUBACK.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	b := h.st.newBatch()
	h.mu.Lock()
	if h.sessions[cl.ID] != nil {
		for i, f := range pk.Filters {
			if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
				continue
			}
			rec := subRec{
				Qos:               codes[i],
				NoLocal:           f.NoLocal,
				RetainAsPublished: f.RetainAsPublished,
				RetainHandling:    f.RetainHandling,
				Identifier:        f.Identifier,
			}
			b.set(subKey(cl.ID, f.Filter), rec.appendTo)
		}
	}
	h.mu.Unlock()
	h.write(b, true)
}

// OnUnsubscribed deletes subscriptions before the UNSUBACK.
func (h *Hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if takenOver(cl) {
		return
	}
	b := h.st.newBatch()
	h.mu.Lock()
	if h.sessions[cl.ID] != nil {
		for _, f := range pk.Filters {
			b.delete(subKey(cl.ID, f.Filter))
		}
	}
	h.mu.Unlock()
	h.write(b, true)
}

// OnRetainMessage stores or deletes a retained message before the PUBACK.
func (h *Hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	b := h.st.newBatch()
	if r == -1 || len(pk.Payload) == 0 {
		b.delete(retainedKey(pk.TopicName))
	} else {
		var rec msgRec
		rec.fromPacket(&pk)
		rec.Retain = true
		b.set(retainedKey(pk.TopicName), rec.appendTo)
	}
	h.write(b, true)
}

// OnRetainedExpired deletes an expired retained message.
func (h *Hook) OnRetainedExpired(topic string) {
	b := h.st.newBatch()
	b.delete(retainedKey(topic))
	h.write(b, false)
}

var (
	_ mqtt.Hook             = (*Hook)(nil)
	_ mqtt.PacketReadFilter = (*Hook)(nil)
)
