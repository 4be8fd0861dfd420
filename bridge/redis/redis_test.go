package redis_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/internal/bridgerun"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/outbox"
	bredis "github.com/ferrymq/ferry/bridge/redis"
)

const wait = 20 * time.Second

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
	pub *bridgetest.Publisher
}

// startBridge runs routes (YAML) on an outbox in dir with pub; closed at
// cleanup.
func startBridge(t *testing.T, dir, routesYAML string, pub *bridgetest.Publisher) *testBridge {
	t.Helper()
	r := bridgerun.Start(t, dir, routesYAML, pub, map[string]bridge.Factory{"redis": bredis.New})
	return &testBridge{b: r.B, ob: r.Outbox, reg: r.Reg, pub: pub}
}

// startConnector builds and starts one egress connector from section,
// closed at cleanup.
func startConnector(t *testing.T, section string) bridge.Connector {
	t.Helper()
	spec, err := bridge.NewSpec("r", bridge.Out, section)
	if err != nil {
		t.Fatal(err)
	}
	c, err := bredis.New(spec, bridge.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no addr", `{stream: a}`, bridge.Out, "addr: must not be empty"},
		{"no stream", `{addr: x}`, bridge.Out, "stream: must not be empty"},
		{"bad template", `{addr: x, stream: "a.{{.Segment}}"}`, bridge.Out, "stream: template:"},
		{"bad mode", `{addr: x, stream: a, mode: list}`, bridge.Out, `mode: "list" is not`},
		{"publish without channel", `{addr: x, mode: publish}`, bridge.Out, "channel: must not be empty"},
		{"publish with maxlen", `{addr: x, mode: publish, channel: c, maxlen: 5}`, bridge.Out, "stream: stream and maxlen are for mode"},
		{"publish ingress", `{addr: x, mode: publish, channel: c}`, bridge.In, `mode: "publish" is egress only`},
		{"ingress template", `{addr: x, stream: "a{{.Topic}}"}`, bridge.In, "stream: an ingress stream is a name"},
		{"group on egress", `{addr: x, stream: a, group: g}`, bridge.Out, "group: group, consumer and start_id are for ingress"},
		{"negative maxlen", `{addr: x, stream: a, maxlen: -1}`, bridge.Out, "maxlen: -1 is less than allowed 0"},
		{"negative db", `{addr: x, stream: a, db: -1}`, bridge.Out, "db: -1 is less than allowed 0"},
		{"tiny timeout", `{addr: x, stream: a, timeout: 1us}`, bridge.Out, "timeout: 1µs is less than allowed 1ms"},
		{"unknown field", `{addr: x, stream: a, streem: b}`, bridge.Out, "field streem not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = bredis.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestStreamRoundTrip: messages offered to a route with a stream template
// end up as entries, in order, with every field.
func TestStreamRoundTrip(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := sharedRedis(t)
	rc := rs.client(t)
	prefix := key(t, "telemetry")
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {redis: {addr: %q, stream: "%s:{{.Segment 1}}"}}
`, rs.addr, prefix), &bridgetest.Publisher{})
	const n = 20
	for i := range n {
		m := bridge.Message{Topic: fmt.Sprintf("devices/d%d/telemetry", i%2), Payload: []byte{byte(i), 0, 0xff}, QoS: 1, ClientID: "c1",
			UserProperties: []bridge.Property{{Key: "site", Value: fmt.Sprint("s", i)}}}
		if err := tb.b.Offer(m); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	bridgetest.Eventually(t, wait, "all entries added", func() bool {
		return rc.XLen(ctx, prefix+":d0").Val()+rc.XLen(ctx, prefix+":d1").Val() == n
	})
	for dev := range 2 {
		entries, err := rc.XRange(ctx, fmt.Sprintf("%s:d%d", prefix, dev), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != n/2 {
			t.Fatalf("d%d: %d entries", dev, len(entries))
		}
		for j, e := range entries {
			i := 2*j + dev
			want := map[string]any{
				"payload":   string([]byte{byte(i), 0, 0xff}),
				"topic":     fmt.Sprintf("devices/d%d/telemetry", dev),
				"client_id": "c1",
				"qos":       "1",
				"id":        fmt.Sprint("telemetry-", i+1),
				"prop.site": fmt.Sprint("s", i),
			}
			if fmt.Sprint(e.Values) != fmt.Sprint(want) {
				t.Fatalf("d%d entry %d = %v, want %v", dev, j, e.Values, want)
			}
		}
	}
	bridgetest.Eventually(t, wait, "delivered counted", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "telemetry") == n
	})
}

// TestMaxLen: MAXLEN ~ trims the stream while adding.
func TestMaxLen(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := sharedRedis(t)
	rc := rs.client(t)
	stream := key(t, "capped")
	c := startConnector(t, fmt.Sprintf(`{addr: %q, stream: %q, maxlen: 10}`, rs.addr, stream))
	ctx := context.Background()
	seq := uint64(0)
	for range 20 {
		batch := make([]bridge.Message, 50)
		for i := range batch {
			seq++
			batch[i] = bridge.Message{Topic: "t", Payload: []byte("x"), Seq: seq, ID: bridge.MessageID("r", seq)}
		}
		if err := c.Deliver(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	// "~" trims whole radix-tree nodes (stream-node-max-entries, 100).
	n := rc.XLen(ctx, stream).Val()
	if n < 10 || n > 10+100 {
		t.Fatalf("XLEN = %d after 1000 adds with maxlen ~10", n)
	}
	last, err := rc.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil || len(last) != 1 || last[0].Values["id"] != "r-1000" {
		t.Fatalf("last entry = %v, %v", last, err)
	}
}

// TestCommandErrorPermanent: XADD to a key holding a string fails with
// WRONGTYPE, which retrying cannot fix; the bridge dead-letters it and the
// next message goes through.
func TestCommandErrorPermanent(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := sharedRedis(t)
	rc := rs.client(t)
	prefix := key(t, "k")
	ctx := context.Background()
	if err := rc.Set(ctx, prefix+":str", "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	c := startConnector(t, fmt.Sprintf(`{addr: %q, stream: "%s:{{.Segment 1}}"}`, rs.addr, prefix))
	err := c.Deliver(ctx, []bridge.Message{{Topic: "a/ok", ID: "r-1"}, {Topic: "a/str", ID: "r-2"}})
	if !bridge.IsPermanent(err) || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("err = %v, want a permanent WRONGTYPE error", err)
	}

	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: r
  from: "a/#"
  to: {redis: {addr: %q, stream: "%s:{{.Segment 1}}"}}
`, rs.addr, prefix), &bridgetest.Publisher{})
	for _, topic := range []string{"a/str", "a/ok"} {
		if err := tb.b.Offer(bridge.Message{Topic: topic, Payload: []byte(topic)}); err != nil {
			t.Fatal(err)
		}
	}
	bridgetest.Eventually(t, wait, "one dead letter, one delivered", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_dead_lettered_total", "route", "r") == 1 &&
			bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "r") == 1
	})
	dl, err := tb.b.DeadLetters("r", 0, 10)
	if err != nil || len(dl) != 1 || dl[0].Topic != "a/str" || !strings.Contains(dl[0].Reason, "WRONGTYPE") {
		t.Fatalf("dead letters = %+v, %v", dl, err)
	}
}

// TestPublishMode: PUBLISH to a channel template reaches a subscriber.
func TestPublishMode(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := sharedRedis(t)
	rc := rs.client(t)
	prefix := key(t, "ch")
	ctx := context.Background()
	sub := rc.Subscribe(ctx, prefix+":d1")
	defer func() { _ = sub.Close() }()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	c := startConnector(t, fmt.Sprintf(`{addr: %q, mode: publish, channel: "%s:{{.Segment 1}}"}`, rs.addr, prefix))
	if err := c.Deliver(ctx, []bridge.Message{{Topic: "x/d1", Payload: []byte("hello"), ID: "r-1"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub.Channel():
		if m.Channel != prefix+":d1" || m.Payload != "hello" {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(wait):
		t.Fatal("no message on the channel")
	}
}

// TestOutage: 2,500 messages while redis-server is killed and restarted
// (AOF, fsync always) on the same port: every message ends up in the
// stream (duplicates allowed: a pipeline cut by the kill is re-sent), the
// first occurrences in order.
func TestOutage(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := ownRedis(t, true)
	rc := rs.client(t)
	stream := key(t, "outage")
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {redis: {addr: %q, stream: %q, timeout: 500ms}}
  backoff: {initial: 10ms, max: 100ms}
`, rs.addr, stream), &bridgetest.Publisher{})
	const total = 2500
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			if err := tb.b.Offer(bridge.Message{Topic: fmt.Sprintf("devices/d%d/telemetry", i%10), Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
				t.Fatalf("offer %d: %v", i, err)
			}
		}
	}
	offer(0, 1000)
	rs.stop()
	offer(1000, total)
	bridgetest.Eventually(t, wait, "route down while Redis is down", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_backend_up", "route", "telemetry") == 0
	})
	if d := bridgetest.Metric(t, tb.reg, "ferry_bridge_queue_depth", "route", "telemetry"); d == 0 {
		t.Fatal("queue empty while the backend is down")
	}
	rs.start()
	bridgetest.Eventually(t, wait, "outbox drained", func() bool { return tb.ob.Usage("telemetry").Messages == 0 })
	ctx := context.Background()
	entries, err := rc.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]bool, total)
	next := 0
	for _, e := range entries {
		p := fmt.Sprint(e.Values["payload"])
		if seen[p] {
			continue
		}
		if p != fmt.Sprint(next) {
			t.Fatalf("first occurrences out of order: got %s, want %d", p, next)
		}
		if e.Values["id"] != fmt.Sprint("telemetry-", next+1) {
			t.Fatalf("entry %s id = %v", p, e.Values["id"])
		}
		seen[p] = true
		next++
	}
	if next != total {
		t.Fatalf("%d distinct messages in the stream, want %d", next, total)
	}
	t.Logf("%d entries for %d messages (%d re-sent)", len(entries), total, len(entries)-total)
	if got := bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "telemetry"); got != total {
		t.Fatalf("delivered_total = %v", got)
	}
}

// TestIngress: entries are acked only after the broker accepted them; one
// the broker refuses stays pending for consumer c1 and is taken over with
// XAUTOCLAIM by consumer c2 (another Ferry) once idle.
func TestIngress(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := sharedRedis(t)
	rc := rs.client(t)
	stream := key(t, "commands")
	ctx := context.Background()
	for i := range 3 {
		if err := rc.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: []string{"payload", fmt.Sprint("cmd", i), "device", fmt.Sprint("d", i)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	route := func(consumer, claimIdle string) string {
		return fmt.Sprintf(`
- name: commands
  direction: in
  from: {redis: {addr: %q, stream: %q, group: g, consumer: %s, start_id: "0", block: 50ms, claim_idle: %s}}
  to: {topic: 'devices/{{.Header "device"}}/commands', qos: 1}
`, rs.addr, stream, consumer, claimIdle)
	}
	pub1 := &bridgetest.Publisher{}
	pub1.SetFail(func(m bridge.Message) error {
		if string(m.Payload) == "cmd1" {
			return errors.New("broker busy")
		}
		return nil
	})
	startBridge(t, t.TempDir(), route("c1", "1h"), pub1)
	bridgetest.Eventually(t, wait, "cmd0 and cmd2 bridged, cmd1 pending", func() bool {
		p, err := rc.XPending(ctx, stream, "g").Result()
		return len(pub1.Messages()) == 2 && err == nil && p.Count == 1 && p.Consumers["c1"] == 1
	})
	if got := pub1.Topics(); got != "devices/d0/commands devices/d2/commands" {
		t.Fatalf("topics = %s", got)
	}
	m := pub1.Messages()[0]
	if m.Subject != stream || string(m.Payload) != "cmd0" || m.Headers["device"][0] != "d0" || m.QoS != 1 ||
		!strings.HasPrefix(m.ID, stream+"-") || m.UserProperties[0].Value != m.ID {
		t.Fatalf("published %+v", m)
	}
	pending, err := rc.XPendingExt(ctx, &goredis.XPendingExtArgs{Stream: stream, Group: "g", Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending = %v, %v", pending, err)
	}

	pub2 := &bridgetest.Publisher{}
	startBridge(t, t.TempDir(), route("c2", "100ms"), pub2)
	bridgetest.Eventually(t, wait, "cmd1 claimed by c2 and acked", func() bool {
		p, err := rc.XPending(ctx, stream, "g").Result()
		return len(pub2.Messages()) == 1 && err == nil && p.Count == 0
	})
	if m := pub2.Messages()[0]; string(m.Payload) != "cmd1" || m.ID != stream+"-"+pending[0].ID {
		t.Fatalf("c2 published %+v", m)
	}
	if n := len(pub1.Messages()); n != 2 {
		t.Fatalf("c1 published %d", n)
	}
}

// TestPasswordFile: the password comes from password_file; a wrong one
// fails Start (retrying cannot fix it).
func TestPasswordFile(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := ownRedisPass(t, false, "s3cret")
	rc := rs.client(t)
	stream := key(t, "auth")
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	if err := os.WriteFile(good, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startConnector(t, fmt.Sprintf(`{addr: %q, stream: %q, password_file: %q, db: 2}`, rs.addr, stream, good))
	ctx := context.Background()
	if err := c.Deliver(ctx, []bridge.Message{{Topic: "t", Payload: []byte("p"), ID: "r-1"}}); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(ctx, "SELECT", 2).Err(); err != nil {
		t.Fatal(err)
	}
	if n := rc.XLen(ctx, stream).Val(); n != 1 {
		t.Fatalf("XLEN in db 2 = %d", n)
	}

	spec, err := bridge.NewSpec("r", bridge.Out, fmt.Sprintf(`{addr: %q, stream: %q, password_file: %q}`, rs.addr, stream, bad))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := bredis.New(spec, bridge.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Start(ctx); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("Start with a wrong password = %v", err)
	}
	if err := c2.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStartWhileDown: Start succeeds with the server down (Ferry boots
// during an outage); Deliver fails with a retryable error.
func TestStartWhileDown(t *testing.T) {
	bridgetest.NoLeaks(t)
	rs := ownRedis(t, false)
	rs.stop()
	c := startConnector(t, fmt.Sprintf(`{addr: %q, stream: s, timeout: 200ms}`, rs.addr))
	err := c.Deliver(context.Background(), []bridge.Message{{Topic: "t", ID: "r-1"}})
	if err == nil || bridge.IsPermanent(err) {
		t.Fatalf("Deliver with the server down = %v, want a retryable error", err)
	}
}
