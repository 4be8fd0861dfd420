package activemq_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq"
)

// BenchmarkEgress measures the connector's batch send to a real ActiveMQ:
// persistent SENDs of 100-byte payloads, pipelined per batch, each batch
// acked by all its receipts (what an at-least-once route's worker does,
// without the outbox). msgs/s is the figure to compare.
func BenchmarkEgress(b *testing.B) {
	addr := needServer(b)
	for _, size := range []int{1, 64, 512} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			spec, err := bridge.NewSpec("bench", bridge.Out, fmt.Sprintf(
				`{addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", timeout: 30s}`,
				addr, passcodeFile(b), queue("bench")))
			if err != nil {
				b.Fatal(err)
			}
			c, err := activemq.New(spec, bridge.Deps{})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := c.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			payload := make([]byte, 100)
			batch := make([]bridge.Message, size)
			for i := range batch {
				batch[i] = bridge.Message{Route: "bench", Topic: "devices/d1/telemetry", Payload: payload, QoS: 1, Created: time.Now(),
					UserProperties: []bridge.Property{{Key: "unit", Value: "C"}}}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; sent += size {
				n := min(size, b.N-sent)
				for i := range n {
					batch[i].Seq = uint64(sent + i + 1)
					batch[i].ID = bridge.MessageID("bench", batch[i].Seq)
				}
				if err := c.Deliver(ctx, batch[:n]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}
