package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults and limits.
const (
	// DefaultKey is the egress record key template: the publisher's client
	// id, so one device's messages stay in one partition, in order.
	DefaultKey = "{{.ClientID}}"
	// DefaultLinger is how long the producer waits for a partition's batch
	// to fill before sending it.
	DefaultLinger = 5 * time.Millisecond
	// DefaultTimeout bounds one Deliver (every record's produce), a ping at
	// Start and an offset commit.
	DefaultTimeout = 10 * time.Second
	// MinTimeout is the least timeout franz-go accepts as a record
	// delivery timeout.
	MinTimeout = time.Second
	// DefaultMaxPollRecords is the most records one ingress poll hands
	// over before offsets are committed.
	DefaultMaxPollRecords = 100
	// MaxTopicLen is Kafka's limit on a topic name's length.
	MaxTopicLen = 249

	// StartEarliest makes a new group start at the oldest record.
	StartEarliest = "earliest"
	// StartLatest makes a new group start after the newest record.
	StartLatest = "latest"

	// IDHeader is the egress record header carrying the message's stable id.
	IDHeader = "ferry-message-id"
	// TopicHeader is the egress record header carrying the MQTT topic.
	TopicHeader = "mqtt-topic"
	// KeyHeader is the ingress header carrying the record's key.
	KeyHeader = "kafka-key"
)

// Config is the connector's section, e.g.
//
//	kafka: {brokers: ["127.0.0.1:9092"], topic: "telemetry", key: "{{.ClientID}}"}
type Config struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers"`
	// Topic is a template over the message (egress) or the topic to
	// consume (ingress).
	Topic string `yaml:"topic"`
	// Topics are more topics to consume (ingress only).
	Topics []string `yaml:"topics"`
	// Key is the record key template (egress); default DefaultKey. A key
	// that renders empty sends the record without a key.
	Key string `yaml:"key"`
	// Linger is the producer's linger (egress); default DefaultLinger.
	Linger time.Duration `yaml:"linger"`
	// Timeout bounds one Deliver, the ping at Start and a commit; default
	// DefaultTimeout, at least MinTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// Group is the ingress consumer group; default "ferry-<route>".
	Group string `yaml:"group"`
	// StartOffset is where a group without committed offsets starts:
	// "earliest" (default) or "latest".
	StartOffset string `yaml:"start_offset"`
	// MaxPollRecords is the most records handed over between two commits
	// (ingress); default DefaultMaxPollRecords.
	MaxPollRecords int `yaml:"max_poll_records"`
}

func (c Config) withDefaults(route string) Config {
	c.Brokers = append([]string(nil), c.Brokers...)
	c.Topics = append([]string(nil), c.Topics...)
	if c.Key == "" {
		c.Key = DefaultKey
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Group == "" {
		c.Group = "ferry-" + route
	}
	if c.StartOffset == "" {
		c.StartOffset = StartEarliest
	}
	if c.MaxPollRecords == 0 {
		c.MaxPollRecords = DefaultMaxPollRecords
	}
	return c
}

// Connector is the Kafka connector.
type Connector struct {
	cfg   Config
	spec  bridge.Spec
	topic *bridge.Template // egress
	key   *bridge.Template // egress
	log   *slog.Logger

	mu       sync.Mutex
	client   *kgo.Client          // egress producer, set by Start
	closed   bool                 // Close was called
	inflight map[string]*produced // by message id: records not yet done
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
	var raw Config
	if err := spec.Decode(&raw); err != nil {
		return nil, err
	}
	cfg := raw.withDefaults(spec.Route)
	c := &Connector{cfg: cfg, spec: spec, log: deps.Log(), inflight: make(map[string]*produced)}
	var errs bridge.FieldErrors
	add := errs.Add
	if len(cfg.Brokers) == 0 {
		add("brokers", "must not be empty")
	}
	for i, b := range cfg.Brokers {
		if b == "" {
			add(fmt.Sprintf("brokers[%d]", i), "must not be empty")
		}
	}
	for _, b := range []struct {
		path     string
		d, limit time.Duration
	}{{"timeout", cfg.Timeout, MinTimeout}, {"linger", cfg.Linger, time.Millisecond}} {
		if b.d < b.limit {
			add(b.path, "%s is less than allowed %s", b.d, b.limit)
		}
	}
	if spec.Direction == bridge.In {
		topics := cfg.allTopics()
		if len(topics) == 0 {
			add("topic", "topic or topics must be set")
		}
		for _, t := range topics {
			if err := checkTopic(t); err != nil {
				add("topic", "%w", err)
			}
		}
		if cfg.StartOffset != StartEarliest && cfg.StartOffset != StartLatest {
			add("start_offset", "%q is not %q or %q", cfg.StartOffset, StartEarliest, StartLatest)
		}
		if cfg.MaxPollRecords < 1 {
			add("max_poll_records", "%d is less than allowed 1", cfg.MaxPollRecords)
		}
		if raw.Key != "" || raw.Linger != 0 {
			add("key", "key and linger are for egress routes")
		}
	} else {
		if cfg.Topic == "" {
			add("topic", "must not be empty")
		} else if t, err := bridge.ParseTemplate(cfg.Topic); err != nil {
			add("topic", "%w", err)
		} else {
			c.topic = t
			if t.Constant() {
				if err := checkTopic(cfg.Topic); err != nil {
					add("topic", "%w", err)
				}
			}
		}
		if t, err := bridge.ParseTemplate(cfg.Key); err != nil {
			add("key", "%w", err)
		} else {
			c.key = t
		}
		if len(raw.Topics) > 0 || raw.Group != "" || raw.StartOffset != "" || raw.MaxPollRecords != 0 {
			add("group", "topics, group, start_offset and max_poll_records are for ingress routes")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// allTopics is Topic and Topics, for ingress.
func (c Config) allTopics() []string {
	var ts []string
	if c.Topic != "" {
		ts = append(ts, c.Topic)
	}
	return append(ts, c.Topics...)
}

// checkTopic reports whether t is a legal Kafka topic name:
// [a-zA-Z0-9._-]{1,249}, not "." or "..".
func checkTopic(t string) error {
	if t == "" || len(t) > MaxTopicLen || t == "." || t == ".." {
		return fmt.Errorf("%q is not a valid Kafka topic name", t)
	}
	for i := 0; i < len(t); i++ {
		ch := t[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			return fmt.Errorf("%q is not a valid Kafka topic name (allowed: a-z A-Z 0-9 . _ -)", t)
		}
	}
	return nil
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "kafka" }

// Start implements bridge.Connector. Egress: it creates the producer and
// pings a broker; a cluster that is down is logged, not an error.
// Ingress: nothing (Receive owns its consumer).
func (c *Connector) Start(ctx context.Context) error {
	if c.spec.Direction == bridge.In {
		return nil
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(c.cfg.Brokers...),
		kgo.ClientID("ferry-bridge-"+c.spec.Route),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent writes need acks=all; also the default
		kgo.ProducerLinger(c.cfg.Linger),
		// Records still unsent (or answered) when the timeout passes are
		// failed, so Deliver returns and the route retries.
		kgo.RecordDeliveryTimeout(c.cfg.Timeout),
		kgo.WithLogger(logger{c.log}),
	)
	if err != nil {
		return fmt.Errorf("kafka: client: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err = client.Ping(pctx)
	cancel()
	if ctx.Err() != nil {
		client.Close()
		return ctx.Err()
	}
	if err != nil {
		c.log.Warn("kafka: brokers not reachable, will keep trying", "brokers", strings.Join(c.cfg.Brokers, ","), "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		client.Close()
		return bridge.ErrClosed
	}
	c.client = client
	return nil
}

// Close implements bridge.Connector: it closes the producer; records still
// buffered or in flight are failed (some may have been written) and their
// batch stays in the outbox. Safe twice.
func (c *Connector) Close(context.Context) error {
	c.mu.Lock()
	client := c.client
	c.client, c.closed = nil, true
	c.mu.Unlock()
	if client != nil {
		client.Close()
	}
	return nil
}

func (c *Connector) producer() (*kgo.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil, errors.New("kafka: not started")
	}
	return c.client, nil
}

// Deliver implements bridge.Connector: see the package doc.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	client, err := c.producer()
	if err != nil {
		return err
	}
	records := make([]*kgo.Record, len(batch))
	for i := range batch {
		if records[i], err = c.record(&batch[i]); err != nil {
			return bridge.Permanent(err)
		}
	}
	// RecordDeliveryTimeout and ctx fail the records that are safe to fail
	// (never sent, or answered); a record whose request got no answer
	// stays in flight until the broker answers, and the idempotent
	// producer keeps retrying it. Deliver does not wait for those: it
	// returns after the timeout, and a retry waits for the same record
	// instead of producing it again.
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout+c.cfg.Linger)
	defer cancel()
	waits := make([]*produced, len(batch))
	for i, r := range records {
		p, fresh := c.track(batch[i].ID)
		waits[i] = p
		if !fresh {
			continue
		}
		id := batch[i].ID
		client.Produce(ctx, r, func(_ *kgo.Record, err error) {
			p.err = err
			c.untrack(id, p)
			close(p.done)
		})
	}
	for i, p := range waits {
		select {
		case <-p.done:
			if p.err != nil {
				return fmt.Errorf("kafka: produce %s (message %s): %w", records[i].Topic, batch[i].ID, classify(p.err))
			}
		case <-ctx.Done():
			return bridge.Unavailable(fmt.Errorf("kafka: produce %s (message %s): not acknowledged: %w", records[i].Topic, batch[i].ID, ctx.Err()))
		}
	}
	return nil
}

// produced is one record's outcome: err is set before done is closed.
type produced struct {
	done chan struct{}
	err  error
}

// track returns the in-flight record of message id, or a new one (fresh)
// that the caller must produce.
func (c *Connector) track(id string) (p *produced, fresh bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.inflight[id]; p != nil {
		return p, false
	}
	p = &produced{done: make(chan struct{})}
	if id != "" {
		c.inflight[id] = p
	}
	return p, true
}

// untrack forgets p once its record is done.
func (c *Connector) untrack(id string, p *produced) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight[id] == p {
		delete(c.inflight, id)
	}
}

// record turns an egress message into a Kafka record.
func (c *Connector) record(m *bridge.Message) (*kgo.Record, error) {
	topic, err := c.topic.Execute(m)
	if err != nil {
		return nil, fmt.Errorf("kafka: topic: %w", err)
	}
	if err := checkTopic(topic); err != nil {
		return nil, fmt.Errorf("kafka: rendered topic: %w", err)
	}
	key, err := c.key.Execute(m)
	if err != nil {
		return nil, fmt.Errorf("kafka: key: %w", err)
	}
	value := m.Payload
	if c.spec.Payload == bridge.EnvelopeJSON {
		if value, err = bridge.Envelope(m); err != nil {
			return nil, err
		}
	}
	r := &kgo.Record{Topic: topic, Value: value, Headers: make([]kgo.RecordHeader, 0, 2+len(m.UserProperties))}
	if key != "" {
		r.Key = []byte(key)
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: IDHeader, Value: []byte(m.ID)},
		kgo.RecordHeader{Key: TopicHeader, Value: []byte(m.Topic)})
	for _, p := range m.UserProperties {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: p.Key, Value: []byte(p.Value)})
	}
	return r, nil
}

// authErrors are non-retriable broker errors that an operator fixes for
// the whole route (ACLs): the route is down until then, nothing is
// dead-lettered.
var authErrors = []error{
	kerr.TopicAuthorizationFailed,
	kerr.ClusterAuthorizationFailed,
	kerr.TransactionalIDAuthorizationFailed,
	kerr.SaslAuthenticationFailed,
}

// classify marks a produce error with its kind (bridge.KindOf): a broker
// error code Kafka marks non-retriable (MESSAGE_TOO_LARGE,
// INVALID_TOPIC_EXCEPTION, RECORD_LIST_TOO_LARGE, INVALID_RECORD, ...) is
// permanent, except authorization errors; those, retriable codes
// (NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS, ...),
// the client's record timeout and retry limit, a closed client, timeouts
// and network errors mean the cluster is unavailable.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ke *kerr.Error
	if errors.As(err, &ke) {
		if ke.Retriable {
			return bridge.Unavailable(err)
		}
		for _, a := range authErrors {
			if errors.Is(err, a) {
				return bridge.Unavailable(err)
			}
		}
		return bridge.Permanent(err)
	}
	if errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, kgo.ErrRecordRetries) || errors.Is(err, kgo.ErrClientClosed) ||
		bridge.NetworkError(err) {
		return bridge.Unavailable(err)
	}
	return err
}

// Probe implements bridge.Prober: a request to any seed broker within
// timeout, by the producer (egress) or a client made for it (ingress,
// whose consumer lives inside Receive).
func (c *Connector) Probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var client *kgo.Client
	var err error
	if c.spec.Direction == bridge.In {
		client, err = kgo.NewClient(kgo.SeedBrokers(c.cfg.Brokers...), kgo.ClientID("ferry-bridge-"+c.spec.Route),
			kgo.WithLogger(logger{c.log}))
		if err != nil {
			return fmt.Errorf("kafka: client: %w", err)
		}
		defer client.Close()
	} else if client, err = c.producer(); err != nil {
		return err
	}
	if err := client.Ping(ctx); err != nil {
		return fmt.Errorf("kafka: ping: %w", bridge.Unavailable(err))
	}
	return nil
}

// logger passes the client's warnings and errors to the connector's
// logger at debug: during an outage the client logs every failed
// connection attempt, and the route logs the outage once.
type logger struct{ l *slog.Logger }

func (l logger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l logger) Log(_ kgo.LogLevel, msg string, keyvals ...any) {
	l.l.Log(context.Background(), slog.LevelDebug, "kafka: "+msg, keyvals...)
}
