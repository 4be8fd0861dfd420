package broker_test

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// connectV4 connects an MQTT 3.1.1 client with clean session clean
// (dialSession without credentials) and expects it accepted.
func connectV4(t *testing.T, addr, id string, clean bool) *testutil.Raw {
	t.Helper()
	c, ack := dialSession(t, addr, 4, id, "", "", !clean)
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect %s: %v", id, ack)
	}
	return c
}

// TestAbandonedCountsDropsOnly: ferry_messages_dropped_total{reason=
// "qos_expired_or_abandoned"} counts QoS 1 messages a session lost, not the
// ones mochi hands from a session's old client to the one that resumes it
// (every persistent reconnect) and then delivers.
func TestAbandonedCountsDropsOnly(t *testing.T) {
	const n = 5
	for _, tc := range []struct {
		name       string
		persistent bool // reconnect with clean session false: the messages are resent
		want       float64
	}{
		{"resumed session", true, 0},
		{"session ended with its messages", false, n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testutil.StartBroker(t)
			connect := func(clean bool) *testutil.Raw { return connectV4(t, b.Addr, "abandon-sub", clean) }
			sub := connect(!tc.persistent)
			sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "abandon/#", Qos: 1}}})
			sub.Expect(packets.Suback)
			pub := testutil.DialRaw(t, b.Addr, 4)
			pub.Connect("abandon-pub", packets.Properties{})
			for i := range n {
				publishQoS1(t, pub, uint16(i+1), "abandon/x", fmt.Sprint("m", i))
				sub.Expect(packets.Publish) // received, not acknowledged
			}
			_ = sub.Conn.Close()
			testutil.Eventually(t, 5*time.Second, "subscriber gone", func() bool {
				cl, ok := b.B.Server().Clients.Get("abandon-sub")
				return !ok || cl.Closed()
			})
			if tc.persistent {
				for round := range 3 { // each reconnect resends them
					sub = connect(false)
					for i := range n {
						pk := sub.Expect(packets.Publish)
						if round == 2 {
							sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
						} else if want := fmt.Sprint("m", i); string(pk.Payload) != want || !pk.FixedHeader.Dup {
							t.Fatalf("resend %d: got %q dup %v, want %q dup", round, pk.Payload, pk.FixedHeader.Dup, want)
						}
					}
					if round < 2 {
						_ = sub.Conn.Close()
						testutil.Eventually(t, 5*time.Second, "subscriber gone", func() bool {
							cl, ok := b.B.Server().Clients.Get("abandon-sub")
							return ok && cl.Closed()
						})
					}
				}
				testutil.Eventually(t, 5*time.Second, "acknowledged", func() bool {
					return metric(t, b, "ferry_inflight_messages") == 0
				})
			}
			name := `ferry_messages_dropped_total{reason="qos_expired_or_abandoned"}`
			testutil.Eventually(t, 5*time.Second, "drops counted", func() bool { return metric(t, b, name) >= tc.want })
			if got := metric(t, b, name); got != tc.want {
				t.Fatalf("%s = %v, want %v", name, got, tc.want)
			}
		})
	}
}

// TestStuckSubscriberHoldsPublishersOnlyOverflowWait: a subscriber that
// stops reading holds each QoS 1 publisher to it for at most
// limits.overflow_wait, not for write_timeout; a wait that ran out is
// counted, and the overflow policy applies to the stuck subscriber: its
// messages beyond what its connection holds are dropped and counted, or,
// for a persistent session, spilled to the store and delivered, in order,
// when it comes back.
func TestStuckSubscriberHoldsPublishersOnlyOverflowWait(t *testing.T) {
	const n, size = 400, 64 << 10 // 26 MB: far more than the sockets buffer
	const overflowWait, bound = time.Second, 4 * time.Second
	for _, tc := range []struct {
		name     string
		clean    bool
		recovers bool // reads again on the same connection
	}{
		{"clean session", true, false},
		{"persistent session", false, false},
		{"persistent session reading again", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testutil.StartBroker(t, func(c *config.Config) {
				c.Limits.OverflowWait = overflowWait
				c.Limits.WriteTimeout = 15 * time.Second
			})
			connect := func() *testutil.Raw { return connectV4(t, b.Addr, "stuck", tc.clean) }
			stuck := connect()
			stuck.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "stuck/#", Qos: 1}}})
			stuck.Expect(packets.Suback)
			// From here on the subscriber reads nothing.

			pub := testutil.DialRaw(t, b.Addr, 4)
			pub.Connect("stuck-pub", packets.Properties{})
			var worst time.Duration
			for i := range n {
				payload := binary.BigEndian.AppendUint32(make([]byte, 0, size), uint32(i))
				payload = payload[:size]
				start := time.Now()
				pub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1),
					TopicName: "stuck/x", Payload: payload})
				if _, err := pub.Read(30 * time.Second); err != nil {
					t.Fatalf("publish %d never acknowledged: %v", i, err)
				}
				worst = max(worst, time.Since(start))
			}
			t.Logf("%d publishes, slowest PUBACK after %v", n, worst)
			if worst > bound {
				t.Errorf("a PUBACK took %v: the publisher was held by the stuck subscriber beyond overflow_wait (%v)", worst, overflowWait)
			}
			dropped := metric(t, b, `ferry_messages_dropped_total{reason="client_queue_full"}`)
			if tc.clean {
				// A persistent session's new messages may go to the store
				// before its queue is crowded enough to hold a publisher,
				// so only here must a wait have run out.
				if got := metric(t, b, `ferry_limits_enforced_total{reason="publisher_wait_timed_out"}`); got < 1 {
					t.Errorf("publisher_wait_timed_out = %v, want at least 1", got)
				}
				if dropped == 0 {
					t.Errorf("no drops counted for the stuck subscriber")
				}
				return
			}
			if dropped != 0 {
				t.Errorf("%v messages of a persistent session counted as dropped", dropped)
			}
			// Once stalled, its new messages go to the store, not to mochi.
			if got := metric(t, b, "ferry_messages_spilled_total"); got == 0 {
				t.Errorf("nothing spilled for the stalled persistent session")
			}
			// Every message, first deliveries in order, whether it reads
			// again on the stalled connection or comes back on a new one.
			seen, last := map[int]bool{}, -1
			take := func(c *testutil.Raw) error {
				for len(seen) < n {
					pk, err := c.Read(10 * time.Second)
					if err != nil {
						return err
					}
					if pk.FixedHeader.Type != packets.Publish {
						continue
					}
					c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
					i := int(binary.BigEndian.Uint32(pk.Payload))
					if seen[i] {
						continue
					}
					if i < last {
						t.Fatalf("message %d first delivered after %d", i, last)
					}
					seen[i], last = true, i
				}
				return nil
			}
			if tc.recovers {
				err := take(stuck)
				t.Logf("%d messages on the stalled connection read again (%v)", len(seen), err)
				if err == nil {
					return
				}
			}
			_ = stuck.Conn.Close()
			testutil.Eventually(t, 20*time.Second, "stuck subscriber gone", func() bool {
				cl, ok := b.B.Server().Clients.Get("stuck")
				return ok && cl.Closed()
			})
			if err := take(connect()); err != nil {
				t.Fatalf("after reconnecting got %d of %d: %v", len(seen), n, err)
			}
		})
	}
}
