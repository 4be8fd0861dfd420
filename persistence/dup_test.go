package persistence

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestFirstDeliveryAfterRestartNotDup: QoS 1 and 2 messages queued for a
// persistent session while its client was away, then a restart (a clean
// one, and a crash): their first delivery has DUP clear [MQTT-3.3.1-1]; a
// stored packet id marked every queued QoS 2 message as sent before. Those
// delivered and left unacknowledged come again with DUP set after a second
// restart (the end of the connection stored the QoS 1 one's packet id, see
// storeHandedLocked).
func TestFirstDeliveryAfterRestartNotDup(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "clean restart"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			st := openStore(t, Config{Sync: SyncAlways})
			b := startBroker(t, st, nil)
			sub, _ := dialRaw(t, b.url, "dupsub")
			sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "dup/#", Qos: 2}}})
			if ack := sub.read(); ack.FixedHeader.Type != packets.Suback {
				t.Fatalf("suback %+v", ack)
			}
			_ = sub.conn.Close()
			waitClosed(t, b, "dupsub")
			pub := connect(t, b.url, "duppub", true, nil)
			wait(t, "publish qos2", pub.Publish("dup/2", 2, false, "two"))
			wait(t, "publish qos1", pub.Publish("dup/1", 1, false, "one"))
			pub.Disconnect(100)

			restart := func() {
				t.Helper()
				putRaw(t, st, "z/barrier", "") // the asynchronous writes are committed
				dir := st.Dir()
				if crash {
					dir = t.TempDir()
					copyDir(t, st.Dir(), dir)
				}
				b.close()
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
				st = openStore(t, Config{Dir: dir, Sync: SyncAlways})
				b = startBroker(t, st, nil)
			}
			restart()
			for _, sentBefore := range []bool{false, true} {
				sub, present := dialRaw(t, b.url, "dupsub")
				if !present {
					t.Fatal("session not present")
				}
				got := map[string]bool{}
				for range 2 {
					pk := sub.read()
					if pk.FixedHeader.Type != packets.Publish {
						t.Fatalf("want PUBLISH, got %s", packets.PacketNames[pk.FixedHeader.Type])
					}
					got[string(pk.Payload)] = pk.FixedHeader.Dup
				}
				want := map[string]bool{"one": sentBefore, "two": sentBefore}
				if got["one"] != want["one"] || got["two"] != want["two"] || len(got) != 2 {
					t.Fatalf("sent before %v: got %v (payload: DUP), want %v", sentBefore, got, want)
				}
				_ = sub.conn.Close() // unacknowledged
				waitClosed(t, b, "dupsub")
				restart()
			}
		})
	}
}

// waitClosed waits until the server has seen client id's connection end.
func waitClosed(t *testing.T, b *broker, id string) {
	t.Helper()
	eventually(t, 5*time.Second, id+" gone", func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.Closed()
	})
}
