package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults.
const (
	// DefaultTimeout bounds one publish's wait for its ack, and a connect.
	DefaultTimeout = 10 * time.Second
	// DefaultQoS is the QoS of egress publishes and ingress subscriptions.
	DefaultQoS      = 1
	maxReconnectGap = 5 * time.Second
	keepAlive       = 30
)

// Config is the connector's section, e.g.
//
//	mqtt: {url: "mqtt://10.0.0.2:1883", topic: "site1/{{.Topic}}", username: ferry, password_file: /run/secrets/mqtt}
type Config struct {
	// URL is mqtt://host:port, or tls:// (mqtts://) for TLS with the
	// system's roots.
	URL string `yaml:"url"`
	// ClientID defaults to "ferry-bridge-<route>".
	ClientID     string `yaml:"client_id"`
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// Topic is a template over the message (egress) or a topic filter
	// (ingress).
	Topic string `yaml:"topic"`
	// QoS of egress publishes and of the ingress subscription; default 1.
	QoS *byte `yaml:"qos"`
	// Retain overrides the egress message's retain flag; unset keeps it.
	Retain *bool `yaml:"retain"`
	// SessionExpiry > 0 keeps the ingress session on the remote broker
	// across reconnects, so QoS 1/2 messages sent meanwhile are not lost.
	SessionExpiry time.Duration `yaml:"session_expiry"`
	Timeout       time.Duration `yaml:"timeout"`
}

// Connector is the MQTT connector.
type Connector struct {
	cfg      Config
	spec     bridge.Spec
	topic    *bridge.Template // egress
	server   *url.URL
	password []byte
	qos      byte
	log      *slog.Logger

	mu     sync.Mutex
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc

	recv atomic.Pointer[receiver] // ingress handler while Receive runs
}

type receiver struct {
	ctx context.Context
	h   bridge.Handler
}

var (
	_ bridge.Connector = (*Connector)(nil)
	_ bridge.Receiver  = (*Connector)(nil)
	_ bridge.Prober    = (*Connector)(nil)
	_ bridge.Factory   = New
)

// New is the connector's bridge.Factory: it decodes and validates the
// section and reads password_file; no network I/O.
func New(spec bridge.Spec, deps bridge.Deps) (bridge.Connector, error) {
	var cfg Config
	if err := spec.Decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "ferry-bridge-" + spec.Route
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	c := &Connector{cfg: cfg, spec: spec, qos: DefaultQoS, log: deps.Log()}
	var errs bridge.FieldErrors
	add := errs.Add
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil || u.Host == "":
		add("url", "%q is not a broker URL (mqtt://host:port)", cfg.URL)
	case u.Scheme != "mqtt" && u.Scheme != "tcp" && u.Scheme != "tls" && u.Scheme != "mqtts" && u.Scheme != "ssl":
		add("url", "scheme %q is not mqtt, tcp, tls, mqtts or ssl", u.Scheme)
	default:
		c.server = u
	}
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			add("password_file", "%w", err)
		}
		c.password = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	if cfg.QoS != nil {
		if *cfg.QoS > 2 {
			add("qos", "%d is not 0, 1 or 2", *cfg.QoS)
		}
		c.qos = *cfg.QoS
	}
	switch {
	case cfg.Topic == "":
		add("topic", "must not be empty")
	case spec.Direction == bridge.Out:
		t, err := bridge.ParseTemplate(cfg.Topic)
		if err != nil {
			add("topic", "%w", err)
		} else if t.Constant() && strings.ContainsAny(cfg.Topic, "+#") {
			add("topic", "%q has wildcards: not a topic name", cfg.Topic)
		}
		c.topic = t
	default:
		if cfg.Retain != nil {
			add("retain", "is for egress routes (set the route's to.retain)")
		}
	}
	if cfg.Timeout < time.Millisecond {
		add("timeout", "%s is less than allowed 1ms", cfg.Timeout)
	}
	if cfg.SessionExpiry < 0 || cfg.SessionExpiry > time.Duration(1<<32-1)*time.Second {
		add("session_expiry", "%s is out of range", cfg.SessionExpiry)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "mqtt" }

// Start implements bridge.Connector: it starts connecting and returns (see
// the package doc).
func (c *Connector) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The connection outlives Start's ctx: it lives until Close.
	runCtx, cancel := context.WithCancel(context.Background())
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.server},
		KeepAlive:                     keepAlive,
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         uint32(c.cfg.SessionExpiry / time.Second),
		ConnectTimeout:                c.cfg.Timeout,
		ReconnectBackoff: func(attempt int) time.Duration {
			return min(250*time.Millisecond<<min(attempt, 5), maxReconnectGap)
		},
		ConnectUsername: c.cfg.Username,
		ConnectPassword: c.password,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			c.log.Info("mqtt: connected", "url", c.server.Redacted())
			if r := c.recv.Load(); r != nil {
				// On every (re)connect: the session may be new.
				if err := c.subscribe(r.ctx, cm); err != nil {
					c.log.Error("mqtt: subscribe", "err", err)
				}
			}
		},
		OnConnectError: func(err error) {
			// Once per reconnect attempt: the route logs the outage once.
			c.log.Debug("mqtt: connect", "url", c.server.Redacted(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          c.cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.onPublish},
		},
	}
	cm, err := autopaho.NewConnection(runCtx, cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("mqtt: connect %s: %w", c.server.Redacted(), err)
	}
	c.mu.Lock()
	c.cm, c.cancel = cm, cancel
	c.mu.Unlock()
	return nil
}

// Close implements bridge.Connector: DISCONNECT if connected, then stop
// reconnecting and wait for the client's goroutines until ctx ends.
func (c *Connector) Close(ctx context.Context) error {
	c.mu.Lock()
	cm, cancel := c.cm, c.cancel
	c.cm, c.cancel = nil, nil
	c.mu.Unlock()
	if cm == nil {
		return nil
	}
	_ = cm.Disconnect(ctx) // fails when not connected; nothing to tell then
	cancel()
	select {
	case <-cm.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt: close: %w", ctx.Err())
	}
}

func (c *Connector) manager() (*autopaho.ConnectionManager, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cm == nil {
		return nil, errors.New("mqtt: not started")
	}
	return c.cm, nil
}

// permanentCodes are PUBACK/PUBREC reason codes retrying cannot fix.
var permanentCodes = map[byte]bool{
	0x87: true, // not authorized
	0x90: true, // topic name invalid
	0x95: true, // packet too large
	0x99: true, // payload format invalid
}

// unavailableCodes are PUBACK/PUBREC reason codes that say the remote
// broker takes nothing now.
var unavailableCodes = map[byte]bool{
	0x89: true, // server busy
	0x97: true, // quota exceeded
	0x8B: true, // server shutting down
}

// classify marks a publish error with its kind (bridge.KindOf): reason
// codes in permanentCodes and invalid arguments are permanent; the
// connection being down or lost, timeouts (autopaho waits for the
// connection until the publish's timeout), quota exceeded and server busy
// mean the remote broker is unavailable; other reason codes (0x80
// unspecified, 0x83 implementation specific) are of unknown kind.
func classify(resp *paho.PublishResponse, err error) error {
	switch {
	case (resp != nil && permanentCodes[resp.ReasonCode]) || errors.Is(err, paho.ErrInvalidArguments):
		return bridge.Permanent(err)
	case (resp != nil && unavailableCodes[resp.ReasonCode]) || errors.Is(err, autopaho.ConnectionDownError) ||
		errors.Is(err, paho.ErrConnectionLost) || errors.Is(err, paho.ErrNetworkErrorAfterStored) || bridge.NetworkError(err):
		return bridge.Unavailable(err)
	}
	return err
}

// Probe implements bridge.Prober: the connection is up, or comes up
// within timeout.
func (c *Connector) Probe(ctx context.Context) error {
	cm, err := c.manager()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := cm.AwaitConnection(ctx); err != nil {
		return bridge.Unavailable(fmt.Errorf("mqtt: not connected to %s: %w", c.server.Redacted(), err))
	}
	return nil
}

// Deliver implements bridge.Connector.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	cm, err := c.manager()
	if err != nil {
		return err
	}
	for i := range batch {
		m := &batch[i]
		p, err := c.publishPacket(m)
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		// autopaho refuses a publish at once while it (re)connects, as it
		// does right after Start: wait for the connection first.
		err = cm.AwaitConnection(pctx)
		var resp *paho.PublishResponse
		if err == nil {
			resp, err = cm.Publish(pctx, p)
		}
		cancel()
		if err != nil {
			return classify(resp, fmt.Errorf("mqtt: publish %s: %w", p.Topic, err))
		}
	}
	return nil
}

// publishPacket renders m's topic and properties.
func (c *Connector) publishPacket(m *bridge.Message) (*paho.Publish, error) {
	topic, err := c.topic.Execute(m)
	if err != nil {
		return nil, bridge.Permanent(fmt.Errorf("mqtt: topic: %w", err))
	}
	if topic == "" || strings.ContainsAny(topic, "+#\x00") {
		return nil, bridge.Permanent(fmt.Errorf("mqtt: rendered topic %q is not a topic name", topic))
	}
	props := &paho.PublishProperties{}
	for _, up := range m.UserProperties {
		props.User.Add(up.Key, up.Value)
	}
	props.User.Add(bridge.IDProperty, m.ID)
	payload := m.Payload
	if c.spec.Payload == bridge.EnvelopeJSON {
		if payload, err = bridge.Envelope(m); err != nil {
			return nil, bridge.Permanent(err)
		}
		props.ContentType = "application/json"
	}
	retain := m.Retain
	if c.cfg.Retain != nil {
		retain = *c.cfg.Retain
	}
	return &paho.Publish{Topic: topic, QoS: c.qos, Retain: retain, Payload: payload, Properties: props}, nil
}

// Receive implements bridge.Receiver.
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	cm, err := c.manager()
	if err != nil {
		return err
	}
	c.recv.Store(&receiver{ctx: ctx, h: h})
	defer c.recv.Store(nil)
	if err := cm.AwaitConnection(ctx); err != nil {
		return err
	}
	// Reconnects subscribe again in OnConnectionUp.
	if err := c.subscribe(ctx, cm); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (c *Connector) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: c.cfg.Topic, QoS: c.qos}}})
	if err != nil {
		return fmt.Errorf("mqtt: subscribe %s: %w", c.cfg.Topic, err)
	}
	if len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
		return fmt.Errorf("mqtt: subscribe %s: reason code 0x%02x", c.cfg.Topic, sa.Reasons[0])
	}
	return nil
}

// onPublish hands a received message to the bridge; paho acks it after
// this returns, so after the broker accepted (or refused) it.
func (c *Connector) onPublish(pr paho.PublishReceived) (bool, error) {
	r := c.recv.Load()
	if r == nil || pr.AlreadyHandled {
		return false, nil
	}
	p := pr.Packet
	m := bridge.Message{Subject: p.Topic, Payload: p.Payload}
	if p.Properties != nil && len(p.Properties.User) > 0 {
		m.Headers = make(map[string][]string, len(p.Properties.User))
		for _, up := range p.Properties.User {
			m.Headers[up.Key] = append(m.Headers[up.Key], up.Value)
		}
		m.ID = p.Properties.User.Get(bridge.IDProperty)
	}
	if err := r.h(r.ctx, m); err != nil && r.ctx.Err() == nil {
		c.log.Warn("mqtt: message not accepted, lost (MQTT has no negative ack)", "topic", p.Topic, "err", err)
	}
	return true, nil
}
