package kafka_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bkafka "github.com/ferrymq/ferry/bridge/kafka"
)

// TestOutageDeadLettersNothing runs the shared outage test with the kfake
// cluster stopped and restarted on the same port and data, and an ingress
// route on another topic. The poison message is over the broker's
// message.max.bytes (MESSAGE_TOO_LARGE).
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	kc := runCluster(t, kfake.SeedTopics(1, "good", "in"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	poison := make([]byte, 8192)
	_, _ = rand.Read(poison) // incompressible

	// A consumer of "good" that lives through the outage (the client
	// reconnects by itself).
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.addr()), kgo.ConsumeTopics("good"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var got bridgerun.Payloads
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			for _, r := range cl.PollFetches(ctx).Records() {
				got.Add(string(r.Value))
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); cl.Close() })

	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"kafka": bkafka.New},
		To:        fmt.Sprintf(`{kafka: {brokers: [%q], topic: good, timeout: 1s}}`, kc.addr()),
		Topic:     "devices/d1/t",
		Poison:    bridge.Message{Topic: "devices/d1/t", Payload: poison, QoS: 1},
		Received:  got.Received,
		Down:      func(*testing.T) { kc.stop() },
		Up:        func(*testing.T) { kc.start() },
		From:      fmt.Sprintf(`{kafka: {brokers: [%q], topic: in, timeout: 1s}}`, kc.addr()),
		Put:       func(t *testing.T, payloads []string) { kc.produce(t, "in", payloads...) },
	})
}
