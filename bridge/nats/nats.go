package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults.
const (
	// DefaultTimeout bounds one Deliver's flush or PubAck wait.
	DefaultTimeout = 5 * time.Second
	// DefaultAckWait is how long JetStream waits for an ingress ack before
	// redelivering.
	DefaultAckWait = 30 * time.Second
	// DefaultMaxAckPending is how many ingress messages may be unacked at
	// once; 1 keeps the stream's order even across redeliveries.
	DefaultMaxAckPending = 1
	// DefaultNakDelay is how long JetStream waits before redelivering a
	// message the broker refused.
	DefaultNakDelay = time.Second
	reconnectWait   = 250 * time.Millisecond
)

// Config is the connector's section, e.g.
//
//	nats: {url: "nats://127.0.0.1:4222", subject: "telemetry.{{.Segment 1}}", jetstream: true}
type Config struct {
	// URL is the server URL (comma-separated for several); credentials may
	// be in it.
	URL string `yaml:"url"`
	// Subject is a template over the MQTT message (egress) or a subject
	// filter, wildcards allowed (ingress).
	Subject string `yaml:"subject"`
	// JetStream publishes awaiting PubAcks (egress) or consumes through a
	// durable consumer on Stream (ingress).
	JetStream bool `yaml:"jetstream"`
	// Stream is the JetStream stream to consume from (ingress only).
	Stream string `yaml:"stream"`
	// Durable names the ingress consumer; default "ferry-<route>".
	Durable       string        `yaml:"durable"`
	Timeout       time.Duration `yaml:"timeout"`
	AckWait       time.Duration `yaml:"ack_wait"`
	MaxAckPending int           `yaml:"max_ack_pending"`
	NakDelay      time.Duration `yaml:"nak_delay"`
}

// Connector is the NATS connector.
type Connector struct {
	cfg     Config
	spec    bridge.Spec
	subject *bridge.Template // egress
	log     *slog.Logger

	mu sync.Mutex
	nc *nats.Conn
	js jetstream.JetStream
}

var (
	_ bridge.Connector = (*Connector)(nil)
	_ bridge.Receiver  = (*Connector)(nil)
	_ bridge.Prober    = (*Connector)(nil)
	_ bridge.Factory   = New
)

// New is the connector's bridge.Factory: it decodes and validates the
// section; no I/O.
func New(spec bridge.Spec, deps bridge.Deps) (bridge.Connector, error) {
	var cfg Config
	if err := spec.Decode(&cfg); err != nil {
		return nil, err
	}
	c := &Connector{cfg: cfg.withDefaults(spec.Route), spec: spec, log: deps.Log()}
	var errs bridge.FieldErrors
	add := errs.Add
	if cfg.URL == "" {
		add("url", "must not be empty")
	}
	switch {
	case cfg.Subject == "":
		add("subject", "must not be empty")
	case spec.Direction == bridge.Out:
		t, err := bridge.ParseTemplate(cfg.Subject)
		if err != nil {
			add("subject", "%w", err)
		} else if t.Constant() && !validSubject(cfg.Subject, false) {
			add("subject", "%q is not a valid publish subject", cfg.Subject)
		}
		c.subject = t
		if cfg.Stream != "" || cfg.Durable != "" {
			add("stream", "stream and durable are for ingress routes")
		}
	default:
		if !validSubject(cfg.Subject, true) {
			add("subject", "%q is not a valid subject filter", cfg.Subject)
		}
		if cfg.JetStream && cfg.Stream == "" {
			add("stream", "ingress from JetStream needs the stream's name")
		}
	}
	for _, b := range []struct {
		path string
		d    time.Duration
	}{{"timeout", c.cfg.Timeout}, {"ack_wait", c.cfg.AckWait}, {"nak_delay", c.cfg.NakDelay}} {
		if b.d < time.Millisecond {
			add(b.path, "%s is less than allowed 1ms", b.d)
		}
	}
	if c.cfg.MaxAckPending < 1 {
		add("max_ack_pending", "%d is less than allowed 1", c.cfg.MaxAckPending)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

func (c Config) withDefaults(route string) Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.NakDelay == 0 {
		c.NakDelay = DefaultNakDelay
	}
	if c.Durable == "" {
		c.Durable = "ferry-" + route
	}
	return c
}

// validSubject reports whether s is a NATS subject (filter, when wild).
func validSubject(s string, wild bool) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" {
			return false
		}
		if !wild && (t == "*" || t == ">") {
			return false
		}
		if t == ">" && i != len(toks)-1 {
			return false
		}
	}
	return true
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "nats" }

// Start implements bridge.Connector. See the package doc for the backend
// being down.
func (c *Connector) Start(ctx context.Context) error {
	opts := []nats.Option{
		nats.Name("ferry-bridge-" + c.spec.Route),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		// Never buffer publishes while disconnected: Deliver must fail so
		// the message stays in the outbox.
		nats.ReconnectBufSize(-1),
		nats.Timeout(c.cfg.Timeout),
		// The route logs an outage that costs it a delivery once; these
		// are for the operator following the connection.
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			c.log.Info("nats: disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) { c.log.Info("nats: connected") }),
	}
	nc, err := nats.Connect(c.cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("nats: connect %s: %w", c.cfg.URL, err)
	}
	if err := ctx.Err(); err != nil {
		nc.Close()
		return err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(c.cfg.Timeout))
	if err != nil {
		nc.Close()
		return fmt.Errorf("nats: jetstream: %w", err)
	}
	if !nc.IsConnected() {
		c.log.Warn("nats: server not reachable, will keep trying", "url", c.cfg.URL)
	}
	c.mu.Lock()
	c.nc, c.js = nc, js
	c.mu.Unlock()
	return nil
}

// Close implements bridge.Connector: it closes the connection (a pending
// Deliver fails and its batch stays in the outbox).
func (c *Connector) Close(context.Context) error {
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	return nil
}

func (c *Connector) conn() (*nats.Conn, jetstream.JetStream, error) {
	c.mu.Lock()
	nc, js := c.nc, c.js
	c.mu.Unlock()
	if nc == nil {
		return nil, nil, errors.New("nats: not started")
	}
	if !nc.IsConnected() {
		return nil, nil, bridge.Unavailable(fmt.Errorf("nats: not connected to %s (status %s)", c.cfg.URL, nc.Status()))
	}
	return nc, js, nil
}

// Probe implements bridge.Prober: connected and a flush round trip; with
// JetStream, an account info request (JetStream answers).
func (c *Connector) Probe(ctx context.Context) error {
	nc, js, err := c.conn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("nats: flush: %w", classify(err))
	}
	if c.cfg.JetStream {
		if _, err := js.AccountInfo(ctx); err != nil {
			return fmt.Errorf("nats: jetstream account info: %w", classify(err))
		}
	}
	return nil
}

// unavailableErrs say the server or JetStream cannot take messages now.
var unavailableErrs = []error{
	nats.ErrConnectionClosed, nats.ErrConnectionDraining, nats.ErrConnectionReconnecting,
	nats.ErrReconnectBufExceeded, nats.ErrTimeout, nats.ErrNoServers, nats.ErrNoResponders,
	nats.ErrStaleConnection, nats.ErrDisconnected, nats.ErrAuthExpired,
	jetstream.ErrNoStreamResponse, jetstream.ErrAsyncPublishTimeout, jetstream.ErrJetStreamNotEnabled,
	jetstream.ErrJetStreamNotEnabledForAccount, jetstream.ErrStreamNotFound,
}

// permanentErrs refuse the message itself.
var permanentErrs = []error{nats.ErrMaxPayload, nats.ErrBadSubject, nats.ErrInvalidMsg}

// classify marks err with its kind (bridge.KindOf): a payload over the
// server's max_payload, a bad subject or a stream's "message size exceeds
// maximum" are permanent; disconnection, timeouts, no responders (no
// stream listens on the subject yet), JetStream unavailable (5xx, 408,
// 429, not enabled, stream not found) are unavailable; other JetStream
// refusals are of unknown kind (a probe decides).
func classify(err error) error {
	if err == nil || bridge.IsPermanent(err) || bridge.IsUnavailable(err) {
		return err
	}
	for _, e := range permanentErrs {
		if errors.Is(err, e) {
			return bridge.Permanent(err)
		}
	}
	for _, e := range unavailableErrs {
		if errors.Is(err, e) {
			return bridge.Unavailable(err)
		}
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch {
		case api.Code == 503 || api.Code == 408 || api.Code == 429 || api.Code >= 500:
			return bridge.Unavailable(err)
		case api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
			return bridge.Permanent(err)
		}
		return err
	}
	if bridge.NetworkError(err) {
		return bridge.Unavailable(err)
	}
	return err
}

// Deliver implements bridge.Connector.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	nc, js, err := c.conn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	msgs := make([]*nats.Msg, len(batch))
	for i := range batch {
		if msgs[i], err = c.natsMsg(&batch[i]); err != nil {
			return err
		}
	}
	if !c.cfg.JetStream {
		for _, m := range msgs {
			if err := nc.PublishMsg(m); err != nil {
				return fmt.Errorf("nats: publish %s: %w", m.Subject, classify(err))
			}
		}
		// The PONG comes after the server read every message above.
		if err := nc.FlushWithContext(ctx); err != nil {
			return fmt.Errorf("nats: flush: %w", classify(err))
		}
		return nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, m := range msgs {
		f, err := js.PublishMsgAsync(m, jetstream.WithMsgID(batch[i].ID))
		if err != nil {
			return fmt.Errorf("nats: jetstream publish %s: %w", m.Subject, classify(err))
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("nats: jetstream publish %s: %w", f.Msg().Subject, classify(err))
		case <-ctx.Done():
			return bridge.Unavailable(fmt.Errorf("nats: jetstream publish %s: waiting for PubAck: %w", f.Msg().Subject, ctx.Err()))
		}
	}
	return nil
}

// natsMsg renders m's subject and headers.
func (c *Connector) natsMsg(m *bridge.Message) (*nats.Msg, error) {
	subj, err := c.subject.Execute(m)
	if err != nil {
		return nil, bridge.Permanent(fmt.Errorf("nats: subject: %w", err))
	}
	if !validSubject(subj, false) {
		return nil, bridge.Permanent(fmt.Errorf("nats: rendered subject %q is invalid", subj))
	}
	nm := nats.NewMsg(subj)
	for _, p := range m.UserProperties {
		if p.Key != "" {
			nm.Header.Add(p.Key, p.Value)
		}
	}
	nm.Header.Set(jetstream.MsgIDHeader, m.ID)
	nm.Header.Set("Ferry-Topic", m.Topic)
	if m.ClientID != "" {
		nm.Header.Set("Ferry-Client-Id", m.ClientID)
	}
	nm.Data = m.Payload
	if c.spec.Payload == bridge.EnvelopeJSON {
		if nm.Data, err = bridge.Envelope(m); err != nil {
			return nil, bridge.Permanent(err)
		}
		nm.Header.Set("Content-Type", "application/json")
	}
	return nm, nil
}

// Receive implements bridge.Receiver.
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	c.mu.Lock()
	nc, js := c.nc, c.js
	c.mu.Unlock()
	if nc == nil {
		return errors.New("nats: not started")
	}
	if c.cfg.JetStream {
		return c.receiveJetStream(ctx, js, h)
	}
	sub, err := nc.SubscribeSync(c.cfg.Subject)
	if err != nil {
		return fmt.Errorf("nats: subscribe %s: %w", c.cfg.Subject, classify(err))
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("nats: next message on %s: %w", c.cfg.Subject, classify(err))
		}
		m := bridge.Message{Subject: msg.Subject, Payload: msg.Data, Headers: msg.Header, ID: msg.Header.Get(jetstream.MsgIDHeader)}
		if err := h(ctx, m); err != nil && ctx.Err() == nil {
			// Core NATS cannot redeliver; the bridge counted the failure.
			c.log.Warn("nats: message not accepted, lost (core NATS)", "subject", msg.Subject, "err", err)
		}
	}
}

func (c *Connector) receiveJetStream(ctx context.Context, js jetstream.JetStream, h bridge.Handler) error {
	cons, err := js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		FilterSubject: c.cfg.Subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxAckPending: c.cfg.MaxAckPending,
	})
	if err != nil {
		return fmt.Errorf("nats: consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, classify(err))
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		m := bridge.Message{Subject: msg.Subject(), Payload: msg.Data(), Headers: msg.Headers()}
		if md, err := msg.Metadata(); err == nil {
			m.ID = c.cfg.Stream + "-" + strconv.FormatUint(md.Sequence.Stream, 10)
			m.Created = md.Timestamp
		}
		err := h(ctx, m)
		switch {
		case err == nil:
			// Acked only now: the broker accepted the message.
			if aerr := msg.Ack(); aerr != nil {
				c.log.Warn("nats: ack", "subject", m.Subject, "err", aerr)
			}
		case bridge.IsPermanent(err):
			c.log.Error("nats: message refused, terminated", "subject", m.Subject, "err", err)
			_ = msg.Term()
		default:
			_ = msg.NakWithDelay(c.cfg.NakDelay)
		}
	})
	if err != nil {
		return fmt.Errorf("nats: consume %s: %w", c.cfg.Durable, classify(err))
	}
	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	return ctx.Err()
}
