package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// The storm scenario: Clients persistent sessions (clean=false; MQTT 5
// with a session expiry) connect to Addr and each subscribes to its own
// topic <prefix>/storm/<i> at QoS 1. Then their node goes away: with
// KillPID the node is sent SIGKILL and the scenario waits until every
// connection has seen it go (a node failure); without, the clients close
// their TCP connections without DISCONNECT (as when a network path or a
// load balancer drops them). Then every session reconnects at once,
// clean=false, to MoveAddrs (round robin), retrying a failed attempt after
// a short backoff until MoveTimeout. Session present in the CONNACK says
// the broker found the session; the proof that it kept the subscription
// is a delivery: in each of CheckRounds rounds, one QoS 1 message is
// published to each session's topic (from Addr, or from MoveAddrs[0] when
// Addr was killed) and each session must receive its own. A session whose
// connection the broker ends after the move reconnects, as a client would,
// and must find its session again (stormcheck.go).

// ErrFDLimit reports an open-files limit too low for the connections a
// scenario needs.
var ErrFDLimit = errors.New("load: open-files limit too low")

const (
	// stormBufSize is each storm connection's read and write buffer: its
	// session receives one small message.
	stormBufSize = 4 << 10
	// stormFDSlack is the descriptors the generator needs beside the
	// storm's sessions: the check publisher, stdio, the runtime's own.
	stormFDSlack = 64
	// stormGoneTimeout bounds the wait, after SIGKILL, until every
	// connection has seen its node go.
	stormGoneTimeout = 10 * time.Second
	// A failed reconnection attempt is retried after a backoff doubling
	// from stormRetryMin to stormRetryMax, plus up to half of it again.
	stormRetryMin = 50 * time.Millisecond
	stormRetryMax = time.Second
)

// MoveModes: how the storm's sessions leave their node.
const (
	MoveKill  = "kill"
	MoveClose = "close"
)

// moveOutcome is what one session's reconnection came to.
type moveOutcome struct {
	acked   bool          // got a CONNACK
	present bool          // with session present
	wait    time.Duration // from its first attempt to the CONNACK
	failed  int           // failed attempts
}

// stormCounts are the session counts of a move.
type stormCounts struct {
	resumed, notPresent, failed, lost, retried, retries int
}

// countMoves tallies the outcomes of the sessions that were set up
// (setUp[i]); a session set up but without a CONNACK failed.
func countMoves(setUp []bool, out []moveOutcome) stormCounts {
	var c stormCounts
	for i, ok := range setUp {
		if !ok {
			continue
		}
		o := out[i]
		c.retries += o.failed
		switch {
		case !o.acked:
			c.failed++
		case o.present:
			c.resumed++
		default:
			c.notPresent++
		}
		if o.acked && o.failed > 0 {
			c.retried++
		}
	}
	c.lost = c.notPresent + c.failed
	return c
}

// retryBackoff is the wait before attempt n+1 (n >= 0 failed attempts so
// far, counting from 0): doubling from stormRetryMin, capped at
// stormRetryMax, plus a random share of up to half of it so that a storm
// of retries spreads out.
func retryBackoff(n int) time.Duration {
	d := stormRetryMax
	if n < 16 {
		d = min(stormRetryMin<<n, stormRetryMax)
	}
	return d + rand.N(d/2+1)
}

// fdLimitError says whether limit descriptors are enough for clients
// sessions.
func fdLimitError(clients int, limit uint64) error {
	need := uint64(clients + stormFDSlack)
	if limit >= need {
		return nil
	}
	return fmt.Errorf("%w: storm: %d sessions need about %d open files and the limit is %d; raise it (ulimit -n %d) or lower -clients",
		ErrFDLimit, clients, need, limit, need)
}

// checkFDs makes sure this process may open enough descriptors for clients
// sessions, raising its soft limit towards the hard one when needed.
func checkFDs(clients int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil // cannot tell; the dials will say
	}
	need := uint64(clients + stormFDSlack)
	if lim.Cur < need && lim.Max >= need {
		raised := lim
		raised.Cur = need
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			lim = raised
		}
	}
	return fdLimitError(clients, lim.Cur)
}

// storeMax raises v to x.
func storeMax(v *atomic.Int64, x int64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// stormProgress prints a line every cfg.ProgressEvery with done() of total
// until the returned stop is called.
func stormProgress(r *run, phase string, start time.Time, done func() int64, total int) (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case now := <-t.C:
				fmt.Fprintf(r.cfg.Progress, "%s storm %s %5.1fs %d/%d\n", r.cfg.Label, phase, now.Sub(start).Seconds(), done(), total)
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
	}
}

// drainConn reads and acknowledges until the connection ends; it is the
// read loop of a session before the move, which only waits for its node to
// go.
func drainConn(c *mqttc.Conn) {
	for {
		pk, err := c.Read()
		if err != nil {
			return
		}
		switch pk.Type {
		case mqttc.PUBLISH:
			if c.AckIncoming(&pk) != nil {
				return
			}
		case mqttc.PUBREL:
			if c.WriteAck(mqttc.PUBCOMP, pk.PacketID) != nil {
				return
			}
		}
		if !c.ReadBuffered() && c.Flush() != nil {
			return
		}
	}
}

func runStorm(ctx context.Context, r *run, res *Result) error {
	cfg := r.cfg
	n := cfg.Clients
	res.Clients, res.MoveAddrs, res.BrokerPID = n, cfg.MoveAddrs, cfg.BrokerPID
	res.MoveMode = MoveClose
	if cfg.KillPID > 0 {
		res.MoveMode, res.KilledPID = MoveKill, cfg.KillPID
	}
	if err := checkFDs(n); err != nil {
		return err
	}
	base := cfg.TopicPrefix + "/" + Storm
	topic := func(i int) string { return fmt.Sprintf("%s/%d", base, i) }
	clientID := func(i int) string { return fmt.Sprintf("%s-%08x-storm-%d", cfg.ClientPrefix, r.nonce, i) }
	dialOpts := func(addr string) mqttc.DialOptions {
		o := cfg.dialOptions(addr)
		o.BufferSize = stormBufSize
		return o
	}
	cpu := startCPU(cfg.brokerPIDs())
	start := time.Now()

	// 1. Set up every session on Addr.
	first := make([]*mqttc.Conn, n)
	setUp := make([]bool, n)
	var nSetUp atomic.Int64
	stop := stormProgress(r, "connect", start, nSetUp.Load, n)
	err := parallel(ctx, n, cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c, present, err := r.dialWith(ctx, dialOpts(cfg.Addr), cfg.connect(clientID(i), false))
		if err != nil {
			r.fail(fmt.Errorf("storm: set up session %d: %w", i, err))
			return nil
		}
		if present {
			// Client ids carry the run's nonce: no session can exist yet.
			r.fail(fmt.Errorf("storm: session %d: new client id %s found a session present", i, clientID(i)))
		}
		sctx, cancel := context.WithTimeout(ctx, cfg.MoveTimeout)
		defer cancel()
		if err := c.Subscribe(sctx, 1, []mqttc.Subscription{{Filter: topic(i), QoS: 1}}); err != nil {
			r.fail(fmt.Errorf("storm: set up session %d: %w", i, err))
			_ = c.Close()
			return nil
		}
		first[i], setUp[i] = c, true
		nSetUp.Add(1)
		return nil
	})
	stop()
	connectDur := time.Since(start)
	res.Connected = int(nSetUp.Load())
	res.ConnectSeconds = connectDur.Seconds()
	if connectDur > 0 {
		res.ConnectRate = float64(res.Connected) / connectDur.Seconds()
	}
	var live atomic.Int64
	var readers sync.WaitGroup
	for _, c := range first {
		if c == nil {
			continue
		}
		live.Add(1)
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer live.Add(-1)
			drainConn(c)
		}()
	}
	// closeFirst ends the sessions' first connections and their readers.
	closeFirst := func() {
		for _, c := range first {
			if c != nil {
				_ = c.Close()
			}
		}
		readers.Wait()
		r.forgetConns()
	}
	if err != nil {
		closeFirst()
		return err
	}
	if res.Connected == 0 {
		closeFirst()
		return fmt.Errorf("storm: no session could be set up at %s: %v", cfg.Addr, r.errors())
	}

	// 2. The sessions' node goes away.
	goneStart := time.Now()
	if cfg.KillPID > 0 {
		if err := syscall.Kill(cfg.KillPID, syscall.SIGKILL); err != nil {
			closeFirst()
			return fmt.Errorf("storm: kill %d: %w", cfg.KillPID, err)
		}
		gone := time.Now().Add(stormGoneTimeout)
		for live.Load() > 0 && time.Now().Before(gone) && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if left := live.Load(); left > 0 {
			r.fail(fmt.Errorf("storm: %d connections still open %s after SIGKILL to %d; closing them", left, stormGoneTimeout, cfg.KillPID))
		}
		res.GoneSeconds = time.Since(goneStart).Seconds()
	}
	closeFirst()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// 3. Every session reconnects at once to MoveAddrs.
	outcomes := make([]moveOutcome, n)
	clients := make([]*stormClient, n)
	tally := newStormTally(cfg.CheckRounds)
	var acks, lastAck atomic.Int64
	conc := cfg.MoveConcurrency
	if conc == 0 {
		conc = n
	}
	moveStart := time.Now()
	deadline := moveStart.Add(cfg.MoveTimeout)
	stop = stormProgress(r, "move", moveStart, acks.Load, res.Connected)
	_ = parallel(ctx, n, conc, func(ctx context.Context, i int) error {
		if !setUp[i] {
			return nil
		}
		addr := cfg.MoveAddrs[i%len(cfg.MoveAddrs)]
		o := &outcomes[i]
		t0 := time.Now()
		for {
			opts := dialOpts(addr)
			opts.Timeout = time.Until(deadline)
			if opts.Timeout <= 0 {
				return nil
			}
			c, present, err := r.dialWith(ctx, opts, cfg.connect(clientID(i), false))
			if err == nil {
				now := time.Now()
				o.acked, o.present, o.wait = true, present, now.Sub(t0)
				storeMax(&lastAck, now.UnixNano())
				acks.Add(1)
				clients[i] = newStormClient(r, i, c, present, tally, func(ctx context.Context, timeout time.Duration) (*mqttc.Conn, bool, error) {
					again := dialOpts(addr)
					again.Timeout = timeout
					return r.dialWith(ctx, again, cfg.connect(clientID(i), false))
				})
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			r.fail(fmt.Errorf("storm: reconnect session %d: %w", i, err))
			wait := retryBackoff(o.failed)
			o.failed++
			t := time.NewTimer(min(wait, max(time.Until(deadline), 0)))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	})
	stop()
	for _, c := range clients {
		if c != nil {
			r.goFn(c.read)
		}
	}
	counts := countMoves(setUp, outcomes)
	res.Resumed, res.NotPresent, res.MoveFailed, res.SessionsLost = counts.resumed, counts.notPresent, counts.failed, counts.lost
	res.Retried, res.Retries = counts.retried, counts.retries
	if last := lastAck.Load(); last > 0 {
		res.MoveSeconds = time.Duration(last - moveStart.UnixNano()).Seconds()
		if res.MoveSeconds > 0 {
			res.MoveRate = float64(acks.Load()) / res.MoveSeconds
		}
	}
	var hist Histogram
	for _, o := range outcomes {
		if o.acked {
			hist.Record(o.wait)
		}
	}
	res.MoveLatency = latencyOf(&hist)

	// 4. One message to each session that was set up, per round.
	var acked [][]bool
	if ctx.Err() == nil {
		res.CheckAddr = cfg.Addr
		if cfg.KillPID > 0 {
			res.CheckAddr = cfg.MoveAddrs[0]
		}
		moveEnd := time.Now()
		if last := lastAck.Load(); last > 0 {
			moveEnd = time.Unix(0, last)
		}
		acked = runChecks(ctx, r, res, tally, setUp, topic, moveEnd)
	}
	res.GenCPU, res.GenCores = cpu.share()
	res.BrokerCPU = cpu.brokerCores()
	res.WallSeconds = time.Since(start).Seconds()
	// Stop every read loop before reading the state they own.
	r.closeAll()
	countChecks(res, tally, clients, acked, cfg.MoveAddrs)
	return nil
}
