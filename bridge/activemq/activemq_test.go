package activemq_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq"
	"github.com/ferrymq/ferry/bridge/activemq/stomp"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/outbox"
)

const wait = 30 * time.Second

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
	run *bridgerun.Bridge
}

// startBridge runs routes (YAML) on an outbox in a temp dir with pub;
// closed at cleanup.
func startBridge(t *testing.T, routesYAML string, pub *bridgetest.Publisher) *testBridge {
	t.Helper()
	r := bridgerun.Start(t, "", routesYAML, pub, map[string]bridge.Factory{"activemq": activemq.New})
	return &testBridge{b: r.B, ob: r.Outbox, reg: r.Reg, run: r}
}

func (tb *testBridge) offer(t *testing.T, m bridge.Message) {
	t.Helper()
	if err := tb.b.Offer(m); err != nil {
		t.Fatalf("offer %s: %v", m.Topic, err)
	}
}

func (tb *testBridge) metric(t *testing.T, name string) float64 {
	return bridgetest.Metric(t, tb.reg, name)
}

func newConnector(t *testing.T, dir bridge.Direction, section string) bridge.Connector {
	t.Helper()
	spec, err := bridge.NewSpec("r", dir, section)
	if err != nil {
		t.Fatal(err)
	}
	c, err := activemq.New(spec, bridge.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no addr", `{destination: /queue/a}`, bridge.Out, "addr: must not be empty"},
		{"addr without port", `{addr: localhost, destination: /queue/a}`, bridge.Out, "addr: address localhost: missing port"},
		{"no destination", `{addr: "h:1"}`, bridge.Out, "destination: must not be empty"},
		{"bad template", `{addr: "h:1", destination: "/queue/{{.Segment}}"}`, bridge.Out, "destination: template:"},
		{"tiny timeout", `{addr: "h:1", destination: /queue/a, timeout: 1us}`, bridge.Out, "timeout: 1µs is less than allowed 1ms"},
		{"tiny heart-beat", `{addr: "h:1", destination: /queue/a, heart_beat: 1ms}`, bridge.Out, "heart_beat: 1ms is less than allowed 10ms"},
		{"missing passcode file", `{addr: "h:1", destination: /queue/a, login: u, passcode_file: /nonexistent/p}`, bridge.Out, "passcode_file: open /nonexistent/p"},
		{"passcode without login", `{addr: "h:1", destination: /queue/a, passcode_file: /dev/null}`, bridge.Out, "login: must be set with passcode_file"},
		{"prefetch on egress", `{addr: "h:1", destination: /queue/a, prefetch: 5}`, bridge.Out, "prefetch: is for ingress routes"},
		{"template on ingress", `{addr: "h:1", destination: "/queue/{{.Topic}}"}`, bridge.In, "destination: an ingress destination is a name"},
		{"bad prefetch", `{addr: "h:1", destination: /queue/a, prefetch: 20000}`, bridge.In, "prefetch: 20000 is not in [1, 10000]"},
		{"persistent on ingress", `{addr: "h:1", destination: /queue/a, persistent: false}`, bridge.In, "persistent: is for egress routes"},
		{"unknown field", `{addr: "h:1", destination: /queue/a, destinaton: x}`, bridge.Out, "field destinaton not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = activemq.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestEgress: messages offered to an at-least-once route arrive on the
// queue in order, persistent, with the stable id in ferry-message-id, the
// topic, the user properties and content-length (a NUL in a payload
// survives); ActiveMQ's own message-id differs.
func TestEgress(t *testing.T) {
	bridgetest.NoLeaks(t)
	addr := needServer(t)
	q := queue("egress")
	tb := startBridge(t, fmt.Sprintf(`
- name: telemetry
  from: "devices/#"
  to: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s"}}
`, addr, passcodeFile(t), q), &bridgetest.Publisher{})
	const n = 50
	for i := range n {
		tb.offer(t, bridge.Message{Topic: fmt.Sprintf("devices/d%d/t", i%3), Payload: []byte(fmt.Sprintf("m%d\x00", i)), QoS: 1,
			UserProperties: []bridge.Property{{Key: "unit", Value: "C"}, {Key: "receipt", Value: "hijack"}, {Key: "a:b", Value: "x\ny"}}})
	}
	bridgetest.Eventually(t, wait, "all delivered", func() bool { return tb.metric(t, "ferry_bridge_delivered_total") == n })
	got := drain(t, client(t), q, n, 300*time.Millisecond)
	if len(got) != n {
		t.Fatalf("%d messages on the queue, want %d", len(got), n)
	}
	for i, m := range got {
		want := map[string]string{
			"persistent": "true", "ferry-message-id": bridge.MessageID("telemetry", uint64(i+1)),
			"mqtt-topic": fmt.Sprintf("devices/d%d/t", i%3), "unit": "C", "a:b": "x\ny",
			"content-length": strconv.Itoa(len(fmt.Sprintf("m%d\x00", i))),
		}
		for k, v := range want {
			if got := m.Value(k); got != v {
				t.Fatalf("message %d header %s = %q, want %q (%+v)", i, k, got, v, m.Headers)
			}
		}
		if string(m.Body) != fmt.Sprintf("m%d\x00", i) || m.Value("message-id") == m.Value("ferry-message-id") {
			t.Fatalf("message %d: body %q, headers %+v", i, m.Body, m.Headers)
		}
	}
}

// TestRefused: a SEND the authorization plugin refuses gets an ERROR; the
// message is dead-lettered with that reason after one attempt, the rest
// of its batch is delivered once.
func TestRefused(t *testing.T) {
	bridgetest.NoLeaks(t)
	addr := needServer(t)
	q := queue("refused")
	tb := startBridge(t, fmt.Sprintf(`
- name: r
  from: "a/#"
  to: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/{{.Segment 1}}"}}
  backoff: {initial: 10ms, max: 50ms}
`, addr, passcodeFile(t)), &bridgetest.Publisher{})
	tb.offer(t, bridge.Message{Topic: "a/" + q, Payload: []byte("1")})
	tb.offer(t, bridge.Message{Topic: "a/restricted.x", Payload: []byte("lost")})
	tb.offer(t, bridge.Message{Topic: "a/" + q, Payload: []byte("2")})
	bridgetest.Eventually(t, wait, "one dead letter, two delivered", func() bool {
		return tb.metric(t, "ferry_bridge_dead_lettered_total") == 1 && tb.metric(t, "ferry_bridge_delivered_total") == 2
	})
	dl, err := tb.b.DeadLetters("r", 0, 10)
	if err != nil || len(dl) != 1 || dl[0].Topic != "a/restricted.x" || !strings.Contains(dl[0].Reason, "not authorized to write to") {
		t.Fatalf("dead letters = %+v, %v", dl, err)
	}
	if dl[0].Attempts != 1 {
		t.Fatalf("refusal retried: %d attempts (%s)", dl[0].Attempts, dl[0].Reason)
	}
	// A transaction holding the refused message is rolled back, then the
	// batch is sent one by one: nothing is stored twice.
	var bodies []string
	for _, m := range drain(t, client(t), q, 2, 300*time.Millisecond) {
		bodies = append(bodies, string(m.Body))
	}
	if s := strings.Join(bodies, ","); s != "1,2" {
		t.Fatalf("the queue holds %s, want 1,2", s)
	}
}

// TestOutage: ActiveMQ is stopped mid-stream and restarted on the same
// port; the connector reconnects and every message arrives, first
// occurrences in order. Needs FERRY_TEST_ACTIVEMQ_DIR.
func TestOutage(t *testing.T) {
	bridgetest.NoLeaks(t)
	needDir(t)
	addr := needServer(t)
	q := queue("outage")
	tb := startBridge(t, fmt.Sprintf(`
- name: telemetry
  from: "devices/#"
  to: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", timeout: 2s, heart_beat: 1s}}
  backoff: {initial: 20ms, max: 300ms}
`, addr, passcodeFile(t), q), &bridgetest.Publisher{})
	const total = 1000
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			tb.offer(t, bridge.Message{Topic: fmt.Sprintf("devices/d%d", i%10), Payload: []byte(strconv.Itoa(i)), QoS: 1})
		}
	}
	offer(0, 400)
	control(t, "stop.sh")
	t.Cleanup(func() { control(t, "start.sh") }) // idempotent: for the next tests if this one fails
	offer(400, total)
	bridgetest.Eventually(t, wait, "deliveries failing while ActiveMQ is down", func() bool {
		return tb.metric(t, "ferry_bridge_failed_total") >= 1
	})
	control(t, "start.sh")
	bridgetest.Eventually(t, 60*time.Second, "outbox drained", func() bool { return tb.ob.Usage("telemetry").Messages == 0 })
	seen := map[string]bool{}
	for _, m := range drain(t, client(t), q, total, 500*time.Millisecond) {
		i, err := strconv.Atoi(string(m.Body))
		id := m.Value("ferry-message-id")
		if err != nil || id != bridge.MessageID("telemetry", uint64(i+1)) {
			t.Fatalf("body %q with id %q", m.Body, id)
		}
		if seen[id] {
			continue
		}
		if i != len(seen) {
			t.Fatalf("first occurrences out of order: got %d, want %d", i, len(seen))
		}
		seen[id] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct messages, want %d", len(seen), total)
	}
}

// TestIngress: messages on a queue are published to MQTT and acked only
// once the broker accepted them: a refused one is handed again, in order;
// after the bridge stops the queue is empty.
func TestIngress(t *testing.T) {
	bridgetest.NoLeaks(t)
	addr := needServer(t)
	q := queue("commands")
	c := client(t)
	for i := range 3 {
		send(t, c, q, stomp.Message{Body: []byte(fmt.Sprint("cmd", i)), Headers: []stomp.Header{{Key: "device", Value: fmt.Sprint("d", i)}}})
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
  from: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", prefetch: 2}}
  to: {topic: 'devices/{{.Header "device"}}/commands', qos: 1}
  backoff: {initial: 10ms, max: 100ms}
`, addr, passcodeFile(t), q), pub)
	bridgetest.Eventually(t, wait, "three commands bridged", func() bool { return len(pub.Messages()) == 3 })
	mu.Lock()
	if refusals != 2 {
		t.Fatalf("cmd1 refused %d times, want 2", refusals)
	}
	mu.Unlock()
	for i, m := range pub.Messages() {
		if string(m.Payload) != fmt.Sprint("cmd", i) || m.Topic != fmt.Sprintf("devices/d%d/commands", i) ||
			m.Subject != q || !strings.HasPrefix(m.ID, "ID:") {
			t.Fatalf("published %d: %+v", i, m)
		}
	}
	tb.run.CloseBridge(t)
	if left := drain(t, client(t), q, 0, 500*time.Millisecond); len(left) != 0 {
		t.Fatalf("%d messages left on the queue after they were accepted", len(left))
	}
}

// TestIngressRedelivery: the consumer's connection is dropped while the
// broker holds a message, before its ACK: ActiveMQ redelivers it (and
// the prefetched ones) with redelivered:true to the reconnected receiver;
// the duplicates reach MQTT and are counted.
func TestIngressRedelivery(t *testing.T) {
	bridgetest.NoLeaks(t)
	p := newProxy(t, needServer(t))
	q := queue("redeliver")
	c := client(t)
	for i := range 3 {
		send(t, c, q, stomp.Message{Body: []byte(fmt.Sprint("cmd", i))})
	}
	inHandler := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	pub := &bridgetest.Publisher{}
	pub.SetFail(func(m bridge.Message) error {
		if string(m.Payload) == "cmd0" {
			once.Do(func() { close(inHandler); <-release })
		}
		return nil
	})
	tb := startBridge(t, fmt.Sprintf(`
- name: commands
  direction: in
  from: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", prefetch: 10, heart_beat: 200ms}}
  to: {topic: 'commands/{{.Subject}}', qos: 1}
  backoff: {initial: 10ms, max: 100ms}
`, p.addr(), passcodeFile(t), q), pub)
	select {
	case <-inHandler:
	case <-time.After(wait):
		t.Fatal("cmd0 never reached the broker")
	}
	p.cut() // the consumer is gone before cmd0's ACK
	close(release)
	count := func() map[string]int {
		n := map[string]int{}
		for _, m := range pub.Messages() {
			n[string(m.Payload)]++
		}
		return n
	}
	bridgetest.Eventually(t, wait, "every command bridged, cmd0 twice", func() bool {
		n := count()
		return n["cmd0"] == 2 && n["cmd1"] >= 1 && n["cmd2"] >= 1
	})
	bridgetest.Eventually(t, wait, "redeliveries counted", func() bool {
		return tb.metric(t, "ferry_bridge_activemq_redelivered_total") >= 1
	})
	tb.run.CloseBridge(t)
	if left := drain(t, client(t), q, 0, 500*time.Millisecond); len(left) != 0 {
		t.Fatalf("%d messages left on the queue", len(left))
	}
}

// TestStart: a server that is down is not an error at Start (Deliver
// fails, retryably); a refused login is; Close disconnects with a receipt
// and is safe twice.
func TestStart(t *testing.T) {
	bridgetest.NoLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	c := newConnector(t, bridge.Out, fmt.Sprintf(`{addr: %q, destination: /queue/a, timeout: 200ms}`, down))
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

	addr := needServer(t)
	c = newConnector(t, bridge.Out, fmt.Sprintf(`{addr: %q, login: ferry, passcode_file: /dev/null, destination: /queue/a}`, addr))
	if err := c.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "server error") {
		t.Fatalf("start with a wrong passcode: %v", err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	c = newConnector(t, bridge.Out, fmt.Sprintf(`{addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s"}`, addr, passcodeFile(t), queue("start")))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Deliver(context.Background(), []bridge.Message{{Topic: "a/b", ID: "r-1"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatalf("close (DISCONNECT with receipt): %v", err)
	}
	if err := c.Deliver(context.Background(), []bridge.Message{{Topic: "a/b", ID: "r-2"}}); !errors.Is(err, bridge.ErrClosed) {
		t.Fatalf("deliver after close: %v", err)
	}
}

// TestSilentServer: a server that answers CONNECTED and then goes silent
// is found dead by missed heart-beats, long before the delivery timeout;
// the failure is retryable.
func TestSilentServer(t *testing.T) {
	bridgetest.NoLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer l.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				r := stomp.NewReader(nc, stomp.Limits{})
				if _, err := r.ReadFrame(); err != nil {
					return
				}
				if _, err := nc.Write([]byte("CONNECTED\nversion:1.2\nheart-beat:100,100\n\n\x00")); err != nil {
					return
				}
				for { // swallow everything, answer nothing
					if _, err := r.ReadFrame(); err != nil {
						return
					}
				}
			}()
		}
	}()
	c := newConnector(t, bridge.Out, fmt.Sprintf(`{addr: %q, destination: /queue/a, timeout: 20s, heart_beat: 100ms}`, l.Addr()))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	start := time.Now()
	err = c.Deliver(context.Background(), []bridge.Message{{Topic: "a/b", ID: "r-1"}})
	if !errors.Is(err, stomp.ErrHeartbeatTimeout) || bridge.IsPermanent(err) {
		t.Fatalf("deliver to a silent server: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("silent server detected after %s", d)
	}
}
