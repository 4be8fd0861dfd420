package cluster

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkRoute measures QoS 1 messages from a publisher on node 0 to a
// clean subscriber on the same node and on node 1, in process (three
// nodes and the clients share the machine): a guide for profiling, not
// the figures of docs/benchmarks.md (bench/cluster.sh).
func BenchmarkRoute(b *testing.B) {
	for _, cross := range []bool{false, true} {
		b.Run(fmt.Sprintf("cross=%v", cross), func(b *testing.B) {
			nodes := startClusterB(b, 3)
			var got atomic.Int64
			to := nodes[0]
			if cross {
				to = nodes[1]
			}
			o := paho.NewClientOptions().AddBroker("tcp://" + to.addr).SetClientID("bsub").SetCleanSession(true).SetAutoReconnect(false)
			sub := paho.NewClient(o)
			if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer sub.Disconnect(10)
			sub.Subscribe("bench/#", 1, func(_ paho.Client, _ paho.Message) { got.Add(1) }).Wait()
			if cross {
				deadline := time.Now().Add(10 * time.Second)
				for len(nodes[0].node.interest.nodesFor("bench/x")) == 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			po := paho.NewClientOptions().AddBroker("tcp://" + nodes[0].addr).SetClientID("bpub").SetCleanSession(true).
				SetAutoReconnect(false).SetMaxResumePubInFlight(256)
			pub := paho.NewClient(po)
			if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer pub.Disconnect(10)
			payload := make([]byte, 64)
			b.ResetTimer()
			start := time.Now()
			toks := make([]paho.Token, 0, 256)
			for i := 0; i < b.N; i++ {
				toks = append(toks, pub.Publish("bench/x", 1, false, payload))
				if len(toks) == cap(toks) {
					for _, tk := range toks {
						tk.Wait()
					}
					toks = toks[:0]
				}
			}
			for _, tk := range toks {
				tk.Wait()
			}
			for got.Load() < int64(b.N) && time.Since(start) < 60*time.Second {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(got.Load())/time.Since(start).Seconds(), "msg/s")
		})
	}
}
