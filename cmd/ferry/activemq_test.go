package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

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
`, addr, pass, queue))
	bin := testutil.BuildFerry(t)
	dataDir := t.TempDir()
	args := []string{"-c", cfg, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "", "--data-dir", dataDir}
	p := testutil.StartFerry(t, bin, args...)

	publishSensor(t, p.Addr("tcp0"), 0, 1000)
	amq.run("activemq_stop")
	publishSensor(t, p.Addr("tcp0"), 1000, 3000) // acknowledged: in the outbox
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

// TestActivemqIngressKill: 2,000 messages wait on an ActiveMQ queue for an
// ingress route to the MQTT topic commands/in, read by a persistent QoS 1
// subscriber. Ferry is killed -9 while it consumes and restarted on the
// same data directory and address: every message reaches the subscriber
// (ActiveMQ redelivers what Ferry had not acknowledged); duplicates are
// counted and bounded by the prefetch window.
func TestActivemqIngressKill(t *testing.T) {
	testutil.Need(t, "FERRY_TEST_ACTIVEMQ_DIR", "start ActiveMQ with scripts/activemq.sh (activemq_start DIR exports it)")
	amq := &privateActiveMQ{t: t, dir: t.TempDir()}
	amq.run("activemq_start")
	t.Cleanup(func() { amq.run("activemq_stop") })
	addr := amq.addr()

	const total, prefetch = 2000, 64
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := stomp.Dial(ctx, addr, stomp.Options{Login: "ferry", Passcode: "ferry"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := payloads("c", 0, total)
	for i := 0; i < total; i += 500 {
		msgs := make([]stomp.Message, 0, 500)
		for _, p := range want[i:min(i+500, total)] {
			msgs = append(msgs, stomp.Message{Destination: "/queue/ferry.commands", Body: []byte(p),
				Headers: []stomp.Header{{Key: "persistent", Value: "true"}}})
		}
		r, err := c.SendTx(ctx, msgs)
		if err == nil {
			err = r.Wait(ctx)
		}
		if err != nil {
			t.Fatalf("put messages: %v", err)
		}
	}

	pass := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(pass, []byte("ferry\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: commands
    direction: in
    from: {activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/ferry.commands", prefetch: %d}}
    to: {topic: commands/in, qos: 1}
    backoff: {initial: 20ms, max: 200ms}
`, addr, pass, prefetch))
	bin := testutil.BuildFerry(t)
	mqttAddr := testutil.FreeAddr(t)
	args := []string{"-c", cfg, "--mqtt-addr", mqttAddr, "--ws-addr", "", "--admin-addr", "",
		"--data-dir", filepath.Join(t.TempDir(), "data")}
	p := testutil.StartFerry(t, bin, args...)

	var mu sync.Mutex
	got := map[string]int{}
	sub := connectPaho(t, mqttAddr, "consumer", false, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[string(m.Payload())]++
		mu.Unlock()
	})
	if tok := sub.Subscribe("commands/in", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	distinct := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	testutil.Eventually(t, 30*time.Second, "ingress under way", func() bool { return distinct() >= 100 })
	p.Signal(t, syscall.SIGKILL)
	_ = p.Wait(t, 10*time.Second)
	atKill := distinct()
	if atKill >= total {
		t.Fatalf("all %d messages were consumed before the kill: the test proves nothing", total)
	}
	p = testutil.StartFerry(t, bin, args...)
	restarted := p
	t.Cleanup(func() {
		if t.Failed() { // say how far it got: failed once in a loaded CI run without a word
			t.Logf("killed after %d of %d messages; %d distinct at the subscriber\nferry log after the restart:\n%s",
				atKill, total, distinct(), lastLines(restarted.Log(), 30))
		}
	})
	testutil.Eventually(t, 60*time.Second, "every message at the subscriber", func() bool { return distinct() >= total })
	mu.Lock()
	dups := checkAll(t, got, want)
	mu.Unlock()
	t.Logf("killed after %d of %d messages; %d duplicates at the subscriber", atKill, total, dups)
	if dups > 4*prefetch {
		t.Fatalf("%d duplicates, more than the prefetch window allows\nferry log:\n%s", dups, lastLines(p.Log(), 30))
	}
}
