package redis_test

import (
	"context"
	"fmt"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bredis "github.com/ferrymq/ferry/bridge/redis"
)

// TestOutageDeadLettersNothing runs the shared outage test with
// redis-server killed and restarted (AOF) on the same port, and an ingress
// route on a stream of the same server. The poison message goes to a key
// that holds a string: XADD answers WRONGTYPE.
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := ownRedis(t, true)
	rc := rs.client(t)
	prefix := key(t, "")
	ctx := context.Background()
	if err := rc.Set(ctx, prefix+"poison", "a string", 0).Err(); err != nil {
		t.Fatal(err)
	}
	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"redis": bredis.New},
		To:        fmt.Sprintf(`{redis: {addr: %q, stream: "%s{{.Segment 1}}", timeout: 500ms}}`, rs.addr, prefix),
		Topic:     "devices/good/t",
		Poison:    bridge.Message{Topic: "devices/poison/t", Payload: []byte("poison"), QoS: 1},
		Received: func(t *testing.T) []string {
			entries, err := rc.XRange(ctx, prefix+"good", "-", "+").Result()
			if err != nil {
				return nil // down, or loading its AOF
			}
			out := make([]string, len(entries))
			for i, e := range entries {
				out[i] = fmt.Sprint(e.Values["payload"])
			}
			return out
		},
		Down: func(*testing.T) { rs.stop() },
		Up:   func(*testing.T) { rs.start() },
		From: fmt.Sprintf(`{redis: {addr: %q, stream: "%sin", start_id: "0", block: 100ms, timeout: 500ms}}`, rs.addr, prefix),
		Put: func(t *testing.T, payloads []string) {
			for _, p := range payloads {
				if err := rc.XAdd(ctx, &goredis.XAddArgs{Stream: prefix + "in", Values: []string{"payload", p}}).Err(); err != nil {
					t.Fatalf("XADD: %v", err)
				}
			}
		},
	})
}
