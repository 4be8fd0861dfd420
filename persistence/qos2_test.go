package persistence

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawClient speaks MQTT 3.1.1 by hand, so a test can stop in the middle of
// a QoS 2 flow.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, url, id string) (*rawClient, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 60, ClientIdentifier: id},
	})
	ack := c.read()
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connack %+v", ack)
	}
	return c, ack.SessionPresent
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) read() packets.Packet {
	c.t.Helper()
	pk, err := c.next(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return pk
}

// next reads one packet, or fails after timeout.
func (c *rawClient) next(timeout time.Duration) (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	pk.ProtocolVersion = 4
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	}
	return pk, err
}

// TestQos2StateResumedAfterCrash: a subscriber that sent PUBREC for one
// message and not yet for a second gets, after a crash and restart, PUBREL
// for the first (not the message again) and the second PUBLISH as a
// duplicate with the same packet id.
func TestQos2StateResumedAfterCrash(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub, _ := dialRaw(t, b.url, "q2")
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "q/#", Qos: 2}}})
	if ack := sub.read(); ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback %+v", ack)
	}
	pub := connect(t, b.url, "pub", true, nil)

	wait(t, "publish one", pub.Publish("q/1", 2, false, "one"))
	one := sub.read()
	if one.FixedHeader.Type != packets.Publish || string(one.Payload) != "one" {
		t.Fatalf("want PUBLISH one, got %+v", one)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: one.PacketID})
	if rel := sub.read(); rel.FixedHeader.Type != packets.Pubrel || rel.PacketID != one.PacketID {
		t.Fatalf("want PUBREL %d, got %+v", one.PacketID, rel)
	}
	wait(t, "publish two", pub.Publish("q/1", 2, false, "two"))
	two := sub.read()
	if string(two.Payload) != "two" {
		t.Fatalf("want PUBLISH two, got %+v", two)
	}
	putRaw(t, st, "z/barrier", "") // the asynchronous state writes are committed
	crashed := t.TempDir()
	copyDir(t, st.Dir(), crashed)

	st2 := openStore(t, Config{Dir: crashed})
	b2 := startBroker(t, st2, nil)
	sub2, present := dialRaw(t, b2.url, "q2")
	if !present {
		t.Fatal("session not present after restart")
	}
	rel := sub2.read()
	if rel.FixedHeader.Type != packets.Pubrel || rel.PacketID != one.PacketID {
		t.Fatalf("first after restart: want PUBREL %d, got type %d id %d payload %q", one.PacketID, rel.FixedHeader.Type, rel.PacketID, rel.Payload)
	}
	again := sub2.read()
	if again.FixedHeader.Type != packets.Publish || string(again.Payload) != "two" || again.PacketID != two.PacketID || !again.FixedHeader.Dup {
		t.Fatalf("second after restart: want PUBLISH two, id %d, dup; got %+v", two.PacketID, again)
	}
}

// TestPublisherQos2StateResumedAfterCrash: a persistent publisher that got
// PUBREC for a QoS 2 message finds that state after a crash, so its PUBREL
// completes the flow, and the message reaches the subscriber once.
func TestPublisherQos2StateResumedAfterCrash(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	b := startBroker(t, st, nil)
	var c collector
	sub := connect(t, b.url, "sub", false, c.handle)
	wait(t, "subscribe", sub.Subscribe("p/#", 2, nil))
	pub, _ := dialRaw(t, b.url, "rawpub")
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 7, TopicName: "p/1", Payload: []byte("x")})
	if rec := pub.read(); rec.FixedHeader.Type != packets.Pubrec || rec.PacketID != 7 {
		t.Fatalf("want PUBREC 7, got %+v", rec)
	}
	eventually(t, 5*time.Second, "delivered before the crash", func() bool { return len(c.snapshot()) == 1 })
	crashed := t.TempDir()
	copyDir(t, st.Dir(), crashed)

	st2 := openStore(t, Config{Dir: crashed})
	b2 := startBroker(t, st2, nil)
	cl, ok := b2.srv.Clients.Get("rawpub")
	if !ok {
		t.Fatal("publisher session not restored")
	}
	if pk, ok := cl.State.Inflight.GetInbound(7); !ok || pk.FixedHeader.Type != packets.Pubrec {
		t.Fatalf("publisher's PUBREC state not restored: %+v %v", pk, ok)
	}
}

// TestBothDirectionsShareAPacketIDAcrossCrash: MQTT numbers each
// direction's packets on its own, so a client may use for its
// QoS 2 PUBLISH the identifier of the server's unacknowledged PUBLISH to it.
// Both flows are stored, and both are there after a crash: the server's
// message is resent and the client's PUBREC state completes its flow.
func TestBothDirectionsShareAPacketIDAcrossCrash(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	b := startBroker(t, st, nil)
	raw, _ := dialRaw(t, b.url, "both")
	raw.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "out/#", Qos: 1}}})
	if ack := raw.read(); ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("want SUBACK, got %+v", ack)
	}
	pub := connect(t, b.url, "pub", true, nil)
	wait(t, "publish", pub.Publish("out/1", 1, false, "for both"))
	out := raw.read()
	if out.FixedHeader.Type != packets.Publish || out.PacketID == 0 {
		t.Fatalf("want the server's PUBLISH, got %+v", out)
	}
	id := out.PacketID // left unacknowledged
	raw.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: id, TopicName: "in/1", Payload: []byte("x")})
	if rec := raw.read(); rec.FixedHeader.Type != packets.Pubrec || rec.PacketID != id || rec.ReasonCode >= 0x80 {
		t.Fatalf("want PUBREC %d success, got %+v", id, rec)
	}
	putRaw(t, st, "z/barrier", "") // the asynchronous state writes are committed
	crashed := t.TempDir()
	copyDir(t, st.Dir(), crashed)

	st2 := openStore(t, Config{Dir: crashed})
	b2 := startBroker(t, st2, nil)
	cl, ok := b2.srv.Clients.Get("both")
	if !ok {
		t.Fatal("session not restored")
	}
	if pk, ok := cl.State.Inflight.Get(id); !ok || pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "for both" {
		t.Fatalf("the server's PUBLISH %d was lost: %v %q", id, ok, pk.Payload)
	}
	if pk, ok := cl.State.Inflight.GetInbound(id); !ok || pk.FixedHeader.Type != packets.Pubrec {
		t.Fatalf("the client's PUBREC state %d was lost: %v", id, ok)
	}
}
