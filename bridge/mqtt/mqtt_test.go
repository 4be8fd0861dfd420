package mqtt_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bmqtt "github.com/ferrymq/ferry/bridge/mqtt"
	"github.com/ferrymq/ferry/bridge/outbox"
)

const wait = 20 * time.Second

// remote is an in-process mochi broker standing for the remote broker; it
// records what arrives on its inline subscription to "#".
type remote struct {
	t    *testing.T
	addr string
	srv  *mochi.Server
	mu   sync.Mutex
	got  []packets.Packet
}

func startRemote(t *testing.T) *remote {
	t.Helper()
	r := &remote{t: t, addr: "127.0.0.1:0"}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *remote) start() {
	r.t.Helper()
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Skipf("listen %s: %v", r.addr, err)
	}
	r.addr = l.Addr().String()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(aclHook), nil); err != nil {
		r.t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("t", l)); err != nil {
		r.t.Fatal(err)
	}
	if err := srv.Subscribe("site1/#", 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		r.mu.Lock()
		r.got = append(r.got, pk)
		r.mu.Unlock()
	}); err != nil {
		r.t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		r.t.Fatal(err)
	}
	r.srv = srv
}

// aclHook lets every client in and refuses publishes to topics with a
// "poison" level (PUBACK 0x87 to MQTT 5 clients): a test broker only.
type aclHook struct{ mochi.HookBase }

func (*aclHook) ID() string { return "test-acl" }

func (*aclHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*aclHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*aclHook) OnACLCheck(_ *mochi.Client, topic string, write bool) bool {
	return !write || !strings.Contains("/"+topic+"/", "/poison/")
}

func (r *remote) stop() {
	if r.srv != nil {
		_ = r.srv.Close()
		r.srv = nil
	}
}

func (r *remote) received() []packets.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]packets.Packet(nil), r.got...)
}

func idOf(pk packets.Packet) string {
	for _, up := range pk.Properties.User {
		if up.Key == bridge.IDProperty {
			return up.Val
		}
	}
	return ""
}

type testBridge struct {
	b   *bridge.Bridge
	reg *prometheus.Registry
	pub *bridgetest.Publisher
}

func startBridge(t *testing.T, routesYAML string) *testBridge {
	t.Helper()
	var rs []bridge.RouteConfig
	if err := yaml.Unmarshal([]byte(routesYAML), &rs); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(outbox.Config{Dir: t.TempDir(), Sync: outbox.SyncBatch}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBridge{reg: prometheus.NewRegistry(), pub: &bridgetest.Publisher{}}
	tb.b, err = bridge.New(rs, bridge.Deps{Outbox: ob, Publisher: tb.pub, Registerer: tb.reg,
		Factories: map[string]bridge.Factory{"mqtt": bmqtt.New}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tb.b.Close(ctx); err != nil {
			t.Error(err)
		}
		if err := ob.Close(); err != nil {
			t.Error(err)
		}
	})
	return tb
}

func egressRoute(addr string) string {
	return fmt.Sprintf(`
- name: up
  from: "devices/#"
  to: {mqtt: {url: "mqtt://%s", topic: "site1/{{.Topic}}", timeout: 1s}}
  backoff: {initial: 10ms, max: 100ms}
`, addr)
}

func TestEgress(t *testing.T) {
	bridgetest.NoLeaks(t)
	r := startRemote(t)
	tb := startBridge(t, egressRoute(r.addr))
	for i := range 5 {
		if err := tb.b.Offer(bridge.Message{Topic: fmt.Sprint("devices/d", i), Payload: []byte(fmt.Sprint(i)), QoS: 1,
			UserProperties: []bridge.Property{{Key: "site", Value: "s1"}}}); err != nil {
			t.Fatal(err)
		}
	}
	bridgetest.Eventually(t, wait, "5 received", func() bool { return len(r.received()) == 5 })
	for i, pk := range r.received() {
		if pk.TopicName != fmt.Sprint("site1/devices/d", i) || string(pk.Payload) != fmt.Sprint(i) || idOf(pk) != fmt.Sprint("up-", i+1) ||
			pk.Properties.User[0].Key != "site" {
			t.Fatalf("packet %d: %s %q %+v", i, pk.TopicName, pk.Payload, pk.Properties.User)
		}
	}
}

// TestEgressOutage: the remote broker is down for part of a 1,000-message
// stream; everything arrives after it is back.
func TestEgressOutage(t *testing.T) {
	r := startRemote(t)
	tb := startBridge(t, egressRoute(r.addr))
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			if err := tb.b.Offer(bridge.Message{Topic: "devices/d", Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	offer(0, 300)
	r.stop()
	offer(300, 1000)
	bridgetest.Eventually(t, wait, "route down while the remote broker is down", func() bool {
		return bridgetest.Metric(t, tb.reg, "ferry_bridge_backend_up", "route", "up") == 0
	})
	r.start()
	ids := map[string]bool{}
	bridgetest.Eventually(t, wait, "1000 distinct ids received", func() bool {
		for _, pk := range r.received() {
			ids[idOf(pk)] = true
		}
		return len(ids) == 1000
	})
	for i := 1; i <= 1000; i++ {
		if !ids[fmt.Sprint("up-", i)] {
			t.Fatalf("up-%d missing", i)
		}
	}
}

func TestIngress(t *testing.T) {
	bridgetest.NoLeaks(t)
	r := startRemote(t)
	tb := startBridge(t, fmt.Sprintf(`
- name: down
  direction: in
  from: {mqtt: {url: "mqtt://%s", topic: "cmd/+"}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`, r.addr))
	// The subscription is made asynchronously: publish until one arrives.
	bridgetest.Eventually(t, wait, "command bridged", func() bool {
		if err := r.srv.Publish("cmd/d7", []byte("reboot"), false, 1); err != nil {
			t.Fatal(err)
		}
		return len(tb.pub.Messages()) > 0
	})
	m := tb.pub.Messages()[0]
	if m.Topic != "devices/d7/commands" || string(m.Payload) != "reboot" || m.QoS != 1 {
		t.Fatalf("published %+v", m)
	}
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		dir           bridge.Direction
		want          string
	}{
		{"no url", `{topic: a}`, bridge.Out, "url:"},
		{"bad scheme", `{url: "http://x:1", topic: a}`, bridge.Out, `url: scheme "http"`},
		{"wildcard target", `{url: "mqtt://x:1", topic: "a/#"}`, bridge.Out, "topic:"},
		{"bad qos", `{url: "mqtt://x:1", topic: a, qos: 3}`, bridge.Out, "qos: 3"},
		{"bad template", `{url: "mqtt://x:1", topic: "{{.Nope}}"}`, bridge.Out, "topic: template:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", tc.dir, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bmqtt.New(spec, bridge.Deps{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
