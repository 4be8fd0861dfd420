package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Failover tests: three ferry processes (testutil.FerryCluster) and MQTT
// clients that do what a production client does when its node dies,
// freezes or restarts: connect to another node with their persistent
// session and carry on. A ledger compares what the publisher had
// acknowledged with what the subscriber received.
//
// The clients are raw MQTT 3.1.1 (crashConn, from crash_test.go): a
// client library hides what these tests check (session present, resends,
// duplicates), and paho's resend after a reconnect completes the original
// token as if acknowledged (see crashPublisher).

const (
	// failoverConnack bounds the wait for a CONNACK: a node taking over a
	// session waits up to 3 s for the previous node to let go of it.
	failoverConnack = 10 * time.Second
	// failoverPubAck is how long a publisher waits for any acknowledgement
	// before it takes its connection for dead.
	failoverPubAck = 20 * time.Second
	// failoverKeepalive is the clients' keepalive: a node that answers
	// nothing for twice that is left for another.
	failoverKeepalive = 5 * time.Second
)

// dialNode connects to addr as id with keepalive ka, as MQTT 3.1.1, and
// returns the connection and whether the session was present. Errors,
// CONNACK refusals included, are returned: the node may be dead.
func dialNode(addr, id string, clean bool, ka time.Duration) (*crashConn, bool, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, false, err
	}
	cc := &crashConn{c: c, r: bufio.NewReader(c)}
	if err := cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: clean,
			Keepalive: uint16(ka / time.Second)}}); err != nil {
		c.Close()
		return nil, false, err
	}
	ack, err := cc.read(failoverConnack)
	if err == nil && (ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0) {
		err = fmt.Errorf("%s refused %s: %s reason 0x%02x", addr, id, packets.PacketNames[ack.FixedHeader.Type], ack.ReasonCode)
	}
	if err != nil {
		c.Close()
		return nil, false, err
	}
	_ = c.SetReadDeadline(time.Time{})
	return cc, ack.SessionPresent, nil
}

// dialAny connects id to addrs[from], else to the next ones in turn,
// round and round, until one accepts it; it returns the connection and
// the index of its node, or nil once stop is closed.
func dialAny(addrs []string, from int, id string, clean bool, ka time.Duration, stop <-chan struct{}) (*crashConn, bool, int) {
	for i := from; ; i++ {
		select {
		case <-stop:
			return nil, false, -1
		default:
		}
		k := i % len(addrs)
		if cc, present, err := dialNode(addrs[k], id, clean, ka); err == nil {
			return cc, present, k
		}
		if (i+1-from)%len(addrs) == 0 { // every node tried: pause
			select {
			case <-stop:
				return nil, false, -1
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func seqPayload(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// streamLedger is what a stream's publisher had acknowledged and what its
// subscriber received. Sequence 0 is a probe, not part of the stream.
type streamLedger struct {
	mu         sync.Mutex
	acked      map[uint64]bool
	resent     map[uint64]bool // sent again after a reconnect: may come after newer ones
	deliveries []delivery      // in arrival order
	probes     int
	subConns   []subConn
	pubConns   []string
	problems   []string // what the clients saw go wrong (session lost...)
}

type delivery struct {
	seq  uint64
	conn int // index in subConns
}

// subConn is a subscriber connection: its node and whether the session
// was present.
type subConn struct {
	addr    string
	present bool
}

func newStreamLedger() *streamLedger {
	return &streamLedger{acked: map[uint64]bool{}, resent: map[uint64]bool{}}
}

func (l *streamLedger) ack(seq uint64) {
	l.mu.Lock()
	l.acked[seq] = true
	l.mu.Unlock()
}

func (l *streamLedger) resend(seq uint64) {
	l.mu.Lock()
	l.resent[seq] = true
	l.mu.Unlock()
}

func (l *streamLedger) deliver(seq uint64, conn int) {
	l.mu.Lock()
	if seq == 0 {
		l.probes++
	} else {
		l.deliveries = append(l.deliveries, delivery{seq, conn})
	}
	l.mu.Unlock()
}

func (l *streamLedger) problem(format string, args ...any) {
	l.mu.Lock()
	l.problems = append(l.problems, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// counts returns how many messages were acknowledged, delivered (with
// duplicates) and probes delivered.
func (l *streamLedger) counts() (acked, delivered, probes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked), len(l.deliveries), l.probes
}

func (l *streamLedger) subConnCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.subConns)
}

// has says whether seq was delivered.
func (l *streamLedger) has(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.deliveries, func(d delivery) bool { return d.seq == seq })
}

// missing returns the acknowledged messages not delivered, in order.
func (l *streamLedger) missing() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := make(map[uint64]bool, len(l.deliveries))
	for _, d := range l.deliveries {
		got[d.seq] = true
	}
	var out []uint64
	for seq := range l.acked {
		if !got[seq] {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}

// waitDelivered waits up to timeout until every acknowledged message was
// delivered, failing the test with the first missing ones.
func (l *streamLedger) waitDelivered(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(l.missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if m := l.missing(); len(m) > 0 {
		acked, delivered, _ := l.counts()
		t.Errorf("%d of %d acknowledged messages never delivered within %s (deliveries %d); first 30: %v",
			len(m), acked, timeout, delivered, m[:min(30, len(m))])
	}
}

// verify checks a finished stream and logs its counts: every acknowledged
// message delivered at least once; on each subscriber connection the
// sequence numbers never go down except for messages the publisher sent
// again after a reconnect (a resend is stored after newer messages the
// node had stored before it died; a redelivery to a resumed session
// starts a new connection, so it does not count); and the session present
// at every reconnect.
func (l *streamLedger) verify(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[uint64]int{}
	maxOn := map[int]uint64{}
	var backwards [][3]uint64
	for _, d := range l.deliveries {
		seen[d.seq]++
		if d.seq < maxOn[d.conn] && !l.resent[d.seq] {
			backwards = append(backwards, [3]uint64{d.seq, maxOn[d.conn], uint64(d.conn)})
		}
		maxOn[d.conn] = max(maxOn[d.conn], d.seq)
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	lost := 0
	for seq := range l.acked {
		if seen[seq] == 0 {
			lost++
		}
	}
	t.Logf("acknowledged %d, delivered %d distinct (%d deliveries, %d duplicates), lost %d, resent by the publisher %d, probes %d",
		len(l.acked), len(seen), len(l.deliveries), dups, lost, len(l.resent), l.probes)
	t.Logf("publisher connections: %v", l.pubConns)
	t.Logf("subscriber connections: %v", l.subConns)
	if len(l.acked) == 0 {
		t.Errorf("nothing acknowledged: the stream never ran")
	}
	if len(backwards) > 0 {
		t.Errorf("%d deliveries went back in the stream on one connection (not a resend; first 10: message, after, connection): %v",
			len(backwards), backwards[:min(10, len(backwards))])
	}
	for _, p := range l.problems {
		t.Errorf("client: %s", p)
	}
}

// streamPub publishes a QoS 1 stream, payload the sequence number (1, 2,
// ...), as a conforming client with an in-flight window does across
// nodes: with a persistent session, up to window messages unacknowledged;
// when its connection ends (or no acknowledgement comes for
// failoverPubAck) it connects to the next node of addrs and first resends,
// in order and with DUP set, every PUBLISH not acknowledged.
type streamPub struct {
	addrs  []string
	id     string
	topic  string
	total  uint64 // stop once total are acknowledged; 0: run until stop
	window int
	rate   int // at most rate new messages a second; 0: no limit
}

func (p streamPub) run(l *streamLedger, stop <-chan struct{}) {
	var mu sync.Mutex
	var unacked []uint64 // in publish order
	next := uint64(1)
	pid := func(seq uint64) uint16 { return uint16(seq%60000 + 1) }
	var tick <-chan time.Time
	if p.rate > 0 {
		tk := time.NewTicker(time.Second / time.Duration(p.rate))
		defer tk.Stop()
		tick = tk.C
	}
	finished := func() (sent, acked bool) {
		mu.Lock()
		defer mu.Unlock()
		sent = p.total > 0 && next > p.total
		return sent, sent && len(unacked) == 0
	}
	at := 0
	for {
		if _, done := finished(); done {
			return
		}
		cc, _, k := dialAny(p.addrs, at, p.id, false, 30*time.Second, stop)
		if cc == nil {
			return
		}
		at = k
		l.mu.Lock()
		l.pubConns = append(l.pubConns, p.addrs[k])
		l.mu.Unlock()
		room := make(chan struct{}, p.window) // a token per free slot of the window
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			for {
				ack, err := cc.read(failoverPubAck)
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
						l.ack(seq)
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
		for range p.window - len(resend) {
			room <- struct{}{}
		}
		var err error
		for _, seq := range resend {
			l.resend(seq)
			if err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true},
				TopicName: p.topic, PacketID: pid(seq), Payload: seqPayload(seq)}); err != nil {
				break
			}
		}
	send:
		for err == nil {
			if sent, acked := finished(); acked {
				break
			} else if sent {
				select {
				case <-stop:
					break send
				case <-readerDone:
					break send
				case <-time.After(20 * time.Millisecond):
				}
				continue
			}
			select {
			case <-stop:
				break send
			case <-readerDone:
				break send
			case <-room:
			}
			if tick != nil {
				select {
				case <-stop:
					break send
				case <-readerDone:
					break send
				case <-tick:
				}
			}
			mu.Lock()
			seq := next
			next++
			unacked = append(unacked, seq)
			mu.Unlock()
			err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
				TopicName: p.topic, PacketID: pid(seq), Payload: seqPayload(seq)})
		}
		cc.c.Close()
		<-readerDone
		select {
		case <-stop:
			return
		default:
		}
		at = (at + 1) % len(p.addrs) // this node failed it: try the next first
	}
}

// streamSub holds a persistent QoS 1 subscription to topic as id,
// acknowledging each message as it comes and recording it. It sends
// PINGREQ when it has sent nothing for half its keepalive; a node it
// heard nothing from for two keepalives is taken for dead. When its
// connection ends it connects to the next node of addrs with clean=false.
type streamSub struct {
	addrs []string
	id    string
	topic string
	ka    time.Duration
}

func (s streamSub) run(l *streamLedger, stop <-chan struct{}) {
	subscribed := false
	at := 0
	for {
		cc, present, k := dialAny(s.addrs, at, s.id, false, s.ka, stop)
		if cc == nil {
			return
		}
		at = k
		l.mu.Lock()
		conn := len(l.subConns)
		l.subConns = append(l.subConns, subConn{s.addrs[k], present})
		l.mu.Unlock()
		if subscribed && !present {
			l.problem("%s: session lost: reconnected to %s with clean=false, session present = false", s.id, s.addrs[k])
		}
		// Packets are read on a goroutine: a read never times out halfway
		// through a packet.
		in := make(chan packets.Packet, 4096)
		go func() {
			defer close(in)
			for {
				pk, err := testutil.ReadPacket(cc.r, 4)
				if err != nil {
					return
				}
				in <- pk
			}
		}()
		var err error
		if !present {
			err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: s.topic, Qos: 1}}})
		}
		lastRx, lastTx := time.Now(), time.Now()
		tick := time.NewTicker(s.ka / 4)
	loop:
		for err == nil {
			select {
			case <-stop:
				break loop
			case pk, ok := <-in:
				if !ok {
					break loop
				}
				lastRx = time.Now()
				switch pk.FixedHeader.Type {
				case packets.Suback:
					if len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] >= 0x80 {
						l.problem("%s: SUBACK %v", s.id, pk.ReasonCodes)
					}
					subscribed = true
				case packets.Publish:
					if len(pk.Payload) == 8 {
						l.deliver(binary.BigEndian.Uint64(pk.Payload), conn)
					}
					if pk.FixedHeader.Qos > 0 {
						err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
						lastTx = time.Now()
					}
				}
			case <-tick.C:
				if time.Since(lastRx) > 2*s.ka {
					break loop // the node is gone quiet: frozen, or cut off
				}
				if time.Since(lastTx) >= s.ka/2 {
					err = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
					lastTx = time.Now()
				}
			}
		}
		tick.Stop()
		cc.c.Close()
		for range in { // until the reader has stopped
		}
		select {
		case <-stop:
			return
		default:
		}
		at = (at + 1) % len(s.addrs)
	}
}

// probeStream publishes probes (sequence 0) on topic at addr, QoS 1, from
// a clean session of its own, until got says one arrived: a node learns
// another node's persistent subscriptions from the sessions bucket a
// moment after their SUBACK.
func probeStream(t *testing.T, addr, topic string, got func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		if cc, _, err := dialNode(addr, "probe-"+strconv.Itoa(i), true, 30*time.Second); err == nil {
			_ = cc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
				TopicName: topic, PacketID: 1, Payload: seqPayload(0)})
			_, _ = cc.read(5 * time.Second)
			cc.c.Close()
		}
		for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if got() {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("a message published on %s to %s did not reach its persistent subscriber within 20 s", addr, topic)
		}
	}
}

// adminClient bounds every admin request: a frozen node answers nothing.
var adminClient = &http.Client{Timeout: 2 * time.Second}

// metricValue reads one series of a node's /metrics: a metric name, with
// its labels if it has any (ferry_cluster_node_connections{node="n0"}).
// ok is false when the node does not answer or has no such series.
func metricValue(admin, series string) (float64, bool) {
	resp, err := adminClient.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// nodeReadyz returns a node's /readyz status code and body (0 when it does
// not answer).
func nodeReadyz(admin string) (int, string) {
	resp, err := adminClient.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// waitMembers waits until every running node of c counts n members.
func waitMembers(t *testing.T, c *testutil.FerryCluster, n int, nodes ...int) {
	t.Helper()
	if len(nodes) == 0 {
		for i := range c.Len() {
			nodes = append(nodes, i)
		}
	}
	for _, i := range nodes {
		testutil.Eventually(t, 30*time.Second, fmt.Sprintf("node %s counts %d members (ferry_cluster_nodes)", c.ID(i), n), func() bool {
			v, ok := metricValue(c.AdminAddr(i), "ferry_cluster_nodes")
			return ok && v == float64(n)
		})
	}
}

// runClients starts goroutines and returns a function that stops them
// and waits; it also runs at test end.
func runClients(t *testing.T, fns ...func(stop <-chan struct{})) (stopAll func()) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, f := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(stop)
		}()
	}
	var once sync.Once
	stopAll = func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
		})
	}
	t.Cleanup(stopAll)
	return stopAll
}

// TestClusterResumeOnAnotherNode: a persistent subscriber (clean session
// false) subscribes on node 1 and goes away; 1,000 QoS 1 messages are
// published on node 0; the subscriber connects to node 2 with clean=false,
// finds its session and gets the 1,000, in order, once each.
func TestClusterResumeOnAnotherNode(t *testing.T) {
	for _, mode := range clusterModes {
		t.Run(mode.name, func(t *testing.T) {
			start := time.Now()
			c := startTestCluster(t, mode.external)
			waitMembers(t, c, 3)
			t.Logf("cluster ready after %s", time.Since(start).Round(time.Millisecond))
			const count = 1000
			topic := "resume/" + mode.name
			l := newStreamLedger()
			sub := streamSub{addrs: []string{c.MQTTAddr(1)}, id: "resume-sub", topic: topic, ka: failoverKeepalive}
			stopSub := runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
			probeStream(t, c.MQTTAddr(0), topic, func() bool { _, _, p := l.counts(); return p > 0 })
			stopSub() // the subscriber goes away; its session stays

			t0 := time.Now()
			pubDone := make(chan struct{})
			runClients(t, func(stop <-chan struct{}) {
				defer close(pubDone)
				streamPub{addrs: []string{c.MQTTAddr(0)}, id: "resume-pub", topic: topic, total: count, window: 32}.run(l, stop)
			})
			select {
			case <-pubDone:
			case <-time.After(60 * time.Second):
				acked, _, _ := l.counts()
				t.Fatalf("publisher on node %s: %d of %d acknowledged after 60 s", c.ID(0), acked, count)
			}
			t.Logf("%d messages acknowledged on node %s in %s", count, c.ID(0), time.Since(t0).Round(time.Millisecond))

			t0 = time.Now()
			sub.addrs = []string{c.MQTTAddr(2)}
			runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
			l.waitDelivered(t, 60*time.Second)
			t.Logf("%d messages resumed on node %s in %s", count, c.ID(2), time.Since(t0).Round(time.Millisecond))
			l.mu.Lock()
			defer l.mu.Unlock()
			if len(l.subConns) != 2 || !l.subConns[1].present {
				t.Errorf("subscriber connections %v: want the session present on node %s", l.subConns, c.ID(2))
			}
			for i, d := range l.deliveries {
				if d.seq != uint64(i+1) {
					t.Fatalf("on node %s: message %d came where %d was due (in order, once each); probes %d", c.ID(2), d.seq, i+1, l.probes)
				}
			}
			if len(l.deliveries) != count {
				t.Errorf("%d deliveries, want %d", len(l.deliveries), count)
			}
			if l.probes > 1 {
				t.Logf("the probe, acknowledged on node %s, came again on node %s", c.ID(1), c.ID(2))
			}
		})
	}
}

// TestClusterLoneQueuedMessage: a persistent subscriber on node 2 gets
// each of 50 QoS 1 messages published one at a time on node 1 before the
// next is published. A message queued for a connected session must not
// wait for another one to push it out (a device that gets one command a
// day).
func TestClusterLoneQueuedMessage(t *testing.T) {
	c := startTestCluster(t, false)
	waitMembers(t, c, 3)
	const topic, count = "lone/t", 50
	l := newStreamLedger()
	sub := streamSub{addrs: []string{c.MQTTAddr(2)}, id: "lone-sub", topic: topic, ka: failoverKeepalive}
	runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
	probeStream(t, c.MQTTAddr(1), topic, func() bool { _, _, p := l.counts(); return p > 0 })
	pub := clusterClient(t, c.MQTTAddr(1), "lone-pub", true, nil)
	var stuck []string
	for seq := uint64(1); seq <= count && len(stuck) < 3; seq++ {
		waitTok(t, pub.Publish(topic, 1, false, seqPayload(seq)), "publish")
		deadline := time.Now().Add(5 * time.Second)
		for !l.has(seq) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if l.has(seq) {
			continue
		}
		// Does the next message push it out?
		waitTok(t, pub.Publish(topic, 1, false, seqPayload(seq+1)), "publish")
		seq++
		deadline = time.Now().Add(5 * time.Second)
		for !l.has(seq) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		stuck = append(stuck, fmt.Sprintf("%d (delivered with the next: %v)", seq-1, l.has(seq-1)))
	}
	if len(stuck) > 0 {
		t.Errorf("messages published on node %s, acknowledged, not delivered to the subscriber on node %s within 5 s (stopped at 3): %v",
			c.ID(1), c.ID(2), stuck)
	}
}

// connectV5 sends an MQTT 5 CONNECT for id with session expiry 300 s and
// returns the CONNACK.
func connectV5(t *testing.T, r *testutil.Raw, id string, clean bool) packets.Packet {
	t.Helper()
	r.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:    packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 60},
		Properties: packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}})
	pk, err := r.Read(failoverConnack)
	if err != nil || pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		t.Fatalf("CONNACK for %s: %v %s reason 0x%02x", id, err, packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode)
	}
	return pk
}

// readPublish reads from r until a PUBLISH whose payload is want
// (acknowledging every QoS 1 PUBLISH), for up to timeout.
func readPublish(r *testutil.Raw, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		pk, err := r.Read(time.Until(deadline))
		if err != nil {
			return err
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		if pk.FixedHeader.Qos == 1 {
			b, err := testutil.EncodePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}, r.Version)
			if err == nil {
				_, _ = r.Conn.Write(b)
			}
		}
		if string(pk.Payload) == want {
			return nil
		}
	}
	return fmt.Errorf("no PUBLISH %q within %s", want, timeout)
}

// TestClusterTakeover: an MQTT 5 client id X with a subscription on node
// 0 connects again on node 2. The first connection gets DISCONNECT 0x8E
// (session taken over) and is closed; the new one finds the session, and
// the subscription with it: a message published on node 1 reaches it;
// node 0 drops the connection and the session from its counts.
func TestClusterTakeover(t *testing.T) {
	c := startTestCluster(t, false)
	waitMembers(t, c, 3)
	const id, topic = "takeover-x", "takeover/t"
	sessions0, ok := metricValue(c.AdminAddr(0), "ferry_sessions")
	if !ok {
		t.Fatalf("node %s has no ferry_sessions metric", c.ID(0))
	}

	first := testutil.DialRaw(t, c.MQTTAddr(0), 5)
	connectV5(t, first, id, true)
	first.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topic, Qos: 1}}})
	first.Expect(packets.Suback)
	pub := clusterClient(t, c.MQTTAddr(1), "takeover-pub", true, nil)
	testutil.Eventually(t, 20*time.Second, "a message published on node "+c.ID(1)+" reaches X on node "+c.ID(0), func() bool {
		waitTok(t, pub.Publish(topic, 1, false, "before"), "publish before")
		return readPublish(first, "before", 300*time.Millisecond) == nil
	})
	testutil.Eventually(t, 10*time.Second, "node "+c.ID(0)+"'s heartbeat counts X's connection", func() bool {
		v, ok := metricValue(c.AdminAddr(1), `ferry_cluster_node_connections{node="n0"}`)
		return ok && v == 1
	})

	t0 := time.Now()
	second := testutil.DialRaw(t, c.MQTTAddr(2), 5)
	if ack := connectV5(t, second, id, false); !ack.SessionPresent {
		t.Errorf("X connecting on node %s with clean start false: session present = false", c.ID(2))
	}
	t.Logf("takeover CONNACK after %s", time.Since(t0).Round(time.Millisecond))

	// The first connection: maybe probes still, then DISCONNECT 0x8E, then
	// closed.
	var disc packets.Packet
	for {
		pk, err := first.Read(10 * time.Second)
		if err != nil {
			t.Fatalf("X's first connection (node %s) ended without DISCONNECT 0x8E: %v", c.ID(0), err)
		}
		if pk.FixedHeader.Type == packets.Disconnect {
			disc = pk
			break
		}
	}
	if disc.ReasonCode != packets.ErrSessionTakenOver.Code {
		t.Errorf("X's first connection got DISCONNECT reason 0x%02x, want 0x8E (session taken over)", disc.ReasonCode)
	}
	first.ExpectClosed(10 * time.Second)

	waitTok(t, pub.Publish(topic, 1, false, "after"), "publish after")
	if err := readPublish(second, "after", 10*time.Second); err != nil {
		t.Errorf("the session's subscription on node %s: a message published on node %s: %v", c.ID(2), c.ID(1), err)
	}

	testutil.Eventually(t, 10*time.Second, "node "+c.ID(0)+"'s ferry_connections back to 0", func() bool {
		v, ok := metricValue(c.AdminAddr(0), "ferry_connections")
		return ok && v == 0
	})
	testutil.Eventually(t, 10*time.Second, "node "+c.ID(0)+" drops its copy of the session (ferry_sessions)", func() bool {
		v, ok := metricValue(c.AdminAddr(0), "ferry_sessions")
		return ok && v == sessions0
	})
	testutil.Eventually(t, 10*time.Second, `ferry_cluster_node_connections{node="n0"} back to 0 (heartbeat seen from node n1)`, func() bool {
		v, ok := metricValue(c.AdminAddr(1), `ferry_cluster_node_connections{node="n0"}`)
		return ok && v == 0
	})
	testutil.Eventually(t, 10*time.Second, `ferry_cluster_node_connections{node="n2"} counts X`, func() bool {
		v, ok := metricValue(c.AdminAddr(1), `ferry_cluster_node_connections{node="n2"}`)
		return ok && v == 1
	})
	second.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	for {
		pk, err := second.Read(5 * time.Second)
		if err != nil {
			t.Fatalf("X's connection on node %s after the takeover: no PINGRESP: %v", c.ID(2), err)
		}
		if pk.FixedHeader.Type == packets.Pingresp {
			break
		}
	}
}

// killStreamTotal is the length of the kill tests' stream.
const killStreamTotal = 20000

// killStream runs a 20,000-message QoS 1 stream, publisher (persistent
// session) on node 0, persistent subscriber on node 1, each moving to node
// 2 when its node goes, and kills node victim (SIGKILL) a quarter of the
// way through.
func killStream(t *testing.T, victim int) {
	start := time.Now()
	c := startTestCluster(t, false)
	waitMembers(t, c, 3)
	t.Logf("cluster ready after %s", time.Since(start).Round(time.Millisecond))
	topic := "kill/" + c.ID(victim)
	l := newStreamLedger()
	sub := streamSub{addrs: []string{c.MQTTAddr(1), c.MQTTAddr(2)}, id: "kill-sub", topic: topic, ka: failoverKeepalive}
	stopSub := runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
	probeStream(t, c.MQTTAddr(0), topic, func() bool { _, _, p := l.counts(); return p > 0 })

	pubDone := make(chan struct{})
	t0 := time.Now()
	runClients(t, func(stop <-chan struct{}) {
		defer close(pubDone)
		streamPub{addrs: []string{c.MQTTAddr(0), c.MQTTAddr(2)}, id: "kill-pub", topic: topic, total: killStreamTotal, window: 64}.run(l, stop)
	})
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d messages acknowledged before the kill", killStreamTotal/4), func() bool {
		acked, _, _ := l.counts()
		return acked >= killStreamTotal/4
	})
	acked, delivered, _ := l.counts()
	t.Logf("killing node %s after %s: %d acknowledged, %d delivered", c.ID(victim), time.Since(t0).Round(time.Millisecond), acked, delivered)
	c.Kill(victim)
	tk := time.Now()
	select {
	case <-pubDone:
	case <-time.After(120 * time.Second):
		acked, delivered, _ := l.counts()
		t.Fatalf("publisher: %d of %d acknowledged 120 s after the kill (delivered %d)", acked, killStreamTotal, delivered)
	}
	t.Logf("stream acknowledged in %s (%s after the kill)", time.Since(t0).Round(time.Millisecond), time.Since(tk).Round(time.Millisecond))
	l.waitDelivered(t, 60*time.Second)
	t.Logf("delivered %s after the start", time.Since(t0).Round(time.Millisecond))
	stopSub()
	l.verify(t)
}

// TestClusterKillPublisherNode kills (SIGKILL) the publisher's node mid
// stream: the publisher resends what was not acknowledged on node 2, and
// every message acknowledged reaches the subscriber on node 1.
func TestClusterKillPublisherNode(t *testing.T) { killStream(t, 0) }

// TestClusterKillSubscriberNode kills (SIGKILL) the subscriber's node mid
// stream: the subscriber resumes its session on node 2 and gets every
// message acknowledged, the rest of the stream in order.
func TestClusterKillSubscriberNode(t *testing.T) { killStream(t, 1) }

// TestClusterFrozenNode freezes (SIGSTOP) the subscriber's node for longer
// than the cluster's timeouts (heartbeat TTL 5 s, NATS pings 2 s x 3):
// the subscriber notices by its keepalive and resumes its session on node
// 1. Woken (SIGCONT), node 0 must become ready again, drop the session it
// held, and leave the client alone: it stays connected on node 1 and keeps
// getting what is published on node 2, losing nothing acknowledged.
func TestClusterFrozenNode(t *testing.T) {
	for _, mode := range clusterModes {
		t.Run(mode.name, func(t *testing.T) {
			c := startTestCluster(t, mode.external)
			waitMembers(t, c, 3)
			sessions0, ok := metricValue(c.AdminAddr(0), "ferry_sessions")
			if !ok {
				t.Fatalf("node %s has no ferry_sessions metric", c.ID(0))
			}
			topic := "frozen/" + mode.name
			l := newStreamLedger()
			const ka = 2 * time.Second
			sub := streamSub{addrs: []string{c.MQTTAddr(0), c.MQTTAddr(1)}, id: "frozen-sub", topic: topic, ka: ka}
			stopSub := runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
			probeStream(t, c.MQTTAddr(2), topic, func() bool { _, _, p := l.counts(); return p > 0 })
			stopPub := runClients(t, func(stop <-chan struct{}) {
				streamPub{addrs: []string{c.MQTTAddr(2)}, id: "frozen-pub", topic: topic, window: 16, rate: 200}.run(l, stop)
			})
			delivered := func() int { _, d, _ := l.counts(); return d }
			testutil.Eventually(t, 30*time.Second, "200 messages delivered on node "+c.ID(0), func() bool { return delivered() >= 200 })

			c.Stop(0)
			frozen := time.Now()
			t.Logf("node %s frozen", c.ID(0))
			testutil.Eventually(t, 60*time.Second, "the subscriber resumes on node "+c.ID(1), func() bool { return l.subConnCount() >= 2 })
			t.Logf("subscriber reconnected %s after the freeze", time.Since(frozen).Round(time.Millisecond))
			n := delivered()
			testutil.Eventually(t, 30*time.Second, "messages delivered again on node "+c.ID(1), func() bool { return delivered() >= n+200 })
			t.Logf("delivering on node %s %s after the freeze", c.ID(1), time.Since(frozen).Round(time.Millisecond))
			// Frozen past the heartbeat TTL (the others count two members)
			// and NATS's ping timeout (2 s x 3): 15 s in all. There is no
			// event to poll for the second: the freeze lasts a set time.
			waitMembers(t, c, 2, 1, 2)
			if d := 15*time.Second - time.Since(frozen); d > 0 {
				time.Sleep(d)
			}
			if code, body := nodeReadyz(c.AdminAddr(1)); code != http.StatusOK {
				t.Errorf("node %s with node %s frozen: /readyz %d %s", c.ID(1), c.ID(0), code, body)
			}
			conns := l.subConnCount()
			c.Cont(0)
			woken := time.Now()
			t.Logf("node %s woken after %s frozen", c.ID(0), woken.Sub(frozen).Round(time.Millisecond))

			testutil.Eventually(t, 30*time.Second, "node "+c.ID(0)+" ready again (/readyz 200) after SIGCONT", func() bool {
				code, _ := nodeReadyz(c.AdminAddr(0))
				return code == http.StatusOK
			})
			t.Logf("node %s ready %s after SIGCONT", c.ID(0), time.Since(woken).Round(time.Millisecond))
			testutil.Eventually(t, 30*time.Second, "node "+c.ID(0)+" drops the session that moved (ferry_sessions back to its count before)", func() bool {
				v, ok := metricValue(c.AdminAddr(0), "ferry_sessions")
				return ok && v == sessions0
			})
			t.Logf("node %s dropped the session %s after SIGCONT", c.ID(0), time.Since(woken).Round(time.Millisecond))
			waitMembers(t, c, 3)
			// The client stays where it is and keeps receiving: 1,000 more
			// messages (5 s at 200 a second) after node 0 has caught up.
			n = delivered()
			testutil.Eventually(t, 60*time.Second, "1,000 more messages delivered after node "+c.ID(0)+" woke", func() bool { return delivered() >= n+1000 })
			if got := l.subConnCount(); got != conns {
				t.Errorf("the subscriber that moved to node %s was disconnected after node %s woke: %d connections, was %d",
					c.ID(1), c.ID(0), got, conns)
			}
			stopPub()
			l.waitDelivered(t, 30*time.Second)
			stopSub()
			l.verify(t)
			for _, line := range strings.Split(c.Node(0).Log(), "\n") {
				if strings.Contains(line, "frozen-sub") {
					t.Logf("node %s: %s", c.ID(0), line)
				}
			}
		})
	}
}

// TestClusterRollingRestart restarts node 0, then 1, then 2 (SIGTERM, then
// start again on the same data) under a steady QoS 1 stream; publisher and
// persistent subscriber move to another node when theirs stops. Nothing
// acknowledged is lost.
func TestClusterRollingRestart(t *testing.T) {
	c := startTestCluster(t, false)
	waitMembers(t, c, 3)
	const topic = "rolling/t"
	l := newStreamLedger()
	sub := streamSub{addrs: []string{c.MQTTAddr(1), c.MQTTAddr(2), c.MQTTAddr(0)}, id: "rolling-sub", topic: topic, ka: failoverKeepalive}
	stopSub := runClients(t, func(stop <-chan struct{}) { sub.run(l, stop) })
	probeStream(t, c.MQTTAddr(0), topic, func() bool { _, _, p := l.counts(); return p > 0 })
	stopPub := runClients(t, func(stop <-chan struct{}) {
		streamPub{addrs: []string{c.MQTTAddr(0), c.MQTTAddr(1), c.MQTTAddr(2)}, id: "rolling-pub", topic: topic, window: 32, rate: 300}.run(l, stop)
	})
	acked := func() int { a, _, _ := l.counts(); return a }
	t0 := time.Now()
	for i := range c.Len() {
		n := acked()
		testutil.Eventually(t, 60*time.Second, fmt.Sprintf("500 more messages acknowledged before restarting node %s", c.ID(i)), func() bool {
			return acked() >= n+500
		})
		ts := time.Now()
		c.Node(i).Signal(t, syscall.SIGTERM)
		if err := c.Node(i).Wait(t, 60*time.Second); err != nil {
			t.Errorf("node %s after SIGTERM: %v", c.ID(i), err)
		}
		c.Restart(i)
		waitMembers(t, c, 3)
		testutil.Eventually(t, 30*time.Second, "node "+c.ID(i)+" ready after its restart", func() bool {
			code, _ := nodeReadyz(c.AdminAddr(i))
			return code == http.StatusOK
		})
		a, d, _ := l.counts()
		t.Logf("node %s restarted in %s; %d acknowledged, %d delivered", c.ID(i), time.Since(ts).Round(time.Millisecond), a, d)
	}
	n := acked()
	testutil.Eventually(t, 60*time.Second, "500 more messages acknowledged after the last restart", func() bool { return acked() >= n+500 })
	stopPub()
	t.Logf("stream ran %s", time.Since(t0).Round(time.Millisecond))
	l.waitDelivered(t, 60*time.Second)
	stopSub()
	l.verify(t)
}

// TestClusterNATSUnreachable: a node whose cluster.nats.url points at a
// closed port does not start: it exits non-zero, naming NATS and the URL.
func TestClusterNATSUnreachable(t *testing.T) {
	bin := testutil.BuildFerry(t)
	dir := t.TempDir()
	url := "nats://" + testutil.FreeAddr(t) // nothing listens there
	cfg := fmt.Sprintf(`listeners:
  - {name: tcp, type: tcp, addr: %q}
admin: {addr: %q}
storage: {dir: %q}
cluster:
  node_id: lone
  start_timeout: 2s
  nats: {url: %q}
`, testutil.FreeAddr(t), testutil.FreeAddr(t), filepath.Join(dir, "data"), url)
	path := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testutil.LaunchFerry(t, bin, nil, "-c", path)
	err := p.Wait(t, 60*time.Second)
	log := p.Log()
	if err == nil {
		t.Fatalf("ferry with NATS unreachable at %s exited 0:\n%s", url, log)
	}
	if code := p.Cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit code %d, want 1 (runtime failure):\n%s", code, log)
	}
	if !strings.Contains(log, "NATS") || !strings.Contains(log, url) {
		t.Errorf("the error does not name NATS and %s:\n%s", url, log)
	}
	if strings.Contains(log, `msg="ferry started"`) {
		t.Errorf("ferry logged that it started:\n%s", log)
	}
	t.Logf("ferry: %s", strings.TrimSpace(log))
}

// TestClusterQuorumLost: with two of three nodes killed, the last one
// cannot store anything. It must say so, never serve on its own: /readyz
// answers 503 naming the cluster, and a client connecting is refused with
// CONNACK 0x88 (server unavailable), not accepted into a session no other
// node would know of. The two killed nodes started again, it is ready and
// serves again, and a message routed through the cluster arrives.
func TestClusterQuorumLost(t *testing.T) {
	c := startTestCluster(t, false)
	waitMembers(t, c, 3)
	c.Kill(1)
	c.Kill(2)
	killed := time.Now()
	var body string
	testutil.Eventually(t, 30*time.Second, "node "+c.ID(0)+" /readyz 503 without a quorum", func() bool {
		var code int
		code, body = nodeReadyz(c.AdminAddr(0))
		return code == http.StatusServiceUnavailable
	})
	t.Logf("/readyz %s after the kills: %s", time.Since(killed).Round(time.Millisecond), body)
	if !strings.Contains(body, "cluster:") {
		t.Errorf("/readyz does not name the cluster: %q", body)
	}

	r := testutil.DialRaw(t, c.MQTTAddr(0), 5)
	t0 := time.Now()
	r.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ClientIdentifier: "alone", Clean: true, Keepalive: 60}})
	ack, err := r.Read(20 * time.Second)
	if err != nil {
		t.Fatalf("a client connecting without a quorum got no CONNACK within 20 s: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != packets.ErrServerUnavailable.Code {
		t.Fatalf("a client connecting without a quorum: %s reason 0x%02x, want CONNACK 0x88 (server unavailable)",
			packets.PacketNames[ack.FixedHeader.Type], ack.ReasonCode)
	}
	t.Logf("refused with CONNACK 0x88 after %s", time.Since(t0).Round(time.Millisecond))
	r.ExpectClosed(5 * time.Second)

	c.Restart(1, 2)
	waitMembers(t, c, 3)
	testutil.Eventually(t, 30*time.Second, "node "+c.ID(0)+" ready again", func() bool {
		code, _ := nodeReadyz(c.AdminAddr(0))
		return code == http.StatusOK
	})
	got := make(chan string, 1)
	sub := clusterClient(t, c.MQTTAddr(0), "after-sub", true, nil)
	waitTok(t, sub.Subscribe("quorum/t", 1, func(_ paho.Client, m paho.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	}), "subscribe")
	pub := clusterClient(t, c.MQTTAddr(2), "after-pub", true, nil)
	testutil.Eventually(t, 20*time.Second, "a message published on node "+c.ID(2)+" reaches node "+c.ID(0), func() bool {
		waitTok(t, pub.Publish("quorum/t", 1, false, "back"), "publish")
		select {
		case m := <-got:
			return m == "back"
		case <-time.After(300 * time.Millisecond):
			return false
		}
	})
}
