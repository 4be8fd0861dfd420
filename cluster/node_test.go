package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/mochitest"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"
)

// testNode is one node of an in-process cluster: a mochi server, its
// cluster node (with an embedded NATS server) and its MQTT address.
type testNode struct {
	srv  *mqtt.Server
	node *Node
	addr string
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("FERRY_TEST_CLUSTER_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startCluster starts n nodes with embedded NATS servers routed to each
// other, replicas min(n, 3), concurrently (JetStream needs a quorum).
func startCluster(t *testing.T, n int) []*testNode {
	t.Helper()
	return startClusterB(t, n)
}

func startClusterB(t testing.TB, n int) []*testNode {
	t.Helper()
	clusterAddrs := make([]string, n)
	for i := range clusterAddrs {
		clusterAddrs[i] = freeAddr(t)
	}
	nodes := make([]*testNode, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		var routes []string
		for j, a := range clusterAddrs {
			if j != i {
				routes = append(routes, "nats://"+a)
			}
		}
		cfg := Config{NodeID: "n" + strconv.Itoa(i), Replicas: min(n, 3), NATS: NATS{Embedded: &Embedded{
			ClientAddr: freeAddr(t), ClusterAddr: clusterAddrs[i], Routes: routes, StoreDir: t.TempDir()}}}.WithDefaults("")
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			t.Fatal(err)
		}
		node := New(cfg, srv, testLogger(t).With("node", cfg.NodeID))
		for _, h := range []mqtt.Hook{node.SessionHook(), node.Hook()} {
			if err := srv.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
		}
		nodes[i] = &testNode{srv: srv, node: node}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = node.Start(ctx)
		}()
	}
	wg.Wait()
	for i, tn := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		tn.addr = mochitest.Serve(t, tn.srv).Address()
		t.Cleanup(tn.node.Close) // after the server's Close (cleanups run last first)
	}
	return nodes
}

func connectClient(t *testing.T, addr, id string, clean bool) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", id, addr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// waitRemoteInterest waits until node from sees node to's interest in a
// subscription matching topic.
func waitRemoteInterest(t *testing.T, from *testNode, to *testNode, topic string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok := from.node.interest.nodesFor(topic)[to.node.ID()]; ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("node %s never saw node %s's interest in %q", from.node.ID(), to.node.ID(), topic)
}

func TestRoutingAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	for _, qos := range []byte{0, 1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			topic := fmt.Sprintf("route/q%d/x", qos)
			got := make(chan string, 100)
			sub := connectClient(t, nodes[1].addr, "sub"+strconv.Itoa(int(qos)), true)
			if tok := sub.Subscribe("route/+/x", qos, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			waitRemoteInterest(t, nodes[0], nodes[1], topic)
			pub := connectClient(t, nodes[0].addr, "pub"+strconv.Itoa(int(qos)), true)
			const count = 50
			for i := range count {
				if tok := pub.Publish(topic, qos, false, strconv.Itoa(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Fatalf("publish %d: %v", i, tok.Error())
				}
			}
			for i := range count {
				select {
				case m := <-got:
					if m != strconv.Itoa(i) && qos > 0 {
						t.Fatalf("message %d: got %q (out of order or lost)", i, m)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("got %d of %d messages", i, count)
				}
			}
			// Node 2 has no subscriber: nothing was sent to it.
			if _, ok := nodes[0].node.interest.nodesFor(topic)[nodes[2].node.ID()]; ok {
				t.Fatal("node 2 has interest it should not have")
			}
		})
	}
	if r := nodes[2].node.Stats().Received; r != 0 {
		t.Fatalf("node 2 without subscribers received %d messages", r)
	}
}

func TestRetainedAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	pub := connectClient(t, nodes[0].addr, "rpub", true)
	if tok := pub.Publish("ret/a", 1, true, "hello"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for _, tn := range nodes[1:] {
		got := make(chan string, 1)
		c := connectClient(t, tn.addr, "rsub-"+tn.node.ID(), true)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if tok := c.Subscribe("ret/#", 1, func(_ paho.Client, m paho.Message) {
				if m.Retained() {
					got <- string(m.Payload())
				}
			}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			select {
			case m := <-got:
				if m != "hello" {
					t.Fatalf("node %s: retained %q", tn.node.ID(), m)
				}
			case <-time.After(200 * time.Millisecond):
				c.Unsubscribe("ret/#").Wait()
				if time.Now().After(deadline) {
					t.Fatalf("node %s never had the retained message", tn.node.ID())
				}
				continue
			}
			break
		}
	}
	// Cleared on node 2, it is gone everywhere.
	c := connectClient(t, nodes[2].addr, "rclear", true)
	if tok := c.Publish("ret/a", 1, true, ""); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for _, tn := range nodes {
		deadline := time.Now().Add(10 * time.Second)
		for len(tn.srv.Topics.Messages("ret/#")) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("node %s still retains ret/a", tn.node.ID())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestResumeOnAnotherNode: a persistent session subscribed on node 1 is
// away while 1,000 QoS 1 messages are published on node 0; it resumes on
// node 2 and gets them all, in order.
func TestResumeOnAnotherNode(t *testing.T) {
	nodes := startCluster(t, 3)
	got := make(chan string, 2000)
	handler := func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }
	connect := func(addr string) paho.Client {
		o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("resumer").SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(true).SetDefaultPublishHandler(handler)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect to %s: %v", addr, tok.Error())
		}
		return c
	}
	sub := connect(nodes[1].addr)
	if tok := sub.Subscribe("resume/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// The subscription is in every node's index of persistent sessions.
	deadline := time.Now().Add(10 * time.Second)
	for len(nodes[0].node.sessions.persistentFor("resume/x")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node 0 never saw the persistent subscription")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sub.Disconnect(100)

	pub := connectClient(t, nodes[0].addr, "resume-pub", true)
	const count = 1000
	for i := range count {
		if tok := pub.Publish("resume/x", 1, false, strconv.Itoa(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	sub = connect(nodes[2].addr)
	defer sub.Disconnect(100)
	for i := range count {
		select {
		case m := <-got:
			if m != strconv.Itoa(i) {
				t.Fatalf("message %d is %q", i, m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("resumed with %d of %d messages", i, count)
		}
	}
}

// TestTakeoverAcrossNodes: a client id connected on node 0 that connects
// on node 2 is disconnected from node 0, and node 2 serves it.
func TestTakeoverAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker("tcp://" + nodes[0].addr).SetClientID("taken").SetCleanSession(false).
		SetAutoReconnect(false).SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	first := paho.NewClient(o)
	if tok := first.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	second := connectClient(t, nodes[2].addr, "taken", false)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection was not closed")
	}
	if !second.IsConnectionOpen() {
		t.Fatal("the second connection is not open")
	}
	if _, ok := nodes[0].srv.Clients.Get("taken"); ok {
		t.Fatal("node 0 still has the session")
	}
	if _, ok := nodes[2].srv.Clients.Get("taken"); !ok {
		t.Fatal("node 2 does not have the session")
	}
}

// rawWillClient connects client id to addr with a will of the given QoS
// (MQTT 3.1.1) and returns the socket, which the test closes without
// DISCONNECT.
func rawWillClient(t *testing.T, addr, id, topic, payload string, clean bool, qos byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id,
			WillFlag: true, WillTopic: topic, WillPayload: []byte(payload), WillQos: qos}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK: % x, %v", ack, err)
	}
	return c
}

// TestWillAcrossNodes: a client's will, QoS 0 or 1, published by its
// node when the connection drops, reaches a subscriber on another node,
// once.
func TestWillAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	got := make(chan string, 10)
	sub := connectClient(t, nodes[1].addr, "will-sub", true)
	if tok := sub.Subscribe("will/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	waitRemoteInterest(t, nodes[0], nodes[1], "will/x")
	for _, qos := range []byte{0, 1} {
		t.Run("qos"+strconv.Itoa(int(qos)), func(t *testing.T) {
			want := "gone-" + strconv.Itoa(int(qos))
			c := rawWillClient(t, nodes[0].addr, "dying", "will/x", want, true, qos)
			_ = c.Close()
			select {
			case m := <-got:
				if m != want {
					t.Fatalf("will payload %q, want %q", m, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the will never reached node 1")
			}
			select {
			case m := <-got:
				t.Fatalf("the will came twice (%q)", m)
			case <-time.After(time.Second):
			}
		})
	}
}

// TestSharedGroupAcrossNodes: a shared group with a member on each node
// gets each message exactly once, spread over the members; a plain
// subscriber on a node gets every message.
func TestSharedGroupAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	var mu sync.Mutex
	counts := map[string]int{}
	perMember := map[int]int{}
	plain := 0
	for i, tn := range nodes {
		c := connectClient(t, tn.addr, "member-"+strconv.Itoa(i), true)
		if tok := c.Subscribe("$share/g/shared/#", 1, func(_ paho.Client, m paho.Message) {
			mu.Lock()
			counts[string(m.Payload())]++
			perMember[i]++
			mu.Unlock()
		}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	p := connectClient(t, nodes[2].addr, "plain", true)
	if tok := p.Subscribe("shared/#", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		plain++
		mu.Unlock()
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// Every node sees every other node's member.
	for _, from := range nodes {
		deadline := time.Now().Add(10 * time.Second)
		for len(from.node.shared.remoteShares("shared/x")["$share/g/shared/#"]) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("node %s does not see the other members", from.node.ID())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRemoteInterest(t, nodes[0], nodes[2], "shared/x")
	pub := connectClient(t, nodes[0].addr, "share-pub", true)
	const count = 300
	for i := range count {
		if tok := pub.Publish("shared/x", 1, false, strconv.Itoa(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		n, pl := len(counts), plain
		mu.Unlock()
		if n == count && pl == count {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("group got %d distinct of %d messages, plain subscriber %d", n, count, pl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // duplicates, if any, arrive
	mu.Lock()
	defer mu.Unlock()
	for m, c := range counts {
		if c != 1 {
			t.Fatalf("message %s reached the group %d times", m, c)
		}
	}
	if plain != count {
		t.Fatalf("plain subscriber got %d of %d", plain, count)
	}
	for i := range nodes {
		if perMember[i] == 0 {
			t.Fatalf("member on node %d got nothing: %v", i, perMember)
		}
	}
	t.Logf("per member: %v", perMember)
}

// rawConn is a minimal MQTT 3.1.1 client for packet-level checks.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr, id string, clean bool) (*rawConn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id}})
	ack := rc.read()
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %+v", ack.FixedHeader)
	}
	return rc, ack.SessionPresent
}

func (rc *rawConn) send(pk packets.Packet) {
	rc.t.Helper()
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	if _, err := rc.c.Write(buf.Bytes()); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) read() packets.Packet {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	hb, err := rc.r.ReadByte()
	if err != nil {
		rc.t.Fatalf("read: %v", err)
	}
	var pk packets.Packet
	pk.ProtocolVersion = 4
	if err := pk.FixedHeader.Decode(hb); err != nil {
		rc.t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(rc.r)
	if err != nil {
		rc.t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		rc.t.Fatal(err)
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	return pk
}

// TestQos2ReleaseResumesOnAnotherNode: a QoS 2 message the client has
// received (PUBREC) but not completed is, after the session moves to
// another node, released again (PUBREL with its packet id), never sent
// again.
func TestQos2ReleaseResumesOnAnotherNode(t *testing.T) {
	nodes := startCluster(t, 3)
	sub, _ := dialRaw(t, nodes[1].addr, "q2", false)
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "q2/#", Qos: 2}}})
	if ack := sub.read(); ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("got %v, want SUBACK", ack.FixedHeader.Type)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(nodes[0].node.sessions.persistentFor("q2/x")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node 0 never saw the persistent subscription")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pub := connectClient(t, nodes[0].addr, "q2-pub", true)
	if tok := pub.Publish("q2/x", 2, false, "once"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	m := sub.read()
	if m.FixedHeader.Type != packets.Publish || string(m.Payload) != "once" {
		t.Fatalf("got %+v, want the PUBLISH", m.FixedHeader)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: m.PacketID})
	if rel := sub.read(); rel.FixedHeader.Type != packets.Pubrel || rel.PacketID != m.PacketID {
		t.Fatalf("got %v %d, want PUBREL %d", rel.FixedHeader.Type, rel.PacketID, m.PacketID)
	}
	_ = sub.c.Close() // before PUBCOMP

	again, present := dialRaw(t, nodes[2].addr, "q2", false)
	if !present {
		t.Fatal("session not present on node 2")
	}
	rel := again.read()
	if rel.FixedHeader.Type != packets.Pubrel || rel.PacketID != m.PacketID {
		t.Fatalf("got %v (id %d), want PUBREL %d", rel.FixedHeader.Type, rel.PacketID, m.PacketID)
	}
	again.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: m.PacketID})
	_ = again.c.SetReadDeadline(time.Now().Add(time.Second))
	if b, err := again.r.ReadByte(); err == nil {
		t.Fatalf("got another packet (0x%02x) after the PUBREL: the message was sent again", b)
	}
}
