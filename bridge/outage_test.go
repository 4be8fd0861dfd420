package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
)

// outageRoute retries fast and gives up after 3 attempts: its whole retry
// schedule is a few milliseconds, so an outage of 300 ms is far beyond it.
const outageRoute = `
- name: r
  from: "devices/+/telemetry"
  to: {fake: {}}
  backoff: {initial: 1ms, max: 5ms}
  max_attempts: 3
`

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

// TestOutageDeadLettersNothing: while the backend is unavailable (however
// the connector says so) the route holds its messages; afterwards every
// one is delivered, in order, none dead-lettered, and the outage is logged
// once on the way down and once on the way back.
func TestOutageDeadLettersNothing(t *testing.T) {
	cases := []struct {
		name string
		// deliverErr is what Deliver returns during the outage.
		deliverErr error
		// probeDown makes Probe fail during the outage too.
		probeDown bool
		extra     string
	}{
		{name: "marked unavailable", deliverErr: bridge.Unavailable(errors.New("broker shutting down")), probeDown: true},
		{name: "connection refused, no probe failure", deliverErr: fmt.Errorf("redis: dial: %w", errRefused)},
		{name: "unknown error while the probe fails", deliverErr: errors.New("something odd"), probeDown: true},
		{name: "per-key lanes", deliverErr: bridge.Unavailable(errors.New("not leader")), probeDown: true,
			extra: "  ordering: per-key\n  key: \"{{.Segment 1}}\"\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bridgetest.NoLeaks(t)
			var down atomic.Bool
			f := &fake{
				fail: func(bridge.Message, int) error {
					if down.Load() {
						return tc.deliverErr
					}
					return nil
				},
				probe: func() error {
					if tc.probeDown && down.Load() {
						return bridge.Unavailable(errRefused)
					}
					return nil
				},
			}
			logs := &bridgetest.Logs{}
			e := start(t, t.TempDir(), f, routes(t, outageRoute+tc.extra), func(d *bridge.Deps) { d.Logger = logs.Logger() })
			topic := func(i int) string { return fmt.Sprintf("devices/d%d/telemetry", i%3) }
			offer := func(from, to int) {
				for i := from; i < to; i++ {
					if err := e.b.Offer(bridge.Message{Topic: topic(i), Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
						t.Fatalf("offer %d: %v", i, err)
					}
				}
			}
			offer(0, 10)
			bridgetest.Eventually(t, wait, "10 delivered before the outage", func() bool { return len(f.delivered()) == 10 })

			down.Store(true)
			began := time.Now()
			offer(10, 60)
			// Far beyond the retry schedule: 100 times the longest backoff.
			bridgetest.Eventually(t, wait, "outage of 500ms", func() bool { return time.Since(began) > 500*time.Millisecond })
			if dl, _ := e.b.DeadLetters("r", 0, 100); len(dl) != 0 {
				t.Fatalf("%d dead letters during the outage, first %q: %s", len(dl), dl[0].Payload, dl[0].Reason)
			}
			if up := e.metric(t, "ferry_bridge_backend_up", "route", "r"); up != 0 {
				t.Fatalf("backend_up = %v during the outage", up)
			}
			if st := e.b.States()[0]; st.Up || st.Reason == "" {
				t.Fatalf("state during the outage = %+v", st)
			}
			offer(60, 70)
			down.Store(false)

			bridgetest.Eventually(t, wait, "all 70 delivered", func() bool { return len(f.delivered()) >= 70 })
			checkKeyOrder(t, f.delivered(), 70, topic)
			if dl, _ := e.b.DeadLetters("r", 0, 100); len(dl) != 0 {
				t.Fatalf("%d dead letters, first %+v", len(dl), dl[0])
			}
			bridgetest.Eventually(t, wait, "back line", func() bool { return len(logs.Lines(slog.LevelInfo, "back after")) == 1 })
			if got := logs.Lines(slog.LevelWarn, ""); len(got) != 1 || !containsAll(got[0], "WARN route r: fake unavailable (", "); holding ") {
				t.Fatalf("warnings = %q\nall:\n%s", got, logs.All())
			}
			if got := logs.Lines(slog.LevelInfo, "back after"); !containsAll(got[0], "INFO route r: fake back after ", "; delivered ") {
				t.Fatalf("back line = %q", got[0])
			}
			for name, want := range map[string]float64{"ferry_bridge_backend_up": 1, "ferry_bridge_outages_total": 1,
				"ferry_bridge_dead_lettered_total": 0, "ferry_bridge_backend_down_seconds": 0} {
				if got := e.metric(t, name, "route", "r"); got != want {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
			if st := e.b.States()[0]; !st.Up || st.String() != "up" {
				t.Fatalf("state after = %+v", st)
			}
		})
	}
}

// checkKeyOrder checks that every payload 0..n-1 arrived and that the
// first occurrences of each key's messages are in order.
func checkKeyOrder(t *testing.T, got []bridge.Message, n int, topic func(int) string) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]int{}
	for _, m := range got {
		p := string(m.Payload)
		if seen[p] {
			continue
		}
		seen[p] = true
		var i int
		fmt.Sscan(p, &i)
		if prev, ok := last[m.Topic]; ok && i < prev {
			t.Fatalf("%s: %d after %d", m.Topic, i, prev)
		}
		last[m.Topic] = i
		if m.Topic != topic(i) {
			t.Fatalf("message %d on %s", i, m.Topic)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct messages delivered, want %d", len(seen), n)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// TestPoisonMessageWhileBackendUp: a message that keeps failing while the
// backend answers probes and takes the others is dead-lettered after
// max_attempts, alone, whether the error is permanent or of unknown kind.
func TestPoisonMessageWhileBackendUp(t *testing.T) {
	for _, poison := range []error{bridge.Permanent(errors.New("WRONGTYPE")), errors.New("odd refusal")} {
		t.Run(poison.Error(), func(t *testing.T) {
			f := &fake{fail: func(m bridge.Message, _ int) error {
				if string(m.Payload) == "3" {
					return poison
				}
				return nil
			}}
			e := start(t, t.TempDir(), f, routes(t, outageRoute))
			offerN(t, e.b, 8, func(int) string { return "devices/d1/telemetry" })
			bridgetest.Eventually(t, wait, "7 delivered", func() bool {
				dl, _ := e.b.DeadLetters("r", 0, 10)
				return len(dl) == 1 && len(f.delivered()) >= 7
			})
			dl, _ := e.b.DeadLetters("r", 0, 10)
			if string(dl[0].Payload) != "3" || dl[0].Reason != poison.Error() {
				t.Fatalf("dead letter = %q: %s", dl[0].Payload, dl[0].Reason)
			}
			checkKeyOrder(t, f.delivered(), 7, func(int) string { return "devices/d1/telemetry" })
			if got := e.metric(t, "ferry_bridge_outages_total", "route", "r"); got != 0 {
				t.Fatalf("outages_total = %v", got)
			}
		})
	}
}

// TestIngressSourceOutage: a receiver that keeps failing is restarted as
// long as it takes, with one line down and one back.
func TestIngressSourceOutage(t *testing.T) {
	bridgetest.NoLeaks(t)
	var down atomic.Bool
	down.Store(true)
	f := &fake{in: make(chan bridge.Message),
		recvFail: func() error {
			if down.Load() {
				return fmt.Errorf("fake: subscribe: %w", errRefused)
			}
			return nil
		},
		probe: func() error {
			if down.Load() {
				return errRefused
			}
			return nil
		}}
	logs := &bridgetest.Logs{}
	e := start(t, t.TempDir(), f, routes(t, `
- name: commands
  direction: in
  from: {fake: {}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
  backoff: {initial: 1ms, max: 5ms}
  max_attempts: 1
`), func(d *bridge.Deps) { d.Logger = logs.Logger() })
	bridgetest.Eventually(t, wait, "many probes", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.probes > 50
	})
	if e.metric(t, "ferry_bridge_backend_up", "route", "commands") != 0 {
		t.Fatal("route up during the outage")
	}
	down.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	select {
	case f.in <- bridge.Message{Subject: "commands.d7", Payload: []byte("reboot")}:
	case <-ctx.Done():
		t.Fatal("receiver not restarted")
	}
	bridgetest.Eventually(t, wait, "published", func() bool { return len(e.pub.Messages()) == 1 })
	bridgetest.Eventually(t, wait, "back line", func() bool { return len(logs.Lines(slog.LevelInfo, "back after")) == 1 })
	if got := logs.Lines(slog.LevelWarn, ""); len(got) != 1 || !containsAll(got[0], "route commands: fake unavailable") {
		t.Fatalf("warnings = %q", got)
	}
}
