package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/internal/bridgerun"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/outbox"
	"github.com/ferrymq/ferry/bridge/rabbitmq"
)

const wait = 20 * time.Second

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
	run *bridgerun.Bridge
}

// startBridge runs routes (YAML) on an outbox in a temp dir with pub;
// closed at cleanup (Close is safe twice).
func startBridge(t *testing.T, routesYAML string, pub *bridgetest.Publisher) *testBridge {
	t.Helper()
	r := bridgerun.Start(t, "", routesYAML, pub, map[string]bridge.Factory{"rabbitmq": rabbitmq.New})
	return &testBridge{b: r.B, ob: r.Outbox, reg: r.Reg, run: r}
}

func (tb *testBridge) close(t *testing.T) { tb.run.CloseBridge(t) }

func (tb *testBridge) offer(t *testing.T, m bridge.Message) {
	t.Helper()
	if err := tb.b.Offer(m); err != nil {
		t.Fatalf("offer %s: %v", m.Topic, err)
	}
}

// consume collects the queue's deliveries (auto-ack) until cleanup.
type consumer struct {
	mu   sync.Mutex
	msgs []amqp.Delivery
}

func consume(t *testing.T, ch *amqp.Channel, queue string) *consumer {
	t.Helper()
	d, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &consumer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range d {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = ch.Close(); <-done })
	return c
}

func (c *consumer) all() []amqp.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]amqp.Delivery(nil), c.msgs...)
}

// take returns what was consumed since the last take.
func (c *consumer) take() []amqp.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.msgs
	c.msgs = nil
	return m
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no url", `{exchange: x}`, bridge.Out, "url: must not be empty"},
		{"bad url", `{url: "http://x"}`, bridge.Out, "url: "},
		{"bad template", `{url: "amqp://h/", routing_key: "{{.Segment}}"}`, bridge.Out, "routing_key: template:"},
		{"tiny timeout", `{url: "amqp://h/", timeout: 1us}`, bridge.Out, "timeout: 1µs is less than allowed 1ms"},
		{"queue on egress", `{url: "amqp://h/", queue: q}`, bridge.Out, "queue: queue and prefetch are for ingress"},
		{"no queue", `{url: "amqp://h/"}`, bridge.In, "queue: must not be empty"},
		{"bad prefetch", `{url: "amqp://h/", queue: q, prefetch: 70000}`, bridge.In, "prefetch: 70000 is not in [1, 65535]"},
		{"exchange on ingress", `{url: "amqp://h/", queue: q, exchange: x}`, bridge.In, "exchange: exchange, routing_key and mandatory are for egress"},
		{"unknown field", `{url: "amqp://h/", exchang: x}`, bridge.Out, "field exchang not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = rabbitmq.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestEgressRoundTrip: messages offered to a route arrive in order,
// persistent, with the stable id and the headers, routed by the default
// routing key (topic with / → .).
func TestEgressRoundTrip(t *testing.T) {
	bridgetest.NoLeaks(t)
	url := needServer(t)
	ch := client(t)
	exchange, queue := declare(t, ch, "topic", "devices.*.telemetry")
	got := consume(t, ch, queue)
	tb := startBridge(t, fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {rabbitmq: {url: %q, exchange: %q}}
`, url, exchange), &bridgetest.Publisher{})
	const n = 20
	for i := range n {
		tb.offer(t, bridge.Message{Topic: fmt.Sprintf("devices/d%d/telemetry", i), Payload: []byte(fmt.Sprint(i)), QoS: 1,
			UserProperties: []bridge.Property{{Key: "unit", Value: "C"}, {Key: "tag", Value: "a"}, {Key: "tag", Value: "b"}}})
	}
	bridgetest.Eventually(t, wait, "every message consumed", func() bool { return len(got.all()) == n })
	for i, d := range got.all() {
		if string(d.Body) != fmt.Sprint(i) || d.MessageId != fmt.Sprint("telemetry-", i+1) ||
			d.DeliveryMode != amqp.Persistent || d.RoutingKey != fmt.Sprintf("devices.d%d.telemetry", i) {
			t.Fatalf("delivery %d: body %q id %q mode %d key %q", i, d.Body, d.MessageId, d.DeliveryMode, d.RoutingKey)
		}
		tags, _ := d.Headers["tag"].([]any)
		if d.Headers[rabbitmq.TopicHeader] != fmt.Sprintf("devices/d%d/telemetry", i) || d.Headers["unit"] != "C" ||
			len(tags) != 2 || tags[0] != "a" || tags[1] != "b" {
			t.Fatalf("delivery %d headers %v", i, d.Headers)
		}
	}
	// The consumer may see a message before the bridge has its publisher
	// confirm, which is what counts it as delivered.
	bridgetest.Eventually(t, wait, "every message counted as delivered", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "telemetry") == n
	})
}

// TestUnroutable: a message no queue is bound for is returned (mandatory)
// and dead-lettered with the reason; the next one is delivered.
func TestUnroutable(t *testing.T) {
	bridgetest.NoLeaks(t)
	url := needServer(t)
	ch := client(t)
	exchange, queue := declare(t, ch, "direct", "ok")
	got := consume(t, ch, queue)
	tb := startBridge(t, fmt.Sprintf(`
- name: r
  from: "a/#"
  to: {rabbitmq: {url: %q, exchange: %q, routing_key: "{{.Segment 1}}"}}
  backoff: {initial: 10ms, max: 50ms}
`, url, exchange), &bridgetest.Publisher{})
	tb.offer(t, bridge.Message{Topic: "a/nowhere", Payload: []byte("lost")})
	tb.offer(t, bridge.Message{Topic: "a/ok", Payload: []byte("kept")})
	bridgetest.Eventually(t, wait, "one dead letter, one delivered", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_dead_lettered_total", "route", "r") == 1 &&
			bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "r") == 1
	})
	dl, err := tb.b.DeadLetters("r", 0, 10)
	if err != nil || len(dl) != 1 || dl[0].Topic != "a/nowhere" || !strings.Contains(dl[0].Reason, "NO_ROUTE") {
		t.Fatalf("dead letters = %+v, %v", dl, err)
	}
	bridgetest.Eventually(t, wait, "routable message consumed", func() bool { return len(got.all()) >= 1 })
	for _, d := range got.all() {
		if string(d.Body) != "kept" {
			t.Fatalf("consumed %q", d.Body)
		}
	}
}

// TestOutage: the server is stopped mid-stream and restarted on the same
// port; the connector redials and every message arrives, first
// occurrences in order.
func TestOutage(t *testing.T) {
	bridgetest.NoLeaks(t)
	needDir(t)
	url := needServer(t)
	ch := client(t)
	exchange, queue := declare(t, ch, "topic", "devices.#")
	tb := startBridge(t, fmt.Sprintf(`
- name: telemetry
  from: "devices/#"
  to: {rabbitmq: {url: %q, exchange: %q, timeout: 1s}}
  backoff: {initial: 10ms, max: 200ms}
`, url, exchange), &bridgetest.Publisher{})
	const total = 1000
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			tb.offer(t, bridge.Message{Topic: fmt.Sprintf("devices/d%d", i%10), Payload: []byte(fmt.Sprint(i)), QoS: 1})
		}
	}
	offer(0, 400)
	stopServer(t)
	offer(400, total)
	bridgetest.Eventually(t, wait, "deliveries failing while RabbitMQ is down", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_failed_total", "route", "telemetry") >= 1
	})
	startServer(t)
	bridgetest.Eventually(t, 30*time.Second, "outbox drained", func() bool { return tb.ob.Usage("telemetry").Messages == 0 })
	ch = client(t)
	got := consume(t, ch, queue)
	seen := map[string]bool{}
	defer func() {
		var missing []int
		for i := range total {
			if !seen[fmt.Sprint("telemetry-", i+1)] {
				missing = append(missing, i)
			}
		}
		if len(missing) > 0 {
			dl, _ := tb.b.DeadLetters("telemetry", 0, 5)
			t.Logf("%d missing: %v; dead letters %+v", len(missing), missing[:min(len(missing), 50)], dl)
		}
	}()
	bridgetest.Eventually(t, wait, "every message consumed", func() bool {
		for _, d := range got.take() {
			i := 0
			if _, err := fmt.Sscan(string(d.Body), &i); err != nil || d.MessageId != fmt.Sprint("telemetry-", i+1) {
				t.Fatalf("body %q with id %q", d.Body, d.MessageId)
			}
			if seen[d.MessageId] {
				continue
			}
			if i != len(seen) {
				t.Fatalf("first occurrences out of order: got %d, want %d", i, len(seen))
			}
			seen[d.MessageId] = true
		}
		return len(seen) == total
	})
	if len(seen) != total {
		t.Fatalf("%d distinct messages", len(seen))
	}
}

// TestIngress: deliveries are acked once the broker accepted them; a
// refused one is requeued and handed again; after the server drops the
// connection the receiver reconnects.
func TestIngress(t *testing.T) {
	bridgetest.NoLeaks(t)
	url := needServer(t)
	ch := client(t)
	queue := name("commands")
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publish := func(body, device string) {
		t.Helper()
		err := ch.PublishWithContext(context.Background(), "", queue, false, false, amqp.Publishing{
			Body: []byte(body), MessageId: "id-" + body, Headers: amqp.Table{"device": device}, DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		publish(fmt.Sprint("cmd", i), fmt.Sprint("d", i))
	}
	var mu sync.Mutex
	refusals := 0
	pub := &bridgetest.Publisher{}
	pub.SetFail(func(m bridge.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if string(m.Payload) == "cmd1" && refusals < 2 {
			refusals++
			return errors.New("broker busy")
		}
		return nil
	})
	tb := startBridge(t, fmt.Sprintf(`
- name: commands
  direction: in
  from: {rabbitmq: {url: %q, queue: %q, prefetch: 2}}
  to: {topic: 'devices/{{.Header "device"}}/commands', qos: 1}
  backoff: {initial: 10ms, max: 100ms}
`, url, queue), pub)
	bridgetest.Eventually(t, wait, "three commands bridged", func() bool { return len(pub.Messages()) == 3 })
	mu.Lock()
	if refusals != 2 {
		t.Fatalf("cmd1 refused %d times, want 2", refusals)
	}
	mu.Unlock()
	for _, m := range pub.Messages() {
		dev := strings.TrimPrefix(string(m.Payload), "cmd")
		if m.Topic != "devices/d"+dev+"/commands" || m.ID != "id-"+string(m.Payload) || m.Subject != queue {
			t.Fatalf("published %+v", m)
		}
	}
	if server.dir != "" {
		closeAllConnections(t)
		ch = client(t)
		publish("cmd3", "d3")
		bridgetest.Eventually(t, wait, "cmd3 bridged after reconnect", func() bool { return len(pub.Messages()) == 4 })
	}
	tb.close(t)
	// With the consumer gone, unacked deliveries would be ready again.
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil || q.Messages != 0 {
		t.Fatalf("queue after close: %+v, %v", q, err)
	}
}

// TestStart: a server that is down is not an error at Start (Deliver
// fails, retryably); refused credentials are.
func TestStart(t *testing.T) {
	bridgetest.NoLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "amqp://guest:guest@" + l.Addr().String() + "/"
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	c := newConnector(t, fmt.Sprintf(`{url: %q, timeout: 200ms}`, down))
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("start while down: %v", err)
	}
	err = c.Deliver(context.Background(), []bridge.Message{{Topic: "a/b", ID: "r-1"}})
	if err == nil || bridge.IsPermanent(err) {
		t.Fatalf("deliver while down: %v, want a retryable error", err)
	}
	for range 2 {
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	u := strings.Replace(needServer(t), "guest:guest@", "guest:wrong@", 1)
	c = newConnector(t, fmt.Sprintf(`{url: %q}`, u))
	if err := c.Start(context.Background()); err == nil {
		t.Fatal("start with a wrong password succeeded")
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func newConnector(t *testing.T, section string) bridge.Connector {
	t.Helper()
	spec, err := bridge.NewSpec("r", bridge.Out, section)
	if err != nil {
		t.Fatal(err)
	}
	c, err := rabbitmq.New(spec, bridge.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
