package bridge

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults and limits of a route. A zero field in RouteConfig means the
// default.
const (
	// DefaultMaxAttempts is how many deliveries are tried before a message
	// is dead-lettered.
	DefaultMaxAttempts = 10
	// DefaultBackoffInitial and DefaultBackoffMax bound the exponential
	// retry delay (with jitter: each wait is uniform in [d/2, d]).
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	// DefaultBatchSize is the most messages handed to one Deliver call,
	// unless the connector asks otherwise (Batcher).
	DefaultBatchSize = 64
	// DefaultMaxBytes bounds a route's outbox (at-least-once) in bytes.
	DefaultMaxBytes = 256 << 20
	// DefaultQueueSize bounds an at-most-once route's memory queue.
	DefaultQueueSize = 1024
	// MaxBatchSize is the largest batch_size accepted.
	MaxBatchSize = 10000
)

// Direction says which way a route carries messages.
type Direction string

// Directions.
const (
	Out Direction = "out" // MQTT → backend (default)
	In  Direction = "in"  // backend → MQTT
)

// Delivery is a route's delivery guarantee.
type Delivery string

// Deliveries.
const (
	// AtLeastOnce appends each message to the durable outbox before the
	// publisher is acknowledged and deletes it only on the backend's ack.
	AtLeastOnce Delivery = "at-least-once"
	// AtMostOnce queues messages in a bounded memory queue; a crash, a full
	// queue or max_attempts failures lose them (counted).
	AtMostOnce Delivery = "at-most-once"
)

// Ordering is a route's delivery order.
type Ordering string

// Orderings.
const (
	// InOrder delivers one batch at a time, in outbox order (default).
	InOrder Ordering = "in-order"
	// PerKey delivers the messages of different keys (the key template) in
	// parallel, those of one key in order.
	PerKey Ordering = "per-key"
)

// PayloadFormat is how egress payloads are encoded for the backend.
type PayloadFormat string

// Payload formats.
const (
	// Raw sends the MQTT payload bytes unchanged (default); metadata goes in
	// headers where the backend has them.
	Raw PayloadFormat = "raw"
	// EnvelopeJSON sends a JSON envelope: see Envelope.
	EnvelopeJSON PayloadFormat = "envelope"
)

// FullPolicy is what Offer does when a route's outbox is at max_bytes.
type FullPolicy string

// Policies.
const (
	// Block refuses the publish with ErrOutboxFull (default).
	Block FullPolicy = "block"
	// DropOldest deletes the route's oldest messages to make room
	// (counted as dropped, reason "full").
	DropOldest FullPolicy = "drop-oldest"
)

// RouteConfig is one entry of the bridges list.
type RouteConfig struct {
	// Name is unique, [a-z0-9_-]{1,64}; it labels metrics and keys the
	// outbox.
	Name      string    `yaml:"name"`
	Direction Direction `yaml:"direction"`
	// From is the MQTT topic filter(s) for egress ("a/+/b" or a list), or a
	// connector section ({nats: {...}}) for ingress.
	From Endpoint `yaml:"from"`
	// To is a connector section for egress, or {topic, qos, retain} for
	// ingress.
	To       Endpoint `yaml:"to"`
	Delivery Delivery `yaml:"delivery"`
	Ordering Ordering `yaml:"ordering"`
	// Key is the template whose value orders messages when Ordering is
	// per-key.
	Key     string        `yaml:"key"`
	Payload PayloadFormat `yaml:"payload"`
	// MaxAttempts before a message is dead-lettered (at-least-once) or
	// dropped (at-most-once).
	MaxAttempts int     `yaml:"max_attempts"`
	Backoff     Backoff `yaml:"backoff"`
	// BatchSize is the most messages per Deliver call.
	BatchSize int `yaml:"batch_size"`
	// MaxBytes bounds the route's outbox; MaxAge drops (reason "expired")
	// messages older than it instead of delivering them; 0 = no age bound.
	MaxBytes int64         `yaml:"max_bytes"`
	MaxAge   time.Duration `yaml:"max_age"`
	WhenFull FullPolicy    `yaml:"when_full"`
	// QueueSize bounds the memory queue of an at-most-once route.
	QueueSize int `yaml:"queue_size"`
}

// Backoff bounds the retry delay.
type Backoff struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// Endpoint is one side of a route: MQTT topic filters, an MQTT target, or a
// connector section. See RouteConfig.From and To.
type Endpoint struct {
	// Filters are MQTT topic filters (egress From).
	Filters []string
	// Topic, QoS and Retain are the MQTT target (ingress To); Topic is a
	// template over the backend message.
	Topic  string
	QoS    byte
	Retain bool
	// Connector is the connector's config key; its section is in spec.
	Connector string
	spec      *yaml.Node
}

// MarshalYAML writes e in the form UnmarshalYAML reads, connector
// section included (secrets too: redact before showing it).
func (e Endpoint) MarshalYAML() (any, error) {
	switch {
	case e.Connector != "":
		return map[string]*yaml.Node{e.Connector: e.spec}, nil
	case e.Topic != "":
		return struct {
			Topic  string `yaml:"topic"`
			QoS    byte   `yaml:"qos"`
			Retain bool   `yaml:"retain"`
		}{e.Topic, e.QoS, e.Retain}, nil
	}
	return e.Filters, nil
}

// UnmarshalYAML accepts a filter string, a list of filters, a mapping
// {topic, qos, retain} or a mapping with one connector key.
func (e *Endpoint) UnmarshalYAML(n *yaml.Node) error {
	*e = Endpoint{}
	switch n.Kind {
	case yaml.ScalarNode:
		e.Filters = []string{n.Value}
		return nil
	case yaml.SequenceNode:
		return n.Decode(&e.Filters)
	case yaml.MappingNode:
	default:
		return nodeError(n, "want a topic filter, a list or a mapping")
	}
	keys := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		keys[n.Content[i].Value] = n.Content[i+1]
	}
	if _, ok := keys["topic"]; ok {
		var t struct {
			Topic  string `yaml:"topic"`
			QoS    byte   `yaml:"qos"`
			Retain bool   `yaml:"retain"`
		}
		if err := n.Decode(&t); err != nil {
			return err
		}
		for k := range keys {
			if k != "topic" && k != "qos" && k != "retain" {
				return nodeError(n, "unknown field %q beside topic", k)
			}
		}
		e.Topic, e.QoS, e.Retain = t.Topic, t.QoS, t.Retain
		return nil
	}
	if _, ok := keys["filters"]; ok && len(keys) == 1 {
		return keys["filters"].Decode(&e.Filters)
	}
	if len(keys) != 1 {
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		return nodeError(n, "want exactly one connector, got %v", names)
	}
	for k, v := range keys {
		e.Connector, e.spec = k, v
	}
	return nil
}

// nodeError is a decoding error at n as yaml.v3 makes its own: a
// *yaml.TypeError lets the decoder go on, so the rest of the file is
// checked too.
func nodeError(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
}

var nameRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c RouteConfig) WithDefaults() RouteConfig {
	if c.Direction == "" {
		c.Direction = Out
	}
	if c.Delivery == "" {
		c.Delivery = AtLeastOnce
	}
	if c.Ordering == "" {
		c.Ordering = InOrder
	}
	if c.Payload == "" {
		c.Payload = Raw
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff.Initial == 0 {
		c.Backoff.Initial = DefaultBackoffInitial
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = DefaultBackoffMax
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.WhenFull == "" {
		c.WhenFull = Block
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	return c
}

// Routes is the bridges list.
type Routes []RouteConfig

// Validate checks every route (after WithDefaults) without the connectors'
// own sections, which New checks through their factories. The error joins
// one *FieldError per problem, paths relative to the list ("[1].name").
func (rs Routes) Validate() error {
	var errs []error
	seen := map[string]int{}
	for i, r := range rs {
		p := fmt.Sprintf("[%d]", i)
		if j, dup := seen[r.Name]; dup && r.Name != "" {
			errs = append(errs, fieldErr(p+".name", "duplicate route name %q (also [%d])", r.Name, j))
		}
		seen[r.Name] = i
		errs = append(errs, withRoute(r.Name, r.WithDefaults().validate(p)))
	}
	return errors.Join(errs...)
}

func (c RouteConfig) validate(p string) error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fieldErr(p+path, format, args...))
	}
	if !nameRE.MatchString(c.Name) {
		add(".name", "%q must match [a-z0-9_-]{1,64}", c.Name)
	}
	switch c.Direction {
	case Out:
		if len(c.From.Filters) == 0 {
			add(".from", "egress route needs one or more MQTT topic filters")
		}
		for i, f := range c.From.Filters {
			if !validFilter(f) {
				add(fmt.Sprintf(".from[%d]", i), "invalid MQTT topic filter %q", f)
			}
		}
		if c.To.Connector == "" {
			add(".to", "egress route needs a connector section, e.g. {nats: {...}}")
		}
	case In:
		if c.From.Connector == "" {
			add(".from", "ingress route needs a connector section, e.g. {nats: {...}}")
		}
		if c.To.Topic == "" {
			add(".to.topic", "ingress route needs an MQTT topic template")
		} else if _, err := ParseTemplate(c.To.Topic); err != nil {
			add(".to.topic", "%w", err)
		}
		if c.To.QoS > 2 {
			add(".to.qos", "%d is not 0, 1 or 2", c.To.QoS)
		}
	default:
		add(".direction", "%q is not %q or %q", c.Direction, Out, In)
	}
	switch c.Delivery {
	case AtLeastOnce, AtMostOnce:
	default:
		add(".delivery", "%q is not %q or %q", c.Delivery, AtLeastOnce, AtMostOnce)
	}
	switch c.Ordering {
	case InOrder:
	case PerKey:
		if c.Key == "" {
			add(".key", "ordering per-key needs a key template")
		}
	default:
		add(".ordering", "%q is not %q or %q", c.Ordering, InOrder, PerKey)
	}
	if c.Key != "" {
		if _, err := ParseTemplate(c.Key); err != nil {
			add(".key", "%w", err)
		}
	}
	switch c.Payload {
	case Raw, EnvelopeJSON:
	default:
		add(".payload", "%q is not %q or %q", c.Payload, Raw, EnvelopeJSON)
	}
	switch c.WhenFull {
	case Block, DropOldest:
	default:
		add(".when_full", "%q is not %q or %q", c.WhenFull, Block, DropOldest)
	}
	bounds := []struct {
		path     string
		val, min int64
		max      int64
	}{
		{".max_attempts", int64(c.MaxAttempts), 1, 1 << 30},
		{".batch_size", int64(c.BatchSize), 1, MaxBatchSize},
		{".max_bytes", c.MaxBytes, 1 << 10, 1 << 50},
		{".queue_size", int64(c.QueueSize), 1, 1 << 24},
		{".backoff.initial", int64(c.Backoff.Initial), int64(time.Millisecond), int64(time.Hour)},
		{".backoff.max", int64(c.Backoff.Max), int64(c.Backoff.Initial), int64(24 * time.Hour)},
		{".max_age", int64(c.MaxAge), 0, 1 << 62},
	}
	for _, b := range bounds {
		if b.val < b.min {
			add(b.path, "%d is less than allowed %d", b.val, b.min)
		} else if b.val > b.max {
			add(b.path, "%d is more than allowed %d", b.val, b.max)
		}
	}
	return errors.Join(errs...)
}
