package bridge_test

import (
	"errors"
	"testing"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
)

// routeStatus is the status of route name.
func routeStatus(t *testing.T, b *bridge.Bridge, name string) bridge.RouteStatus {
	t.Helper()
	for _, s := range b.Status() {
		if s.Route == name {
			return s
		}
	}
	t.Fatalf("no status for route %s", name)
	return bridge.RouteStatus{}
}

// TestPauseHoldsAndResumeDelivers: a paused route delivers nothing and
// holds what arrives; resumed, it delivers it all, in order.
func TestPauseHoldsAndResumeDelivers(t *testing.T) {
	for _, tc := range []struct{ name, delivery string }{
		{"at-least-once", "  delivery: at-least-once\n"},
		{"at-most-once", "  delivery: at-most-once\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fake{}
			e := start(t, t.TempDir(), f, routes(t, fastRoute+tc.delivery))
			// A first message makes sure the worker is idle, waiting.
			offerN(t, e.b, 1, func(int) string { return "devices/d/telemetry" })
			// The counter moves once the backend has acknowledged: after the fake saw it.
			bridgetest.Eventually(t, wait, "first delivered", func() bool {
				return len(f.delivered()) == 1 && routeStatus(t, e.b, "r").Delivered == 1
			})
			if err := e.b.Pause("r"); err != nil {
				t.Fatal(err)
			}
			offerN(t, e.b, 5, func(int) string { return "devices/d/telemetry" })
			if tc.delivery == "  delivery: at-most-once\n" {
				// The idle worker takes a batch from the queue, then waits.
				bridgetest.Eventually(t, wait, "the worker takes a batch", func() bool { return routeStatus(t, e.b, "r").LagMessages < 5 })
			}
			s := routeStatus(t, e.b, "r")
			if s.State != bridge.StatePaused || s.Since.IsZero() || s.Delivered != 1 {
				t.Fatalf("paused: %+v", s)
			}
			if tc.delivery == "  delivery: at-least-once\n" && (s.LagMessages != 5 || s.OutboxBytes == 0) {
				t.Fatalf("paused at-least-once route holds %d messages, %d bytes; want 5", s.LagMessages, s.OutboxBytes)
			}
			if got := len(f.delivered()); got != 1 {
				t.Fatalf("a paused route delivered %d", got-1)
			}
			if err := e.b.Resume("r"); err != nil {
				t.Fatal(err)
			}
			bridgetest.Eventually(t, wait, "6 delivered after resume", func() bool {
				s := routeStatus(t, e.b, "r")
				return len(f.delivered()) == 6 && s.Delivered == 6 && s.LagMessages == 0 // deleted from the outbox after it is counted
			})
			for i, m := range f.delivered()[1:] {
				if string(m.Payload) != string(rune('0'+i)) {
					t.Fatalf("message %d = %q", i, m.Payload)
				}
			}
			if s := routeStatus(t, e.b, "r"); s.State != bridge.StateConnected || s.Delivered != 6 || s.LagMessages != 0 {
				t.Fatalf("resumed: %+v", s)
			}
		})
	}
}

// TestPauseIngress: a paused ingress route stops its receiver; resumed, it
// receives again.
func TestPauseIngress(t *testing.T) {
	f := &fake{in: make(chan bridge.Message)}
	e := start(t, t.TempDir(), f, routes(t, `
- name: in
  direction: in
  from: {fake: {}}
  to: {topic: "devices/x/commands"}
`))
	receivers := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.receiving
	}
	bridgetest.Eventually(t, wait, "the receiver runs", func() bool { return receivers() == 1 })
	if err := e.b.Pause("in"); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, wait, "the receiver stops", func() bool { return receivers() == 0 })
	if s := routeStatus(t, e.b, "in"); s.State != bridge.StatePaused {
		t.Fatalf("paused ingress route: %+v", s)
	}
	if err := e.b.Resume("in"); err != nil {
		t.Fatal(err)
	}
	f.in <- bridge.Message{Payload: []byte("after")}
	// Counted once Publish returned: after the broker saw the message.
	bridgetest.Eventually(t, wait, "published after resume", func() bool {
		return len(e.pub.Messages()) == 1 && routeStatus(t, e.b, "in").Delivered == 1
	})
	if s := routeStatus(t, e.b, "in"); s.State != bridge.StateConnected || s.Delivered != 1 {
		t.Fatalf("resumed ingress route: %+v", s)
	}
}

// TestPauseUnknownRoute: only configured routes can be paused.
func TestPauseUnknownRoute(t *testing.T) {
	e := start(t, t.TempDir(), &fake{}, routes(t, fastRoute))
	if err := e.b.Pause("nope"); !errors.Is(err, bridge.ErrUnknownRoute) {
		t.Errorf("Pause = %v, want ErrUnknownRoute", err)
	}
	if err := e.b.Resume("nope"); !errors.Is(err, bridge.ErrUnknownRoute) {
		t.Errorf("Resume = %v, want ErrUnknownRoute", err)
	}
}

// TestStatusStates: a backend that refuses while up is backing off, one
// that is unavailable is failing, each with the reason.
func TestStatusStates(t *testing.T) {
	refused := errors.New("refused this one")
	for _, tc := range []struct {
		name  string
		f     *fake
		state string
	}{
		{"backing off", &fake{fail: func(bridge.Message, int) error { return refused }}, bridge.StateBackingOff},
		{"failing", &fake{fail: func(bridge.Message, int) error { return bridge.Unavailable(refused) }}, bridge.StateFailing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, t.TempDir(), tc.f, routes(t, `
- name: r
  from: "devices/+/telemetry"
  to: {fake: {}}
  backoff: {initial: 1s, max: 2s}
  max_attempts: 100
`))
			offerN(t, e.b, 1, func(int) string { return "devices/d/telemetry" })
			bridgetest.Eventually(t, wait, tc.state, func() bool {
				s := routeStatus(t, e.b, "r")
				return s.State == tc.state && s.Reason != "" && s.Failed > 0 && s.LagMessages == 1
			})
		})
	}
}
