package broker_test

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

func metric(t *testing.T, b *testutil.Broker, name string) float64 {
	t.Helper()
	resp, err := http.Get(b.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(name) + " ([0-9.e+]+)$").FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestSlowSubscriberLosesNothing: publishers outrun a subscriber that does
// not read for a while. mochi would acknowledge their QoS 1 messages and
// then drop them on the subscriber's full queue; with the default
// block-publisher policy the publishers wait instead and every message
// arrives. With drop-newest the drops happen and are counted.
func TestSlowSubscriberLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		policy   string
		wantLoss bool
	}{
		{"block-publisher", false},
		{"drop-newest", true},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			b := testutil.StartBroker(t, func(c *config.Config) {
				c.Limits.ClientWritesPending = 32
				c.Limits.OverflowPolicy = tc.policy
			})
			sub := testutil.DialRaw(t, b.Addr, 4)
			sub.Connect("slow-sub", packets.Properties{})
			sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "fanin/#", Qos: 1}}})
			sub.Expect(packets.Suback)

			// Publishers pipeline their QoS 1 messages (as fast clients do):
			// the subscriber's queue of 32 overflows even though it reads as
			// fast as it can.
			const pubs, each = 4, 3000
			acked := make([]int, pubs)
			var wg sync.WaitGroup
			for p := range pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := testutil.DialRaw(t, b.Addr, 4)
					c.Connect(fmt.Sprintf("pub-%d", p), packets.Properties{})
					var burst []byte
					for i := range each {
						burst = append(burst, testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
							PacketID: uint16(i + 1), TopicName: fmt.Sprintf("fanin/%d", p), Payload: make([]byte, 64)}, 4)...)
					}
					go func() { _, _ = c.Conn.Write(burst) }()
					for range each {
						if _, err := c.Read(30 * time.Second); err != nil {
							return
						}
						acked[p]++
					}
				}()
			}
			received := 0
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			for {
				pk, err := sub.Read(2 * time.Second)
				if err != nil {
					select {
					case <-done:
					default:
						continue // publishers still going
					}
					break
				}
				if pk.FixedHeader.Type == packets.Publish {
					received++
					sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				}
			}
			total := 0
			for _, n := range acked {
				total += n
			}
			dropped := metric(t, b, `ferry_messages_dropped_total{reason="client_queue_full"}`)
			t.Logf("%s: acknowledged %d, received %d, dropped %v, publishers waited %v times", tc.policy, total, received, dropped,
				metric(t, b, `ferry_limits_enforced_total{reason="publisher_waited_for_subscriber"}`))
			if total != pubs*each {
				t.Fatalf("only %d of %d publishes acknowledged", total, pubs*each)
			}
			if tc.wantLoss {
				if dropped == 0 || received >= total {
					t.Fatalf("drop-newest: expected counted drops, got received %d of %d, dropped %v", received, total, dropped)
				}
				if received+int(dropped) != total {
					t.Errorf("received %d + dropped %v != acknowledged %d: a loss went uncounted", received, dropped, total)
				}
				return
			}
			if received != total || dropped != 0 {
				t.Fatalf("block-publisher: acknowledged %d, received %d, dropped %v", total, received, dropped)
			}
		})
	}
}

// TestStalledSubscriberIsDisconnected: mochi writes to a subscriber while
// holding the lock every publisher to it needs, so a subscriber that stops
// reading would stall its publishers for ever. After limits.write_timeout
// it is disconnected and the publishers go on.
func TestStalledSubscriberIsDisconnected(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.WriteTimeout = 500 * time.Millisecond })
	stalled := testutil.DialRaw(t, b.Addr, 4)
	stalled.Connect("stalled", packets.Properties{})
	stalled.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "big/#", Qos: 1}}})
	stalled.Expect(packets.Suback)
	// From here on the subscriber reads nothing.

	pub := testutil.DialRaw(t, b.Addr, 4)
	pub.Connect("big-pub", packets.Properties{})
	const n, size = 400, 64 << 10 // 26 MB: far more than the sockets buffer
	for i := range n {
		pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1),
			TopicName: "big/x", Payload: make([]byte, size)})
		if _, err := pub.Read(20 * time.Second); err != nil {
			t.Fatalf("publish %d never acknowledged: %v (publisher stalled behind a subscriber that does not read)", i, err)
		}
	}
	if got := metric(t, b, `ferry_limits_enforced_total{reason="write_timeout"}`); got != 1 {
		t.Errorf("write timeouts counted: %v, want 1", got)
	}
}

// TestQuietConnectionGetsResends: an MQTT 3.1.1 subscriber that received a
// QoS 1 message and never acknowledged it gets it again, with DUP set,
// once its connection has been quiet for limits.resend_after; an MQTT 5
// subscriber does not (MQTT-4.4.0-1).
func TestQuietConnectionGetsResends(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.ResendAfter = 300 * time.Millisecond })
	subs := map[byte]*testutil.Raw{}
	for _, v := range []byte{4, 5} {
		s := testutil.DialRaw(t, b.Addr, v)
		s.Connect(fmt.Sprintf("quiet-v%d", v), packets.Properties{})
		s.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "resend/#", Qos: 1}}})
		s.Expect(packets.Suback)
		subs[v] = s
	}
	pub := testutil.DialRaw(t, b.Addr, 4)
	pub.Connect("resend-pub", packets.Properties{})
	pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "resend/x", Payload: []byte("once")})
	pub.Expect(packets.Puback)
	first := map[byte]packets.Packet{}
	for v, s := range subs {
		first[v] = s.Expect(packets.Publish) // not acknowledged
	}
	again := subs[4].Expect(packets.Publish)
	if !again.FixedHeader.Dup || again.PacketID != first[4].PacketID || string(again.Payload) != "once" {
		t.Fatalf("resend: dup %v id %d (first %d) payload %q", again.FixedHeader.Dup, again.PacketID, first[4].PacketID, again.Payload)
	}
	subs[4].Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: again.PacketID})
	if pk, err := subs[5].Read(time.Second); err == nil {
		t.Fatalf("MQTT 5 client got %s on a live connection", packets.PacketNames[pk.FixedHeader.Type])
	}
	// Acknowledged: no more resends.
	if pk, err := subs[4].Read(time.Second); err == nil {
		t.Fatalf("after PUBACK the client got %s", packets.PacketNames[pk.FixedHeader.Type])
	}
}

// TestSessionQueuePolicies: limits.max_queued_messages bounds what an
// offline persistent session queues; the policy picks which messages it
// gets back, and the drops are counted by reason.
func TestSessionQueuePolicies(t *testing.T) {
	for _, tc := range []struct {
		policy, reason string
		want           []string
	}{
		{"drop-oldest", "session_queue_dropped_oldest", []string{"m2", "m3", "m4"}},
		{"drop-newest", "session_queue_full", []string{"m0", "m1", "m2"}},
		{"block-publisher", "session_queue_full", []string{"m0", "m1", "m2"}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			b := testutil.StartBroker(t, func(c *config.Config) {
				c.Limits.MaxQueuedMessages = 3
				c.Limits.OverflowPolicy = tc.policy
			})
			persistentSub := func() *testutil.Raw {
				sub := testutil.DialRaw(t, b.Addr, 4)
				sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
					Connect: packets.ConnectParams{ClientIdentifier: "away", Keepalive: 60}})
				sub.Expect(packets.Connack)
				return sub
			}
			sub := persistentSub()
			sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "q/#", Qos: 1}}})
			sub.Expect(packets.Suback)
			sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
			sub.ExpectClosed(5 * time.Second)
			// mochi marks the client closed just after its socket: until
			// then a message counts as sent on a live connection, which
			// drop-oldest does not take back.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				if cl, ok := b.B.Server().Clients.Get("away"); ok && cl.Closed() {
					break
				} else if time.Now().After(deadline) {
					t.Fatal("the session never went offline")
				}
			}

			pub := testutil.DialRaw(t, b.Addr, 4)
			pub.Connect("pub", packets.Properties{})
			for i := range 5 {
				if code := publishQoS1(t, pub, uint16(i+1), "q/x", fmt.Sprint("m", i)); code != 0 {
					t.Fatalf("PUBACK reason 0x%02x", code)
				}
			}
			name := fmt.Sprintf("ferry_messages_dropped_total{reason=%q}", tc.reason)
			if got := metric(t, b, name); got != 2 {
				t.Fatalf("%s = %v, want 2", name, got)
			}
			sub = persistentSub()
			for _, want := range tc.want {
				pk := sub.Expect(packets.Publish)
				if string(pk.Payload) != want {
					t.Fatalf("got %s, want %s", pk.Payload, want)
				}
				sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}
			if pk, err := sub.Read(200 * time.Millisecond); err == nil {
				t.Fatalf("unexpected %s %q", packets.PacketNames[pk.FixedHeader.Type], pk.Payload)
			}
		})
	}
}
