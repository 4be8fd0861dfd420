package limits

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Event numbers for TestProvides, named as in mochi.
const (
	mqttOnConnect    = mqtt.OnConnect
	mqttOnPacketRead = mqtt.OnPacketRead
	mqttOnDisconnect = mqtt.OnDisconnect
)

func newTestServer(t testing.TB) *mqtt.Server {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: discardLogger()})
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func benchPublish() packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Remaining: 64},
		TopicName:   "factory/line-3/sensor-17/temperature",
		PacketID:    7,
		Payload:     []byte(`{"t":21.5}`),
	}
}

// hookCases are the configurations the hot path is measured and checked in.
var hookCases = []struct {
	name string
	cfg  Config
}{
	{"defaults", Config{}},
	{"rate limited", Config{PublishRate: 1e12, PublishByteRate: 1e15}}, // never waits
}

func BenchmarkOnPacketReadPublish(b *testing.B) {
	for _, bc := range hookCases {
		b.Run(bc.name, func(b *testing.B) {
			srv := newTestServer(b)
			h, err := New(bc.cfg, srv, nil)
			if err != nil {
				b.Fatal(err)
			}
			cl := srv.NewClient(nil, "bench", "bench", false)
			pk := benchPublish()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.OnPacketRead(cl, pk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestOnPacketReadPublishNoAlloc holds the hot path to what the package doc
// promises: no allocation per PUBLISH once the client's state exists.
func TestOnPacketReadPublishNoAlloc(t *testing.T) {
	for _, tc := range hookCases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newTestServer(t)
			h, err := New(tc.cfg, srv, nil)
			if err != nil {
				t.Fatal(err)
			}
			cl := srv.NewClient(nil, "t", "t", false)
			pk := benchPublish()
			if _, err := h.OnPacketRead(cl, pk); err != nil { // creates the state
				t.Fatal(err)
			}
			allocs := testing.AllocsPerRun(1000, func() {
				if _, err := h.OnPacketRead(cl, pk); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("%v allocations per PUBLISH, want 0", allocs)
			}
		})
	}
}
