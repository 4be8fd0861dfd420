package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Route states, as Status reports them.
const (
	// StateConnected: the backend takes messages.
	StateConnected = "connected"
	// StateBackingOff: the backend is up but refused the last delivery;
	// the route waits before it retries (backoff).
	StateBackingOff = "backing_off"
	// StateFailing: the backend is unavailable; the route holds its
	// messages and probes the backend until it is back.
	StateFailing = "failing"
	// StatePaused: an operator paused the route (Pause).
	StatePaused = "paused"
)

// RouteStatus is one route's state and counters, for operators.
type RouteStatus struct {
	Route     string
	Direction Direction
	Connector string
	// State is StateConnected, StateBackingOff, StateFailing or
	// StatePaused; Reason says why when it is not connected, and Since
	// when it became so (zero when connected or unknown).
	State  string
	Reason string
	Since  time.Time
	// Delivered, Failed and Dead count messages acked by the backend,
	// failed delivery attempts and messages dead-lettered since start.
	Delivered, Failed, Dead uint64
	// LagMessages is how many messages the route holds undelivered;
	// LagSeconds the age of the oldest (at-least-once routes only);
	// OutboxBytes their size in the outbox (at-least-once routes only).
	LagMessages int64
	LagSeconds  float64
	OutboxBytes int64
}

// pauseState is a route's operator pause. Workers check it between batches:
// the batch in hand finishes first.
type pauseState struct {
	since  time.Time // guarded by the route's health.mu
	resume chan struct{}
	// stopRecv stops the running receiver of an ingress route; guarded
	// by the route's health.mu.
	stopRecv context.CancelFunc
}

// Status reports every route's state, in configuration order.
func (b *Bridge) Status() []RouteStatus {
	out := make([]RouteStatus, 0, len(b.routes))
	now := time.Now()
	for _, r := range b.routes {
		up, since, reason := r.health.state()
		s := RouteStatus{Route: r.name, Direction: r.cfg.Direction, Connector: r.conn.Name(), State: StateConnected,
			Delivered: counterValue(r.met.delivered), Failed: counterValue(r.met.failed), Dead: counterValue(r.met.deadLettered)}
		switch {
		case r.paused.Load():
			r.health.mu.Lock()
			s.State, s.Reason, s.Since = StatePaused, "paused by an operator", r.pause.since
			r.health.mu.Unlock()
		case !up:
			s.State, s.Reason, s.Since = StateFailing, reason, since
		case r.retrying.Load() != nil:
			s.State, s.Reason = StateBackingOff, *r.retrying.Load()
		}
		switch {
		case r.durable:
			u := b.outbox.Usage(r.name)
			s.LagMessages, s.OutboxBytes = u.Messages, u.Bytes
			if t, err := b.outbox.Oldest(r.name); err == nil && !t.IsZero() {
				s.LagSeconds = now.Sub(t).Seconds()
			}
		case r.queue != nil:
			s.LagMessages = int64(len(r.queue))
		}
		out = append(out, s)
	}
	return out
}

// Pause stops the route name. An egress route stops delivering after the
// batch in hand: an at-least-once route keeps what arrives in its outbox
// (bounded by its max_bytes and when_full policy), an at-most-once route in
// its queue, which drops its oldest messages once full. An ingress route
// stops its receiver: what the source publishes meanwhile waits there if
// the source keeps it (a JetStream consumer, a RabbitMQ queue, a Redis
// stream, a Kafka group), and is missed if it does not (a plain NATS
// subject, Redis pub/sub). The pause lasts until Resume or the broker
// stops; it is not stored. Pausing a paused route does nothing.
func (b *Bridge) Pause(name string) error {
	r, err := b.routeNamed(name)
	if err != nil {
		return err
	}
	r.health.mu.Lock()
	if !r.paused.Load() {
		r.pause.since = time.Now()
		r.paused.Store(true)
		if r.pause.stopRecv != nil {
			r.pause.stopRecv()
		}
		b.log.Info(fmt.Sprintf("route %s paused by an operator", r.name), "route", r.name)
	}
	r.health.mu.Unlock()
	return nil
}

// Resume lets a paused route deliver again, starting with what it held.
// Resuming a route that is not paused does nothing.
func (b *Bridge) Resume(name string) error {
	r, err := b.routeNamed(name)
	if err != nil {
		return err
	}
	r.health.mu.Lock()
	was := r.paused.Swap(false)
	r.pause.since = time.Time{}
	r.health.mu.Unlock()
	if was {
		b.log.Info(fmt.Sprintf("route %s resumed by an operator", r.name), "route", r.name)
		select {
		case r.pause.resume <- struct{}{}:
		default:
		}
	}
	return nil
}

func (b *Bridge) routeNamed(name string) (*route, error) {
	r := b.byName[name]
	if r == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRoute, name)
	}
	return r, nil
}

// receiving records stop as the way to stop r's receiver (nil: none runs);
// false, recording nothing, when r is paused.
func (r *route) receiving(stop context.CancelFunc) bool {
	r.health.mu.Lock()
	defer r.health.mu.Unlock()
	if stop != nil && r.paused.Load() {
		return false
	}
	r.pause.stopRecv = stop
	return true
}

// whilePaused waits while r is paused; false when the bridge stops first.
func (b *Bridge) whilePaused(r *route) bool {
	for r.paused.Load() {
		select {
		case <-r.pause.resume:
		case <-b.quit:
			return false
		}
	}
	return true
}

// counterValue reads a counter's value: the Prometheus counters are the
// only count kept, so the hot path counts once.
func counterValue(c prometheus.Counter) uint64 {
	if c == nil {
		return 0
	}
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return uint64(m.Counter.GetValue())
}
