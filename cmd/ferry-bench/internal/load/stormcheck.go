package load

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// The storm's check: after the move, in each of cfg.CheckRounds rounds
// (cfg.CheckInterval apart), one QoS 1 message is published to every
// session's topic; its header's Publisher is the round and its Seq the
// session, so each delivery says whether the right session got it.

// StormCheck is one round of the storm's check messages.
type StormCheck struct {
	Round int `json:"round"`
	// AfterMove is from the move's last CONNACK to the round's first
	// publish, in seconds.
	AfterMove float64 `json:"after_move_s"`
	Sent      int64   `json:"sent"`
	Acked     int64   `json:"acked"`
	Rejected  int64   `json:"rejected,omitempty"`
	// Delivered counts sessions that got their message of this round;
	// Lost acked messages of this round never delivered, by the address
	// the session moved to in LostByAddr.
	Delivered  int64          `json:"delivered"`
	Lost       int64          `json:"lost"`
	LostByAddr map[string]int `json:"lost_by_move_addr,omitempty"`
	// Seconds is from the round's first publish to its last delivery.
	Seconds float64 `json:"s,omitempty"`
}

// roundTally counts one round's deliveries.
type roundTally struct {
	delivered atomic.Int64 // sessions that got their own message
	last      atomic.Int64 // UnixNano of the latest delivery
}

// stormTally counts the check messages the sessions receive.
type stormTally struct {
	rounds    []roundTally
	received  atomic.Int64 // every delivery of this run
	dupes     atomic.Int64
	misrouted atomic.Int64 // a message for another session
	stale     atomic.Int64 // not from this run
	// dropped counts connections the broker ended after the move;
	// reconnected those re-established, lostAfter those whose session
	// was gone (no session present) or that got no CONNACK again.
	dropped     atomic.Int64
	reconnected atomic.Int64
	lostAfter   atomic.Int64
}

func newStormTally(rounds int) *stormTally {
	return &stormTally{rounds: make([]roundTally, rounds)}
}

// stormClient is one session's connection after the move.
type stormClient struct {
	r       *run
	idx     int
	conn    *mqttc.Conn // replaced by the read loop when it reconnects
	present bool
	tally   *stormTally
	// redial connects the session again, clean=false, where it moved.
	redial func(ctx context.Context, timeout time.Duration) (*mqttc.Conn, bool, error)
	// got counts the session's own check messages per round; owned by
	// the read loop until it ends.
	got []int
}

func newStormClient(r *run, idx int, c *mqttc.Conn, present bool, tally *stormTally,
	redial func(context.Context, time.Duration) (*mqttc.Conn, bool, error)) *stormClient {
	return &stormClient{r: r, idx: idx, conn: c, present: present, tally: tally, redial: redial, got: make([]int, len(tally.rounds))}
}

// deliver accounts one PUBLISH.
func (s *stormClient) deliver(payload []byte) {
	h, ok := ParseHeader(payload)
	if !ok || h.Nonce != s.r.nonce || int(h.Publisher) >= len(s.got) {
		s.tally.stale.Add(1)
		return
	}
	s.tally.received.Add(1)
	if h.Seq != uint64(s.idx) {
		s.tally.misrouted.Add(1)
		return
	}
	round := &s.tally.rounds[h.Publisher]
	storeMax(&round.last, time.Now().UnixNano())
	s.got[h.Publisher]++
	if s.got[h.Publisher] == 1 {
		round.delivered.Add(1)
	} else {
		s.tally.dupes.Add(1)
	}
}

// read acknowledges and accounts deliveries until the run ends. When the
// broker ends the connection, the session reconnects as a client would:
// whether it finds its session again is what counts.
func (s *stormClient) read() error {
	for {
		err := s.serve()
		if s.r.closing.Load() {
			return nil
		}
		s.tally.dropped.Add(1)
		s.r.fail(fmt.Errorf("storm session %d after the move: %w", s.idx, err))
		if !s.reconnect() {
			return nil
		}
	}
}

// reconnect connects the session again, retrying until cfg.MoveTimeout has
// passed or the run ends; it reports whether it got a connection.
func (s *stormClient) reconnect() bool {
	ctx, cancel := s.r.quitContext()
	defer cancel()
	deadline := time.Now().Add(s.r.cfg.MoveTimeout)
	for n := 0; ; n++ {
		timeout := time.Until(deadline)
		if timeout <= 0 {
			s.tally.lostAfter.Add(1)
			s.r.fail(fmt.Errorf("storm session %d: no CONNACK within %s after it was dropped", s.idx, s.r.cfg.MoveTimeout))
			return false
		}
		c, present, err := s.redial(ctx, timeout)
		if err == nil {
			if s.r.closing.Load() {
				// closeAll may have taken its list of connections
				// before this one joined it.
				_ = c.Close()
				return false
			}
			s.conn = c
			s.tally.reconnected.Add(1)
			if !present {
				s.tally.lostAfter.Add(1)
				s.r.fail(fmt.Errorf("storm session %d: reconnected after it was dropped, without its session", s.idx))
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		s.r.fail(fmt.Errorf("storm session %d: reconnect after it was dropped: %w", s.idx, err))
		t := time.NewTimer(min(retryBackoff(n), max(time.Until(deadline), 0)))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// serve acknowledges and accounts deliveries until the connection ends.
func (s *stormClient) serve() error {
	dirty := false
	for {
		pk, err := s.conn.Read()
		if err != nil {
			return err
		}
		switch pk.Type {
		case mqttc.PUBLISH:
			s.deliver(pk.Payload)
			if pk.QoS > 0 {
				if err := s.conn.AckIncoming(&pk); err != nil {
					return err
				}
				dirty = true
			}
		case mqttc.PUBREL:
			if err := s.conn.WriteAck(mqttc.PUBCOMP, pk.PacketID); err != nil {
				return err
			}
			dirty = true
		case mqttc.DISCONNECT:
			_ = s.conn.Close()
			return fmt.Errorf("%w: reason %#x", mqttc.ErrServerDiscon, pk.Reason)
		}
		if dirty && !s.conn.ReadBuffered() {
			if err := s.conn.Flush(); err != nil {
				return err
			}
			dirty = false
		}
	}
}

// runChecks connects the check publisher to res.CheckAddr and runs the
// rounds, recording them in res.Checks; it returns, per round, which
// sessions' messages were acknowledged.
func runChecks(ctx context.Context, r *run, res *Result, tally *stormTally, setUp []bool, topic func(int) string, moveEnd time.Time) [][]bool {
	cfg := r.cfg
	var targets []int
	for i, ok := range setUp {
		if ok {
			targets = append(targets, i)
		}
	}
	id := fmt.Sprintf("%s-%08x-storm-check", cfg.ClientPrefix, r.nonce)
	var p *checkPublisher
	acked := make([][]bool, cfg.CheckRounds)
	for round := range cfg.CheckRounds {
		if round > 0 {
			t := time.NewTimer(cfg.CheckInterval)
			select {
			case <-ctx.Done():
				t.Stop()
				return acked
			case <-t.C:
			}
		}
		start := time.Now()
		ck := StormCheck{Round: round + 1, AfterMove: start.Sub(moveEnd).Seconds()}
		if p == nil || p.ended() {
			// First round, or the broker ended the last connection
			// (counted in the errors): a publisher connects again.
			c, _, err := r.dialWith(ctx, cfg.dialOptions(res.CheckAddr), cfg.connect(id, true))
			if err != nil {
				r.fail(fmt.Errorf("storm: check publisher, round %d: %w", round+1, err))
				res.Checks = append(res.Checks, ck)
				continue
			}
			p = newCheckPublisher(r, c)
		}
		var ok []bool
		ck.Sent, ck.Rejected, ok = p.publish(ctx, round, topic, targets)
		acked[round] = ok
		for _, a := range ok {
			if a {
				ck.Acked++
			}
		}
		rt := &tally.rounds[round]
		waitChecks(ctx, cfg.CheckWait, start.Add(cfg.MoveTimeout), rt, ck.Acked)
		if last := rt.last.Load(); last > 0 {
			ck.Seconds = time.Duration(last - start.UnixNano()).Seconds()
		}
		res.Checks = append(res.Checks, ck)
		if ctx.Err() != nil {
			break
		}
	}
	return acked
}

// countChecks fills in each round's deliveries and losses, and the totals
// (Sent, Acked, Expected, Unique, Lost, LostByAddr, ...) over the rounds.
// Every read loop must have ended.
func countChecks(res *Result, tally *stormTally, clients []*stormClient, acked [][]bool, moveAddrs []string) {
	for k := range res.Checks {
		ck := &res.Checks[k]
		ck.Delivered = tally.rounds[k].delivered.Load()
		for i, a := range acked[k] {
			if a && (clients[i] == nil || clients[i].got[k] == 0) {
				ck.Lost++
				if ck.LostByAddr == nil {
					ck.LostByAddr = map[string]int{}
				}
				ck.LostByAddr[moveAddrs[i%len(moveAddrs)]]++
			}
		}
		res.Sent += ck.Sent
		res.Acked += ck.Acked
		res.Rejected += ck.Rejected
		res.Unique += ck.Delivered
		res.Lost += ck.Lost
		for addr, n := range ck.LostByAddr {
			if res.LostByAddr == nil {
				res.LostByAddr = map[string]int{}
			}
			res.LostByAddr[addr] += n
		}
	}
	res.Expected = res.Acked
	res.Received = tally.received.Load()
	res.Dupes, res.Mismatched, res.Stale = tally.dupes.Load(), tally.misrouted.Load(), tally.stale.Load()
	res.DroppedAfterMove = int(tally.dropped.Load())
	res.Reconnected, res.LostAfterMove = int(tally.reconnected.Load()), int(tally.lostAfter.Load())
	if res.Expected > 0 {
		res.LossPct = 100 * float64(res.Lost) / float64(res.Expected)
	}
}

// waitChecks waits until want sessions have their message of round rt, or
// none has arrived for quiet, or until the deadline, or ctx ends.
func waitChecks(ctx context.Context, quiet time.Duration, deadline time.Time, rt *roundTally, want int64) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	for rt.delivered.Load() < want {
		now := time.Now()
		lastChange := start
		if last := rt.last.Load(); last > start.UnixNano() {
			lastChange = time.Unix(0, last)
		}
		if now.Sub(lastChange) >= quiet || now.After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkRef is what a packet id in flight stands for.
type checkRef struct{ round, session int }

// checkPublisher publishes the check messages on one connection, with at
// most cfg.Inflight unacknowledged; one read loop takes the PUBACKs of
// every round.
type checkPublisher struct {
	r    *run
	c    *mqttc.Conn
	sem  chan struct{} // one token per unacknowledged publish
	dead chan struct{} // closed when the read loop ends
	next uint16        // last packet id used; owned by publish

	mu      sync.Mutex
	pending map[uint16]checkRef
	acked   [][]bool // [round][session]
	done    []int64  // acks (refusals included) per round
	refused []int64  // refusals per round
}

func newCheckPublisher(r *run, c *mqttc.Conn) *checkPublisher {
	p := &checkPublisher{
		r: r, c: c, sem: make(chan struct{}, r.cfg.Inflight), dead: make(chan struct{}),
		pending: make(map[uint16]checkRef, r.cfg.Inflight),
	}
	r.goFn(p.read)
	return p
}

// ended says whether the connection has ended.
func (p *checkPublisher) ended() bool {
	select {
	case <-p.dead:
		return true
	default:
		return false
	}
}

func (p *checkPublisher) read() error {
	defer close(p.dead)
	for {
		pk, err := p.c.Read()
		if err != nil {
			if p.r.closing.Load() {
				return nil
			}
			return fmt.Errorf("storm check publisher: %w", err)
		}
		if pk.Type != mqttc.PUBACK {
			continue
		}
		p.mu.Lock()
		ref, ok := p.pending[pk.PacketID]
		delete(p.pending, pk.PacketID)
		if ok {
			p.done[ref.round]++
			if pk.Reason >= 0x80 {
				p.refused[ref.round]++
			} else {
				p.acked[ref.round][ref.session] = true
			}
		}
		p.mu.Unlock()
		if ok {
			<-p.sem
		}
	}
}

// publish sends round's message to topic(i), header sequence i, for each
// i in targets, and waits for the acks up to cfg.MoveTimeout. It returns
// the messages written, those the broker refused, and which sessions'
// messages were acknowledged (indexed by session).
func (p *checkPublisher) publish(ctx context.Context, round int, topic func(int) string, targets []int) (sent, rejected int64, acked []bool) {
	cfg := p.r.cfg
	p.mu.Lock()
	for len(p.acked) <= round {
		p.acked = append(p.acked, make([]bool, cfg.Clients))
		p.done, p.refused = append(p.done, 0), append(p.refused, 0)
	}
	p.mu.Unlock()
	done := func() int64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.done[round]
	}
	tctx, cancel := context.WithTimeout(ctx, cfg.MoveTimeout)
	defer cancel()
	payload := make([]byte, max(cfg.PayloadSize, HeaderSize))
	hdr := Header{Nonce: p.r.nonce, Publisher: uint32(round)}
	write := func() error {
		for _, i := range targets {
			select {
			case p.sem <- struct{}{}:
			default:
				if err := p.c.Flush(); err != nil {
					return err
				}
				select {
				case p.sem <- struct{}{}:
				case <-p.dead:
					return errors.New("connection ended")
				case <-tctx.Done():
					return tctx.Err()
				}
			}
			p.next++
			if p.next == 0 {
				p.next = 1
			}
			p.mu.Lock()
			p.pending[p.next] = checkRef{round: round, session: i}
			p.mu.Unlock()
			hdr.Seq, hdr.SentNanos = uint64(i), time.Now().UnixNano()
			hdr.Put(payload)
			if err := p.c.WritePublish(&mqttc.Publish{Topic: []byte(topic(i)), QoS: 1, PacketID: p.next, Payload: payload}); err != nil {
				return err
			}
			sent++
		}
		return p.c.Flush()
	}
	if err := write(); err != nil {
		p.r.fail(fmt.Errorf("storm check publisher, round %d: %w", round+1, err))
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
wait:
	for done() < sent {
		select {
		case <-tick.C:
		case <-p.dead:
			break wait
		case <-tctx.Done():
			if ctx.Err() == nil {
				p.r.fail(fmt.Errorf("storm check publisher, round %d: %d of %d publishes unacknowledged after %s",
					round+1, sent-done(), sent, cfg.MoveTimeout))
			}
			break wait
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return sent, p.refused[round], append([]bool(nil), p.acked[round]...)
}
