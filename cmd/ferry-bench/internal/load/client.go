package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// run is the state shared by one scenario's clients.
type run struct {
	cfg   Config
	nonce uint32
	// closing is set before connections are closed on purpose, so read
	// loops treat the resulting errors as a clean end.
	closing atomic.Bool
	wg      sync.WaitGroup

	mu     sync.Mutex
	errs   []string
	nerrs  int
	conns  []*mqttc.Conn
	stopMu sync.Once
	stop   chan struct{} // closed when the send phase must end
	quit   chan struct{} // closed when the run ends
	quitMu sync.Once
}

func newRun(cfg Config, nonce uint32) *run {
	return &run{cfg: cfg, nonce: nonce, stop: make(chan struct{}), quit: make(chan struct{})}
}

// maxErrs bounds the distinct errors kept for the result.
const maxErrs = 8

func (r *run) fail(err error) {
	if err == nil {
		return
	}
	r.cfg.Logger.Warn("client error", "err", err)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nerrs++
	if len(r.errs) < maxErrs {
		r.errs = append(r.errs, err.Error())
	}
}

// errors returns the distinct errors kept so far.
func (r *run) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

func (r *run) stopSending() { r.stopMu.Do(func() { close(r.stop) }) }

// dial connects one client to addr and remembers it for closeAll.
func (r *run) dial(ctx context.Context, addr, id string) (*mqttc.Conn, error) {
	c, _, err := r.dialWith(ctx, r.cfg.dialOptions(addr), r.cfg.connect(id, !r.cfg.Persistent))
	return c, err
}

// dialWith connects with o and cp, remembers the connection for closeAll
// and keepalive, and returns the CONNACK's session-present flag.
func (r *run) dialWith(ctx context.Context, o mqttc.DialOptions, cp *mqttc.Connect) (*mqttc.Conn, bool, error) {
	c, present, err := mqttc.Dial(ctx, o, cp)
	if err != nil {
		return nil, false, fmt.Errorf("connect %s to %s: %w", cp.ClientID, o.Addr, err)
	}
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
	return c, present, nil
}

// forgetConns drops every remembered connection (the caller has closed
// them) so that closeAll and keepalive leave them alone.
func (r *run) forgetConns() {
	r.mu.Lock()
	r.conns = nil
	r.mu.Unlock()
}

// clientID builds a stable id for persistent sessions and a unique one
// otherwise, so concurrent runs never take over each other's sessions.
func (r *run) clientID(role string, i int) string {
	if r.cfg.Persistent {
		return fmt.Sprintf("%s-%s-%s-%d", r.cfg.ClientPrefix, r.cfg.Scenario, role, i)
	}
	return fmt.Sprintf("%s-%08x-%s-%d", r.cfg.ClientPrefix, r.nonce, role, i)
}

// quitContext returns a context that ends when the run ends (closeAll) or
// cancel is called.
func (r *run) quitContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		select {
		case <-r.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// goFn runs fn in a goroutine the run waits for, recording its error.
func (r *run) goFn(fn func() error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		// Once the run closes its connections, write and read errors
		// are the closing itself (e.g. a PUBCOMP racing the close).
		if err := fn(); err != nil && !r.closing.Load() {
			r.fail(err)
		}
	}()
}

// closeAll disconnects every client and waits for every goroutine.
func (r *run) closeAll() {
	r.stopSending()
	r.quitMu.Do(func() { close(r.quit) })
	r.closing.Store(true)
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		_ = c.Disconnect()
	}
	r.wg.Wait()
}

// keepAlive pings every connection at half the keepalive interval, so that
// subscribers and idle clients, which otherwise send nothing, are not
// disconnected by the broker in long runs.
func (r *run) keepAlive() {
	if r.cfg.KeepAlive == 0 {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(time.Duration(r.cfg.KeepAlive) * time.Second / 2)
		defer t.Stop()
		for {
			select {
			case <-r.quit:
				return
			case <-t.C:
			}
			r.mu.Lock()
			conns := append([]*mqttc.Conn(nil), r.conns...)
			r.mu.Unlock()
			for _, c := range conns {
				if c.WritePing() == nil {
					_ = c.Flush()
				}
			}
		}
	}()
}

// parallel runs fn(0..n-1) with at most conc at a time and returns the first
// error.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, max(conc, 1))
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// publisher sends sequenced messages on one topic with a bounded window of
// unacknowledged QoS 1/2 publishes.
type publisher struct {
	r     *run
	id    uint32
	conn  *mqttc.Conn
	topic []byte
	// next is the number of sequence numbers assigned so far. It is stored
	// before each PUBLISH is written so an ack can never arrive for a
	// sequence the reader does not yet know about.
	next atomic.Uint64
	// sent is the number of messages written to the kernel.
	sent atomic.Uint64
	// timedOut is set when the final write hit the stop deadline.
	timedOut atomic.Bool
	sem      chan struct{} // one token per unacknowledged publish (or request)
	// window makes send take a sem token per message: set at QoS 1/2,
	// and for requesters, whose tokens come back with the response.
	window bool
	// respTopic, when set, makes every message a request carrying it and
	// its sequence number as correlation data.
	respTopic []byte
	dead      chan struct{} // closed when the read loop ends
	acked     *seqSet       // owned by the read loop until it ends
	ackedN    atomic.Int64
	// rejected counts MQTT 5 acks with a failure reason (e.g. 0x97).
	rejected atomic.Int64
}

func newPublisher(r *run, id int, c *mqttc.Conn, topic string) *publisher {
	return &publisher{
		r: r, id: uint32(id), conn: c, topic: []byte(topic),
		sem: make(chan struct{}, r.cfg.Inflight), dead: make(chan struct{}), acked: newSeqSet(),
		window: r.cfg.QoS > 0,
	}
}

// seqOf recovers the sequence number of packet id pid: ids are seq%65535+1
// and fewer than 65535 publishes are ever outstanding, so the newest
// assigned sequence with that id is the one.
func (p *publisher) seqOf(pid uint16) (uint64, bool) {
	next := p.next.Load()
	if next == 0 || pid == 0 {
		return 0, false
	}
	k := uint64(pid - 1)
	if next-1 < k {
		return 0, false
	}
	return next - 1 - (next-1-k)%65535, true
}

func (p *publisher) markAcked(pk *mqttc.Packet) {
	if pk.Reason >= 0x80 {
		p.rejected.Add(1)
		return
	}
	if seq, ok := p.seqOf(pk.PacketID); ok && p.acked.add(seq) {
		p.ackedN.Add(1)
	}
}

func (p *publisher) release() {
	select {
	case <-p.sem:
	default: // an ack we did not ask for; nothing to release
	}
}

// read handles acks until the connection closes.
func (p *publisher) read() error {
	defer close(p.dead)
	qos := p.r.cfg.QoS
	dirty := false
	for {
		pk, err := p.conn.Read()
		if err != nil {
			if p.r.closing.Load() {
				return nil
			}
			return fmt.Errorf("publisher %d: %w", p.id, err)
		}
		switch pk.Type {
		case mqttc.PUBACK:
			if qos == 1 {
				p.markAcked(&pk)
				p.release()
			}
		case mqttc.PUBREC:
			p.markAcked(&pk)
			if pk.Reason >= 0x80 {
				p.release() // the flow ends here, no PUBREL
				break
			}
			if err := p.conn.WriteAck(mqttc.PUBREL, pk.PacketID); err != nil {
				return err
			}
			dirty = true
		case mqttc.PUBCOMP:
			p.release()
		case mqttc.DISCONNECT:
			return fmt.Errorf("publisher %d: %w: reason %#x", p.id, mqttc.ErrServerDiscon, pk.Reason)
		}
		if dirty && !p.conn.ReadBuffered() {
			if err := p.conn.Flush(); err != nil {
				return err
			}
			dirty = false
		}
	}
}

// batchBytes is how much a publisher encodes before writing: tens of small
// messages per syscall when the broker keeps up, fewer syscalls when it
// does not.
const batchBytes = 32 << 10

// send publishes until the run stops, count messages are sent, or the
// connection fails. With interval > 0 message n is due at start+n*interval.
// Messages are encoded into a local batch written when it fills, before
// the loop blocks or idles, and at the end; sent advances only once a
// batch is in the kernel, so it counts exactly what left the generator.
func (p *publisher) send(start time.Time, interval time.Duration) error {
	cfg := &p.r.cfg
	version := p.conn.Version()
	payload := make([]byte, cfg.PayloadSize)
	pk := mqttc.Publish{Topic: p.topic, QoS: cfg.QoS, Payload: payload}
	hdr := Header{Nonce: p.r.nonce, Publisher: p.id}
	corr := make([]byte, 8)
	if p.respTopic != nil {
		pk.Props.ResponseTopic, pk.Props.CorrelationData = p.respTopic, corr
	}
	batch := make([]byte, 0, batchBytes+cfg.PayloadSize+512)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Every PUBLISH of one publisher encodes to the same length (fixed
	// topic, payload size and property sizes), so the bytes a failed write
	// got out say exactly how many whole messages were sent.
	msgLen := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := p.conn.WriteBatch(batch)
		if err != nil {
			if msgLen > 0 {
				p.sent.Add(uint64(n / msgLen))
			}
			return err
		}
		batch = batch[:0]
		p.sent.Store(p.next.Load())
		return nil
	}
	err := func() error {
		for seq := uint64(0); cfg.Count == 0 || seq < uint64(cfg.Count); seq++ {
			select {
			case <-p.r.stop:
				return nil
			default:
			}
			if interval > 0 {
				if d := time.Until(start.Add(time.Duration(seq) * interval)); d > 0 {
					// About to idle: send what is batched so paced
					// messages are not delayed.
					if err := flush(); err != nil {
						return err
					}
					timer.Reset(d)
					select {
					case <-p.r.stop:
						return nil
					case <-timer.C:
					}
				}
			}
			if p.window {
				select {
				case p.sem <- struct{}{}:
				default:
					if err := flush(); err != nil {
						return err
					}
					select {
					case p.sem <- struct{}{}:
					case <-p.r.stop:
						return nil
					case <-p.dead:
						return nil // the read loop reports why
					}
				}
			}
			if cfg.QoS > 0 {
				pk.PacketID = uint16(seq%65535) + 1
			}
			binary.BigEndian.PutUint64(corr, seq)
			hdr.Seq = seq
			hdr.SentNanos = time.Now().UnixNano()
			hdr.Put(payload)
			// Stored before the bytes can leave, so an ack never names
			// a sequence the read loop cannot resolve.
			p.next.Store(seq + 1)
			before := len(batch)
			batch = mqttc.AppendPublish(batch, &pk, version)
			msgLen = len(batch) - before
			if len(batch) >= batchBytes {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	}()
	if err == nil {
		err = flush()
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The broker stopped reading and the stop deadline passed:
		// saturation, not a failure. The unwritten batch is not sent.
		p.timedOut.Store(true)
		return nil
	}
	if err != nil {
		return fmt.Errorf("publisher %d: %w", p.id, err)
	}
	return nil
}

// rxState is what one subscriber knows about one publisher's stream.
type rxState struct {
	set *seqSet
}

// subscriber receives messages and checks them against their headers.
type subscriber struct {
	r      *run
	idx    int
	conn   *mqttc.Conn
	filter string
	// owned by the read loop until it ends
	streams []*rxState
	hist    Histogram
	dupes   int64
	ooo     int64
	stale   int64
	// shared with the progress and drain loops
	recv     atomic.Int64 // deliveries, duplicates included
	uniq     atomic.Int64
	lastRecv atomic.Int64 // UnixNano of the latest delivery
	// ackPending asks the run's ack flusher to flush this connection.
	ackPending atomic.Bool
	// onMessage, when set, is called for every fresh in-run delivery
	// (the request/response responder uses it).
	onMessage func(pk *mqttc.Packet, h Header) error
}

func (s *subscriber) stream(pub uint32) *rxState {
	if int(pub) >= len(s.streams) {
		if pub > 1<<20 {
			return nil
		}
		s.streams = append(s.streams, make([]*rxState, int(pub)+1-len(s.streams))...)
	}
	st := s.streams[pub]
	if st == nil {
		st = &rxState{set: newSeqSet()}
		s.streams[pub] = st
	}
	return st
}

// deliver accounts one PUBLISH.
func (s *subscriber) deliver(pk *mqttc.Packet, now int64) error {
	h, ok := ParseHeader(pk.Payload)
	if !ok || h.Nonce != s.r.nonce {
		s.stale++
		return nil
	}
	st := s.stream(h.Publisher)
	if st == nil {
		s.stale++
		return nil
	}
	s.recv.Add(1)
	s.lastRecv.Store(now)
	if st.set.max >= 0 && h.Seq <= uint64(st.set.max) {
		if st.set.has(h.Seq) {
			s.dupes++
			return nil
		}
		s.ooo++
	}
	st.set.add(h.Seq)
	s.uniq.Add(1)
	s.hist.Record(time.Duration(now - h.SentNanos))
	if s.onMessage != nil {
		return s.onMessage(pk, h)
	}
	return nil
}

func (s *subscriber) read() error {
	dirty := false
	for {
		pk, err := s.conn.Read()
		if err != nil {
			if s.r.closing.Load() {
				return nil
			}
			return fmt.Errorf("subscriber %d: %w", s.idx, err)
		}
		switch pk.Type {
		case mqttc.PUBLISH:
			if err := s.deliver(&pk, time.Now().UnixNano()); err != nil {
				return err
			}
			dirty = dirty || s.onMessage != nil
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
		case mqttc.PUBREC: // the responder's own QoS 2 responses
			if err := s.conn.WriteAck(mqttc.PUBREL, pk.PacketID); err != nil {
				return err
			}
			dirty = true
		case mqttc.DISCONNECT:
			return fmt.Errorf("subscriber %d: %w: reason %#x", s.idx, mqttc.ErrServerDiscon, pk.Reason)
		}
		// Acks are batched: written only when the next Read would block,
		// and with an ack delay by the run's flusher, so that a
		// subscriber receiving one message per read does not pay one
		// write syscall per ack as well. Responses are never delayed.
		if dirty && !s.conn.ReadBuffered() {
			if s.r.cfg.AckDelay > 0 && s.onMessage == nil {
				s.ackPending.Store(true)
			} else if err := s.conn.Flush(); err != nil {
				return err
			}
			dirty = false
		}
	}
}

// flushAcks writes the subscribers' pending acks every cfg.AckDelay until
// the run ends.
func (r *run) flushAcks(subs []*subscriber) {
	if r.cfg.AckDelay <= 0 {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.cfg.AckDelay)
		defer t.Stop()
		for {
			select {
			case <-r.quit:
				return
			case <-t.C:
			}
			for _, s := range subs {
				if s.ackPending.Swap(false) {
					// A failed flush surfaces in the read loop.
					_ = s.conn.Flush()
				}
			}
		}
	}()
}
