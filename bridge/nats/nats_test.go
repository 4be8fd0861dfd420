package nats_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bnats "github.com/ferrymq/ferry/bridge/nats"
	"github.com/ferrymq/ferry/bridge/outbox"
)

const wait = 20 * time.Second

// natsServer is an embedded server with JetStream; restart brings it back
// on the same port and store after stop.
type natsServer struct {
	t     *testing.T
	s     *server.Server
	port  int
	store string
}

func runServer(t *testing.T) *natsServer {
	t.Helper()
	ns := &natsServer{t: t, port: -1, store: t.TempDir()}
	ns.start()
	ns.port = ns.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(ns.stop)
	return ns
}

func (ns *natsServer) start() {
	ns.t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: ns.port, JetStream: true, StoreDir: ns.store, NoLog: true, NoSigs: true})
	if err != nil {
		ns.t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		ns.t.Fatal("nats server not ready")
	}
	ns.s = s
}

func (ns *natsServer) stop() {
	if ns.s != nil {
		ns.s.Shutdown()
		ns.s.WaitForShutdown()
		ns.s = nil
	}
}

func (ns *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", ns.port) }

// client connects a test client, closed at cleanup.
func (ns *natsServer) client(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(ns.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
	pub *bridgetest.Publisher
}

// startBridge runs routes (YAML) on an outbox in dir; closed at cleanup
// (or earlier by close).
func startBridge(t *testing.T, dir, routesYAML string) *testBridge {
	t.Helper()
	return startBridgeWith(t, dir, routesYAML, &bridgetest.Publisher{})
}

// startBridgeWith is startBridge with a given Publisher.
func startBridgeWith(t *testing.T, dir, routesYAML string, pub *bridgetest.Publisher) *testBridge {
	t.Helper()
	var rs []bridge.RouteConfig
	if err := yaml.Unmarshal([]byte(routesYAML), &rs); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(outbox.Config{Dir: dir, Sync: outbox.SyncBatch}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBridge{ob: ob, reg: prometheus.NewRegistry(), pub: pub}
	tb.b, err = bridge.New(rs, bridge.Deps{Outbox: ob, Publisher: tb.pub, Registerer: tb.reg,
		Factories: map[string]bridge.Factory{"nats": bnats.New}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.close(t) })
	return tb
}

func (tb *testBridge) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tb.b.Close(ctx); err != nil {
		t.Error(err)
	}
	if err := tb.ob.Close(); err != nil {
		t.Error(err)
	}
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no url", `{subject: a}`, bridge.Out, "url: must not be empty"},
		{"bad template", `{url: x, subject: "a.{{.Segment}}"}`, bridge.Out, "subject: template:"},
		{"wildcard publish", `{url: x, subject: "a.*"}`, bridge.Out, `subject: "a.*" is not a valid publish subject`},
		{"jetstream ingress without stream", `{url: x, subject: "a.>", jetstream: true}`, bridge.In, "stream: ingress from JetStream needs"},
		{"unknown field", `{url: x, subject: a, subjekt: b}`, bridge.Out, "field subjekt not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = bnats.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCorePublish(t *testing.T) {
	bridgetest.NoLeaks(t)
	ns := runServer(t)
	nc, _ := ns.client(t)
	sub, err := nc.SubscribeSync("telemetry.>")
	if err != nil {
		t.Fatal(err)
	}
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {nats: {url: %q, subject: "telemetry.{{.Segment 1}}"}}
- name: env
  from: "env/#"
  payload: envelope
  to: {nats: {url: %q, subject: "env"}}
`, ns.url(), ns.url()))
	m := bridge.Message{Topic: "devices/d1/telemetry", Payload: []byte(`{"t":1}`), ClientID: "d1",
		UserProperties: []bridge.Property{{Key: "site", Value: "s1"}}}
	if err := tb.b.Offer(m); err != nil {
		t.Fatal(err)
	}
	got, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject != "telemetry.d1" || string(got.Data) != `{"t":1}` || got.Header.Get("Nats-Msg-Id") != "telemetry-1" ||
		got.Header.Get("Ferry-Topic") != "devices/d1/telemetry" || got.Header.Get("site") != "s1" || got.Header.Get("Ferry-Client-Id") != "d1" {
		t.Fatalf("got %s %q %v", got.Subject, got.Data, got.Header)
	}
	envSub, err := nc.SubscribeSync("env")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Offer(bridge.Message{Topic: "env/x", Payload: []byte("raw")}); err != nil {
		t.Fatal(err)
	}
	got, err = envSub.NextMsg(wait)
	if err != nil || !strings.Contains(string(got.Data), `"payload":"cmF3"`) || !strings.Contains(string(got.Data), `"id":"env-1"`) {
		t.Fatalf("envelope = %q, %v", got.Data, err)
	}
}

// TestJetStreamOutage: a stream of 2,500 QoS-1-like publishes while the
// NATS server is stopped for a while and restarted: every message ends up in
// the stream exactly once (outbox + retries + Nats-Msg-Id de-duplication).
func TestJetStreamOutage(t *testing.T) {
	bridgetest.NoLeaks(t)
	ns := runServer(t)
	_, js := ns.client(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"telemetry.>"}}); err != nil {
		t.Fatal(err)
	}
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: telemetry
  from: "devices/+/telemetry"
  to: {nats: {url: %q, subject: "telemetry.{{.Segment 1}}", jetstream: true, timeout: 500ms}}
  backoff: {initial: 10ms, max: 100ms}
`, ns.url()))
	const total = 2500
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			if err := tb.b.Offer(bridge.Message{Topic: fmt.Sprintf("devices/d%d/telemetry", i%10), Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
				t.Fatalf("offer %d: %v", i, err)
			}
		}
	}
	offer(0, 1000)
	ns.stop()
	offer(1000, total)
	bridgetest.Eventually(t, wait, "route down while NATS is down", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_backend_up", "route", "telemetry") == 0
	})
	if d := bridgetest.Metric(t, tb.reg, "ferry_bridge_queue_depth", "route", "telemetry"); d == 0 {
		t.Fatal("queue empty while the backend is down")
	}
	ns.start()
	// The test client reconnects too.
	bridgetest.Eventually(t, wait, "all messages in the stream", func() bool {
		s, err := js.Stream(ctx, "TELEMETRY")
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= total
	})
	s, _ := js.Stream(ctx, "TELEMETRY")
	info, _ := s.Info(ctx)
	if info.State.Msgs != total {
		t.Fatalf("stream holds %d messages, want exactly %d", info.State.Msgs, total)
	}
	seen := make(map[string]bool, total)
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		seen[string(raw.Data)] = true
	}
	for i := range total {
		if !seen[fmt.Sprint(i)] {
			t.Fatalf("message %d missing", i)
		}
	}
	bridgetest.Eventually(t, wait, "outbox drained", func() bool { return tb.ob.Usage("telemetry").Messages == 0 })
	if got := bridgetest.Metric(t, tb.reg, "ferry_bridge_delivered_total", "route", "telemetry"); got != total {
		t.Fatalf("delivered_total = %v", got)
	}
}

// TestOutboxSurvivesRestart: messages accepted while NATS is down are in the
// outbox when Ferry "restarts" (bridge and outbox closed without draining);
// the next bridge on the same directory delivers them.
func TestOutboxSurvivesRestart(t *testing.T) {
	ns := runServer(t)
	nc, _ := ns.client(t)
	route := fmt.Sprintf(`
- name: r
  from: "t/#"
  to: {nats: {url: %q, subject: "out.{{.Segment 1}}"}}
  backoff: {initial: 10ms, max: 50ms}
`, ns.url())
	dir := t.TempDir()
	ns.stop()
	tb := startBridge(t, dir, route)
	for i := range 100 {
		if err := tb.b.Offer(bridge.Message{Topic: fmt.Sprint("t/", i), Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	tb.close(t)

	ns.start()
	bridgetest.Eventually(t, wait, "test client reconnected", nc.IsConnected)
	sub, err := nc.SubscribeSync("out.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	startBridge(t, dir, route)
	for i := range 100 {
		m, err := sub.NextMsg(wait)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(m.Data) != fmt.Sprint(i) || m.Header.Get("Nats-Msg-Id") != fmt.Sprint("r-", i+1) {
			t.Fatalf("message %d = %q id %s", i, m.Data, m.Header.Get("Nats-Msg-Id"))
		}
	}
}

func TestIngressCore(t *testing.T) {
	bridgetest.NoLeaks(t)
	ns := runServer(t)
	nc, _ := ns.client(t)
	tb := startBridge(t, t.TempDir(), fmt.Sprintf(`
- name: commands
  direction: in
  from: {nats: {url: %q, subject: "commands.>"}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`, ns.url()))
	// The subscription starts asynchronously: publish until one arrives.
	bridgetest.Eventually(t, wait, "command bridged", func() bool {
		_ = nc.Publish("commands.d7", []byte("reboot"))
		_ = nc.Flush()
		return len(tb.pub.Messages()) > 0
	})
	m := tb.pub.Messages()[0]
	if m.Topic != "devices/d7/commands" || m.QoS != 1 || string(m.Payload) != "reboot" || m.Route != "commands" {
		t.Fatalf("published %+v", m)
	}
}

// TestIngressJetStream: a message is acked only after the broker accepted
// it: the first Publish fails, JetStream redelivers, the second succeeds,
// and then nothing is pending.
func TestIngressJetStream(t *testing.T) {
	bridgetest.NoLeaks(t)
	ns := runServer(t)
	_, js := ns.client(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "COMMANDS", Subjects: []string{"commands.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := js.Publish(ctx, fmt.Sprint("commands.d", i), []byte(fmt.Sprint("cmd", i))); err != nil {
			t.Fatal(err)
		}
	}
	var failed atomic.Int32
	pubFail := func(m bridge.Message) error {
		if string(m.Payload) == "cmd1" && failed.Load() == 0 {
			failed.Add(1)
			return errors.New("broker busy")
		}
		return nil
	}
	pub := &bridgetest.Publisher{}
	pub.SetFail(pubFail)
	tb := startBridgeWith(t, t.TempDir(), fmt.Sprintf(`
- name: commands
  direction: in
  from: {nats: {url: %q, subject: "commands.>", jetstream: true, stream: COMMANDS, nak_delay: 20ms}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`, ns.url()), pub)
	bridgetest.Eventually(t, wait, "3 commands bridged", func() bool { return len(tb.pub.Messages()) == 3 })
	if failed.Load() != 1 {
		t.Fatalf("cmd1 failed %d times, want 1", failed.Load())
	}
	if got := tb.pub.Topics(); got != "devices/d0/commands devices/d1/commands devices/d2/commands" {
		t.Fatalf("topics in order = %s", got)
	}
	if id := tb.pub.Messages()[0].UserProperties[0]; id.Value != "COMMANDS-1" {
		t.Fatalf("id property = %+v", id)
	}
	bridgetest.Eventually(t, wait, "consumer fully acked", func() bool {
		c, err := js.Consumer(ctx, "COMMANDS", "ferry-commands")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})
}
