package bridge

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// Connector delivers outbox batches to one backend; Deliver is called
// concurrently by route workers (with ordering per-key, by several workers
// of one route).
type Connector interface {
	Name() string // config key, e.g. "nats"
	// Start connects; returns when ready or with ctx's error.
	Start(ctx context.Context) error
	// Deliver returns nil only after the backend acked every message, in
	// order. Wrap failures that retrying cannot fix with Permanent.
	Deliver(ctx context.Context, batch []Message) error
	// Close drains until ctx ends; safe twice or after a failed Start.
	Close(ctx context.Context) error
}

// Receiver is implemented by connectors that can be an ingress source.
type Receiver interface {
	// Receive calls h for each backend message, one at a time, until ctx
	// ends, and returns ctx's error or a fatal one. A message is acked on
	// the backend only after h returned nil; when h fails the backend is
	// asked to redeliver where it can (JetStream), else the message is
	// counted as failed. Receive is called once, after Start.
	Receive(ctx context.Context, h Handler) error
}

// Handler accepts one backend message into the broker. It returns nil once
// the broker accepted the message.
type Handler func(ctx context.Context, m Message) error

// Prober is implemented by connectors that can tell whether their backend
// is up without delivering a message. The route worker probes a route that
// is down (with capped backoff) before it sends the held messages again,
// and probes after an error of unknown kind to decide whether it counts
// against max_attempts (the backend is up: the message is at fault) or
// takes the route down. Probe returns nil when the backend answers; its
// error is classified like a delivery's. It is called concurrently with
// Deliver and Receive, after Start.
type Prober interface {
	Probe(ctx context.Context) error
}

// Batcher is implemented by connectors that want batches of a given shape:
// up to size messages, waiting up to linger for a batch to fill.
type Batcher interface {
	BatchHint() (size int, linger time.Duration)
}

// Factory builds an unstarted connector from its config section. No I/O.
// Errors about the section should be *FieldError values with paths relative
// to it ("subject"); the bridge prefixes the route's path.
type Factory func(spec Spec, deps Deps) (Connector, error)

// Spec is what a Factory gets: the route it serves and its config section.
type Spec struct {
	// Route is the route's name.
	Route string
	// Direction is Out when the connector is the route's target (Deliver),
	// In when it is the source (Receive).
	Direction Direction
	// Payload is the route's payload format for egress.
	Payload PayloadFormat

	node *yaml.Node
}

// NewSpec returns a Spec whose section is the YAML document section; for
// tests and programmatic use.
func NewSpec(route string, dir Direction, section string) (Spec, error) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(section), &n); err != nil {
		return Spec{}, fmt.Errorf("bridge: spec: %w", err)
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = *n.Content[0]
	}
	return Spec{Route: route, Direction: dir, node: &n}, nil
}

// Decode decodes the connector's section into v strictly: unknown fields
// are errors.
func (s Spec) Decode(v any) error {
	if s.node == nil || s.node.Kind == 0 {
		return nil
	}
	raw, err := yaml.Marshal(s.node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return err
	}
	return nil
}

// Publisher publishes an ingress message into the broker. The broker
// implements it (mochi's inline client under a configured identity);
// Publish returns nil once the broker accepted the message.
type Publisher interface {
	Publish(ctx context.Context, m Message) error
}

// Deps are the bridge's injected dependencies. Logger and Registerer may
// be nil (logs discarded, metrics not registered). Outbox is needed by
// at-least-once routes, Publisher by ingress routes.
type Deps struct {
	Outbox     Outbox
	Publisher  Publisher
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Factories maps a connector's config key to its Factory.
	Factories map[string]Factory
}

// Log is Logger, or a logger that discards when Logger is nil.
func (d Deps) Log() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}
