package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Bridge runs the configured routes: it matches publishes against the
// egress routes (Offer), keeps their outbox or memory queue, runs one
// worker per route, and runs the ingress routes' receivers.
type Bridge struct {
	routes []*route
	byName map[string]*route
	trie   trie
	outbox Outbox
	pub    Publisher
	log    *slog.Logger
	met    *metrics

	closed  atomic.Bool
	started atomic.Bool
	quit    chan struct{} // closed by Close: stop taking new work
	stop    context.CancelFunc
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// route is one configured route with its runtime state.
type route struct {
	cfg     RouteConfig
	name    string
	durable bool // egress at-least-once: through the outbox
	conn    Connector
	key     *Template // per-key ordering
	topic   *Template // ingress MQTT topic
	notify  chan struct{}
	queue   chan Message // egress at-most-once
	size    int
	linger  time.Duration
	met     routeMetrics
	health  health

	// paused is set by Pause; workers wait between batches while it is
	// (status.go). retrying holds the last delivery error while the worker
	// backs off before a retry, nil otherwise.
	paused   atomic.Bool
	pause    pauseState
	retrying atomic.Pointer[string]
}

// New validates routes, builds their connectors through deps.Factories and
// allocates the route table. It does no I/O and starts nothing. The error
// joins one *FieldError per problem, paths relative to the bridges list.
func New(routes []RouteConfig, deps Deps) (*Bridge, error) {
	b, err := build(routes, deps)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i, r := range b.routes {
		p := fmt.Sprintf("[%d]", i)
		if r.durable && deps.Outbox == nil {
			errs = append(errs, withRoute(r.name, fieldErr(p+".delivery", "at-least-once needs an outbox")))
		}
		if r.cfg.Direction == In && deps.Publisher == nil {
			errs = append(errs, withRoute(r.name, fieldErr(p+".direction", "ingress route needs a Publisher")))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	met, err := newMetrics(b, deps)
	if err != nil {
		return nil, fmt.Errorf("bridge: metrics: %w", err)
	}
	b.met = met
	return b, nil
}

// ValidateWith is Validate plus each connector's own section, checked by
// building (not starting) the connector through factories: what `ferry
// check` needs. No I/O beyond what factories do (a webhook secret_file is
// read).
func (rs Routes) ValidateWith(factories map[string]Factory) error {
	_, err := build(rs, Deps{Factories: factories})
	return err
}

// build validates routes and builds the route table and connectors.
func build(routes []RouteConfig, deps Deps) (*Bridge, error) {
	// Every problem is reported in one pass: a route's own errors do not
	// hide its connector section's, nor another route's.
	var errs []error
	if err := Routes(routes).Validate(); err != nil {
		errs = append(errs, err)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bridge{
		byName: map[string]*route{},
		outbox: deps.Outbox,
		pub:    deps.Publisher,
		log:    log,
		quit:   make(chan struct{}),
	}
	for i, rc := range routes {
		rc = rc.WithDefaults()
		p := fmt.Sprintf("[%d]", i)
		invalid := rc.validate(p) != nil // reported above; only its connector section is checked
		r := &route{
			cfg:     rc,
			name:    rc.Name,
			durable: rc.Direction == Out && rc.Delivery == AtLeastOnce,
			notify:  make(chan struct{}, 1),
			size:    rc.BatchSize,
			pause:   pauseState{resume: make(chan struct{}, 1)},
		}
		if rc.Key != "" {
			r.key, _ = ParseTemplate(rc.Key) // checked by Validate
		}
		ep, epPath := rc.To, p+".to."+rc.To.Connector
		if rc.Direction == In {
			ep, epPath = rc.From, p+".from."+rc.From.Connector
			r.topic, _ = ParseTemplate(rc.To.Topic)
		}
		if rc.Direction == Out && rc.Delivery == AtMostOnce {
			r.queue = make(chan Message, rc.QueueSize)
		}
		f := deps.Factories[ep.Connector]
		if f == nil {
			if ep.Connector != "" { // a missing section is one of Validate's errors
				errs = append(errs, fieldErr(epPath, "unknown connector %q", ep.Connector))
			}
			continue
		}
		cdeps := deps
		cdeps.Logger = log.With("route", rc.Name, "connector", ep.Connector)
		c, err := f(Spec{Route: rc.Name, Direction: rc.Direction, Payload: rc.Payload, node: ep.spec}, cdeps)
		if err != nil {
			errs = append(errs, withRoute(rc.Name, PrefixErrors(epPath, err)))
			continue
		}
		if _, ok := c.(Receiver); rc.Direction == In && !ok {
			errs = append(errs, fieldErr(epPath, "connector %q cannot be an ingress source", ep.Connector))
			continue
		}
		if invalid {
			continue
		}
		r.conn = c
		if bh, ok := c.(Batcher); ok {
			if s, l := bh.BatchHint(); s > 0 {
				r.size, r.linger = s, l
			}
		}
		b.routes = append(b.routes, r)
		b.byName[r.name] = r
		if rc.Direction == Out {
			for _, f := range rc.From.Filters {
				b.trie.add(f, r)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return b, nil
}

// Start starts every connector (in route order; if one fails, those already
// started are closed in reverse and the error names the route), then one
// worker per route. It returns once the workers run. ctx bounds the start
// only; the workers live until Close.
func (b *Bridge) Start(ctx context.Context) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("bridge: already started")
	}
	for i, r := range b.routes {
		if err := r.conn.Start(ctx); err != nil {
			var errs []error
			for j := i; j >= 0; j-- {
				errs = append(errs, b.routes[j].conn.Close(ctx))
			}
			return errors.Join(fmt.Errorf("bridge: route %s: start %s: %w", r.name, r.conn.Name(), err), errors.Join(errs...))
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	for _, r := range b.routes {
		if r.durable {
			b.outbox.Usage(r.name) // loads the route's counters before the first Offer needs them
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			switch {
			case r.cfg.Direction == In:
				b.runIngress(runCtx, r)
			case r.durable:
				b.runDurable(runCtx, r)
			default:
				b.runMemory(runCtx, r)
			}
		}()
	}
	return nil
}

// Close stops taking publishes (Offer returns ErrClosed), lets the workers
// finish the batch in hand until ctx ends (then cancels their delivery),
// waits for them, and closes the connectors with ctx. What is still in an
// outbox stays there for the next Start; what is in an at-most-once queue is
// delivered until ctx ends, the rest is lost. The outbox is not closed: its
// owner closes it after Close. Close is safe to call twice.
func (b *Bridge) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.quit)
		if !b.started.Load() || b.stop == nil { // never started, or Start failed
			return
		}
		done := make(chan struct{})
		go func() { b.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			b.stop()
			<-done
		}
		b.stop()
		var errs []error
		for i := len(b.routes) - 1; i >= 0; i-- {
			r := b.routes[i]
			if err := r.conn.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("bridge: route %s: close %s: %w", r.name, r.conn.Name(), err))
			}
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// Offer hands one MQTT publish to every egress route whose filters match
// msg.Topic. It is called on the publishing client's goroutine before the
// PUBACK (a mochi OnPublish hook). A topic that matches no route costs a
// trie walk and no allocation. For at-least-once routes Offer returns once
// the message is in the outbox, as durable as the outbox's sync mode makes
// it: it blocks only for that append, whose fsync it shares with concurrent
// Offers (group commit). At-most-once routes never block: a full queue
// drops its oldest message (counted).
//
// ErrOutboxFull means a route with when_full "block" is full; the message
// was then given to no route. msg's slices are not retained after Offer
// returns. The caller's msg.Route, Seq, ID and Created are ignored.
func (b *Bridge) Offer(msg Message) error {
	p, err := b.OfferAsync(msg)
	if err != nil {
		return err
	}
	return p.Wait()
}

// noWait is OfferAsync's Pending when nothing was written.
type noWait struct{}

func (noWait) Wait() error { return nil }
func (noWait) Ready() bool { return true }

// OfferAsync is Offer with the wait for the outbox's commit left to the
// returned Pending, whose Wait must be called once: the broker reads the
// publisher's next packet meanwhile and holds only its PUBACK until the
// message is durable. Refusals (ErrOutboxFull) and queueing errors are
// returned at once.
func (b *Bridge) OfferAsync(msg Message) (Pending, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	var buf [8]*route
	rs := b.trie.match(msg.Topic, buf[:0])
	if len(rs) == 0 {
		return noWait{}, nil
	}
	size := int64(msg.Size() + 64) // 64: a record's fixed overhead, roughly
	durable := 0
	for _, r := range rs {
		if !r.durable {
			continue
		}
		durable++
		if r.cfg.WhenFull == Block && b.outbox.Usage(r.name).Bytes+size > r.cfg.MaxBytes {
			r.met.refused.Inc()
			return nil, ErrOutboxFull
		}
	}
	now := time.Now()
	var msgs []Message
	var notify []*route
	if durable > 0 {
		msgs = make([]Message, 0, durable)
		notify = make([]*route, 0, durable)
	}
	for _, r := range rs {
		m := msg
		m.Route, m.Seq, m.ID, m.Created = r.name, 0, "", now
		if !r.durable {
			r.enqueue(m.clone())
			continue
		}
		if over := b.outbox.Usage(r.name).Bytes + size - r.cfg.MaxBytes; over > 0 {
			n, err := b.outbox.DropOldest(context.Background(), r.name, over)
			if err != nil {
				return nil, fmt.Errorf("bridge: route %s: drop oldest: %w", r.name, err)
			}
			r.met.dropFull.Add(float64(n))
		}
		msgs = append(msgs, m)
		notify = append(notify, r)
	}
	if len(msgs) == 0 {
		return noWait{}, nil
	}
	appended, err := b.outbox.AppendAsync(context.Background(), msgs)
	if err != nil {
		return nil, fmt.Errorf("bridge: append: %w", err)
	}
	return &offerWait{p: appended, notify: notify}, nil
}

// offerWait is OfferAsync's Pending: the outbox's, then waking the routes'
// workers (before the commit they would find nothing new).
type offerWait struct {
	p      Pending
	notify []*route
}

func (w *offerWait) Ready() bool { return w.p.Ready() }

func (w *offerWait) Wait() error {
	if err := w.p.Wait(); err != nil {
		return fmt.Errorf("bridge: append: %w", err)
	}
	for _, r := range w.notify {
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
	return nil
}

// enqueue puts m on an at-most-once route's queue, dropping the oldest
// queued message when it is full.
func (r *route) enqueue(m Message) {
	for {
		select {
		case r.queue <- m:
			return
		default:
		}
		select {
		case <-r.queue:
			r.met.dropFull.Inc()
		default:
		}
	}
}

// DeadLetters lists up to limit dead letters of route with Seq > after, in
// seq order.
func (b *Bridge) DeadLetters(route string, after uint64, limit int) ([]DeadLetter, error) {
	if _, err := b.durableRoute(route); err != nil {
		return nil, err
	}
	return b.outbox.DeadLetters(route, after, limit)
}

// Replay moves the dead letters of route with the given seqs (all when seqs
// is nil) back into its outbox, to be delivered after what is queued, with
// their original IDs. It reports how many it moved.
func (b *Bridge) Replay(ctx context.Context, route string, seqs []uint64) (int, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	r, err := b.durableRoute(route)
	if err != nil {
		return 0, err
	}
	n, err := b.outbox.Replay(ctx, route, seqs)
	if n > 0 {
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
	return n, err
}

// PurgeDeadLetters deletes the dead letters of route with the given seqs
// (all when seqs is nil) and reports how many it deleted.
func (b *Bridge) PurgeDeadLetters(ctx context.Context, route string, seqs []uint64) (int, error) {
	if _, err := b.durableRoute(route); err != nil {
		return 0, err
	}
	return b.outbox.DeleteDeadLetters(ctx, route, seqs)
}

func (b *Bridge) durableRoute(name string) (*route, error) {
	r := b.byName[name]
	if r == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRoute, name)
	}
	if !r.durable {
		return nil, fmt.Errorf("%w: %s", ErrNoDeadLetters, name)
	}
	return r, nil
}
