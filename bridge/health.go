package bridge

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MaxProbeInterval caps the wait between two probes of a route that is
// down, whatever backoff.max says: probes are cheap, and a long cap would
// keep the backlog waiting long after the backend is back.
const MaxProbeInterval = 5 * time.Second

// RouteState is a route's backend state, as States reports it.
type RouteState struct {
	// Route and Connector name the route and its backend's connector.
	Route, Connector string
	// Up is false while the route holds its messages because the backend
	// is unavailable.
	Up bool
	// Since is when the route went down (zero when up).
	Since time.Time
	// Reason is the last error that said the backend is unavailable
	// (empty when up).
	Reason string
}

// String is "up" or "down since <RFC 3339>: <reason>".
func (s RouteState) String() string {
	if s.Up {
		return "up"
	}
	return "down since " + s.Since.UTC().Format(time.RFC3339) + ": " + s.Reason
}

// health is a route's backend state. Lanes of a per-key route share it:
// the first lane to see the backend go down logs it, the first success
// brings it back.
type health struct {
	// troubled is down || catching: lets a success skip the lock.
	troubled atomic.Bool

	mu     sync.Mutex
	down   bool
	since  time.Time // down: when it went down
	reason string    // down: the last unavailable error
	probes int       // down: waits so far, for the probe backoff

	// catching: back, and the line saying so waits until the backlog held
	// at that moment is delivered (or the route goes down again).
	catching  bool
	backAfter time.Duration
	target    int64 // messages held when the backend came back
	delivered int64 // delivered since it came back
}

// State returns the route's state.
func (h *health) state() (up bool, since time.Time, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down, h.since, h.reason
}

// States returns every route's backend state, in configuration order.
func (b *Bridge) States() []RouteState {
	out := make([]RouteState, 0, len(b.routes))
	for _, r := range b.routes {
		up, since, reason := r.health.state()
		out = append(out, RouteState{Route: r.name, Connector: r.conn.Name(), Up: up, Since: since, Reason: reason})
	}
	return out
}

// held is how many messages the route holds undelivered.
func (b *Bridge) held(r *route) int64 {
	switch {
	case r.durable:
		return b.outbox.Usage(r.name).Messages
	case r.queue != nil:
		return int64(len(r.queue))
	}
	return 0
}

// markDown records that the backend is unavailable because of cause. Only
// the transition from up is logged (once, at warn, with what the route
// holds); while down only the reason is updated.
func (b *Bridge) markDown(r *route, cause error) {
	h := &r.health
	h.mu.Lock()
	if h.down {
		h.reason = cause.Error()
		h.mu.Unlock()
		return
	}
	backLine := h.catching
	backAfter, delivered := h.backAfter, h.delivered
	h.down, h.since, h.reason, h.probes, h.catching = true, time.Now(), cause.Error(), 0, false
	h.troubled.Store(true)
	h.mu.Unlock()
	r.met.outages.Inc()
	if backLine {
		b.logBack(r, backAfter, delivered)
	}
	if r.cfg.Direction == In {
		b.log.Warn(fmt.Sprintf("route %s: %s unavailable (%v); receiving again once it is back", r.name, r.conn.Name(), cause),
			"route", r.name, "connector", r.conn.Name())
		return
	}
	held := b.held(r)
	b.log.Warn(fmt.Sprintf("route %s: %s unavailable (%v); holding %s messages", r.name, r.conn.Name(), cause, thousands(held)),
		"route", r.name, "connector", r.conn.Name(), "held", held)
}

// markUp records n messages delivered (or, for an ingress route, a
// successful probe). The first one after an outage brings the route up;
// the line saying so is logged once the backlog held at that moment is
// out, with the count delivered since, so one line tells how the outage
// ended.
func (b *Bridge) markUp(r *route, n int) {
	h := &r.health
	if !h.troubled.Load() {
		return
	}
	held := b.held(r)
	h.mu.Lock()
	if h.down {
		h.down, h.reason, h.probes = false, "", 0
		h.backAfter = time.Since(h.since)
		h.since = time.Time{}
		h.catching, h.target, h.delivered = true, held+int64(n), 0
	}
	if !h.catching {
		h.mu.Unlock()
		return
	}
	h.delivered += int64(n)
	done := h.delivered >= h.target || held == 0
	backAfter, delivered := h.backAfter, h.delivered
	if done {
		h.catching = false
		h.troubled.Store(false)
	}
	h.mu.Unlock()
	if done {
		b.logBack(r, backAfter, delivered)
	}
}

func (b *Bridge) logBack(r *route, after time.Duration, delivered int64) {
	msg := fmt.Sprintf("route %s: %s back after %s", r.name, r.conn.Name(), roundDuration(after))
	if r.cfg.Direction == Out {
		msg += "; delivered " + thousands(delivered)
	}
	b.log.Info(msg, "route", r.name, "connector", r.conn.Name(), "down_seconds", after.Seconds())
}

// outage holds a route whose backend is unavailable (cause): it marks the
// route down and waits, with the route's backoff capped at
// MaxProbeInterval, until the backend answers a probe (connectors without
// a Prober: one wait, the next delivery being the probe). It returns
// false when the bridge stops first.
func (b *Bridge) outage(ctx context.Context, r *route, cause error) bool {
	b.markDown(r, cause)
	p, _ := r.conn.(Prober)
	for {
		r.health.mu.Lock()
		r.health.probes++
		n := r.health.probes
		r.health.mu.Unlock()
		if !b.wait(ctx, probeDelay(r.cfg.Backoff, n)) {
			return false
		}
		if p == nil {
			return true
		}
		err := p.Probe(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		b.log.Debug("bridge: probe failed", "route", r.name, "attempt", n, "err", err)
		b.markDown(r, err)
	}
}

// backendUp says, after a delivery error of unknown kind, whether the
// backend is up, so that the failure is the message's: a Prober is asked;
// without one the route counts as up unless it is down.
func (b *Bridge) backendUp(ctx context.Context, r *route) (bool, error) {
	if p, ok := r.conn.(Prober); ok {
		err := p.Probe(ctx)
		return err == nil, err
	}
	up, _, _ := r.health.state()
	return up, nil
}

// probeDelay is the wait before probe n of a down route.
func probeDelay(c Backoff, n int) time.Duration {
	c.Max = min(c.Max, MaxProbeInterval)
	c.Initial = min(c.Initial, c.Max)
	return backoff(c, n)
}

// roundDuration rounds d for a log line: seconds, or milliseconds under a
// second.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

// thousands formats n with commas between groups of three digits.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3+1)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
