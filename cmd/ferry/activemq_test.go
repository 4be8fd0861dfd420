package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/bridge/activemq/stomp"
	"github.com/ferrymq/ferry/internal/testutil"
)

// privateActiveMQ is an ActiveMQ this test owns, started through
// scripts/activemq.sh in a temp dir, so stopping it cannot disturb the
// shared one other packages' tests use at the same time.
type privateActiveMQ struct {
	t   *testing.T
	dir string
}

func (a *privateActiveMQ) run(fn string) {
	a.t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "activemq.sh"))
	if err != nil {
		a.t.Fatal(err)
	}
	out, err := exec.Command("bash", "-c", fmt.Sprintf(". %q && %s %q", script, fn, a.dir)).CombinedOutput()
	if err != nil {
		a.t.Fatalf("%s: %v\n%s", fn, err, out)
	}
}

func (a *privateActiveMQ) addr() string {
	a.t.Helper()
	port, err := os.ReadFile(filepath.Join(a.dir, "port"))
	if err != nil {
		a.t.Fatal(err)
	}
	return "127.0.0.1:" + strings.TrimSpace(string(port))
}

// TestActivemqBridgeSurvivesOutageAndKill: route devices/# to an ActiveMQ
// queue with storage.sync always; 1,000 QoS 1 messages while ActiveMQ is
// up, 2,000 more while it is down (acknowledged: in the outbox), then
// Ferry is killed -9 and restarted and ActiveMQ restarted: all 3,000
// distinct messages end up on the queue, each with its ferry-message-id.
// It needs a script-started ActiveMQ (FERRY_TEST_ACTIVEMQ_DIR, set by
// make test) as the sign that the script and the server are installed.
func TestActivemqBridgeSurvivesOutageAndKill(t *testing.T) {
	testutil.Need(t, "FERRY_TEST_ACTIVEMQ_DIR", "start ActiveMQ with scripts/activemq.sh (activemq_start DIR exports it)")
	amq := &privateActiveMQ{t: t, dir: t.TempDir()}
	amq.run("activemq_start")
	t.Cleanup(func() { amq.run("activemq_stop") })
	addr := amq.addr()

	pass := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(pass, []byte("ferry\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	queue := "ferry.telemetry"
	cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: telemetry
    from: "devices/#"
    to: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", timeout: 2s, heart_beat: 1s}}
    backoff: {initial: 50ms, max: 500ms}
    max_attempts: 1000000
`, addr, pass, queue))
	bin := testutil.BuildFerry(t)
	dataDir := t.TempDir()
	args := []string{"-c", cfg, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "", "--data-dir", dataDir}
	p := testutil.StartFerry(t, bin, args...)

	publish := func(addr string, from, to int) {
		c := testutil.DialRaw(t, addr, 4)
		c.Connect("sensor", packets.Properties{})
		for i := from; i < to; i++ {
			c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i%60000 + 1),
				TopicName: "devices/sensor/telemetry", Payload: []byte(fmt.Sprintf("m%05d", i))})
			c.Expect(packets.Puback)
		}
		_ = c.Conn.Close()
	}
	publish(p.Addr("tcp0"), 0, 1000)
	amq.run("activemq_stop")
	publish(p.Addr("tcp0"), 1000, 3000) // acknowledged: in the outbox
	p.Signal(t, syscall.SIGKILL)
	_ = p.Wait(t, 10*time.Second)
	p = testutil.StartFerry(t, bin, args...)
	amq.run("activemq_start")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var c *stomp.Conn
	testutil.Eventually(t, 30*time.Second, "connected to ActiveMQ", func() bool {
		var err error
		c, err = stomp.Dial(ctx, addr, stomp.Options{Login: "ferry", Passcode: "ferry"})
		return err == nil
	})
	defer c.Close()
	sub, err := c.Subscribe(ctx, "/queue/"+queue, stomp.AckAuto, 1000, stomp.Header{Key: "activemq.prefetchSize", Value: "1000"})
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[string]bool{}
	for len(distinct) < 3000 {
		m, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("%d distinct messages on the queue, want 3000: %v\nferry log:\n%s", len(distinct), err, lastLines(p.Log(), 30))
		}
		body := string(m.Body)
		var i int
		if _, err := fmt.Sscanf(body, "m%05d", &i); err != nil || m.Value("ferry-message-id") != fmt.Sprint("telemetry-", i+1) {
			t.Fatalf("message %q with ferry-message-id %q", body, m.Value("ferry-message-id"))
		}
		distinct[body] = true
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
