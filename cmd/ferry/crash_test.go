package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// crashConn is a minimal MQTT 3.1.1 client that returns errors instead of
// failing the test: the broker under it is killed on purpose.
type crashConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialCrash(addr, id string, clean bool) (*crashConn, bool, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, false, err
	}
	cc := &crashConn{c: c, r: bufio.NewReader(c)}
	if err := cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: clean, Keepalive: 30}}); err != nil {
		c.Close()
		return nil, false, err
	}
	ack, err := cc.read(5 * time.Second)
	if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		c.Close()
		return nil, false, fmt.Errorf("connack %v %v", ack.ReasonCode, err)
	}
	return cc, ack.SessionPresent, nil
}

func (cc *crashConn) send(pk packets.Packet) error {
	b, err := testutil.EncodePacket(pk, 4)
	if err != nil {
		return err
	}
	_ = cc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = cc.c.Write(b)
	return err
}

func (cc *crashConn) read(timeout time.Duration) (packets.Packet, error) {
	_ = cc.c.SetReadDeadline(time.Now().Add(timeout))
	return testutil.ReadPacket(cc.r, 4)
}

// crashStream is one publisher and one persistent subscriber on a topic of
// their own.
type crashStream struct {
	name string // the topic is crash/<name>
	qos  byte
	// slow: the publisher sends up to slowPubRate messages a second with
	// a window of them in flight; the subscriber reads only slowReadRate a
	// second during slowKills kills, then as fast as it can during
	// fastKills, so its queue outgrows the memory window, is spilled to
	// the store, and empties again.
	slow bool
}

// The slow stream's pace. The publisher manages 500 to 1,000 messages a
// second with sync always under -race on 2 cores, about 150 between two
// kills; the slow subscriber reads 100 a second for slowKills kills, so
// its queue outgrows the connected memory window (200), then catches up
// during fastKills kills.
const (
	slowPubRate, slowPubWindow = 1000, 200
	slowReadRate               = 100
	slowKills, fastKills       = 3, 2
)

// crashLedger records what each publisher had acknowledged and what the
// subscriber received, per stream.
type crashLedger struct {
	mu       sync.Mutex
	acked    map[string]map[uint64]bool // stream -> seq acknowledged by the broker
	received map[string][]uint64        // stream -> seqs in arrival order (application deliveries)
	dupByID  [][2]uint64                // QoS 2 publishes taken as duplicates: packet id, seq
	reused   [][3]uint64                // of those, with another message: packet id, seq delivered, seq discarded
	// trace is every QoS 2 PUBLISH and PUBREL the subscriber read, so a
	// failure can say how a message came twice.
	trace []qos2Event
}

// qos2Event is a packet a QoS 2 subscriber read: conn counts its
// connections, seq is 0 for a PUBREL.
type qos2Event struct {
	conn int
	kind string // "publish" or "pubrel"
	pid  uint16
	seq  uint64
	dup  bool
}

// traceOf returns the events of seq and of the packet ids it came with.
func (l *crashLedger) traceOf(seq uint64) []qos2Event {
	pids := map[uint16]bool{}
	for _, e := range l.trace {
		if e.seq == seq {
			pids[e.pid] = true
		}
	}
	var out []qos2Event
	for _, e := range l.trace {
		if e.seq == seq || pids[e.pid] && e.kind == "pubrel" {
			out = append(out, e)
		}
	}
	return out
}

func (l *crashLedger) ack(stream string, seq uint64) {
	l.mu.Lock()
	l.acked[stream][seq] = true
	l.mu.Unlock()
}

func (l *crashLedger) deliver(stream string, seq uint64) {
	l.mu.Lock()
	l.received[stream] = append(l.received[stream], seq)
	l.mu.Unlock()
}

// pubStream is what crashPublisher publishes and where it reports each
// acknowledgement.
type pubStream struct {
	id, topic string
	qos       byte
	payload   func(seq uint64) []byte
	acked     func(seq uint64) // the broker acknowledged seq (PUBACK or PUBREC)
}

// crashPublisher publishes seq 1, 2, ... at qos until stop, one at a time,
// as a conforming client library does: it resends the unacknowledged
// PUBLISH after every reconnect (DUP set), takes only an acknowledgement
// with its packet id as one, and for QoS 2 keeps the packet ids it got a
// PUBREC for until their PUBCOMP, resending their PUBREL after a reconnect
// [MQTT-4.4.0-1]. mochi also resends its PUBREC state on reconnect; a PUBREC
// for an id other than the current one is answered with PUBREL.
//
// paho cannot stand in for it: when it resends a stored PUBLISH after a
// reconnect it completes the original token as if acknowledged, and the
// next Publish can overtake the resend on the wire.
func crashPublisher(addr string, s pubStream, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	qos := s.qos
	seq := uint64(1)
	dup := false
	released := map[uint16]bool{} // PUBREL sent, PUBCOMP not yet received
	pubrel := func(cc *crashConn, pid uint16) error {
		released[pid] = true
		return cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pid})
	}
	for {
		cc := redial(addr, s.id, stop)
		if cc == nil {
			return
		}
		var err error
		for pid := range released {
			if err = pubrel(cc, pid); err != nil {
				break
			}
		}
		for err == nil {
			select {
			case <-stop:
				cc.c.Close()
				return
			default:
			}
			pid := uint16(seq%60000 + 1)
			if err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Dup: dup},
				TopicName: s.topic, PacketID: pid, Payload: s.payload(seq)}); err != nil {
				break
			}
			dup = true
			acked := false
			for err == nil {
				var ack packets.Packet
				if ack, err = cc.read(5 * time.Second); err != nil {
					break
				}
				switch {
				case ack.FixedHeader.Type == packets.Puback && qos == 1 && ack.PacketID == pid:
					acked = true
				case ack.FixedHeader.Type == packets.Pubrec && ack.PacketID == pid && !acked:
					acked = true // the broker owns the message now
					s.acked(seq)
					err = pubrel(cc, pid)
					continue
				case ack.FixedHeader.Type == packets.Pubrec:
					err = pubrel(cc, ack.PacketID) // state of an earlier flow
					continue
				case ack.FixedHeader.Type == packets.Pubcomp:
					delete(released, ack.PacketID)
					if ack.PacketID != pid {
						continue
					}
				default:
					continue
				}
				break
			}
			if !acked {
				break
			}
			if qos == 1 {
				s.acked(seq)
			}
			seq++
			dup = false
		}
		cc.c.Close()
	}
}

// redial connects a publisher as id with its persistent session, retrying
// while the broker restarts; nil once stop is closed.
func redial(addr, id string, stop <-chan struct{}) *crashConn {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if cc, _, err := dialCrash(addr, id, false); err == nil {
			return cc
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crashWindowPublisher publishes QoS 1 seq 1, 2, ... at rate messages a
// second with up to window of them unacknowledged, as a conforming client
// with an in-flight window does: after every reconnect it first resends,
// in order and with DUP set, every PUBLISH not acknowledged yet.
func crashWindowPublisher(addr string, s pubStream, rate, window int, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	var mu sync.Mutex
	var unacked []uint64 // in publish order
	next := uint64(1)
	pid := func(seq uint64) uint16 { return uint16(seq%60000 + 1) }
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		cc := redial(addr, s.id, stop)
		if cc == nil {
			return
		}
		room := make(chan struct{}, window) // a token per free slot of the window
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			for {
				ack, err := cc.read(time.Minute)
				if err != nil {
					return
				}
				if ack.FixedHeader.Type != packets.Puback {
					continue
				}
				mu.Lock()
				for i, seq := range unacked {
					if pid(seq) == ack.PacketID {
						unacked = slices.Delete(unacked, i, i+1)
						s.acked(seq)
						room <- struct{}{}
						break
					}
				}
				mu.Unlock()
			}
		}()
		mu.Lock()
		resend := slices.Clone(unacked)
		mu.Unlock()
		for range window - len(resend) {
			room <- struct{}{}
		}
		var err error
		for _, seq := range resend {
			if err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true},
				TopicName: s.topic, PacketID: pid(seq), Payload: s.payload(seq)}); err != nil {
				break
			}
		}
	send:
		for err == nil {
			select {
			case <-stop:
				break send
			case <-readerDone:
				break send
			case <-room:
			}
			select {
			case <-stop:
				break send
			case <-readerDone:
				break send
			case <-tick.C:
			}
			mu.Lock()
			seq := next
			next++
			unacked = append(unacked, seq)
			mu.Unlock()
			err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
				TopicName: s.topic, PacketID: pid(seq), Payload: s.payload(seq)})
		}
		cc.c.Close()
		<-readerDone
	}
}

// crashSubscriber holds the persistent session of stream s and records
// application deliveries. For QoS 2 it delivers on PUBLISH and remembers
// the packet id until PUBREL (MQTT 4.3.3 method B), so a resent QoS 2
// message is not delivered twice. A slow stream's subscriber takes
// slowReadRate messages a second while slow is set.
func crashSubscriber(t *testing.T, addr string, s crashStream, l *crashLedger, stop <-chan struct{}, slow *atomic.Bool, wg *sync.WaitGroup) {
	defer wg.Done()
	id := "crash-sub-" + s.name
	unreleased := map[uint16]uint64{} // packet id -> seq of the message delivered with it
	subscribed := false
	conns := 0
	// A slow stream's subscriber reads at slowReadRate: what it has not
	// read waits in the socket buffers and mochi's in-flight window, sent
	// but not delivered.
	var pace <-chan time.Time
	if s.slow {
		tick := time.NewTicker(time.Second / slowReadRate)
		defer tick.Stop()
		pace = tick.C
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		cc, present, err := dialCrash(addr, id, false)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		conns++
		if !present && subscribed {
			t.Errorf("%s: session lost across a restart (session present = false)", id)
		}
		if !present {
			if cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "crash/" + s.name, Qos: s.qos}}}) != nil {
				cc.c.Close()
				continue
			}
		}
		// Packets are read as they come; the application takes them from
		// in. When the connection breaks, a slow application forgets what
		// it had read but not processed (it restarts too): the broker owes
		// it those messages again.
		in, dead := make(chan packets.Packet, 1<<16), make(chan struct{})
		go func() {
			defer close(in)
			defer close(dead)
			for {
				pk, err := cc.read(200 * time.Millisecond)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						select {
						case <-stop:
						default:
							continue
						}
					}
					return
				}
				in <- pk
			}
		}()
	process:
		for pk := range in {
			switch pk.FixedHeader.Type {
			case packets.Suback:
				subscribed = true
			case packets.Publish:
				if pace != nil && slow.Load() {
					select {
					case <-pace:
					case <-stop:
					case <-dead:
						break process
					}
				}
				seq := binary.BigEndian.Uint64(pk.Payload)
				if pk.FixedHeader.Qos == 2 {
					l.mu.Lock()
					l.trace = append(l.trace, qos2Event{conn: conns, kind: "publish", pid: pk.PacketID, seq: seq, dup: pk.FixedHeader.Dup})
					l.mu.Unlock()
					if prev, ok := unreleased[pk.PacketID]; !ok {
						unreleased[pk.PacketID] = seq
						l.deliver(s.name, seq)
					} else {
						l.mu.Lock()
						l.dupByID = append(l.dupByID, [2]uint64{uint64(pk.PacketID), seq})
						if prev != seq {
							// The broker reused a packet id it had not
							// released for another message: per the spec
							// it is discarded, so the message is lost.
							l.reused = append(l.reused, [3]uint64{uint64(pk.PacketID), prev, seq})
						}
						l.mu.Unlock()
					}
					_ = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
				} else {
					l.deliver(s.name, seq)
					_ = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				}
			case packets.Pubrel:
				l.mu.Lock()
				l.trace = append(l.trace, qos2Event{conn: conns, kind: "pubrel", pid: pk.PacketID})
				l.mu.Unlock()
				delete(unreleased, pk.PacketID)
				_ = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
			}
		}
		cc.c.Close()
		for range in { // until the reader has stopped
		}
	}
}

// TestCrashRecovery kills a real ferry process with SIGKILL at random
// moments, restarting it on the same data directory, while QoS 1 and QoS 2
// publishers and persistent subscribers run: 30 times with storage.sync
// always, 20 with batch. With sync always, every message the broker
// acknowledged (PUBACK, PUBREC) reaches the subscriber; in every mode the
// first deliveries come in publish order, and no QoS 2 message is delivered
// twice. With sync always a third, slow subscriber acknowledges fewer
// messages than its publisher sends, so its queue outgrows the memory
// window: spilled to the store, fed back as it acknowledges, and loaded
// after each crash partly in memory, partly spilled.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: -short")
	}
	kills := map[string]int{"always": 30, "batch": 20}
	if k, err := strconv.Atoi(os.Getenv("FERRY_CRASH_KILLS")); err == nil {
		kills = map[string]int{"always": k, "batch": k}
	}
	for _, mode := range []string{"always", "batch"} {
		t.Run(mode, func(t *testing.T) {
			streams := []crashStream{{name: "q1", qos: 1}, {name: "q2", qos: 2}}
			if mode == "always" {
				streams = append(streams, crashStream{name: "slow", qos: 1, slow: true})
			}
			crashRun(t, mode, kills[mode], streams)
		})
	}
}

// crashConfig is the broker's configuration in the crash test. Small
// memory windows: 20 messages per session offline, 200 connected
// (max_inflight/2). A connected subscriber that falls behind holds up to
// 200 messages in memory, sent on the live path, before its queue spills;
// a restart then loads 20 of them and spills the rest behind what the
// drain had fed from the store, within the traffic between two kills.
const crashConfig = `
limits:
  max_inflight: 400
  memory_window: 20
storage:
  sync: %s
`

func crashRun(t *testing.T, mode string, kills int, streams []crashStream) {
	bin := testutil.BuildFerry(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, crashConfig, mode), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreeAddr(t)
	args := []string{"-c", cfg, "--mqtt-addr", addr, "--ws-addr", "", "--admin-addr", "", "--data-dir", filepath.Join(dir, "data")}
	proc := testutil.StartFerry(t, bin, args...)

	l := &crashLedger{acked: map[string]map[uint64]bool{}, received: map[string][]uint64{}}
	for _, s := range streams {
		l.acked[s.name] = map[uint64]bool{}
	}
	stopPub, stopSub := make(chan struct{}), make(chan struct{})
	var slow atomic.Bool
	var pubs, subs sync.WaitGroup
	for _, s := range streams {
		subs.Add(1)
		go crashSubscriber(t, addr, s, l, stopSub, &slow, &subs)
	}
	// Let the subscribers' sessions exist before anything is published.
	testutil.Eventually(t, 10*time.Second, "subscriber sessions", func() bool {
		return proc.Addr("tcp0") != "" && len(proc.Log()) > 0
	})
	time.Sleep(300 * time.Millisecond) //nolint: the subscribers connect on their own goroutines; there is nothing to poll without a hook into them
	for _, s := range streams {
		pubs.Add(1)
		ps := pubStream{id: "crash-pub-" + s.name, topic: "crash/" + s.name, qos: s.qos,
			payload: func(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) },
			acked:   func(seq uint64) { l.ack(s.name, seq) }}
		if s.slow {
			go crashWindowPublisher(addr, ps, slowPubRate, slowPubWindow, stopPub, &pubs)
		} else {
			go crashPublisher(addr, ps, stopPub, &pubs)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	if kills == 0 {
		time.Sleep(3 * time.Second) // traffic without a crash, for comparison
	}
	for i := range kills {
		// The slow subscriber falls behind for slowKills kills, then
		// catches up: each time its queue grows from empty past the memory
		// window, what the window held on the live path meets what the
		// drain fed back from the store.
		slow.Store(i%(slowKills+fastKills) < slowKills)
		time.Sleep(time.Duration(50+rng.IntN(300)) * time.Millisecond) // the random moment
		proc.Signal(t, syscall.SIGKILL)
		_ = proc.Wait(t, 10*time.Second)
		proc = testutil.StartFerry(t, bin, args...)
		t.Logf("kill %d: restarted", i+1)
	}
	close(stopPub)
	pubs.Wait()
	slow.Store(false) // the slow subscriber catches up

	want := map[string]int{}
	l.mu.Lock()
	for name, acked := range l.acked {
		want[name] = len(acked)
	}
	l.mu.Unlock()
	missing := func() map[string]int {
		l.mu.Lock()
		defer l.mu.Unlock()
		m := map[string]int{}
		for name, acked := range l.acked {
			got := map[uint64]bool{}
			for _, s := range l.received[name] {
				got[s] = true
			}
			for s := range acked {
				if !got[s] {
					m[name]++
				}
			}
		}
		return m
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		n := 0
		for _, v := range missing() {
			n += v
		}
		if n == 0 {
			break
		}
	}
	close(stopSub)
	subs.Wait()

	m := missing()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range streams {
		t.Logf("sync %s, %s: acknowledged %d, lost %d, deliveries %d", mode, s.name, want[s.name], m[s.name], len(l.received[s.name]))
		if want[s.name] < 50 {
			t.Errorf("%s: too few messages acknowledged to mean anything: %d", s.name, want[s.name])
		}
		var lost []uint64
		got := map[uint64]bool{}
		for _, seq := range l.received[s.name] {
			got[seq] = true
		}
		for seq := range l.acked[s.name] {
			if !got[seq] {
				lost = append(lost, seq)
			}
		}
		slices.Sort(lost)
		if len(lost) > 0 {
			t.Logf("%s lost (first 30 of %d): %v", s.name, len(lost), lost[:min(30, len(lost))])
		}
		if mode == "always" && len(lost) > 0 {
			t.Errorf("%s: %d acknowledged messages lost with sync always", s.name, len(lost))
		}
		// First deliveries in publish order: a message seen for the first
		// time after a newer one came out of order.
		var maxSeen uint64
		seen := map[uint64]bool{}
		var late [][2]uint64
		for _, seq := range l.received[s.name] {
			if seen[seq] {
				if s.qos == 2 {
					t.Errorf("%s: QoS 2 message %d delivered twice; what the subscriber read of it and its packet ids: %+v", s.name, seq, l.traceOf(seq))
				}
				continue
			}
			seen[seq] = true
			if seq < maxSeen {
				late = append(late, [2]uint64{seq, maxSeen})
			}
			maxSeen = max(maxSeen, seq)
		}
		if len(late) > 0 {
			t.Errorf("%s: %d first deliveries out of publish order (first 10: message, after): %v", s.name, len(late), late[:min(10, len(late))])
		}
	}
	if len(l.dupByID) > 0 {
		t.Logf("QoS 2 publishes taken as resends of an unreleased packet id (first 10): %v", l.dupByID[:min(10, len(l.dupByID))])
	}
	if len(l.reused) > 0 {
		t.Errorf("QoS 2 packet ids reused before PUBREL for another message (first 10 of %d; id, delivered, discarded): %v",
			len(l.reused), l.reused[:min(10, len(l.reused))])
	}
	if t.Failed() {
		t.Logf("last broker log:\n%s", proc.Log())
	}
}
