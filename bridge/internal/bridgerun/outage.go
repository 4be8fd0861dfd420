package bridgerun

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
)

// Backend is one connector's backend as Outage drives it.
type Backend struct {
	// Factories builds the connector.
	Factories map[string]bridge.Factory
	// To is the egress route's connector section (a YAML flow mapping).
	// The route carries "devices/#"; good messages are published to Topic.
	To    string
	Topic string
	// Poison is a message the backend refuses permanently (a target it
	// rejects, a payload over its size limit), sent between good ones.
	Poison bridge.Message
	// Received returns the payloads of the good messages the backend got,
	// in arrival order (a re-sent one may appear twice).
	Received func(t *testing.T) []string
	// Down makes the backend unreachable for the connector (stop the
	// server, cut a proxy); Up undoes it and waits until it serves.
	Down, Up func(t *testing.T)

	// From, when set, is an ingress route's connector section, and Put
	// adds messages with these payloads to its source (called while the
	// backend is up).
	From string
	Put  func(t *testing.T, payloads []string)

	// Outage is how long the backend stays down; default 3s, 30 times the
	// route's longest backoff and 50 times its whole retry schedule.
	Outage time.Duration
}

// outageRoutes retry fast and give up after 3 attempts (about 60 ms of
// backoff in all), so that the outage lasts far more than 20 times the
// retry schedule.
const outageRoutes = `
- name: outage
  from: "devices/#"
  to: %s
  backoff: {initial: 20ms, max: 100ms}
  max_attempts: 3
`

const ingressRoute = `
- name: inbound
  direction: in
  from: %s
  to: {topic: "in/bound", qos: 1}
  backoff: {initial: 20ms, max: 100ms}
  max_attempts: 3
`

// Outage is the outage test every egress connector runs: QoS 1 messages
// before, during and after an outage lasting far beyond the route's retry
// schedule all reach the backend, in order, none dead-lettered, with one
// log line on the way down and one on the way back; then a poison message
// between good ones is dead-lettered alone. With From set, an ingress
// route from the same backend receives again after the outage.
//
// Callers start with bridgetest.NoLeaks(t), before they start the backend.
func Outage(t *testing.T, be Backend) {
	if be.Outage == 0 {
		be.Outage = 3 * time.Second
	}
	const wait = 60 * time.Second
	routes := fmt.Sprintf(outageRoutes, be.To)
	if be.From != "" {
		routes += fmt.Sprintf(ingressRoute, be.From)
	}
	logs := &bridgetest.Logs{}
	pub := &bridgetest.Publisher{}
	r := StartLogged(t, "", routes, pub, be.Factories, logs.Logger())
	dead := func() []bridge.DeadLetter {
		dl, err := r.B.DeadLetters("outage", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return dl
	}
	offer := func(from, to int) {
		for i := from; i < to; i++ {
			if err := r.B.Offer(bridge.Message{Topic: be.Topic, Payload: []byte(fmt.Sprintf("m%04d", i)), QoS: 1, ClientID: "c1"}); err != nil {
				t.Fatalf("offer %d: %v", i, err)
			}
		}
	}
	received := func(n int) func() bool {
		return func() bool { return len(firstSeen(be.Received(t))) >= n }
	}
	inbound := func(n int) func() bool {
		return func() bool { return len(firstSeen(payloads(pub.Messages()))) >= n }
	}

	offer(0, 20)
	bridgetest.Eventually(t, wait, "20 messages before the outage", received(20))
	if be.From != "" {
		be.Put(t, []string{"i0", "i1", "i2"})
		bridgetest.Eventually(t, wait, "3 ingress messages before the outage", inbound(3))
	}

	be.Down(t)
	began := time.Now()
	offer(20, 120)
	bridgetest.Eventually(t, wait, fmt.Sprintf("an outage of %s", be.Outage), func() bool { return time.Since(began) >= be.Outage })
	if dl := dead(); len(dl) > 0 {
		t.Fatalf("%d messages dead-lettered during the outage, first %s: %s", len(dl), dl[0].Payload, dl[0].Reason)
	}
	if up := bridgetest.Metric(t, r.Reg, "ferry_bridge_backend_up", "route", "outage"); up != 0 {
		t.Fatalf("backend_up = %v during the outage", up)
	}
	be.Up(t)
	back := time.Now()
	offer(120, 140)
	bridgetest.Eventually(t, wait, "140 messages after the outage", received(140))
	t.Logf("backlog delivered %s after the backend came back", time.Since(back).Round(time.Millisecond))
	checkOrder(t, be.Received(t), 0, 140)
	if dl := dead(); len(dl) > 0 {
		t.Fatalf("%d messages dead-lettered, first %s: %s", len(dl), dl[0].Payload, dl[0].Reason)
	}
	bridgetest.Eventually(t, wait, "the back line", func() bool {
		return len(logs.Lines(slog.LevelInfo, "route outage: ")) >= 2
	})
	lines := logs.Lines(slog.LevelInfo, "route outage: ")
	if len(lines) != 2 || !strings.Contains(lines[0], " unavailable (") || !strings.Contains(lines[0], "); holding ") ||
		!strings.HasPrefix(lines[0], "WARN") || !strings.Contains(lines[1], " back after ") {
		t.Fatalf("route lines = %q, want one down and one back\nall:\n%s", lines, logs.All())
	}
	// Never a line per retry: the routes' down lines, and at most a few
	// of the connectors' own.
	if warn := logs.Lines(slog.LevelWarn, ""); len(warn) > 5 {
		t.Errorf("%d warnings:\n%s", len(warn), strings.Join(warn, "\n"))
	}

	if be.From != "" {
		be.Put(t, []string{"i3", "i4", "i5"})
		bridgetest.Eventually(t, wait, "ingress messages after the outage", inbound(6))
		t.Logf("ingress received again %s after the backend came back", time.Since(back).Round(time.Millisecond))
	}

	// A poison message between good ones: only it is dead-lettered.
	offer(140, 145)
	if err := r.B.Offer(be.Poison); err != nil {
		t.Fatalf("offer poison: %v", err)
	}
	offer(145, 150)
	bridgetest.Eventually(t, wait, "the good ones around the poison message", received(150))
	bridgetest.Eventually(t, wait, "the poison message dead-lettered", func() bool { return len(dead()) > 0 })
	checkOrder(t, be.Received(t), 0, 150)
	if dl := dead(); len(dl) != 1 || string(dl[0].Payload) != string(be.Poison.Payload) || dl[0].Topic != be.Poison.Topic {
		t.Fatalf("dead letters = %+v, want the poison message only", dl)
	} else {
		t.Logf("poison message dead-lettered after %d attempt(s): %s", dl[0].Attempts, dl[0].Reason)
	}
	if got := bridgetest.Metric(t, r.Reg, "ferry_bridge_outages_total", "route", "outage"); got != 1 {
		t.Errorf("outages_total = %v, want 1", got)
	}
}

// checkOrder checks that the first occurrences of payloads m<from>..m<to-1>
// are all there, in order, and nothing else.
func checkOrder(t *testing.T, got []string, from, to int) {
	t.Helper()
	first := firstSeen(got)
	if len(first) != to-from {
		t.Fatalf("%d distinct messages, want %d", len(first), to-from)
	}
	for i, p := range first {
		if want := fmt.Sprintf("m%04d", from+i); p != want {
			t.Fatalf("message %d is %s, want %s (first occurrences out of order)", i, p, want)
		}
	}
}

// firstSeen returns payloads without repeats, in first-arrival order.
func firstSeen(payloads []string) []string {
	seen := make(map[string]bool, len(payloads))
	out := make([]string, 0, len(payloads))
	for _, p := range payloads {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func payloads(ms []bridge.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Payload)
	}
	return out
}

// Payloads collects what a test's own consumer receives from the backend;
// its Received is a Backend.Received.
type Payloads struct {
	mu  sync.Mutex
	got []string
}

// Add records one received payload.
func (p *Payloads) Add(payload string) {
	p.mu.Lock()
	p.got = append(p.got, payload)
	p.mu.Unlock()
}

// Received returns a copy of what was recorded, in order.
func (p *Payloads) Received(*testing.T) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}
