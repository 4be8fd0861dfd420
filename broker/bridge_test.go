package broker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// withBridges parses a bridges: section into the test config.
func withBridges(t *testing.T, yaml string) func(*config.Config) {
	t.Helper()
	return withBridgesTB(t, yaml)
}

func withBridgesTB(t testing.TB, yaml string) func(*config.Config) {
	t.Helper()
	parsed, err := config.Parse("bridges.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return func(c *config.Config) { c.Bridges = parsed.Bridges }
}

// webhookSink records what a webhook route posts; status decides the answer.
type webhookSink struct {
	mu     sync.Mutex
	ids    []string
	bodies [][]byte
	status atomic.Int32
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if code := int(s.status.Load()); code != 0 && code != 200 {
		w.WriteHeader(code)
		return
	}
	s.mu.Lock()
	s.ids = append(s.ids, r.Header.Get("webhook-id"))
	s.bodies = append(s.bodies, body)
	s.mu.Unlock()
}

func (s *webhookSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// messages counts the messages posted: a batch's webhook-id is
// "<route>-<first seq>_<route>-<last seq>".
func (s *webhookSink) messages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, id := range s.ids {
		first, last, ok := strings.Cut(id, "_")
		if !ok {
			n++
			continue
		}
		a, _ := strconv.Atoi(first[strings.LastIndexByte(first, '-')+1:])
		b, _ := strconv.Atoi(last[strings.LastIndexByte(last, '-')+1:])
		n += b - a + 1
	}
	return n
}

func publishQoS1(t *testing.T, c *testutil.Raw, id uint16, topic, payload string) byte {
	t.Helper()
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: topic,
		Payload: []byte(payload)})
	return c.Expect(packets.Puback).ReasonCode
}

// TestWebhookRouteAndDeadLetters: a route to an HTTP webhook delivers what
// devices publish; a 400 dead-letters the message with its reason, listed
// by the admin API, and a replay delivers it once the backend accepts.
func TestWebhookRouteAndDeadLetters(t *testing.T) {
	sink := &webhookSink{}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: hooks
    from: "devices/+/telemetry"
    to: {webhook: {url: %q, batch_size: 1, unsigned: true}}
    backoff: {initial: 10ms, max: 50ms}
`, hs.URL)))
	c := testutil.DialRaw(t, b.Addr, 5)
	c.Connect("dev1", packets.Properties{})
	for i := range 5 {
		if code := publishQoS1(t, c, uint16(i+1), "devices/dev1/telemetry", fmt.Sprintf("t%d", i)); code != 0 {
			t.Fatalf("PUBACK 0x%02x", code)
		}
	}
	publishQoS1(t, c, 9, "other/topic", "not routed")
	testutil.Eventually(t, 10*time.Second, "5 webhook deliveries", func() bool { return sink.count() == 5 })
	sink.mu.Lock()
	// Raw payloads travel base64-encoded in the webhook's JSON: "dDA=" is t0.
	if sink.ids[0] == "" || !bytes.Contains(sink.bodies[0], []byte(`"payload":"dDA="`)) {
		t.Errorf("first delivery: id %q body %s", sink.ids[0], sink.bodies[0])
	}
	sink.mu.Unlock()

	sink.status.Store(400)
	publishQoS1(t, c, 10, "devices/dev1/telemetry", "refused")
	var dls []struct {
		Seq    uint64 `json:"seq"`
		Reason string `json:"reason"`
	}
	testutil.Eventually(t, 10*time.Second, "the refused message is dead-lettered", func() bool {
		resp, err := http.Get(b.AdminURL + "/api/v1/bridges/hooks/deadletters")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		dls = nil
		return json.NewDecoder(resp.Body).Decode(&dls) == nil && len(dls) == 1
	})
	if dls[0].Reason == "" {
		t.Error("dead letter without a reason")
	}
	sink.status.Store(200)
	resp, err := http.Post(b.AdminURL+"/api/v1/bridges/hooks/deadletters/replay", "application/json", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("replay: %v %v", err, resp)
	}
	resp.Body.Close()
	testutil.Eventually(t, 10*time.Second, "the replayed message is delivered", func() bool { return sink.count() == 6 })
	if r, _ := http.Get(b.AdminURL + "/api/v1/bridges/nope/deadletters"); r == nil || r.StatusCode != 404 {
		t.Errorf("unknown route: %v", r)
	}
}

// TestNATSRoutesBothWays: devices' telemetry reaches a JetStream stream,
// and what services publish on a NATS subject reaches the devices.
func TestNATSRoutesBothWays(t *testing.T) {
	ns := testutil.StartNATS(t, -1, "")
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "TELEMETRY", Subjects: []string{"telemetry.>"}}); err != nil {
		t.Fatal(err)
	}
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: telemetry
    from: "devices/+/telemetry"
    to: {nats: {url: %q, subject: "telemetry.{{.Segment 1}}", jetstream: true}}
  - name: commands
    direction: in
    from: {nats: {url: %q, subject: "commands.>"}}
    to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`, ns.ClientURL(), ns.ClientURL())))

	dev := testutil.DialRaw(t, b.Addr, 5)
	dev.Connect("dev7", packets.Properties{})
	dev.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "devices/dev7/commands", Qos: 1}}})
	dev.Expect(packets.Suback)
	for i := range 20 {
		publishQoS1(t, dev, uint16(i+2), "devices/dev7/telemetry", fmt.Sprintf("m%d", i))
	}
	testutil.Eventually(t, 10*time.Second, "20 messages in the stream", func() bool {
		si, err := js.StreamInfo("TELEMETRY")
		return err == nil && si.State.Msgs == 20
	})
	msg, err := js.GetLastMsg("TELEMETRY", "telemetry.dev7")
	if err != nil || string(msg.Data) != "m19" || msg.Header.Get("Nats-Msg-Id") == "" {
		t.Fatalf("last message %v %v", msg, err)
	}

	testutil.Eventually(t, 10*time.Second, "the ingress route is subscribed", func() bool {
		return nc.Publish("commands.dev7", []byte("reboot")) == nil && nc.Flush() == nil && func() bool {
			pk, err := dev.Read(200 * time.Millisecond)
			return err == nil && pk.FixedHeader.Type == packets.Publish && string(pk.Payload) == "reboot" &&
				pk.TopicName == "devices/dev7/commands"
		}()
	})
}

// TestBridgeStatsUnderSys: each route's statistics are retained under
// $SYS/ferry/bridge/<route>/ and follow the deliveries.
func TestBridgeStatsUnderSys(t *testing.T) {
	sink := &webhookSink{}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - {name: stats, from: "s/#", to: {webhook: {url: %q, unsigned: true}}}
`, hs.URL)), func(c *config.Config) { c.MQTT.SysInterval = time.Second })
	c := testutil.DialRaw(t, b.Addr, 4)
	c.Connect("stats-dev", packets.Properties{})
	for i := range 3 {
		publishQoS1(t, c, uint16(i+1), "s/x", "v")
	}
	testutil.Eventually(t, 10*time.Second, "3 deliveries", func() bool { return sink.messages() == 3 })
	w := testutil.DialRaw(t, b.Addr, 4)
	w.Connect("watcher", packets.Properties{})
	waitSys(t, w, "$SYS/ferry/bridge/stats/delivered_total", func(v string) bool { return v == "3" })
}

// waitSys subscribes w to the retained topic until its value satisfies ok.
func waitSys(t *testing.T, w *testutil.Raw, topic string, ok func(string) bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, topic, func() bool {
		w.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: topic}}})
		found := false
		for {
			pk, err := w.Read(300 * time.Millisecond)
			if err != nil {
				break
			}
			if pk.FixedHeader.Type == packets.Publish && ok(string(pk.Payload)) {
				found = true
			}
		}
		w.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: topic}}})
		return found
	})
}

// TestBridgeStateUnderSys: a route whose backend is unreachable is down
// under $SYS/ferry/bridge/<route>/state (with why) and backend_up.
func TestBridgeStateUnderSys(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - {name: gone, from: "g/#", to: {webhook: {url: "http://%s/", unsigned: true}}, backoff: {initial: 10ms, max: 20ms}}
`, dead)), func(c *config.Config) { c.MQTT.SysInterval = time.Second })
	c := testutil.DialRaw(t, b.Addr, 4)
	c.Connect("gone-dev", packets.Properties{})
	publishQoS1(t, c, 1, "g/x", "v")
	w := testutil.DialRaw(t, b.Addr, 4)
	w.Connect("watcher", packets.Properties{})
	waitSys(t, w, "$SYS/ferry/bridge/gone/state", func(v string) bool {
		return strings.HasPrefix(v, "down since ") && strings.Contains(v, "connection refused")
	})
	waitSys(t, w, "$SYS/ferry/bridge/gone/backend_up", func(v string) bool { return v == "0" })
}

// TestPublishAPI: services send to devices over HTTP with the admin token.
func TestPublishAPI(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Admin.Token = "tok" })
	dev := testutil.DialRaw(t, b.Addr, 5)
	dev.Connect("d1", packets.Properties{})
	dev.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "devices/d1/commands", Qos: 1}}})
	dev.Expect(packets.Suback)
	post := func(token, body string) int {
		req, _ := http.NewRequest("POST", b.AdminURL+"/api/v1/publish", bytes.NewBufferString(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name, token, body string
		want              int
	}{
		{"no token", "", `{"topic":"devices/d1/commands","payload":"x"}`, 401},
		{"wildcard topic", "tok", `{"topic":"devices/+/commands","payload":"x"}`, 400},
		{"unknown field", "tok", `{"topic":"a","payloads":"x"}`, 400},
		{"qos 3", "tok", `{"topic":"a","qos":3}`, 400},
		{"ok", "tok", `{"topic":"devices/d1/commands","payload":"reboot","qos":1,"user_properties":{"from":"ops"}}`, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(tc.token, tc.body); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	pk := dev.Expect(packets.Publish)
	if string(pk.Payload) != "reboot" || pk.FixedHeader.Qos != 1 || len(pk.Properties.User) != 1 {
		t.Fatalf("device got %q qos %d props %v", pk.Payload, pk.FixedHeader.Qos, pk.Properties.User)
	}
}

// TestIngressIdentityUnderACL: what services publish through the bridge is
// subject to the ACL rules of the bridge identity.
func TestIngressIdentityUnderACL(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("user ferry-bridge\ntopic write devices/+/commands\n\nuser dev\ntopic read devices/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := testutil.StartBroker(t, func(c *config.Config) {
		c.Auth.ACLFile = acl
		c.Auth.AllowAnonymous = true
	})
	post := func(topic string) int {
		resp, err := http.Post(b.AdminURL+"/api/v1/publish", "application/json",
			bytes.NewBufferString(fmt.Sprintf(`{"topic":%q,"payload":"x"}`, topic)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post("devices/d1/commands"); got != 200 {
		t.Errorf("allowed topic: %d", got)
	}
	if got := post("devices/d1/firmware"); got != 403 {
		t.Errorf("topic outside the bridge identity's ACL: %d, want 403", got)
	}
}

// TestNATSOutageDuringStream is the bridge issue's fault test: NATS stops
// for 10 s in the middle of a 10,000-message QoS 1 stream, then comes back;
// all 10,000 reach the JetStream stream, each once (Nats-Msg-Id).
func TestNATSOutageDuringStream(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s outage: -short")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	start := func() *natsserver.Server { return testutil.StartNATS(t, port, dir) }
	ns := start()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "T", Subjects: []string{"t"}}); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: t
    from: "stream/#"
    to: {nats: {url: "nats://127.0.0.1:%d", subject: t, jetstream: true, timeout: 1s}}
    backoff: {initial: 50ms, max: 500ms}
`, port)))

	const total, stopAt = 10000, 2000
	c := testutil.DialRaw(t, b.Addr, 4)
	c.Connect("streamer", packets.Properties{})
	var outage sync.WaitGroup
	for i := range total {
		if i == stopAt {
			ns.Shutdown()
			ns.WaitForShutdown()
			outage.Add(1)
			go func() {
				defer outage.Done()
				<-time.After(10 * time.Second) // the outage the issue asks for
				ns = start()
			}()
		}
		c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i%60000 + 1),
			TopicName: "stream/x", Payload: []byte(fmt.Sprintf("%05d", i))})
		c.Expect(packets.Puback)
	}
	outage.Wait()
	defer ns.Shutdown()
	nc, err = nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = nc.JetStream()
	testutil.Eventually(t, 60*time.Second, "10,000 messages in the stream", func() bool {
		si, err := js.StreamInfo("T")
		return err == nil && si.State.Msgs >= total
	})
	si, _ := js.StreamInfo("T")
	if si.State.Msgs != total {
		t.Fatalf("%d messages in the stream, want exactly %d (de-duplicated by Nats-Msg-Id)", si.State.Msgs, total)
	}
}
