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
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/broker/admin"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/hooks/auth"
	"github.com/ferrymq/ferry/hooks/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Broker is one Ferry node.
type Broker struct {
	cfg       config.Config
	log       *slog.Logger
	mochi     *mqtt.Server
	metrics   *metrics.Hook
	auth      *auth.Hook // nil when no auth is configured
	registry  *prometheus.Registry
	listeners []*listener
	admin     *admin.Server
	certs     []*certWatcher

	certCheckEach time.Duration
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
		quit: make(chan struct{})}

	b.mochi = mqtt.New(&mqtt.Options{
		Capabilities:             capabilities(cfg),
		ClientNetWriteBufferSize: cfg.Limits.WriteBufferSize,
		ClientNetReadBufferSize:  cfg.Limits.ReadBufferSize,
		Logger:                   mochiLogger(o.logger),
		SysTopicResendInterval:   int64(cfg.MQTT.SysInterval / time.Second),
		InlineClient:             true,
	})
	b.metrics = metrics.New(b.mochi.Info, b.mochi.Clients.Len)

	// Order matters: mochi runs hooks in the order they were added and
	// stops OnPublish at the first error.
	hooks := []mqtt.Hook{newProtocolHook(b, cfg)}
	if cfg.Auth.Enabled() {
		ah, err := auth.New(cfg.Auth, o.logger.With("component", "auth"))
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		b.auth = ah
		hooks = append(hooks, ah)
	} else {
		hooks = append(hooks, new(openHook))
	}
	hooks = append(hooks, b.metrics)
	for _, h := range hooks {
		if err := b.mochi.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: add hook %s: %w", h.ID(), err)
		}
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

	b.registry = prometheus.NewRegistry()
	b.registry.MustRegister(b.metrics, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if addr := *cfg.Admin.Addr; addr != "" {
		b.admin = admin.New(admin.Config{Addr: addr, Token: cfg.Admin.Token, Pprof: cfg.Admin.Pprof},
			b.Ready, b.registry, o.logger)
		b.admin.Handle("POST /api/v1/reload", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if err := b.Reload(); err != nil {
				http.Error(w, "reload refused, previous rules stay: "+err.Error(), http.StatusUnprocessableEntity)
				return
			}
			_, _ = w.Write([]byte("reloaded\n"))
		}))
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
	// MQTT 5 acks must not echo the PUBLISH's user properties.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}

// Start opens every listener and the admin endpoint and starts serving. If
// anything fails to open, what was opened is closed again.
func (b *Broker) Start(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	for _, l := range b.listeners {
		if err := ctx.Err(); err != nil {
			b.closeListeners()
			return err
		}
		if err := b.mochi.AddListener(l); err != nil {
			b.closeListeners()
			return err
		}
	}
	if b.admin != nil {
		if err := b.admin.Start(); err != nil {
			b.closeListeners()
			return err
		}
	}
	if err := b.mochi.Serve(); err != nil {
		b.closeListeners()
		if b.admin != nil {
			_ = b.admin.Shutdown(ctx)
		}
		return fmt.Errorf("broker: serve: %w", err)
	}
	if len(b.certs) > 0 {
		b.wg.Add(1)
		go b.watchCerts()
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

func (b *Broker) watchCerts() {
	defer b.wg.Done()
	t := time.NewTicker(b.certCheckEach)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
			for _, w := range b.certs {
				w.check()
			}
		}
	}
}

// Reload re-reads the password and ACL files without dropping connections.
// A file that does not load is refused with its error and the rules in
// force stay.
func (b *Broker) Reload() error {
	if b.auth == nil {
		return nil
	}
	if err := b.auth.Reload(); err != nil {
		b.log.Error("reload refused; previous rules stay in force", "err", err)
		return err
	}
	b.log.Info("reloaded password and ACL files")
	return nil
}

func (b *Broker) closeListeners() {
	for _, l := range b.listeners {
		l.stopAccepting()
	}
}

// Shutdown drains the broker: stop accepting, disconnect every client with
// reason 0x8B (server shutting down) after the packets already read are
// answered, flush and close the hooks, then stop the admin endpoint. When ctx
// ends first, the remaining connections are cut. Safe to call more than once.
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
		// goroutines, then stops the hooks (storage flushes there).
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
	delete(b.conns, c)
	b.connsMu.Unlock()
}

// serveConn runs one connection through mochi. A panic anywhere in mochi's
// handling of it ends this connection only.
func (b *Broker) serveConn(l *listener, nc net.Conn, state func() *tls.ConnectionState, establish listeners.EstablishFn) {
	c := &conn{Conn: nc, b: b, listener: l.cfg.Name, tlsState: state}
	b.track(c)
	defer func() {
		if r := recover(); r != nil {
			id := ""
			if cl := c.client.Load(); cl != nil {
				id = cl.ID
				b.forget(cl)
			}
			b.log.Error("connection handler panicked; connection closed", "client_id", id,
				"remote", nc.RemoteAddr().String(), "listener", l.cfg.Name, "panic", r, "stack", string(debug.Stack()))
			b.metrics.CountMalformed()
			_ = c.Close()
		}
	}()
	if b.stopping.Load() {
		_ = c.Close()
		return
	}
	// mochi sets no deadline before CONNECT: a socket that never sends one
	// would be held for ever. mochi replaces this deadline with the
	// keepalive once CONNECT is read.
	_ = nc.SetDeadline(time.Now().Add(b.cfg.Limits.ConnectTimeout))
	if err := establish(l.cfg.Name, c); err != nil {
		b.log.Debug("connection ended", "listener", l.cfg.Name, "remote", nc.RemoteAddr().String(), "err", err)
	}
}

// forget removes what mochi would have removed had its handler returned: a
// clean session of a client whose handler panicked.
func (b *Broker) forget(cl *mqtt.Client) {
	if cl.Properties.Clean || (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) {
		b.mochi.UnsubscribeClient(cl)
		cl.ClearInflights()
		if cur, ok := b.mochi.Clients.Get(cl.ID); ok && cur == cl {
			b.mochi.Clients.Delete(cl.ID)
		}
	}
}

// Ready is nil when every listener accepts (and storage is open).
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
