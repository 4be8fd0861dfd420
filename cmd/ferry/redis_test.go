package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
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

// TestRedisOutageCostsNothing is issue 13's done-when through a real Ferry
// process, with the outage shortened: a route that gives up after 3
// attempts 20-100 ms apart holds 500 QoS 1 messages through a 3 s Redis
// outage (far beyond that schedule: before the fix most were
// dead-lettered), then delivers all 1,000 in order; nothing is
// dead-lettered, the outage is logged once on the way down and once on
// the way back, and go-redis logs nothing of its own.
func TestRedisOutageCostsNothing(t *testing.T) {
	rs := testutil.StartRedis(t)
	rc := rs.Client(t)
	defer rc.Close()
	cfg := writeConfig(t, fmt.Sprintf(`bridges:
  - name: telemetry
    from: "devices/#"
    to: {redis: {addr: %q, stream: telemetry}}
    backoff: {initial: 20ms, max: 100ms}
    max_attempts: 3
`, rs.Addr))
	p := startFerry(t, "-c", cfg)
	pub := connectPaho(t, p.Addr("tcp0"), "sensor", true, nil)
	ctx := context.Background()
	publishQoS1(t, pub, "devices/sensor/telemetry", 0, 500)
	testutil.Eventually(t, 20*time.Second, "the first 500 in the stream", func() bool {
		return rc.XLen(ctx, "telemetry").Val() >= 500
	})
	rs.Stop(t)
	down := time.Now()
	publishQoS1(t, pub, "devices/sensor/telemetry", 500, 1000)
	testutil.Eventually(t, 20*time.Second, "an outage of 3s", func() bool { return time.Since(down) > 3*time.Second })
	rs.Start(t)

	testutil.Eventually(t, 30*time.Second, "1,000 messages in the stream", func() bool {
		return rc.XLen(ctx, "telemetry").Val() >= 1000
	})
	all, err := rc.XRange(ctx, "telemetry", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for _, e := range all {
		switch p := fmt.Sprint(e.Values["payload"]); {
		case p == fmt.Sprintf("m%05d", next):
			next++
		case p > fmt.Sprintf("m%05d", next):
			t.Fatalf("%s arrived before m%05d", p, next)
		}
	}
	if next != 1000 {
		t.Fatalf("%d of 1,000 messages in order in the stream", next)
	}
	resp, err := http.Get("http://" + p.Addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ferry_bridge_dead_lettered_total{route="telemetry"} 0`, `ferry_bridge_backend_up{route="telemetry"} 1`,
		`ferry_bridge_outages_total{route="telemetry"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the back line", func() bool {
		return strings.Contains(p.Log(), "route telemetry: redis back after ")
	})
	log := p.Log()
	if n := strings.Count(log, "route telemetry: redis unavailable ("); n != 1 {
		t.Errorf("%d down lines, want 1", n)
	}
	if n := strings.Count(log, "route telemetry: redis back after "); n != 1 {
		t.Errorf("%d back lines, want 1", n)
	}
	for _, never := range []string{"pool.go", "giving up", "will retry"} {
		if strings.Contains(log, never) {
			t.Errorf("the log has %q", never)
		}
	}
	if t.Failed() {
		t.Logf("ferry's log:\n%s", log)
	}
}
