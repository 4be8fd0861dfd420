package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/internal/testutil"
)

// connectPaho connects a paho MQTT 3.1.1 client to addr (host:port) with
// clean session clean, auto-reconnecting, and disconnects it when the test
// ends. onMessage, when not nil, receives every message.
func connectPaho(t *testing.T, addr, id string, clean bool, onMessage paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetProtocolVersion(4).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(false).SetDefaultPublishHandler(onMessage)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// publishQoS1 publishes payloads prefix%05d for i in [from, to) to topic
// at QoS 1, pipelined, and fails unless every one was PUBACKed.
func publishQoS1(t *testing.T, c paho.Client, topic string, from, to int) {
	t.Helper()
	toks := make([]paho.Token, 0, to-from)
	for i := from; i < to; i++ {
		toks = append(toks, c.Publish(topic, 1, false, fmt.Sprintf("m%05d", i)))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish m%05d: not acknowledged: %v", from+i, tok.Error())
		}
	}
}

// streamPayloads reads a whole stream and counts each payload's entries;
// entries without the message id field are counted under "".
func streamPayloads(t *testing.T, rc *goredis.Client, stream string) (byPayload map[string]int, ids map[string]string, entries int) {
	t.Helper()
	all, err := rc.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s: %v", stream, err)
	}
	byPayload = make(map[string]int, len(all))
	ids = make(map[string]string, len(all))
	for _, e := range all {
		p := fmt.Sprint(e.Values["payload"])
		byPayload[p]++
		id := fmt.Sprint(e.Values["id"])
		if prev, ok := ids[p]; ok && prev != id {
			t.Fatalf("payload %s under two message ids %s and %s", p, prev, id)
		}
		ids[p] = id
	}
	return byPayload, ids, len(all)
}

// TestRedisStreamSurvivesRedisRestart is issue 5's done-when: a route
// devices/# → Redis stream telemetry, through a real Ferry process with
// storage.sync always, delivers all 2,000 distinct QoS 1 messages when
// Redis (append-only file, fsync always) is stopped (SIGTERM, a clean
// SHUTDOWN) after the first 1,000 reached it and restarted on the same
// port and directory after the second 1,000 were published and PUBACKed.
// The connector is at least once: duplicates (same message id) are
// allowed and counted.
func TestRedisStreamSurvivesRedisRestart(t *testing.T) {
	rs := testutil.StartRedis(t)
	rc := rs.Client(t)
	defer rc.Close()
	cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: telemetry
    from: "devices/#"
    to: {redis: {addr: %q, stream: telemetry, timeout: 1s}}
    backoff: {initial: 20ms, max: 200ms}
    max_attempts: 1000000
`, rs.Addr))
	p := startFerry(t, "-c", cfg)
	pub := connectPaho(t, p.Addr("tcp0"), "sensor", true, nil)

	const half, total = 1000, 2000
	ctx := context.Background()
	publishQoS1(t, pub, "devices/sensor/telemetry", 0, half)
	testutil.Eventually(t, 20*time.Second, "the first 1,000 in the stream", func() bool {
		return rc.XLen(ctx, "telemetry").Val() >= half
	})
	rs.Stop(t)
	publishQoS1(t, pub, "devices/sensor/telemetry", half, total) // PUBACKed: in the outbox
	rs.Start(t)

	var byPayload map[string]int
	var ids map[string]string
	var entries int
	testutil.Eventually(t, 30*time.Second, "2,000 distinct messages in the stream", func() bool {
		if rc.XLen(ctx, "telemetry").Val() < total {
			return false
		}
		byPayload, ids, entries = streamPayloads(t, rc, "telemetry")
		return len(byPayload) >= total
	})
	for i := range total {
		if byPayload[fmt.Sprintf("m%05d", i)] == 0 {
			t.Errorf("m%05d missing from the stream", i)
		}
	}
	if len(byPayload) != total {
		t.Fatalf("%d distinct payloads in the stream, want exactly %d", len(byPayload), total)
	}
	distinctIDs := map[string]bool{}
	for _, id := range ids {
		distinctIDs[id] = true
	}
	if len(distinctIDs) != total {
		t.Fatalf("%d distinct message ids for %d payloads", len(distinctIDs), total)
	}
	t.Logf("%d entries for %d messages: %d duplicates (at-least-once re-sends)", entries, total, entries-total)
}
