package activemq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq/stomp"
)

// Defaults, limits and header names.
const (
	// DefaultTimeout bounds one Deliver (writes and receipts), a dial with
	// its handshake, and an ingress ACK.
	DefaultTimeout = 5 * time.Second
	// DefaultHeartBeat is the STOMP heart-beat interval proposed both
	// ways; a server silent for three negotiated intervals is dead
	// (stomp.HeartBeatTolerance).
	DefaultHeartBeat = 10 * time.Second
	// MinHeartBeat is the smallest heart_beat accepted.
	MinHeartBeat = 10 * time.Millisecond
	// DefaultPrefetch is the ingress subscription's activemq.prefetchSize:
	// how many unacked messages ActiveMQ sends ahead.
	DefaultPrefetch = 64
	// MaxPrefetch is the largest prefetch accepted.
	MaxPrefetch = 10000
	// RetryDelay is how long the receiver waits before it hands a message
	// the broker refused (retryably) to the broker again.
	RetryDelay = 100 * time.Millisecond

	// IDHeader carries the stable message id ("<route>-<seq>") on egress:
	// ActiveMQ replaces the message-id header with its own.
	IDHeader = "ferry-message-id"
	// TopicHeader carries the MQTT topic on egress.
	TopicHeader = "mqtt-topic"
)

// reservedHeaders are headers the connector sets, or that change how the
// frame is processed; MQTT user properties with these names are not sent.
var reservedHeaders = map[string]bool{
	"destination": true, "content-length": true, "content-type": true, "receipt": true,
	"transaction": true, "persistent": true, "message-id": true, IDHeader: true, TopicHeader: true,
}

// Config is the connector's section, e.g.
//
//	activemq: {addr: "127.0.0.1:61613", login: ferry, passcode_file: /run/secrets/amq, destination: "/queue/telemetry"}
type Config struct {
	// Addr is the STOMP transport's host:port.
	Addr string `yaml:"addr"`
	// Host is the CONNECT host header (virtual host); default: Addr's host.
	Host string `yaml:"host"`
	// Login and PasscodeFile (a file holding the passcode, trailing
	// newline ignored) authenticate; empty Login: anonymous.
	Login        string `yaml:"login"`
	PasscodeFile string `yaml:"passcode_file"`
	// Destination is a template over the message (egress), e.g.
	// "/queue/telemetry" or "/topic/{{.Segment 1}}", or the destination to
	// subscribe to (ingress).
	Destination string `yaml:"destination"`
	// Persistent sends persistent:true (egress); default true.
	Persistent *bool `yaml:"persistent"`
	// Timeout bounds one Deliver, each dial and an ACK; default
	// DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// HeartBeat is the heart-beat interval proposed; default
	// DefaultHeartBeat.
	HeartBeat time.Duration `yaml:"heart_beat"`
	// Prefetch is the ingress activemq.prefetchSize; default
	// DefaultPrefetch.
	Prefetch int `yaml:"prefetch"`
}

func (c Config) withDefaults() Config {
	if c.Persistent == nil {
		t := true
		c.Persistent = &t
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.HeartBeat == 0 {
		c.HeartBeat = DefaultHeartBeat
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.Host == "" {
		if h, _, err := net.SplitHostPort(c.Addr); err == nil {
			c.Host = h
		}
	}
	return c
}

// Connector is the ActiveMQ connector.
type Connector struct {
	cfg      Config
	passcode string
	spec     bridge.Spec
	dest     *bridge.Template // egress
	log      *slog.Logger
	// redelivered counts ingress messages ActiveMQ marked redelivered.
	redelivered prometheus.Counter

	// mu guards sess and closed; Delivers share the session (receipts are
	// matched by id) and hold mu only to get it.
	mu     sync.Mutex
	sess   *stomp.Conn
	closed bool
}

var (
	_ bridge.Connector = (*Connector)(nil)
	_ bridge.Receiver  = (*Connector)(nil)
	_ bridge.Prober    = (*Connector)(nil)
	_ bridge.Factory   = New
)

// New is the connector's bridge.Factory: it decodes and validates the
// section and reads passcode_file; no network I/O. For an ingress route
// it registers ferry_bridge_activemq_redelivered_total on deps.Registerer.
func New(spec bridge.Spec, deps bridge.Deps) (bridge.Connector, error) {
	var raw Config
	if err := spec.Decode(&raw); err != nil {
		return nil, err
	}
	cfg := raw.withDefaults()
	c := &Connector{cfg: cfg, spec: spec, log: deps.Log()}
	var errs bridge.FieldErrors
	add := errs.Add
	if cfg.Addr == "" {
		add("addr", "must not be empty")
	} else if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		add("addr", "%w", err)
	}
	if cfg.PasscodeFile != "" {
		b, err := os.ReadFile(cfg.PasscodeFile)
		if err != nil {
			add("passcode_file", "%w", err)
		}
		c.passcode = strings.TrimRight(string(b), "\r\n")
		if cfg.Login == "" {
			add("login", "must be set with passcode_file")
		}
	}
	if cfg.Timeout < time.Millisecond {
		add("timeout", "%s is less than allowed 1ms", cfg.Timeout)
	}
	if cfg.HeartBeat < MinHeartBeat {
		add("heart_beat", "%s is less than allowed %s", cfg.HeartBeat, MinHeartBeat)
	}
	if cfg.Destination == "" {
		add("destination", "must not be empty")
	}
	if spec.Direction == bridge.In {
		if strings.Contains(cfg.Destination, "{{") {
			add("destination", "an ingress destination is a name, not a template")
		}
		if cfg.Prefetch < 1 || cfg.Prefetch > MaxPrefetch {
			add("prefetch", "%d is not in [1, %d]", cfg.Prefetch, MaxPrefetch)
		}
		if raw.Persistent != nil {
			add("persistent", "is for egress routes")
		}
	} else {
		if raw.Prefetch != 0 {
			add("prefetch", "is for ingress routes")
		}
		if cfg.Destination != "" {
			t, err := bridge.ParseTemplate(cfg.Destination)
			if err != nil {
				add("destination", "%w", err)
			}
			c.dest = t
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if spec.Direction == bridge.In {
		c.redelivered = redeliveredCounter(deps.Registerer, spec.Route)
	}
	return c, nil
}

// redeliveredCounter returns route's child of the redelivered counter,
// registered once on reg (nil: not registered) and shared by the routes.
func redeliveredCounter(reg prometheus.Registerer, route string) prometheus.Counter {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ferry", Subsystem: "bridge", Name: "activemq_redelivered_total",
		Help: "Ingress messages ActiveMQ delivered again (redelivered:true) after a consumer lost its connection before its ACK; each may reach MQTT twice.",
	}, []string{"route"})
	if reg != nil {
		if err := reg.Register(cv); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					cv = existing
				}
			}
		}
	}
	return cv.WithLabelValues(route)
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "activemq" }

// Start implements bridge.Connector. For egress it connects; a server that
// is down is logged, not an error (Deliver redials), but an ERROR in reply
// to CONNECT (refused credentials) is. Ingress connects in Receive.
func (c *Connector) Start(ctx context.Context) error {
	if c.spec.Direction == bridge.In {
		return nil
	}
	_, err := c.session(ctx)
	var se *stomp.ServerError
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &se):
		return err
	case err != nil:
		c.log.Warn("activemq: server not reachable, will keep trying", "route", c.spec.Route, "err", err)
	}
	return nil
}

// Close implements bridge.Connector: it disconnects the egress session
// (DISCONNECT with a receipt, bounded by ctx and timeout; a Deliver still
// waiting for receipts fails and its batch stays in the outbox). Safe
// twice.
func (c *Connector) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := s.Disconnect(ctx); err != nil && !errors.Is(err, stomp.ErrConnectionLost) {
		return fmt.Errorf("activemq: disconnect: %w", err)
	}
	return nil
}

// dial connects to the server within timeout.
func (c *Connector) dial(ctx context.Context) (*stomp.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	conn, err := stomp.Dial(ctx, c.cfg.Addr, stomp.Options{
		Host: c.cfg.Host, Login: c.cfg.Login, Passcode: c.passcode, HeartBeat: c.cfg.HeartBeat,
	})
	if err != nil {
		return nil, fmt.Errorf("activemq: connect %s: %w", c.cfg.Addr, err)
	}
	return conn, nil
}

// session returns the egress connection, dialing a new one when there is
// none or the old one ended.
func (c *Connector) session(ctx context.Context) (*stomp.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, bridge.ErrClosed
	}
	if s := c.sess; s != nil {
		err := s.Err()
		if err == nil {
			return s, nil
		}
		c.log.Info("activemq: connection lost, reconnecting", "route", c.spec.Route, "err", err)
		_ = s.Close()
		c.sess = nil
	}
	s, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.sess = s
	return s, nil
}
