// Package broker builds and runs Ferry: a mochi MQTT server made from one
// validated config.Config, its listeners, its hooks in a fixed order, and the
// admin HTTP endpoint; Start brings it up and Shutdown drains it.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/outbox"
	"github.com/ferrymq/ferry/broker/admin"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/hooks/auth"
	"github.com/ferrymq/ferry/hooks/limits"
	"github.com/ferrymq/ferry/hooks/metrics"
	"github.com/ferrymq/ferry/persistence"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Broker is one Ferry node.
type Broker struct {
	cfg       config.Config
	log       *slog.Logger
	mochi     *mqtt.Server
	metrics   *metrics.Hook
	store     atomic.Pointer[persistence.Store]
	outbox    *outbox.Outbox // nil without bridges
	bridge    *bridge.Bridge // nil without bridges
	publisher *bridgePublisher
	auth      *auth.Hook // nil when no auth is configured
	limits    *limits.Hook
	protocol  *protocolHook
	storage   *persistence.Hook
	cluster   *cluster.Node // nil without a cluster: section
	registry  *prometheus.Registry
	listeners []*listener
	admin     *admin.Server
	certs     []*certWatcher

	certCheckEach time.Duration
	perIP         *ipLimiter // nil when there is no per-IP limit
	writeTimeouts atomic.Uint64
	refusedPerIP  [2]atomic.Uint64
	quit          chan struct{} // closed by Shutdown; ends background loops

	wg       sync.WaitGroup // connection goroutines and lingering closes
	connsMu  sync.Mutex
	conns    map[*conn]struct{}
	started  atomic.Bool
	stopping atomic.Bool
	stopOnce sync.Once
	stopErr  error
}

type options struct {
	logger        *slog.Logger
	certCheckEach time.Duration
}

// Option sets a dependency of the broker.
type Option func(*options)

// WithLogger sets the logger. Default: discard everything.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithCertCheckInterval sets how often TLS certificate files are checked for
// changes. Default DefaultCertCheckInterval.
func WithCertCheckInterval(d time.Duration) Option { return func(o *options) { o.certCheckEach = d } }

// New builds a broker from cfg (defaults applied, then validated). It opens
// nothing: Start does.
func New(cfg config.Config, opts ...Option) (*Broker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{logger: slog.New(slog.NewTextHandler(io.Discard, nil)), certCheckEach: DefaultCertCheckInterval}
	for _, opt := range opts {
		opt(&o)
	}
	b := &Broker{cfg: cfg, log: o.logger, conns: map[*conn]struct{}{}, certCheckEach: o.certCheckEach,
		quit: make(chan struct{}), perIP: newIPLimiter(cfg.Limits.MaxConnectionsPerIP, cfg.Limits.ConnectionRatePerIP)}

	b.mochi = mqtt.New(&mqtt.Options{
		Capabilities:             capabilities(cfg),
		ClientNetWriteBufferSize: cfg.Limits.WriteBufferSize,
		ClientNetReadBufferSize:  cfg.Limits.ReadBufferSize,
		IdleParkAfter:            max(cfg.Limits.IdleParkAfter, 0),
		ResendAfter:              max(cfg.Limits.ResendAfter, 0),
		DeliveryWait:             deliveryWait(cfg),
		Logger:                   mochiLogger(o.logger),
		SysTopicResendInterval:   int64(cfg.MQTT.SysInterval / time.Second),
		InlineClient:             true,
	})
	b.mochi.Info.Version = Version() // $SYS/broker/version: Ferry's, not mochi's
	b.metrics = metrics.New(b.mochi.Info, b.mochi.Clients.Len)
	b.publisher = &bridgePublisher{b: b, cl: b.mochi.NewClient(nil, mqtt.LocalListener, cfg.BridgeIdentity, true),
		id: auth.NewIdentity(cfg.BridgeIdentity, cfg.BridgeIdentity)}

	if cfg.Auth.Enabled() {
		ah, err := auth.New(cfg.Auth, o.logger.With("component", "auth"))
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		ah.SetSessions(b.mochi.Clients.Get)
		b.auth = ah
	}

	for _, lc := range cfg.Listeners {
		l := &listener{cfg: lc, b: b}
		if lc.Type == config.ListenerTLS || lc.Type == config.ListenerWSS {
			w, err := newCertWatcher(lc, o.logger)
			if err != nil {
				return nil, err
			}
			b.certs = append(b.certs, w)
			l.tlsCfg = w.serverConfig()
		}
		b.listeners = append(b.listeners, l)
	}

	if cfg.Cluster != nil {
		b.cluster = cluster.New(*cfg.Cluster, b.mochi, o.logger.With("component", "cluster"))
	}

	b.registry = prometheus.NewRegistry()
	b.registry.MustRegister(b.metrics, storageCollector{b}, securityCollector{b}, listenerCollector{b}, certCollector{b}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if b.cluster != nil {
		b.registry.MustRegister(clusterCollector{b.cluster})
	}
	if addr := *cfg.Admin.Addr; addr != "" {
		b.admin = admin.New(admin.Config{Addr: addr, Token: cfg.Admin.Token, Pprof: cfg.Admin.Pprof},
			b.Ready, b.registry, o.logger)
		b.mountAPI()
	}
	return b, nil
}

// capabilities maps the config onto mochi's, fixing the defaults that are
// wrong for a production broker.
func capabilities(cfg config.Config) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumClients = math.MaxInt64
	if cfg.Limits.MaxConnections > 0 {
		c.MaximumClients = int64(cfg.Limits.MaxConnections)
	}
	// mochi applies its maximum message expiry to retained messages and
	// offline queues too, deleting them a day after they were set. Ferry caps
	// only the expiry a publisher asks for (protocolHook.OnPublish).
	c.MaximumMessageExpiryInterval = 0
	c.MaximumClientWritesPending = int32(cfg.Limits.ClientWritesPending)
	c.MaximumClientWritesPendingBytes = maxPendingBytes
	c.MaximumSessionExpiryInterval = math.MaxUint32
	if s := cfg.MQTT.MaxSessionExpiry; s > 0 {
		c.MaximumSessionExpiryInterval = uint32(min(s/time.Second, math.MaxUint32))
	}
	c.MaximumPacketSize = uint32(*cfg.Limits.MaxPacketSize)
	c.ReceiveMaximum = uint16(cfg.MQTT.ReceiveMaximum)
	c.MaximumInflight = uint16(cfg.Limits.MaxInflight)
	c.TopicAliasMaximum = uint16(*cfg.MQTT.TopicAliasMaximum)
	c.MaximumQos = byte(*cfg.MQTT.MaxQoS)
	c.RetainAvailable = flag(*cfg.MQTT.RetainAvailable)
	c.WildcardSubAvailable = flag(*cfg.MQTT.WildcardSubscriptions)
	c.SharedSubAvailable = flag(*cfg.MQTT.SharedSubscriptions)
	c.SubIDAvailable = flag(*cfg.MQTT.SubscriptionIdentifiers)
	c.MinimumProtocolVersion = 3
	// An MQTT 3 publish the ACL denies is acknowledged and dropped (counted
	// in ferry_acl_denied_total): a closed connection makes a device
	// reconnect and resend it for ever.
	c.Compatibilities.AcknowledgeDeniedPublish = true
	return c
}

func flag(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// Start opens storage (loading the sessions it holds), every listener and
// the admin endpoint, and starts serving. If anything fails, what was opened
// is closed again.
func (b *Broker) Start(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	st, err := persistence.Open(b.cfg.Storage, b.log.With("component", "storage"))
	if err != nil {
		return fmt.Errorf("broker: storage: %w", err)
	}
	b.store.Store(st)
	fail := func(err error) error {
		b.closeListeners()
		if b.admin != nil {
			_ = b.admin.Shutdown(context.Background())
		}
		_ = st.Close()
		return err
	}
	if err := b.openBridge(st); err != nil {
		return fail(err)
	}
	fail = func(err error) error {
		b.closeListeners()
		if b.admin != nil {
			_ = b.admin.Shutdown(context.Background())
		}
		if b.bridge != nil {
			_ = b.bridge.Close(context.Background())
		}
		if b.outbox != nil {
			_ = b.outbox.Close()
		}
		_ = st.Close()
		return err
	}
	if err := b.addHooks(st); err != nil {
		return fail(err)
	}
	if b.cluster != nil {
		// Before the listeners: a node serves only once it has the
		// cluster's retained messages and the other nodes' subscriptions.
		if err := b.cluster.Start(ctx); err != nil {
			return fail(err)
		}
		// Closing the node (idempotent) is left to Shutdown once mochi is
		// serving; a failure below closes it here.
		prev := fail
		fail = func(err error) error {
			b.cluster.Close()
			return prev(err)
		}
	}
	for _, l := range b.listeners {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if err := b.mochi.AddListener(l); err != nil {
			return fail(err)
		}
	}
	if b.admin != nil {
		if err := b.admin.Start(); err != nil {
			return fail(err)
		}
	}
	if err := b.mochi.Serve(); err != nil {
		return fail(fmt.Errorf("broker: serve: %w", err))
	}
	if b.bridge != nil {
		// Connectors start after mochi serves: ingress publishes into it. A
		// backend that is down does not stop the broker: routes retry.
		if err := b.bridge.Start(ctx); err != nil {
			return fail(fmt.Errorf("broker: bridge: %w", err))
		}
		b.wg.Add(1)
		go b.publishBridgeSys()
	}
	if len(b.certs) > 0 {
		b.wg.Add(1)
		go b.every(b.certCheckEach, b.checkCerts)
	}
	b.wg.Add(1)
	go b.every(memoryCheckEvery, b.returnMemory)
	if b.cluster != nil {
		b.wg.Add(1)
		go b.every(b.cfg.MQTT.SysInterval, b.clusterSys)
	}
	names := make([]string, 0, len(b.listeners))
	for _, l := range b.listeners {
		b.log.Info("listening", "listener", l.cfg.Name, "type", l.cfg.Type, "addr", l.Address())
		names = append(names, l.cfg.Name+"="+l.Address())
	}
	if b.auth == nil {
		b.log.Warn("no authentication configured: every client may connect, publish and subscribe; see docs/security.md",
			"listeners", strings.Join(names, ","))
	}
	return nil
}

// addHooks adds Ferry's hooks to mochi. Order matters: mochi runs hooks in
// the order they were added, stops OnPublish at the first error, and ORs
// authentication; persistence comes after every hook that may reject a
// message, so it stores only what mochi will deliver.
func (b *Broker) addHooks(st *persistence.Store) error {
	lh, err := limits.New(b.cfg.Limits.Config, b.mochi, b.log.With("component", "limits"))
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.limits = lh
	b.protocol = newProtocolHook(b, b.cfg)
	hooks := []mqtt.Hook{b.protocol, lh}
	if b.auth != nil {
		hooks = append(hooks, b.auth)
	} else {
		hooks = append(hooks, new(openHook))
	}
	if b.bridge != nil {
		hooks = append(hooks, &tapHook{br: b.bridge})
	}
	if b.cluster != nil {
		// Sessions, their queues and retained messages are the cluster's,
		// in JetStream; Badger keeps the bridge's outbox only.
		b.cluster.QueueLimit = int64(b.cfg.Limits.MaxQueuedMessages)
		hooks = append(hooks, b.cluster.SessionHook(), b.cluster.Hook())
	} else {
		ph := persistence.NewHook(st, b.mochi)
		ph.SetStalled(b.stalled)
		if b.auth != nil {
			// Sessions belong to their identity across restarts; spilled
			// messages and shared-group members are checked against the ACL.
			ph.SetSessionOwners(b.auth)
			ph.SetReadCheck(b.auth.MayRead)
		}
		b.storage = ph
		ph.SetQueueLimits(persistence.QueueLimits{MaxMessages: b.cfg.Limits.MaxQueuedMessages,
			MaxBytes: b.cfg.Limits.MaxQueuedBytes, Policy: b.cfg.Limits.OverflowPolicy, BlockWait: b.cfg.Limits.OverflowWait,
			MemoryWindow: b.cfg.Limits.MemoryWindow})
		b.metrics.SetQueueCounts(func() metrics.QueueCounts {
			s := ph.QueueStats()
			return metrics.QueueCounts{DroppedNewest: s.DroppedNewest, DroppedOldest: s.DroppedOldest, Expired: s.Expired, Spilled: s.Spilled}
		})
		hooks = append(hooks, ph)
	}
	hooks = append(hooks, b.metrics, &connLogHook{log: b.log, malformed: b.metrics.CountMalformed})
	for _, h := range hooks {
		if err := b.mochi.AddHook(h, nil); err != nil {
			return fmt.Errorf("broker: add hook %s: %w", h.ID(), err)
		}
	}
	return nil
}

func (b *Broker) closeListeners() {
	for _, l := range b.listeners {
		l.stopAccepting()
	}
}

// Shutdown drains the broker: stop accepting, disconnect every client after
// the packets already read are answered (MQTT 5 clients with DISCONNECT
// 0x8B, server shutting down; 3.x ones, which have no server DISCONNECT,
// by closing the connection), stop the hooks, flush and close storage,
// then stop the admin endpoint. When ctx ends first, the remaining
// connections are cut. Safe to call more than once.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.stopOnce.Do(func() { b.stopErr = b.shutdown(ctx) })
	return b.stopErr
}

func (b *Broker) shutdown(ctx context.Context) error {
	b.stopping.Store(true)
	if !b.started.Load() {
		return nil
	}
	close(b.quit)
	b.closeListeners()
	closed := make(chan struct{})
	go func() {
		// mochi's Close disconnects every client, waits for their
		// goroutines, then stops the hooks.
		_ = b.mochi.Close()
		b.wg.Wait()
		close(closed)
	}()
	var err error
	select {
	case <-closed:
	case <-ctx.Done():
		err = fmt.Errorf("broker: shutdown: %w; connections cut", ctx.Err())
		b.killConns()
		<-closed
	}
	// The cluster node after the clients: nothing publishes any more.
	if b.cluster != nil {
		b.cluster.Close()
	}
	// Then the bridge: workers stop, connectors close, what is undelivered
	// stays in the outbox for the next start. The outbox lives in the
	// store: it closes first, waiting for its writes in flight.
	if b.bridge != nil {
		bctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if berr := b.bridge.Close(bctx); berr != nil && err == nil {
			err = fmt.Errorf("broker: close bridge: %w", berr)
		}
		cancel()
		if oerr := b.outbox.Close(); oerr != nil && err == nil {
			err = fmt.Errorf("broker: close outbox: %w", oerr)
		}
	}
	// Storage closes last: every client goroutine that could still write
	// has ended. Close commits what is queued and fsyncs.
	if st := b.store.Load(); st != nil {
		if serr := st.Close(); serr != nil && err == nil {
			err = fmt.Errorf("broker: close storage: %w", serr)
		}
	}
	if b.admin != nil {
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if aerr := b.admin.Shutdown(actx); aerr != nil && err == nil {
			err = aerr
		}
	}
	b.log.Info("stopped")
	return err
}

// every runs f every d until the broker stops, as one of b.wg's goroutines.
func (b *Broker) every(d time.Duration, f func()) {
	defer b.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
			f()
		}
	}
}

func (b *Broker) checkCerts() {
	for _, w := range b.certs {
		w.check()
	}
}

// Reload re-reads the password and ACL files without dropping connections.
// A file that does not load is refused with its error and the rules in
// force stay. The auth hook logs the outcome, once.
func (b *Broker) Reload() error {
	if b.auth == nil {
		return nil
	}
	return b.auth.Reload()
}

func (b *Broker) killConns() {
	b.connsMu.Lock()
	defer b.connsMu.Unlock()
	for c := range b.conns {
		c.kill()
	}
}

func (b *Broker) track(c *conn) {
	b.connsMu.Lock()
	b.conns[c] = struct{}{}
	b.connsMu.Unlock()
}

func (b *Broker) untrack(c *conn) {
	b.connsMu.Lock()
	_, tracked := b.conns[c]
	delete(b.conns, c)
	b.connsMu.Unlock()
	if tracked && b.perIP != nil {
		b.perIP.release(c.ip)
	}
}

// serveConn runs one connection through the engine, and calls ended once
// it is over. It may return before that: the engine parks an idle
// connection without a goroutine and serves it again on a new one (its
// park.go). A panic in the engine's handling ends this connection only.
func (b *Broker) serveConn(l *listener, nc net.Conn, state func() *tls.ConnectionState, ended func()) {
	l.accepted.Add(1)
	c := &conn{Conn: nc, b: b, listener: l.cfg.Name, tlsState: state, handled: make(chan struct{})}
	if b.perIP != nil {
		c.ip = remoteIP(nc.RemoteAddr())
		if why := b.perIP.admit(c.ip, time.Now()); why != "" {
			if why == refusedPerIP {
				b.refusedPerIP[0].Add(1)
			} else {
				b.refusedPerIP[1].Add(1)
			}
			b.log.Debug("connection refused", "remote", nc.RemoteAddr().String(), "listener", l.cfg.Name, "reason", why)
			_ = nc.Close()
			close(c.handled)
			ended()
			return
		}
	}
	b.track(c)
	done := func(err error) {
		defer ended()
		defer close(c.handled)
		var pe *mqtt.PanicError
		if errors.As(err, &pe) {
			id := ""
			if cl := c.client.Load(); cl != nil {
				id = cl.ID
			}
			b.log.Error("connection handler panicked; connection closed", "client_id", id,
				"remote", nc.RemoteAddr().String(), "listener", l.cfg.Name, "panic", pe.Value, "stack", string(pe.Stack))
			b.metrics.CountMalformed()
			_ = c.Close()
			return
		}
		b.logConnectEnd(c, l.cfg.Name, err)
	}
	// mochi sets no deadline before CONNECT: a socket that never sends one
	// would be held for ever. mochi replaces this deadline with the
	// keepalive once CONNECT is read. It bounds the TLS handshake too.
	_ = nc.SetDeadline(time.Now().Add(b.cfg.Limits.ConnectTimeout))
	if tc, ok := nc.(*tls.Conn); ok && !b.handshake(tc, l) {
		_ = c.Close()
		close(c.handled)
		ended()
		return
	}
	// Once mochi's Close has begun, Attach refuses the connection.
	b.mochi.Attach(l.cfg.Name, c, done)
}

// Ready is nil when every listener accepts, storage is open and the disk
// has room for new messages (storage.min_free_space).
func (b *Broker) Ready() error {
	if b.stopping.Load() {
		return errors.New("shutting down")
	}
	if !b.started.Load() {
		return errors.New("not started")
	}
	for _, l := range b.listeners {
		if err := l.ready(); err != nil {
			return err
		}
	}
	if st := b.store.Load(); st == nil {
		return errors.New("storage not open")
	} else if err := st.Ready(); err != nil {
		return fmt.Errorf("storage: %w", err)
	} else if err := st.DiskSpace(); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if b.cluster != nil {
		if err := b.cluster.Ready(); err != nil {
			return err
		}
	}
	return nil
}

// Addr returns the bound address of the named listener ("" if none), the
// real port when the config asked for port 0.
func (b *Broker) Addr(name string) string {
	for _, l := range b.listeners {
		if l.cfg.Name == name {
			return l.Address()
		}
	}
	return ""
}

// AdminAddr returns the admin endpoint's bound address, "" when disabled.
func (b *Broker) AdminAddr() string {
	if b.admin == nil {
		return ""
	}
	return b.admin.Addr()
}

// Server is the underlying mochi server, for embedding: inline publish and
// subscribe.
func (b *Broker) Server() *mqtt.Server { return b.mochi }

// Config is the validated configuration the broker runs on.
func (b *Broker) Config() config.Config { return b.cfg }

// storageCollector exports the store's write statistics.
type storageCollector struct{ b *Broker }

var (
	descStoreBatches  = prometheus.NewDesc("ferry_storage_batches_total", "Storage write transactions committed (group commits).", nil, nil)
	descStoreRecords  = prometheus.NewDesc("ferry_storage_records_total", "Records written or deleted.", nil, nil)
	descStoreCancel   = prometheus.NewDesc("ferry_storage_records_cancelled_total", "Records not written because one group commit both created and deleted them (a message acknowledged by its persistent subscribers before it was stored).", nil, nil)
	descStoreFsyncs   = prometheus.NewDesc("ferry_storage_fsyncs_total", "Explicit fsyncs of the data directory.", nil, nil)
	descStoreFsyncSec = prometheus.NewDesc("ferry_storage_fsync_seconds_total", "Time spent in fsync.", nil, nil)
	descStoreFailures = prometheus.NewDesc("ferry_storage_failures_total", "Storage batches whose commit or fsync failed.", nil, nil)
	descStoreQueue    = prometheus.NewDesc("ferry_storage_queue_depth", "Write requests waiting for the storage writer.", nil, nil)
	descStoreFree     = prometheus.NewDesc("ferry_storage_free_bytes", "Free space of the data dir's filesystem at the last check (0: storage.min_free_space is -1).", nil, nil)
	descStoreDiskFull = prometheus.NewDesc("ferry_storage_disk_full_refusals_total", "Messages refused because free space was below storage.min_free_space.", nil, nil)
)

func (storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStoreBatches, descStoreRecords, descStoreCancel, descStoreFsyncs, descStoreFsyncSec, descStoreFailures, descStoreQueue, descStoreFree, descStoreDiskFull} {
		ch <- d
	}
}

func (c storageCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.b.store.Load()
	if st == nil {
		return
	}
	s := st.Stats()
	ch <- prometheus.MustNewConstMetric(descStoreBatches, prometheus.CounterValue, float64(s.Batches))
	ch <- prometheus.MustNewConstMetric(descStoreRecords, prometheus.CounterValue, float64(s.Records))
	ch <- prometheus.MustNewConstMetric(descStoreCancel, prometheus.CounterValue, float64(s.Cancelled))
	ch <- prometheus.MustNewConstMetric(descStoreFsyncs, prometheus.CounterValue, float64(s.Fsyncs))
	ch <- prometheus.MustNewConstMetric(descStoreFsyncSec, prometheus.CounterValue, s.FsyncTime.Seconds())
	ch <- prometheus.MustNewConstMetric(descStoreFailures, prometheus.CounterValue, float64(s.Failures))
	ch <- prometheus.MustNewConstMetric(descStoreQueue, prometheus.GaugeValue, float64(s.QueueDepth))
	ch <- prometheus.MustNewConstMetric(descStoreFree, prometheus.GaugeValue, float64(s.FreeBytes))
	ch <- prometheus.MustNewConstMetric(descStoreDiskFull, prometheus.CounterValue, float64(s.DiskFullRefusals))
}

// securityCollector exports the auth and limits hooks' counters.
type securityCollector struct{ b *Broker }

var (
	descAuth    = prometheus.NewDesc("ferry_auth_attempts_total", "Authentication attempts by method and outcome.", []string{"method", "outcome"}, nil)
	descACL     = prometheus.NewDesc("ferry_acl_denied_total", "ACL checks denied, by action (publish, subscribe, read = delivery, shared_no_reader, queued, session_takeover: see docs/security.md).", []string{"action"}, nil)
	descRefused = prometheus.NewDesc("ferry_limits_enforced_total", "Clients refused, throttled or disconnected by a limit, by reason.", []string{"reason"}, nil)
)

func (securityCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAuth
	ch <- descACL
	ch <- descRefused
}

func (c securityCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if a := c.b.auth; a != nil {
		s := a.Stats()
		for _, m := range []struct {
			name string
			st   auth.MethodStats
		}{{"anonymous", s.Anonymous}, {"password", s.Password}, {"jwt", s.JWT}, {"http", s.HTTP}, {"tls", s.TLS}} {
			counter(descAuth, m.st.Success, m.name, "success")
			counter(descAuth, m.st.Failure, m.name, "failure")
		}
		counter(descACL, s.ACLDenied.Publish, "publish")
		counter(descACL, s.ACLDenied.Subscribe, "subscribe")
		counter(descACL, s.ACLDenied.Read, "read")
		counter(descACL, s.TakeoverRefused, "session_takeover")
		// mochi counts the shared messages no member of a group may read.
		counter(descACL, uint64(atomic.LoadInt64(&c.b.mochi.Info.SharedNoReader)), "shared_no_reader")
		// Queued messages a resumed session may no longer read: the
		// engine's in flight, and the persistence hook's spilled ones.
		queued := uint64(atomic.LoadInt64(&c.b.mochi.Info.QueuedUnreadable))
		if ph := c.b.storage; ph != nil {
			queued += ph.ACLDropped()
		}
		counter(descACL, queued, "queued")
	}
	if l := c.b.limits; l != nil {
		s := l.Stats()
		for _, r := range []struct {
			name string
			v    uint64
		}{{"server_busy", s.RefusedBusy}, {"client_id", s.RefusedClientID}, {"throttled", s.Throttled},
			{"rate_disconnect", s.RateDisconnects}, {"topic_too_long", s.TopicTooLong}, {"topic_too_deep", s.TopicTooDeep},
			{"too_many_subscriptions", s.TooManySubscriptions}, {"publish_wildcard", s.PublishWildcard}} {
			counter(descRefused, r.v, r.name)
		}
	}
	counter(descRefused, uint64(atomic.LoadInt64(&c.b.mochi.Info.SysPublishRefused)), "publish_to_sys")
	if c.b.cfg.Limits.OverflowPolicy == OverflowBlockPublisher {
		counter(descRefused, uint64(atomic.LoadInt64(&c.b.mochi.Info.DeliveriesWaited)), "publisher_waited_for_subscriber")
		counter(descRefused, uint64(atomic.LoadInt64(&c.b.mochi.Info.DeliveryWaitsTimedOut)), "publisher_wait_timed_out")
	}
	counter(descRefused, c.b.writeTimeouts.Load(), "write_timeout")
	if c.b.cfg.Limits.ResendAfter > 0 {
		counter(descRefused, uint64(atomic.LoadInt64(&c.b.mochi.Info.ResentAfterQuiet)), "resent_after_quiet")
	}
	counter(descRefused, c.b.refusedPerIP[0].Load(), refusedPerIP)
	counter(descRefused, c.b.refusedPerIP[1].Load(), refusedPerIPRate)
}
