package load

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// Run executes one scenario. It returns an error only when the scenario
// could not be set up (bad config, a client failed to connect); failures
// during the run are counted in Result.Errors.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	nonce := rand.Uint32()
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = fmt.Sprintf("bench/%08x", nonce)
	}
	if cfg.ClientPrefix == "" {
		cfg.ClientPrefix = "fb"
	}
	res := Result{
		Scenario: cfg.Scenario, Broker: cfg.Label, Tag: cfg.Tag, Addr: cfg.Addr, SubAddr: cfg.SubAddr, Start: time.Now().UTC(),
		MQTT: "3.1.1", QoS: int(cfg.QoS), Payload: cfg.PayloadSize, Persistent: cfg.Persistent, TLS: cfg.TLS != nil,
	}
	if cfg.Version == mqttc.V5 {
		res.MQTT = "5"
	}
	if pids := cfg.brokerPIDs(); len(pids) > 1 {
		res.BrokerPIDs = pids
	}
	r := newRun(cfg, nonce)
	defer r.closeAll()
	r.keepAlive()
	var err error
	switch cfg.Scenario {
	case Idle:
		res.SubAddr = ""
		err = runIdle(ctx, r, &res)
	case ReqResp:
		err = runReqResp(ctx, r, &res)
	case Storm:
		res.SubAddr = ""
		err = runStorm(ctx, r, &res)
	default:
		err = runPubSub(ctx, r, &res)
	}
	r.closeAll()
	res.ErrorsAll = r.nerrs
	res.Errors = r.errs
	return res, err
}

// topology routes publishers to subscribers.
type topology struct {
	pubTopics  []string
	subFilters []string
	// routes[p] lists the subscribers that receive publisher p.
	routes [][]int
}

func buildTopology(cfg Config) topology {
	var t topology
	base := cfg.TopicPrefix + "/" + cfg.Scenario
	all := make([]int, cfg.Subscribers)
	for i := range all {
		all[i] = i
	}
	for i := range cfg.Publishers {
		t.pubTopics = append(t.pubTopics, fmt.Sprintf("%s/%d", base, i))
		if cfg.Scenario == Pairs {
			t.routes = append(t.routes, []int{i})
		} else {
			t.routes = append(t.routes, all)
		}
	}
	for i := range cfg.Subscribers {
		if cfg.Scenario == Pairs {
			t.subFilters = append(t.subFilters, fmt.Sprintf("%s/%d", base, i))
		} else {
			t.subFilters = append(t.subFilters, base+"/+")
		}
	}
	return t
}

// connectSubscribers connects (to cfg.SubAddr) and subscribes n
// subscribers, starting their read loops.
// setup, when non-nil, configures each subscriber before its loop starts.
func connectSubscribers(ctx context.Context, r *run, filters []string, role string, setup func(*subscriber)) ([]*subscriber, error) {
	subs := make([]*subscriber, len(filters))
	err := parallel(ctx, len(filters), r.cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c, err := r.dial(ctx, r.cfg.SubAddr, r.clientID(role, i))
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.Subscribe(sctx, 1, []mqttc.Subscription{{Filter: filters[i], QoS: r.cfg.QoS}}); err != nil {
			return fmt.Errorf("subscriber %d: %w", i, err)
		}
		subs[i] = &subscriber{r: r, idx: i, conn: c, filter: filters[i]}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, s := range subs {
		if setup != nil {
			setup(s)
		}
		r.goFn(s.read)
	}
	r.flushAcks(subs)
	return subs, nil
}

// connectPublishers connects publishers (to cfg.Addr), starting their
// read loops.
func connectPublishers(ctx context.Context, r *run, topics []string, role string) ([]*publisher, error) {
	pubs := make([]*publisher, len(topics))
	err := parallel(ctx, len(topics), r.cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c, err := r.dial(ctx, r.cfg.Addr, r.clientID(role, i))
		if err != nil {
			return err
		}
		pubs[i] = newPublisher(r, i, c, topics[i])
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, p := range pubs {
		r.goFn(p.read)
	}
	return pubs, nil
}

// progress prints a line every cfg.ProgressEvery until done closes.
func progress(r *run, start time.Time, sent, recv func() int64, done <-chan struct{}) {
	if r.cfg.Progress == nil {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		var lastS, lastR int64
		last := start
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				s, rc := sent(), recv()
				dt := now.Sub(last).Seconds()
				fmt.Fprintf(r.cfg.Progress, "%s %s %5.1fs sent %d (%.0f/s) recv %d (%.0f/s)\n",
					r.cfg.Label, r.cfg.Scenario, now.Sub(start).Seconds(), s, float64(s-lastS)/dt, rc, float64(rc-lastR)/dt)
				lastS, lastR, last = s, rc, now
			}
		}
	}()
}

// drainCapFactor bounds a drain at this many quiet periods in total.
const drainCapFactor = 10

// drain polls until done holds, or the counter has not moved for quiet (the
// broker has stopped delivering), or drainCapFactor*quiet has passed, or ctx
// ends. Waiting for quiet rather than a fixed time lets a broker that is
// still working through a backlog finish before anything counts as lost.
func drain(ctx context.Context, quiet time.Duration, done func() bool, counter func() int64) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	last, lastChange := counter(), start
	for !done() {
		now := time.Now()
		if v := counter(); v != last {
			last, lastChange = v, now
		}
		if now.Sub(lastChange) >= quiet || now.Sub(start) >= drainCapFactor*quiet {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ackDrain waits for outstanding QoS 1/2 acks (or responses) of pubs.
func ackDrain(ctx context.Context, quiet time.Duration, pubs []*publisher) {
	drain(ctx, quiet, func() bool {
		for _, p := range pubs {
			if len(p.sem) > 0 {
				return false
			}
		}
		return true
	}, func() int64 {
		var n int64
		for _, p := range pubs {
			n += p.ackedN.Load() + int64(len(p.sem))
		}
		return n
	})
}

// startSending runs every publisher's send loop and ends the send phase
// after cfg.Duration (unless Count bounds it) or when ctx ends. It returns
// a channel closed when all send loops have returned.
func startSending(ctx context.Context, r *run, pubs []*publisher, start time.Time) <-chan struct{} {
	var interval time.Duration
	if r.cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(len(pubs)) / r.cfg.Rate)
	}
	// Once sending must stop, a publisher blocked on a broker that no
	// longer reads gets cfg.Drain to finish its last write.
	bound := func() {
		dl := time.Now().Add(r.cfg.Drain)
		for _, p := range pubs {
			_ = p.conn.SetWriteDeadline(dl)
		}
	}
	var (
		timer    *time.Timer
		deadline <-chan time.Time // nil, never ready, with -n
	)
	if r.cfg.Count == 0 {
		timer = time.NewTimer(r.cfg.Duration)
		deadline = timer.C
	}
	done := make(chan struct{})
	// progress counts sent and acknowledged messages; with -n a broker
	// that stops acknowledging would otherwise keep the run forever.
	progressed := func() int64 {
		var n int64
		for _, p := range pubs {
			n += int64(p.sent.Load()) + p.ackedN.Load()
		}
		return n
	}
	stallAfter := drainCapFactor * r.cfg.Drain
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if timer != nil {
			defer timer.Stop()
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last, lastChange := progressed(), time.Now()
	wait:
		for {
			select {
			case <-r.stop:
				break wait
			case <-ctx.Done():
				break wait
			case <-deadline:
				break wait
			case <-done:
				return // every message sent; nothing to interrupt
			case now := <-tick.C:
				if v := progressed(); v != last {
					last, lastChange = v, now
				} else if now.Sub(lastChange) > stallAfter {
					r.fail(fmt.Errorf("send phase stalled: nothing sent or acknowledged for %s", stallAfter))
					break wait
				}
			}
		}
		r.stopSending()
		bound()
		// Once the send loops are out, lift the deadline again: the
		// read loops still write PUBRELs while acks drain.
		<-done
		for _, p := range pubs {
			_ = p.conn.SetWriteDeadline(time.Time{})
		}
	}()
	var senders sync.WaitGroup
	for _, p := range pubs {
		senders.Add(1)
		r.goFn(func() error {
			defer senders.Done()
			return p.send(start, interval)
		})
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		senders.Wait()
		close(done)
	}()
	return done
}

func runPubSub(ctx context.Context, r *run, res *Result) error {
	cfg := r.cfg
	topo := buildTopology(cfg)
	res.Publishers, res.Subscribers, res.Inflight, res.TargetRate = cfg.Publishers, cfg.Subscribers, cfg.Inflight, cfg.Rate
	res.BrokerPID = cfg.BrokerPID
	if cfg.QoS == 0 {
		res.Inflight = 0
	}
	subs, err := connectSubscribers(ctx, r, topo.subFilters, "sub", nil)
	if err != nil {
		return err
	}
	pubs, err := connectPublishers(ctx, r, topo.pubTopics, "pub")
	if err != nil {
		return err
	}

	sentTotal := func() int64 {
		var n int64
		for _, p := range pubs {
			n += int64(p.sent.Load())
		}
		return n
	}
	recvTotal := func() int64 {
		var n int64
		for _, s := range subs {
			n += s.recv.Load()
		}
		return n
	}
	// expected deliveries per subscriber, from what is sent or acked now
	expected := func() []int64 {
		exp := make([]int64, len(subs))
		for i, p := range pubs {
			n := int64(p.sent.Load())
			if cfg.QoS > 0 {
				n = p.ackedN.Load()
			}
			for _, s := range topo.routes[i] {
				exp[s] += n
			}
		}
		return exp
	}

	cpu := startCPU(cfg.brokerPIDs())
	start := time.Now()
	done := make(chan struct{})
	progress(r, start, sentTotal, recvTotal, done)
	sendDone := startSending(ctx, r, pubs, start)
	select {
	case <-sendDone:
	case <-ctx.Done():
		<-sendDone
	}
	sendEnd := time.Now()
	if cfg.QoS > 0 {
		ackDrain(ctx, cfg.Drain, pubs)
	}
	drain(ctx, cfg.Drain, func() bool {
		for i, e := range expected() {
			if subs[i].uniq.Load() < e {
				return false
			}
		}
		return true
	}, recvTotal)
	res.GenCPU, res.GenCores = cpu.share()
	res.BrokerCPU = cpu.brokerCores()
	wall := time.Since(start)
	close(done)
	// Stop every read loop before reading the state they own.
	r.closeAll()

	res.SendSeconds, res.WallSeconds = sendEnd.Sub(start).Seconds(), wall.Seconds()
	var hist Histogram
	var last int64
	for _, s := range subs {
		res.Received += s.recv.Load()
		res.Dupes += s.dupes
		res.OutOfOrder += s.ooo
		res.Stale += s.stale
		hist.Merge(&s.hist)
		last = max(last, s.lastRecv.Load())
	}
	for i, p := range pubs {
		sent := p.sent.Load()
		if p.timedOut.Load() {
			res.SendTimeouts++
		}
		res.Sent += int64(sent)
		res.Acked += p.ackedN.Load()
		res.Rejected += p.rejected.Load()
		for _, si := range topo.routes[i] {
			st := subs[si].stream(p.id)
			if cfg.QoS > 0 {
				res.Expected += p.acked.n
				res.Lost += st.set.missing(p.acked)
			} else {
				res.Expected += int64(sent)
				res.Lost += st.set.missingBelow(sent)
			}
			res.Unique += st.set.n
		}
	}
	if res.Expected > 0 {
		res.LossPct = 100 * float64(res.Lost) / float64(res.Expected)
	}
	if res.SendSeconds > 0 {
		res.SendRate = float64(res.Sent) / res.SendSeconds
	}
	if last > 0 {
		if d := time.Duration(last - start.UnixNano()).Seconds(); d > 0 {
			res.RecvRate = float64(res.Received) / d
		}
	}
	res.Latency = latencyOf(&hist)
	return nil
}
