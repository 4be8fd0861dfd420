package persistence

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// rawSubscriber connects as a persistent MQTT 3.1.1 client and subscribes
// at QoS 1. It never acknowledges anything.
func rawSubscriber(t *testing.T, url, id, filter string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var buf bytes.Buffer
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 60, ClientIdentifier: id},
	}
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	sub := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 1}},
	}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	// CONNACK (4 bytes) and SUBACK (5 bytes).
	ack := make([]byte, 9)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for n := 0; n < len(ack); {
		k, err := conn.Read(ack[n:])
		if err != nil {
			t.Fatalf("read acks: %v", err)
		}
		n += k
	}
	if ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 {
		t.Fatalf("acks %x", ack)
	}
	return conn
}

// TestRecordsMatchMochiAfterDrops: when mochi drops QoS 1 messages for a
// subscriber whose outbound queue is full, the store keeps the messages
// mochi still has in flight for it, and not the dropped ones: no ghosts for
// a restart.
func TestRecordsMatchMochiAfterDrops(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, func(c *mqtt.Capabilities) { c.MaximumClientWritesPending = 1 })
	conn := rawSubscriber(t, b.url, "stuck", "big/#")
	go func() { _, _ = io.Copy(io.Discard, conn) }() // reads, never acks
	payload := bytes.Repeat([]byte("x"), 4<<10)
	var wg sync.WaitGroup
	for p := range 8 {
		pub := connect(t, b.url, fmt.Sprint("pub", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if tok := pub.Publish("big/x", 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Errorf("publish: %v", tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.srv.Info.Clone().MessagesDropped == 0 {
		t.Fatal("no message was dropped: the test did not fill the outbound queue")
	}
	putRaw(t, st, "z/barrier", "") // every earlier asynchronous write is committed

	cl, ok := b.srv.Clients.Get("stuck")
	if !ok {
		t.Fatal("subscriber gone")
	}
	// QoS 1 refs carry no packet id (OnQosPublish does not write it), so
	// records and in-flight messages are matched by count.
	inFlight := len(cl.State.Inflight.GetAll(false))
	stored := 0
	if err := st.scan(string(clientPrefix(prefixQueue, "stuck")), func(_, v []byte) error {
		_, err := decodeRef(v)
		stored++
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if stored < inFlight {
		t.Fatalf("%d records stored, mochi has %d in flight: some are not stored", stored, inFlight)
	}
	// mochi can hand two concurrent publishes the same packet id
	// (NextPacketID and Inflight.Set are not atomic); if the second is then
	// dropped, mochi forgets both while the store keeps the first, which was
	// acknowledged and never delivered. That is rare; a missing drop
	// handler would leave a record for every drop.
	dropped := b.srv.Info.Clone().MessagesDropped
	if extra := stored - inFlight; extra > int(dropped)/10 {
		t.Fatalf("%d records stored, mochi has %d in flight (dropped %d)", stored, inFlight, dropped)
	}
	if n := countKeys(t, st, prefixMessage); n != stored {
		t.Fatalf("%d message bodies for %d queued messages", n, stored)
	}
	t.Logf("%d in flight, %d dropped", inFlight, dropped)
}
