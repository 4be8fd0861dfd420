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

	paho "github.com/eclipse/paho.mqtt.golang"
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

// TestFullQueueLosesNothing: a persistent subscriber whose outbound queue
// is full loses none of the QoS 1 messages acknowledged to their
// publishers. The engine keeps them in flight instead of dropping them
// (upstream dropped them, and this hook deleted their records), the store
// keeps a record for each, and the subscriber gets every one when it comes
// back.
func TestFullQueueLosesNothing(t *testing.T) {
	const pubs, each = 8, 50
	st := openStore(t, Config{})
	b := startBroker(t, st, func(c *mqtt.Capabilities) { c.MaximumClientWritesPending = 1 })
	conn := rawSubscriber(t, b.url, "stuck", "big/#")
	go func() { _, _ = io.Copy(io.Discard, conn) }() // reads, never acks
	pad := bytes.Repeat([]byte("x"), 4<<10)
	var wg sync.WaitGroup
	for p := range pubs {
		pub := connect(t, b.url, fmt.Sprint("pub", p), true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				payload := append([]byte(fmt.Sprintf("%d-%d ", p, i)), pad...)
				if tok := pub.Publish("big/x", 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Errorf("publish: %v", tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	if d := b.srv.Info.Clone().MessagesDropped; d != 0 {
		t.Fatalf("%d messages dropped for a persistent session", d)
	}
	putRaw(t, st, "z/barrier", "") // every earlier asynchronous write is committed
	if n := countKeys(t, st, prefixMessage); n == 0 || n != countKeys(t, st, string(clientPrefix(prefixQueue, "stuck"))) {
		t.Fatalf("%d message bodies for %d queued messages", n, countKeys(t, st, string(clientPrefix(prefixQueue, "stuck"))))
	}
	_ = conn.Close()
	eventually(t, 5*time.Second, "subscriber gone", func() bool {
		cl, ok := b.srv.Clients.Get("stuck")
		return ok && cl.Closed()
	})

	var mu sync.Mutex
	seen := map[string]bool{}
	connect(t, b.url, "stuck", false, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		seen[strings.Fields(string(m.Payload()))[0]] = true
		mu.Unlock()
	})
	eventually(t, 10*time.Second, "every message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == pubs*each
	})
}
