package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDLQCommand: `ferry dlq list`, `replay` and `purge` against a running
// broker whose webhook refuses messages.
func TestDLQCommand(t *testing.T) {
	var status atomic.Int32
	status.Store(400)
	var got atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := status.Load(); s != 200 {
			w.WriteHeader(int(s))
			return
		}
		got.Add(1)
	}))
	defer hs.Close()
	cfg := writeConfig(t, fmt.Sprintf("bridges:\n  - {name: hooks, from: \"dev/#\", to: {webhook: {url: %q, unsigned: true}}, backoff: {initial: 10ms, max: 20ms}}\n", hs.URL))
	p := startFerry(t, "-c", cfg)
	c := testutil.DialRaw(t, p.Addr("tcp0"), 4)
	c.Connect("d", packets.Properties{})
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "dev/x", Payload: []byte("p")})
	c.Expect(packets.Puback)
	admin := p.Addr("admin")
	var out string
	testutil.Eventually(t, 10*time.Second, "dlq list shows the refused message", func() bool {
		code, o, _ := runCmd(t, "", nil, "dlq", "list", "hooks", "--admin-addr", admin)
		out = o
		return code == 0 && strings.Contains(o, "dev/x")
	})
	if !strings.Contains(out, "400") {
		t.Errorf("the reason is not shown: %q", out)
	}
	status.Store(200)
	if code, o, e := runCmd(t, "", nil, "dlq", "replay", "hooks", "--admin-addr", admin); code != 0 || !strings.HasPrefix(o, "replayed 1 dead letter of route hooks") {
		t.Fatalf("replay: %d %q %q", code, o, e)
	}
	testutil.Eventually(t, 10*time.Second, "the replayed message is delivered", func() bool { return got.Load() == 1 })
	if code, _, e := runCmd(t, "", nil, "dlq", "list", "nope", "--admin-addr", admin); code == 0 || !strings.Contains(e, "404") ||
		!strings.Contains(e, `no bridge route "nope"`) {
		t.Errorf("unknown route: %d %q", code, e)
	}

	// purge: refused again, dead-lettered, then deleted for good.
	status.Store(400)
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 2, TopicName: "dev/y", Payload: []byte("p")})
	c.Expect(packets.Puback)
	testutil.Eventually(t, 10*time.Second, "dlq list shows the second refused message", func() bool {
		code, o, _ := runCmd(t, "", nil, "dlq", "list", "hooks", "--admin-addr", admin)
		return code == 0 && strings.Contains(o, "dev/y")
	})
	if code, o, e := runCmd(t, "", nil, "dlq", "purge", "hooks", "--all", "--admin-addr", admin); code != 0 || !strings.HasPrefix(o, "purged 1 dead letter of route hooks") {
		t.Fatalf("purge: %d %q %q", code, o, e)
	}
	if code, o, _ := runCmd(t, "", nil, "dlq", "list", "hooks", "--admin-addr", admin); code != 0 || strings.Contains(o, "dev/y") {
		t.Fatalf("after purge: %d %q", code, o)
	}
}

func startNATS(t *testing.T, port int, dir string) *natsserver.Server {
	t.Helper()
	return testutil.StartNATS(t, port, dir)
}

// TestBridgeSurvivesBackendOutageAndKill is the bridge issue's scenario:
// route devices/# to the JetStream subject telemetry with storage.sync
// always; 1,000 QoS 1 messages while NATS is up, 2,000 more while it is
// down, then Ferry is killed -9 and restarted and NATS restarted: all 3,000
// distinct messages end up in the stream.
func TestBridgeSurvivesBackendOutageAndKill(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	natsDir := t.TempDir()
	ns := startNATS(t, port, natsDir)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "TELEMETRY", Subjects: []string{"telemetry"}}); err != nil {
		t.Fatal(err)
	}
	nc.Close()

	cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: telemetry
    from: "devices/#"
    to: {nats: {url: "nats://127.0.0.1:%d", subject: telemetry, jetstream: true, timeout: 1s}}
    backoff: {initial: 50ms, max: 500ms}
`, port))
	bin := testutil.BuildFerry(t)
	dataDir := t.TempDir()
	args := []string{"-c", cfg, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "", "--data-dir", dataDir}
	p := testutil.StartFerry(t, bin, args...)

	publishSensor(t, p.Addr("tcp0"), 0, 1000)
	ns.Shutdown()
	ns.WaitForShutdown()
	publishSensor(t, p.Addr("tcp0"), 1000, 3000) // acknowledged: in the outbox
	p.Signal(t, syscall.SIGKILL)
	_ = p.Wait(t, 10*time.Second)
	p = testutil.StartFerry(t, bin, args...)
	ns = startNATS(t, port, natsDir)
	defer ns.Shutdown()

	nc, err = nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = nc.JetStream()
	testutil.Eventually(t, 60*time.Second, "3,000 messages in the stream", func() bool {
		si, err := js.StreamInfo("TELEMETRY")
		return err == nil && si.State.Msgs >= 3000
	})
	sub, err := js.SubscribeSync("telemetry", nats.OrderedConsumer())
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[string]bool{}
	for {
		m, err := sub.NextMsg(2 * time.Second)
		if err != nil {
			break
		}
		distinct[string(m.Data)] = true
	}
	if len(distinct) != 3000 {
		t.Fatalf("%d distinct messages in the stream, want 3000", len(distinct))
	}
	_ = p
}

// publishSensor publishes payloads m<from>..m<to-1> at QoS 1 as client
// "sensor" to devices/sensor/telemetry, each waiting for its PUBACK.
func publishSensor(t *testing.T, addr string, from, to int) {
	t.Helper()
	c := testutil.DialRaw(t, addr, 4)
	c.Connect("sensor", packets.Properties{})
	for i := from; i < to; i++ {
		c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i%60000 + 1),
			TopicName: "devices/sensor/telemetry", Payload: []byte(fmt.Sprintf("m%05d", i))})
		c.Expect(packets.Puback)
	}
	_ = c.Conn.Close()
}
