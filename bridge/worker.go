package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// pollInterval is how often an idle durable worker looks at its outbox even
// without a notification (a replay or an append by another process would
// otherwise wait for the next Offer).
const pollInterval = time.Second

// runDurable delivers the route's outbox in seq order until quit.
func (b *Bridge) runDurable(ctx context.Context, r *route) {
	var after uint64
	var ln *lanes
	if r.key != nil {
		ln = b.startLanes(ctx, r)
		defer ln.stop()
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-b.quit:
			return
		default:
		}
		if !b.whilePaused(r) {
			return
		}
		batch, err := b.outbox.Read(r.name, after, r.size)
		if err != nil {
			b.log.Error("bridge: read outbox", "route", r.name, "err", err)
			if !b.wait(ctx, r.cfg.Backoff.Max) {
				return
			}
			continue
		}
		if len(batch) == 0 {
			select {
			case <-r.notify:
			case <-tick.C:
			case <-b.quit:
				return
			}
			continue
		}
		if len(batch) < r.size && r.linger > 0 {
			if !b.wait(ctx, r.linger) {
				return
			}
			if more, err := b.outbox.Read(r.name, batch[len(batch)-1].Seq, r.size-len(batch)); err == nil {
				batch = append(batch, more...)
			}
		}
		last := batch[len(batch)-1].Seq
		batch = b.expire(ctx, r, batch)
		switch {
		case len(batch) == 0:
		case ln != nil:
			if !ln.submit(b, r, batch) {
				return
			}
		case !b.deliverInOrder(ctx, r, batch):
			return
		}
		after = last
	}
}

// expire deletes (counted, reason "expired") the messages older than the
// route's max_age and returns the others.
func (b *Bridge) expire(ctx context.Context, r *route, batch []Message) []Message {
	if r.cfg.MaxAge <= 0 {
		return batch
	}
	cut := time.Now().Add(-r.cfg.MaxAge)
	live := batch[:0]
	var old []uint64
	for _, m := range batch {
		if m.Created.Before(cut) {
			old = append(old, m.Seq)
			continue
		}
		live = append(live, m)
	}
	if len(old) > 0 {
		if err := b.outbox.Delete(ctx, r.name, old); err != nil {
			b.log.Error("bridge: delete expired", "route", r.name, "err", err)
		}
		r.met.dropExpired.Add(float64(len(old)))
	}
	return live
}

// runMemory delivers an at-most-once route's queue until quit, then what is
// still queued until ctx ends.
func (b *Bridge) runMemory(ctx context.Context, r *route) {
	var ln *lanes
	if r.key != nil {
		ln = b.startLanes(ctx, r)
		defer ln.stop()
	}
	for {
		batch := make([]Message, 0, r.size)
		select {
		case m := <-r.queue:
			batch = append(batch, m)
		case <-b.quit:
			// Drain: deliver what is queued, without retries, until ctx ends.
			for {
				select {
				case m := <-r.queue:
					if ctx.Err() != nil {
						r.met.dropShutdown.Inc()
						continue
					}
					if err := r.conn.Deliver(ctx, []Message{m}); err != nil {
						r.met.dropShutdown.Inc()
						continue
					}
					r.delivered(m)
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < r.size {
			select {
			case m := <-r.queue:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if !b.whilePaused(r) {
			// Stopping while paused: what is held is lost, as at-most-once
			// allows; counted.
			r.met.dropShutdown.Add(float64(len(batch) + len(r.queue)))
			return
		}
		if ln != nil {
			if !ln.submit(b, r, batch) {
				r.met.dropShutdown.Add(float64(len(batch)))
				return
			}
			continue
		}
		if !b.deliverInOrder(ctx, r, batch) {
			r.met.dropShutdown.Add(float64(len(batch)))
			return
		}
	}
}

// KeyLanes is how many keys a per-key route delivers in parallel: keys are
// hashed onto this many lanes, each delivering its messages in order.
const KeyLanes = 16

// laneDepth is how many batches a lane holds before the dispatcher waits
// for it: a stuck key holds back the others only once its lane is full.
const laneDepth = 8

// lanes delivers a per-key route's messages: one goroutine per lane, each in
// order; the dispatcher (the route worker) owns and stops them.
type lanes struct {
	chans []chan []Message
	wg    sync.WaitGroup
}

func (b *Bridge) startLanes(ctx context.Context, r *route) *lanes {
	l := &lanes{chans: make([]chan []Message, KeyLanes)}
	for i := range l.chans {
		ch := make(chan []Message, laneDepth)
		l.chans[i] = ch
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for batch := range ch {
				select {
				case <-b.quit:
					continue // stopping: leave it in the outbox
				default:
				}
				if !b.deliverInOrder(ctx, r, batch) && !r.durable {
					r.met.dropShutdown.Add(float64(len(batch)))
				}
			}
		}()
	}
	return l
}

// submit splits batch by key onto the lanes, keeping each key's order. It
// returns false when the bridge stops first.
func (l *lanes) submit(b *Bridge, r *route, batch []Message) bool {
	parts := make([][]Message, len(l.chans))
	for i := range batch {
		k, err := r.key.Execute(&batch[i])
		if err != nil {
			k = "" // messages without a key share one lane, in order
		}
		h := uint32(2166136261) // FNV-1a
		for j := 0; j < len(k); j++ {
			h = (h ^ uint32(k[j])) * 16777619
		}
		n := h % uint32(len(l.chans))
		parts[n] = append(parts[n], batch[i])
	}
	for i, p := range parts {
		if len(p) == 0 {
			continue
		}
		select {
		case l.chans[i] <- p:
		case <-b.quit:
			return false
		}
	}
	return true
}

// stop closes the lanes and waits for them.
func (l *lanes) stop() {
	for _, ch := range l.chans {
		close(ch)
	}
	l.wg.Wait()
}

// deliverInOrder delivers msgs with retries until the backend acks them,
// a permanent refusal or max_attempts failures while the backend is up
// dead-letter them, or the bridge stops. An unavailable backend (KindOf)
// takes the route down: the messages are held, the backend probed, and no
// attempt is counted, however long that lasts.
func (b *Bridge) deliverInOrder(ctx context.Context, r *route, msgs []Message) bool {
	attempt := 0 // failures counted against max_attempts
	for {
		err := r.conn.Deliver(ctx, msgs)
		if err == nil {
			b.acked(ctx, r, msgs)
			b.markUp(r, len(msgs))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		r.met.failed.Inc()
		kind := KindOf(err)
		if kind == KindUnknown {
			// Whose fault: the backend's (down) or these messages'?
			up, perr := b.backendUp(ctx, r)
			if ctx.Err() != nil {
				return false
			}
			if !up {
				kind = KindUnavailable
				if perr != nil {
					err = fmt.Errorf("%w (probe: %v)", err, perr)
				}
			}
		}
		switch kind {
		case KindUnavailable:
			if !b.outage(ctx, r, err) {
				return false
			}
			r.met.retried.Inc()
			continue
		case KindPermanent:
			if len(msgs) > 1 {
				return b.deliverEach(ctx, r, msgs)
			}
			b.giveUp(ctx, r, msgs, err, attempt+1)
			return true
		}
		attempt++
		if attempt >= r.cfg.MaxAttempts {
			if len(msgs) > 1 {
				return b.deliverEach(ctx, r, msgs)
			}
			b.giveUp(ctx, r, msgs, err, attempt)
			return true
		}
		b.log.Debug("bridge: delivery failed while the backend is up, will retry", "route", r.name, "seq", msgs[0].Seq, "attempt", attempt, "err", err)
		r.met.retried.Inc()
		why := err.Error()
		r.retrying.Store(&why)
		ok := b.wait(ctx, backoff(r.cfg.Backoff, attempt))
		r.retrying.Store(nil)
		if !ok {
			return false
		}
	}
}

// deliverEach delivers a batch the backend refused (permanently, or up to
// max_attempts while it was up) one message at a time, each with its own
// attempts, so that only the messages at fault are dead-lettered.
func (b *Bridge) deliverEach(ctx context.Context, r *route, msgs []Message) bool {
	for i := range msgs {
		if !b.deliverInOrder(ctx, r, msgs[i:i+1]) {
			return false
		}
	}
	return true
}

// acked records a successful delivery and deletes durable messages.
func (b *Bridge) acked(ctx context.Context, r *route, msgs []Message) {
	for i := range msgs {
		r.delivered(msgs[i])
	}
	if !r.durable {
		return
	}
	seqs := make([]uint64, len(msgs))
	for i := range msgs {
		seqs[i] = msgs[i].Seq
	}
	// A failed delete means a redelivery after restart, which the stable
	// id lets the backend discard.
	if err := b.outbox.Delete(context.WithoutCancel(ctx), r.name, seqs); err != nil {
		b.log.Error("bridge: delete delivered", "route", r.name, "seq", seqs[0], "err", err)
	}
}

func (r *route) delivered(m Message) {
	r.met.delivered.Inc()
	if !m.Created.IsZero() {
		r.met.latency.Observe(time.Since(m.Created).Seconds())
	}
}

// giveUp dead-letters (durable) or drops (at-most-once) msgs.
func (b *Bridge) giveUp(ctx context.Context, r *route, msgs []Message, cause error, attempts int) {
	b.log.Error("bridge: giving up on messages", "route", r.name, "seq", msgs[0].Seq, "attempt", attempts, "err", cause)
	if !r.durable {
		r.met.dropFailed.Add(float64(len(msgs)))
		return
	}
	now := time.Now()
	dead := make([]DeadLetter, len(msgs))
	for i, m := range msgs {
		dead[i] = DeadLetter{Message: m, Reason: cause.Error(), Attempts: attempts, Failed: now}
	}
	if err := b.outbox.DeadLetter(context.WithoutCancel(ctx), r.name, dead); err != nil {
		b.log.Error("bridge: dead-letter", "route", r.name, "seq", msgs[0].Seq, "err", err)
		return
	}
	r.met.deadLettered.Add(float64(len(msgs)))
}

// wait sleeps d; false if the bridge stops first.
func (b *Bridge) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.quit:
		return false
	case <-ctx.Done():
		return false
	}
}

// backoff is the delay before retry attempt+1: exponential from Initial,
// capped at Max, with jitter in [d/2, d] so that routes failing together do
// not retry together.
func backoff(c Backoff, attempt int) time.Duration {
	d := c.Initial
	for i := 1; i < attempt && d < c.Max; i++ {
		d *= 2
	}
	d = min(d, c.Max)
	return d/2 + rand.N(d/2+1)
}

// runIngress runs the route's receiver until quit, restarting it with
// backoff when it fails.
func (b *Bridge) runIngress(ctx context.Context, r *route) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		// Turns quit into ctx's cancellation for the receiver.
		defer wg.Done()
		select {
		case <-b.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	recv := r.conn.(Receiver)
	h := func(ctx context.Context, m Message) error { return b.ingest(ctx, r, m) }
	fails := 0 // consecutive stops that were not an outage
	for {
		if !b.whilePaused(r) {
			return
		}
		// Pause stops this receiver through rctx (status.go).
		rctx, stop := context.WithCancel(ctx)
		if !r.receiving(stop) {
			stop()
			continue
		}
		// After an outage the route is back once the receiver has run for
		// receiverSettle or handed over a message (ingest): a receiver
		// failing at once again leaves it down, without a line per retry.
		var settled *time.Timer
		if r.health.troubled.Load() {
			settled = time.AfterFunc(receiverSettle, func() { b.markUp(r, 0) })
		}
		started := time.Now()
		err := recv.Receive(rctx, h)
		r.receiving(nil)
		stop()
		if settled != nil {
			settled.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		if r.paused.Load() {
			continue // stopped by Pause: not a failure
		}
		if err == nil {
			err = errors.New("bridge: receiver returned")
		}
		if KindOf(err) == KindUnavailable {
			// A source that goes away is waited for, never given up on:
			// the route is down, and Receive runs again once a probe
			// succeeds.
			if !b.outage(ctx, r, err) {
				return
			}
			continue
		}
		// The source is there but the receiver stopped (a message the
		// broker refused, an error of unknown kind): run it again after
		// the backoff. The first stop of a series is logged.
		if time.Since(started) >= receiverSettle {
			fails = 0
		}
		fails++
		lv := slog.LevelDebug
		if fails == 1 {
			lv = slog.LevelWarn
		}
		b.log.Log(ctx, lv, "bridge: receiver stopped, restarting", "route", r.name, "attempt", fails, "err", err)
		if !b.wait(ctx, backoff(r.cfg.Backoff, fails)) {
			return
		}
	}
}

// receiverSettle is how long a restarted receiver must run before its
// route counts as back.
const receiverSettle = time.Second

// ingest publishes one backend message into the broker.
func (b *Bridge) ingest(ctx context.Context, r *route, m Message) error {
	m.Route = r.name
	if m.Created.IsZero() {
		m.Created = time.Now()
	}
	topic, err := r.topic.Execute(&m)
	if err != nil {
		r.met.failed.Inc()
		return Permanent(err)
	}
	if !validTopic(topic) {
		r.met.failed.Inc()
		return Permanent(errors.New("bridge: rendered topic " + topic + " is not a valid MQTT topic"))
	}
	m.Topic, m.QoS, m.Retain = topic, r.cfg.To.QoS, r.cfg.To.Retain
	if m.ID != "" {
		m.UserProperties = append(m.UserProperties, Property{Key: IDProperty, Value: m.ID})
	}
	if err := b.pub.Publish(ctx, m); err != nil {
		r.met.failed.Inc()
		return err
	}
	r.delivered(m)
	b.markUp(r, 1)
	return nil
}

// IDProperty is the MQTT user property carrying a bridged message's
// stable id.
const IDProperty = "ferry-bridge-id"
