package broker_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// connectV5 is a raw MQTT 5 CONNECT with clean start, keepalive 60 and an
// empty client id.
var connectV5 = []byte{0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00}

// issue501 is an MQTT 5 SUBSCRIBE whose only filter lacks its options byte:
// upstream mochi v2.7.9 indexes past the end of the packet and the process
// panics. The fork refuses it (packets.TMalformedPackets; the engine's
// TestServerRefusesMalformedPackets).
var issue501 = []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61}

// TestMalformedPacketClosesOnlyItsConnection sends the #501 packet to Ferry:
// that client gets DISCONNECT 0x81 (malformed packet) and is closed, the
// process lives, and other clients keep working.
func TestMalformedPacketClosesOnlyItsConnection(t *testing.T) {
	b := testutil.StartBroker(t)

	sub := testutil.DialRaw(t, b.Addr, 5)
	sub.Connect("watcher", packets.Properties{})
	sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "t/#", Qos: 1}}})
	sub.Expect(packets.Suback)

	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"separate writes", nil},
		{"connect and subscribe in one segment", append(append([]byte{}, connectV5...), issue501...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := testutil.DialRaw(t, b.Addr, 5)
			if tc.bytes == nil {
				bad.SendBytes(connectV5)
				bad.Expect(packets.Connack)
				bad.SendBytes(issue501)
			} else {
				bad.SendBytes(tc.bytes)
				bad.Expect(packets.Connack)
			}
			d := bad.Expect(packets.Disconnect)
			if d.ReasonCode != packets.ErrMalformedPacket.Code {
				t.Fatalf("DISCONNECT reason 0x%02x, want 0x81", d.ReasonCode)
			}
			bad.ExpectClosed(5 * time.Second)
		})
	}

	pub := testutil.DialRaw(t, b.Addr, 5)
	pub.Connect("publisher", packets.Properties{})
	pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName: "t/x", Payload: []byte("still here")})
	pub.Expect(packets.Puback)
	got := sub.Expect(packets.Publish)
	if string(got.Payload) != "still here" {
		t.Fatalf("payload %q", got.Payload)
	}
}

// TestAcksDoNotEchoUserProperties: mochi copies a PUBLISH's user properties
// into PUBACK/PUBREC/PUBREL/PUBCOMP unless told not to.
func TestAcksDoNotEchoUserProperties(t *testing.T) {
	b := testutil.StartBroker(t)
	user := []packets.UserProperty{{Key: "secret", Val: "do-not-echo"}}

	sub := testutil.DialRaw(t, b.Addr, 5)
	sub.Connect("sub", packets.Properties{})
	sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "acks/#", Qos: 2}}})
	sub.Expect(packets.Suback)

	pub := testutil.DialRaw(t, b.Addr, 5)
	pub.Connect("pub", packets.Properties{})
	check := func(what string, pk packets.Packet) {
		t.Helper()
		if len(pk.Properties.User) != 0 {
			t.Errorf("%s carries user properties %v", what, pk.Properties.User)
		}
	}

	pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1,
		TopicName: "acks/1", Payload: []byte("q1"), Properties: packets.Properties{User: user}})
	check("PUBACK", pub.Expect(packets.Puback))
	if got := sub.Expect(packets.Publish); len(got.Properties.User) != 1 {
		t.Errorf("subscriber lost the message's user properties: %v", got.Properties.User)
	} else {
		sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: got.PacketID})
	}

	pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 2,
		TopicName: "acks/2", Payload: []byte("q2"), Properties: packets.Properties{User: user}})
	check("PUBREC", pub.Expect(packets.Pubrec))
	pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 2,
		Properties: packets.Properties{User: user}})
	check("PUBCOMP", pub.Expect(packets.Pubcomp))

	got := sub.Expect(packets.Publish)
	sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: got.PacketID,
		Properties: packets.Properties{User: user}})
	check("PUBREL", sub.Expect(packets.Pubrel))
}

// TestDisconnectIsReadableAfterServerCloses: the broker refuses a second
// CONNECT with DISCONNECT 0x82 and closes. The client has already written
// more; without a lingering close the kernel answers those bytes with RST
// and the client never reads its DISCONNECT.
func TestDisconnectIsReadableAfterServerCloses(t *testing.T) {
	b := testutil.StartBroker(t)
	for i := range 20 { // the reset is a race; give it many chances
		c := testutil.DialRaw(t, b.Addr, 5)
		c.Connect(fmt.Sprintf("twice-%d", i), packets.Properties{})
		burst := append([]byte{}, connectV5...)
		for range 64 {
			burst = append(burst, 0xc0, 0x00) // PINGREQ
		}
		c.SendBytes(burst)
		// Keep writing while the broker closes, as a busy client would.
		for range 20 {
			if _, err := c.Conn.Write([]byte{0xc0, 0x00}); err != nil {
				break
			}
		}
		var d packets.Packet
		for {
			pk, err := c.Read(5 * time.Second)
			if err != nil {
				if errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("attempt %d: connection reset before the DISCONNECT was read", i)
				}
				t.Fatalf("attempt %d: no DISCONNECT: %v", i, err)
			}
			if pk.FixedHeader.Type == packets.Disconnect {
				d = pk
				break
			}
		}
		if d.ReasonCode != packets.ErrProtocolViolationSecondConnect.Code {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0x82", d.ReasonCode)
		}
		_ = c.Conn.Close()
	}
}

// TestRetainedMessagesDoNotExpireByAge: mochi deletes every retained
// message a day after it was set. Ferry keeps a retained message without a
// message expiry for ever, and still honours one that has an expiry.
func TestRetainedMessagesDoNotExpireByAge(t *testing.T) {
	b := testutil.StartBroker(t)
	s := b.B.Server()
	old := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName: "keep/old", Payload: []byte("set 25 hours ago"), Created: time.Now().Add(-25 * time.Hour).Unix()}
	s.Topics.RetainMessage(old)
	short := testutil.DialRaw(t, b.Addr, 5)
	short.Connect("short", packets.Properties{})
	short.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: "keep/short",
		Payload: []byte("expires"), Properties: packets.Properties{MessageExpiryInterval: 1}})

	// The publish is QoS 0: first see it retained, then, mochi's expiry
	// sweep running every second, see it go.
	testutil.Eventually(t, 5*time.Second, "retained message with 1 s expiry set", func() bool {
		_, ok := s.Topics.Retained.Get("keep/short")
		return ok
	})
	testutil.Eventually(t, 10*time.Second, "retained message with 1 s expiry removed", func() bool {
		_, ok := s.Topics.Retained.Get("keep/short")
		return !ok
	})
	if _, ok := s.Topics.Retained.Get("keep/old"); !ok {
		t.Fatal("a retained message without expiry was deleted because of its age")
	}
	c := testutil.DialRaw(t, b.Addr, 5)
	c.Connect("reader", packets.Properties{})
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "keep/#"}}})
	c.Expect(packets.Suback)
	if got := c.Expect(packets.Publish); got.TopicName != "keep/old" || !got.FixedHeader.Retain {
		t.Fatalf("got %q retain=%v", got.TopicName, got.FixedHeader.Retain)
	}
}

func ptr[T any](v T) *T { return &v }

// TestConnackAdvertisesAndEnforcesFeatures: CONNACK says what is
// configured, and what it says is off is refused with MQTT 5's reason code.
func TestConnackAdvertisesAndEnforcesFeatures(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		b := testutil.StartBroker(t)
		c := testutil.DialRaw(t, b.Addr, 5)
		p := c.Connect("d", packets.Properties{}).Properties
		if p.TopicAliasMaximum != config.DefaultTopicAliasMaximum || p.MaximumPacketSize != config.DefaultMaxPacketSize {
			t.Errorf("topic alias max %d, max packet size %d", p.TopicAliasMaximum, p.MaximumPacketSize)
		}
		for name, v := range map[string]byte{"retain": p.RetainAvailable, "wildcard": p.WildcardSubAvailable,
			"shared": p.SharedSubAvailable, "subscription ids": p.SubIDAvailable} {
			if v != 1 {
				t.Errorf("%s available = %d, want 1", name, v)
			}
		}
		if p.MaximumQosFlag {
			t.Errorf("maximum QoS advertised as %d with QoS 2 available", p.MaximumQos)
		}
	})

	off := func(c *config.Config) {
		c.MQTT.MaxQoS = ptr(1)
		c.MQTT.RetainAvailable = ptr(false)
		c.MQTT.WildcardSubscriptions = ptr(false)
		c.MQTT.SharedSubscriptions = ptr(false)
		c.MQTT.SubscriptionIdentifiers = ptr(false)
		c.MQTT.TopicAliasMaximum = ptr(2)
		c.Limits.MaxPacketSize = ptr(1000)
	}
	b := testutil.StartBroker(t, off)
	c := testutil.DialRaw(t, b.Addr, 5)
	p := c.Connect("off", packets.Properties{}).Properties
	if p.TopicAliasMaximum != 2 || p.MaximumPacketSize != 1000 || p.RetainAvailable != 0 || p.WildcardSubAvailable != 0 ||
		p.SharedSubAvailable != 0 || p.SubIDAvailable != 0 || !p.MaximumQosFlag || p.MaximumQos != 1 {
		t.Fatalf("CONNACK properties do not match the config: %+v", p)
	}

	sub := func(f string, props packets.Properties) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: f}}, Properties: props}
	}
	pub := func(topic string, qos byte, retain bool, props packets.Properties, payload int) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
			PacketID: uint16(qos), TopicName: topic, Payload: make([]byte, payload), Properties: props}
	}
	for _, tc := range []struct {
		name string
		pk   packets.Packet
		want packets.Code
	}{
		{"retained publish", pub("r", 0, true, packets.Properties{}, 1), packets.ErrRetainNotSupported},
		{"QoS above maximum", pub("q", 2, false, packets.Properties{}, 1), packets.ErrQosNotSupported},
		{"wildcard subscription", sub("a/+", packets.Properties{}), packets.ErrWildcardSubscriptionsNotSupported},
		{"shared subscription", sub("$share/g/a", packets.Properties{}), packets.ErrSharedSubscriptionsNotSupported},
		{"subscription identifier", sub("a", packets.Properties{SubscriptionIdentifier: []int{5}}), packets.ErrSubscriptionIdentifiersNotSupported},
		{"topic alias above maximum", pub("a", 0, false, packets.Properties{TopicAlias: 3, TopicAliasFlag: true}, 1), packets.ErrTopicAliasInvalid},
		{"packet above maximum size", pub("big", 0, false, packets.Properties{}, 2000), packets.ErrPacketTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testutil.DialRaw(t, b.Addr, 5)
			c.Connect("", packets.Properties{})
			c.Send(tc.pk)
			d := c.Expect(packets.Disconnect)
			if d.ReasonCode != tc.want.Code {
				t.Fatalf("DISCONNECT reason 0x%02x, want 0x%02x (%s)", d.ReasonCode, tc.want.Code, tc.want.Reason)
			}
			c.ExpectClosed(5 * time.Second)
		})
	}
	t.Run("within limits still works", func(t *testing.T) {
		c := testutil.DialRaw(t, b.Addr, 5)
		c.Connect("", packets.Properties{})
		c.Send(sub("plain/topic", packets.Properties{}))
		c.Expect(packets.Suback)
		c.Send(pub("plain/topic", 1, false, packets.Properties{TopicAlias: 2, TopicAliasFlag: true}, 10))
		if got := c.ExpectEach(packets.Puback, packets.Publish)[packets.Publish]; got.TopicName != "plain/topic" {
			t.Fatalf("topic %q", got.TopicName)
		}
	})
}

// TestSilentSocketsAreClosed: mochi waits for ever for a CONNECT; Ferry
// closes sockets that send none within limits.connect_timeout.
func TestSilentSocketsAreClosed(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.ConnectTimeout = 300 * time.Millisecond })
	talker := testutil.DialRaw(t, b.Addr, 4)
	talker.Connect("talker", packets.Properties{})
	conns := make([]net.Conn, 50)
	for i := range conns {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Fatalf("socket %d not closed by the broker: %v", i, err)
		}
	}
	// A client that did send CONNECT is unaffected, now past the timeout.
	talker.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	talker.Expect(packets.Pingresp)
}

// TestQuickReconnectKeepsSubscription: a clean-session client that comes
// back under the same id while the broker is still tearing down its old
// connection (or takes that connection over) keeps what it subscribed to
// on the new one. In mochi v2.7.9 the old connection's clean-up
// (UnsubscribeClient, Clients.Delete by id) can run after the new one
// subscribed: it then unsubscribes the new connection and forgets its
// client, and no message reaches it.
func TestQuickReconnectKeepsSubscription(t *testing.T) {
	b := testutil.StartBroker(t)
	pub := testutil.DialRaw(t, b.Addr, 4)
	pub.Connect("quick-pub", packets.Properties{})
	for _, closeFirst := range []bool{true, false} {
		for i := range 60 {
			var old *testutil.Raw
			for v := byte(4); v <= 5; v++ {
				c := testutil.DialRaw(t, b.Addr, v)
				c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
					Connect: packets.ConnectParams{ClientIdentifier: "quick", Clean: true, Keepalive: 60}})
				if ack := c.Expect(packets.Connack); ack.ReasonCode != 0 {
					t.Fatalf("CONNACK 0x%02x", ack.ReasonCode)
				}
				c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
					Filters: packets.Subscriptions{{Filter: "quick/#"}}})
				c.Expect(packets.Suback)
				if old == nil {
					old = c
					if closeFirst {
						_ = c.Conn.Close()
					}
					continue
				}
				topic := fmt.Sprintf("quick/%d", i)
				pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic})
				for {
					pk, err := c.Read(5 * time.Second)
					if err != nil {
						t.Fatalf("close first %v, round %d: the new connection got nothing: %v", closeFirst, i, err)
					}
					if pk.FixedHeader.Type == packets.Publish && pk.TopicName == topic {
						break
					}
				}
				_ = c.Conn.Close()
			}
			_ = old.Conn.Close()
		}
	}
}

// TestDollarTopicsNotMatchedBySharedWildcards: a shared subscription whose
// filter starts with a wildcard gets no message on a topic starting with
// '$' [MQTT-4.7.2-1], neither a client's nor $SYS; one naming the '$' level
// does. mochi v2.7.9 matches them: "$share/g/#" got every $SYS update.
func TestDollarTopicsNotMatchedBySharedWildcards(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.MQTT.SysInterval = time.Second })
	wild := connect3(t, b, 4, "wild")
	wild.sub(t, "$share/g/#", 1)
	wild.sub(t, "$share/h/+/x", 1)
	named := connect3(t, b, 4, "named")
	named.sub(t, "$share/g/$foo/#", 1)
	named.sub(t, "$share/s/$SYS/#", 0)
	pub := connect3(t, b, 4, "pub")
	pub.pub(t, "$foo/x", 1, false, "dollar")
	pub.pub(t, "a/x", 1, false, "plain")
	named.box().wait1(t, "$foo/x")
	testutil.Eventually(t, 5*time.Second, "a $SYS update", func() bool {
		for _, m := range named.box().all() {
			if strings.HasPrefix(m.Topic, "$SYS/") {
				return true
			}
		}
		return false
	})
	wild.box().wait1(t, "a/x")
	barrier(t, pub, wild)
	for _, m := range wild.box().all() {
		if strings.HasPrefix(m.Topic, "$") {
			t.Fatalf("%q delivered to a shared subscription starting with a wildcard", m.Topic)
		}
	}
}
