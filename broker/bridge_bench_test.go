package broker_test

import (
	"fmt"
	gosync "sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
)

// BenchmarkJetStreamEgress measures QoS 1 publishes routed at least once to
// JetStream, end to end: from the first PUBLISH until the stream holds
// every message. 10 publishers pipeline 64 messages each.
//
//	go test -run '^$' -bench JetStreamEgress -benchtime 20000x ./broker/
func BenchmarkJetStreamEgress(b *testing.B) {
	for _, mode := range []string{"batch", "always"} {
		b.Run("sync="+mode, func(b *testing.B) { benchJetStream(b, mode) })
	}
}

func benchJetStream(b *testing.B, sync string) {
	ns := testutil.StartNATS(b, -1, "")
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "BENCH", Subjects: []string{"bench"}}); err != nil {
		b.Fatal(err)
	}
	parsed := withBridgesTB(b, fmt.Sprintf("bridges:\n  - {name: bench, from: \"bench/#\", to: {nats: {url: %q, subject: bench, jetstream: true}}, batch_size: 256}\n", ns.ClientURL()))
	br := testutil.StartBroker(b, parsed, func(c *config.Config) { c.Storage.Sync = sync })
	const pubs, window = 10, 64
	per := b.N/pubs + 1
	b.ResetTimer()
	var wg gosync.WaitGroup
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := testutil.DialRaw(b, br.Addr, 4)
			c.Connect(fmt.Sprintf("bench-%d", p), packets.Properties{})
			acked := 0
			for i := range per {
				c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i%60000 + 1),
					TopicName: "bench/x", Payload: make([]byte, 64)})
				if i-acked >= window {
					c.Expect(packets.Puback)
					acked++
				}
			}
			for ; acked < per; acked++ {
				c.Expect(packets.Puback)
			}
		}()
	}
	wg.Wait()
	want := uint64(pubs * per)
	for {
		si, err := js.StreamInfo("BENCH")
		if err == nil && si.State.Msgs >= want {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "msgs/s")
}
