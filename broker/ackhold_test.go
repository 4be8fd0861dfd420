package broker_test

import (
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/testutil"
)

// holdHook holds the acknowledgement of every publish to one topic until
// its channel closes, as the persistence hook does until a commit is
// durable.
type holdHook struct {
	mqtt.HookBase
	topic string
	w     chanWait
}

func (h *holdHook) ID() string { return "test-hold" }

func (h *holdHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *holdHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.TopicName == h.topic {
		if !cl.HoldAck(h.w) {
			panic("holdHook: the acknowledgement could not be held")
		}
	}
	return pk, nil
}

// chanWait is a write that is done when its channel closes.
type chanWait struct{ ch chan struct{} }

func (w chanWait) Wait() error { <-w.ch; return nil }

func (w chanWait) Ready() bool {
	select {
	case <-w.ch:
		return true
	default:
		return false
	}
}

// TestAckHeldWhenClientReusesServerPacketID: a client that publishes at
// QoS 1 with the packet identifier of a QoS 1 PUBLISH the server sent it
// and it has not acknowledged yet (MQTT numbers each direction on its own)
// gets its PUBACK only once the message is durable. Found by reading wave
// 1's code: the identifier remapping (packetid.go) and the deferred
// acknowledgements (ackwait.go) keyed the wait by different identifiers,
// so that PUBACK went out before the commit, and with storage.sync: always
// before the fsync.
func TestAckHeldWhenClientReusesServerPacketID(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	hold := &holdHook{topic: "hold/" + uniq(t, "t"), w: chanWait{ch: make(chan struct{})}}
	if err := b.B.Server().AddHook(hold, nil); err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			close(hold.w.ch)
		}
	}()

	topic := "pid/" + uniq(t, "t")
	raw := testutil.DialRaw(t, b.Addr, 5)
	raw.Connect(uniq(t, "c"), packets.Properties{})
	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topic, Qos: 1}}})
	raw.Expect(packets.Suback)
	pub := connect5(t, b, uniq(t, "pub"), nil, nil)
	pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("to the client")})
	out := raw.Expect(packets.Publish) // left unacknowledged
	id := out.PacketID

	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id,
		TopicName: hold.topic, Payload: []byte("from the client")})
	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	// The PINGREQ is handled after the PUBLISH: its answer marks the point
	// by which a PUBACK not held would have been written.
	for {
		pk, err := raw.Read(waitFor)
		if err != nil {
			t.Fatalf("waiting for PINGRESP: %v", err)
		}
		if pk.FixedHeader.Type == packets.Puback && pk.PacketID == id {
			t.Fatalf("PUBACK for packet identifier %d sent before its message was durable: the client's identifier collides with the server's unacknowledged PUBLISH %d, and the acknowledgement skipped its wait", id, id)
		}
		if pk.FixedHeader.Type == packets.Pingresp {
			break
		}
	}
	close(hold.w.ch)
	released = true
	if ack := raw.Expect(packets.Puback); ack.PacketID != id || ack.ReasonCode >= 0x80 {
		t.Fatalf("after the commit: PUBACK id %d reason 0x%02x, want id %d success", ack.PacketID, ack.ReasonCode, id)
	}
	// The server's own PUBLISH is still the client's to acknowledge.
	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id})
	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	raw.Expect(packets.Pingresp)
}
