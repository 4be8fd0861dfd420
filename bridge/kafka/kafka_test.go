package kafka_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/internal/bridgerun"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bkafka "github.com/ferrymq/ferry/bridge/kafka"
	"github.com/ferrymq/ferry/bridge/outbox"
)

const wait = 20 * time.Second

// cluster is an in-process kfake cluster; restart brings it back on the
// same port and data directory after stop.
type cluster struct {
	t    *testing.T
	c    *kfake.Cluster
	port int
	dir  string
	opts []kfake.Opt
}

func runCluster(t *testing.T, opts ...kfake.Opt) *cluster {
	t.Helper()
	kc := &cluster{t: t, dir: t.TempDir(), opts: opts}
	kc.start()
	_, port, err := net.SplitHostPort(kc.c.ListenAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	kc.port, _ = strconv.Atoi(port)
	t.Cleanup(kc.stop)
	return kc
}

func (kc *cluster) start() {
	kc.t.Helper()
	opts := append([]kfake.Opt{kfake.NumBrokers(1), kfake.DataDir(kc.dir)}, kc.opts...)
	if kc.port != 0 {
		opts = append(opts, kfake.Ports(kc.port))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		kc.t.Fatal(err)
	}
	kc.c = c
}

func (kc *cluster) stop() {
	if kc.c != nil {
		kc.c.Close()
		kc.c = nil
	}
}

func (kc *cluster) addr() string { return fmt.Sprintf("127.0.0.1:%d", kc.port) }

// produce writes values to topic with a plain client.
func (kc *cluster) produce(t *testing.T, topic string, values ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(v),
			Headers: []kgo.RecordHeader{{Key: "device", Value: []byte("d-" + v)}}}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// consume reads topic from its start until cond holds for what was read.
func (kc *cluster) consume(t *testing.T, topic string, cond func([]*kgo.Record) bool) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.addr()), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var got []*kgo.Record
	for !cond(got) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d records from %s, condition not met", len(got), topic)
		}
		got = append(got, fs.Records()...)
	}
	return got
}

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
	pub *bridgetest.Publisher
	run *bridgerun.Bridge
}

// startBridge runs routes (YAML) on an outbox in dir with pub; closed at
// cleanup (or earlier by close).
func startBridge(t *testing.T, dir, routesYAML string, pub *bridgetest.Publisher) *testBridge {
	t.Helper()
	r := bridgerun.Start(t, dir, routesYAML, pub, map[string]bridge.Factory{"kafka": bkafka.New})
	return &testBridge{b: r.B, ob: r.Outbox, reg: r.Reg, pub: pub, run: r}
}

func (tb *testBridge) close(t *testing.T) { tb.run.Close(t) }

func header(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no brokers", `{topic: a}`, bridge.Out, "brokers: must not be empty"},
		{"no topic", `{brokers: [x]}`, bridge.Out, "topic: must not be empty"},
		{"bad template", `{brokers: [x], topic: "a.{{.Segment}}"}`, bridge.Out, "topic: template:"},
		{"bad key template", `{brokers: [x], topic: a, key: "{{.Nope}}"}`, bridge.Out, "key: template:"},
		{"illegal topic", `{brokers: [x], topic: "a/b"}`, bridge.Out, `topic: "a/b" is not a valid Kafka topic name`},
		{"tiny timeout", `{brokers: [x], topic: a, timeout: 500ms}`, bridge.Out, "timeout: 500ms is less than allowed 1s"},
		{"tiny linger", `{brokers: [x], topic: a, linger: 1us}`, bridge.Out, "linger: 1µs is less than allowed 1ms"},
		{"group on egress", `{brokers: [x], topic: a, group: g}`, bridge.Out, "group: topics, group"},
		{"ingress without topic", `{brokers: [x]}`, bridge.In, "topic: topic or topics must be set"},
		{"ingress template", `{brokers: [x], topic: "{{.Topic}}"}`, bridge.In, "is not a valid Kafka topic name"},
		{"ingress bad start", `{brokers: [x], topic: a, start_offset: middle}`, bridge.In, `start_offset: "middle" is not`},
		{"key on ingress", `{brokers: [x], topic: a, key: k}`, bridge.In, "key: key and linger are for egress"},
		{"unknown field", `{brokers: [x], topic: a, topik: b}`, bridge.Out, "field topik not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = bkafka.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestConnectorCloseTwiceAndUnstarted(t *testing.T) {
	spec, err := bridge.NewSpec("r", bridge.Out, `{brokers: ["127.0.0.1:1"], topic: a}`)
	if err != nil {
		t.Fatal(err)
	}
	c, err := bkafka.New(spec, bridge.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Deliver(context.Background(), []bridge.Message{{ID: "r-1"}}); err == nil || bridge.IsPermanent(err) {
		t.Fatalf("deliver before start = %v, want a retryable error", err)
	}
	for range 2 {
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEgressRoundTrip: records arrive in order with key, headers and value;
// a rendered topic that Kafka would refuse is dead-lettered.
func TestEgressRoundTrip(t *testing.T) {
	bridgetest.NoLeaks(t)
	kc := runCluster(t, kfake.SeedTopics(3, "telemetry", "env"))
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {kafka: {brokers: [%q], topic: "telemetry"}}
- name: env
  from: "env/#"
  payload: envelope
  to: {kafka: {brokers: [%q], topic: "{{.Segment 1}}", key: "k-{{.Segment 1}}"}}
  max_attempts: 2
  backoff: {initial: 10ms, max: 20ms}
`, kc.addr(), kc.addr()), &bridgetest.Publisher{})
	const n = 50
	for i := range n {
		m := bridge.Message{Topic: "devices/d1/telemetry", Payload: []byte(fmt.Sprint(i)), ClientID: "d1", QoS: 1,
			UserProperties: []bridge.Property{{Key: "site", Value: "s1"}, {Key: "site", Value: "s2"}}}
		if err := tb.b.Offer(m); err != nil {
			t.Fatal(err)
		}
	}
	got := kc.consume(t, "telemetry", func(rs []*kgo.Record) bool { return len(rs) >= n })
	for i, r := range got {
		if string(r.Value) != fmt.Sprint(i) || string(r.Key) != "d1" || header(r, "ferry-message-id") != fmt.Sprint("telemetry-", i+1) ||
			header(r, "mqtt-topic") != "devices/d1/telemetry" || len(r.Headers) != 4 || string(r.Headers[3].Value) != "s2" {
			t.Fatalf("record %d = %q key %q headers %v", i, r.Value, r.Key, r.Headers)
		}
	}

	if err := tb.b.Offer(bridge.Message{Topic: "env/bad:name", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Offer(bridge.Message{Topic: "env/env", Payload: []byte("raw")}); err != nil {
		t.Fatal(err)
	}
	env := kc.consume(t, "env", func(rs []*kgo.Record) bool { return len(rs) >= 1 })
	if v := string(env[0].Value); !strings.Contains(v, `"payload":"cmF3"`) || !strings.Contains(v, `"id":"env-2"`) || string(env[0].Key) != "k-env" {
		t.Fatalf("envelope record = %q key %q", v, env[0].Key)
	}
	bridgetest.Eventually(t, wait, "bad topic dead-lettered", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_dead_lettered_total", "route", "env") == 1
	})
}

// TestEgressProduceErrors: REQUEST_TIMED_OUT answers are retried until
// every record is stored exactly once, in order; a MESSAGE_TOO_LARGE
// refusal dead-letters only the refused message.
func TestEgressProduceErrors(t *testing.T) {
	bridgetest.NoLeaks(t)
	kc := runCluster(t, kfake.SeedTopics(1, "t"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	var timedOut atomic.Int32
	kc.c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if timedOut.Load() >= 5 {
			return nil, nil, false
		}
		kc.c.KeepControl()
		timedOut.Add(1)
		return produceError(req, kerr.RequestTimedOut.Code), nil, true
	})
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: r
  from: "t/#"
  to: {kafka: {brokers: [%q], topic: t, timeout: 2s}}
  backoff: {initial: 10ms, max: 50ms}
`, kc.addr()), &bridgetest.Publisher{})
	offer := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			payload := []byte(fmt.Sprint(i))
			if i == 150 {
				payload = make([]byte, 8192)
				_, _ = rand.Read(payload) // incompressible
			}
			if err := tb.b.Offer(bridge.Message{Topic: "t/x", Payload: payload, ClientID: fmt.Sprint("c", i%7)}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Phase 1: timeouts only. A sentinel written after the outbox drained
	// marks the end: exactly 100 records before it, ids in order.
	offer(0, 100)
	bridgetest.Eventually(t, wait, "outbox drained", func() bool { return tb.ob.Usage("r").Messages == 0 })
	if got := timedOut.Load(); got < 5 {
		t.Fatalf("%d produce requests timed out, want 5", got)
	}
	kc.produce(t, "t", "sentinel")
	got := kc.consume(t, "t", func(rs []*kgo.Record) bool {
		return len(rs) > 0 && string(rs[len(rs)-1].Value) == "sentinel"
	})
	if len(got) != 101 {
		t.Fatalf("%d records before the sentinel, want exactly 100", len(got)-1)
	}
	for i, r := range got[:100] {
		if id := header(r, "ferry-message-id"); id != fmt.Sprint("r-", i+1) || string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d = %s %q", i, id, r.Value)
		}
	}

	// Phase 2: message 150 is too large for the broker.
	offer(100, 200)
	bridgetest.Eventually(t, wait, "outbox drained", func() bool { return tb.ob.Usage("r").Messages == 0 })
	if got := bridgetest.Metric(t, tb.reg, "ferry_bridge_dead_lettered_total", "route", "r"); got != 1 {
		t.Fatalf("dead_lettered_total = %v, want 1 (the oversized message)", got)
	}
	ids := make(map[string]bool)
	got = kc.consume(t, "t", func(rs []*kgo.Record) bool {
		for _, r := range rs {
			ids[header(r, "ferry-message-id")] = true
		}
		return len(ids) >= 200 // 199 ids and the sentinel's ""
	})
	if ids["r-151"] {
		t.Fatal("the oversized message was stored")
	}
	// A batch refused permanently is retried one by one, so records may be
	// stored twice; first occurrences are in order.
	last := 0
	seen := map[string]bool{}
	for _, r := range got {
		id := header(r, "ferry-message-id")
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		seq, _ := strconv.Atoi(strings.TrimPrefix(id, "r-"))
		if seq <= last {
			t.Fatalf("id %s after r-%d", id, last)
		}
		last = seq
	}
}

// produceError answers a produce request with code for every partition.
func produceError(req kmsg.Request, code int16) kmsg.Response {
	pr := req.(*kmsg.ProduceRequest)
	resp := pr.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range pr.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// TestEgressClusterRestart: the cluster is stopped mid-stream and started
// again on the same port and data: every message ends up in the topic.
func TestEgressClusterRestart(t *testing.T) {
	bridgetest.NoLeaks(t)
	kc := runCluster(t, kfake.SeedTopics(2, "t"))
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: r
  from: "t/#"
  to: {kafka: {brokers: [%q], topic: t, timeout: 1s}}
  backoff: {initial: 10ms, max: 100ms}
`, kc.addr()), &bridgetest.Publisher{})
	const total = 1000
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			if err := tb.b.Offer(bridge.Message{Topic: "t/x", Payload: []byte(fmt.Sprint(i)), ClientID: fmt.Sprint("c", i%5), QoS: 1}); err != nil {
				t.Fatalf("offer %d: %v", i, err)
			}
		}
	}
	offer(0, total/2)
	kc.stop()
	offer(total/2, total)
	bridgetest.Eventually(t, wait, "deliveries failing while the cluster is down", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_failed_total", "route", "r") >= 1
	})
	kc.start()
	bridgetest.Eventually(t, wait, "outbox drained", func() bool { return tb.ob.Usage("r").Messages == 0 })
	seen := make(map[string]bool, total)
	kc.consume(t, "t", func(rs []*kgo.Record) bool {
		for _, r := range rs {
			seen[string(r.Value)] = true
		}
		return len(seen) >= total
	})
	for i := range total {
		if !seen[fmt.Sprint(i)] {
			t.Fatalf("message %d missing", i)
		}
	}
	// Duplicates are allowed (at least once) but reported.
	kc.produce(t, "t", "sentinel")
	all := kc.consume(t, "t", func(rs []*kgo.Record) bool {
		for _, r := range rs {
			if string(r.Value) == "sentinel" {
				return true
			}
		}
		return false
	})
	t.Logf("%d records (read up to the sentinel) for %d messages", len(all)-1, total)
}

// TestIngressCommitsOnlyAccepted: a record the broker refuses is not
// committed and is handed again (one refused permanently is committed and
// dropped); a new consumer in the group (a restart)
// resumes at the committed offset: nothing accepted is handed twice,
// nothing produced meanwhile is lost.
func TestIngressCommitsOnlyAccepted(t *testing.T) {
	bridgetest.NoLeaks(t)
	kc := runCluster(t, kfake.SeedTopics(1, "commands"))
	kc.produce(t, "commands", "cmd0", "cmd1", "cmd2", "cmd3", "cmd4")
	route := fmt.Sprintf(`
- name: commands
  direction: in
  from: {kafka: {brokers: [%q], topic: commands, timeout: 2s}}
  to: {topic: "devices/{{.Header \"device\"}}/commands", qos: 1}
  backoff: {initial: 10ms, max: 50ms}
`, kc.addr())

	// First instance: cmd1 is refused once, cmd2 permanently (committed and
	// dropped), cmd3 always.
	var refused1, refused3 atomic.Int32
	pub := &bridgetest.Publisher{}
	pub.SetFail(func(m bridge.Message) error {
		switch string(m.Payload) {
		case "cmd1":
			if refused1.Add(1) == 1 {
				return errors.New("broker busy")
			}
		case "cmd2":
			return bridge.Permanent(errors.New("denied"))
		case "cmd3":
			refused3.Add(1)
			return errors.New("outbox full")
		}
		return nil
	})
	tb := startBridge(t, t.TempDir(), route, pub)
	bridgetest.Eventually(t, wait, "cmd3 refused repeatedly", func() bool { return refused3.Load() >= 3 })
	if got := tb.pub.Topics(); got != "devices/d-cmd0/commands devices/d-cmd1/commands" {
		t.Fatalf("first instance published %s", got)
	}
	if m := tb.pub.Messages()[1]; m.UserProperties[0].Value != "commands-0-1" || m.Route != "commands" {
		t.Fatalf("cmd1 = %+v", m)
	}
	tb.close(t)

	// Produced while Ferry is down.
	kc.produce(t, "commands", "cmd5", "cmd6")
	pub2 := &bridgetest.Publisher{}
	tb2 := startBridge(t, t.TempDir(), route, pub2)
	bridgetest.Eventually(t, wait, "backlog bridged", func() bool { return len(tb2.pub.Messages()) >= 4 })
	if got := tb2.pub.Topics(); got != "devices/d-cmd3/commands devices/d-cmd4/commands devices/d-cmd5/commands devices/d-cmd6/commands" {
		t.Fatalf("second instance published %s", got)
	}
}
