package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/outbox"
)

const wait = 10 * time.Second

// env is one bridge on a real outbox with a fake connector.
type env struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	f   *fake
	reg *prometheus.Registry
	pub *bridgetest.Publisher
}

func routes(t *testing.T, y string) []bridge.RouteConfig {
	t.Helper()
	var rs []bridge.RouteConfig
	if err := yaml.Unmarshal([]byte(y), &rs); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return rs
}

// start builds and starts a bridge over routes on an outbox in dir; both
// are closed at cleanup. opts adjust its Deps.
func start(t *testing.T, dir string, f *fake, rs []bridge.RouteConfig, opts ...func(*bridge.Deps)) *env {
	t.Helper()
	ob, err := outbox.Open(outbox.Config{Dir: dir, Sync: outbox.SyncNone}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{ob: ob, f: f, reg: prometheus.NewRegistry(), pub: &bridgetest.Publisher{}}
	deps := bridge.Deps{Outbox: ob, Publisher: e.pub, Registerer: e.reg,
		Factories: map[string]bridge.Factory{"fake": f.factory()}}
	for _, o := range opts {
		o(&deps)
	}
	e.b, err = bridge.New(rs, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close(t) })
	return e
}

func (e *env) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.b.Close(ctx); err != nil {
		t.Error(err)
	}
	if err := e.ob.Close(); err != nil {
		t.Error(err)
	}
}

func (e *env) metric(t *testing.T, name string, labels ...string) float64 {
	return bridgetest.Metric(t, e.reg, name, labels...)
}

func offerN(t *testing.T, b *bridge.Bridge, n int, topic func(i int) string) {
	t.Helper()
	for i := range n {
		if err := b.Offer(bridge.Message{Topic: topic(i), Payload: []byte(fmt.Sprint(i)), QoS: 1, ClientID: "c"}); err != nil {
			t.Fatalf("offer %d: %v", i, err)
		}
	}
}

const fastRoute = `
- name: r
  from: "devices/+/telemetry"
  to: {fake: {}}
  backoff: {initial: 1ms, max: 5ms}
`

func TestDeliverInOrder(t *testing.T) {
	bridgetest.NoLeaks(t)
	e := start(t, t.TempDir(), &fake{}, routes(t, fastRoute))
	offerN(t, e.b, 500, func(int) string { return "devices/d1/telemetry" })
	if err := e.b.Offer(bridge.Message{Topic: "other/d1/telemetry"}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, wait, "500 delivered", func() bool { return len(e.f.delivered()) == 500 })
	for i, m := range e.f.delivered() {
		if string(m.Payload) != fmt.Sprint(i) || m.ID != fmt.Sprintf("r-%d", i+1) || m.Route != "r" {
			t.Fatalf("message %d = %q id %q", i, m.Payload, m.ID)
		}
	}
	bridgetest.Eventually(t, wait, "outbox empty", func() bool { return e.ob.Usage("r").Messages == 0 })
	if got := e.metric(t, "ferry_bridge_delivered_total", "route", "r"); got != 500 {
		t.Fatalf("delivered_total = %v", got)
	}
	if got := e.metric(t, "ferry_bridge_delivery_latency_seconds", "route", "r"); got != 500 {
		t.Fatalf("latency samples = %v", got)
	}
}

func TestRetryThenDeliver(t *testing.T) {
	f := &fake{fail: func(_ bridge.Message, attempt int) error {
		if attempt <= 3 {
			return errTransient
		}
		return nil
	}}
	e := start(t, t.TempDir(), f, routes(t, fastRoute))
	offerN(t, e.b, 10, func(int) string { return "devices/d1/telemetry" })
	bridgetest.Eventually(t, wait, "10 delivered", func() bool { return len(f.delivered()) == 10 })
	if got := e.metric(t, "ferry_bridge_retried_total", "route", "r"); got != 3 {
		t.Fatalf("retried_total = %v, want 3", got)
	}
	if dl, _ := e.b.DeadLetters("r", 0, 10); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

func TestPermanentDeadLetterAndReplay(t *testing.T) {
	f := &fake{fail: func(m bridge.Message, _ int) error {
		if string(m.Payload) == "3" {
			return bridge.Permanent(errors.New("http 400: bad payload"))
		}
		return nil
	}}
	e := start(t, t.TempDir(), f, routes(t, fastRoute))
	offerN(t, e.b, 6, func(int) string { return "devices/d1/telemetry" })
	bridgetest.Eventually(t, wait, "5 delivered", func() bool { return len(f.delivered()) == 5 })
	var dl []bridge.DeadLetter
	bridgetest.Eventually(t, wait, "1 dead letter", func() bool {
		dl, _ = e.b.DeadLetters("r", 0, 10)
		return len(dl) == 1
	})
	if dl[0].Reason != "http 400: bad payload" || string(dl[0].Payload) != "3" || dl[0].ID != "r-4" {
		t.Fatalf("dead letter = %+v", dl[0])
	}
	if got := e.metric(t, "ferry_bridge_dead_lettered_total", "route", "r"); got != 1 {
		t.Fatalf("dead_lettered_total = %v", got)
	}
	f.set(func(f *fake) { f.fail = nil })
	n, err := e.b.Replay(context.Background(), "r", nil)
	if err != nil || n != 1 {
		t.Fatalf("replay = %d, %v", n, err)
	}
	bridgetest.Eventually(t, wait, "replayed delivered", func() bool { return len(f.delivered()) == 6 })
	if m := f.delivered()[5]; string(m.Payload) != "3" || m.ID != "r-4" {
		t.Fatalf("replayed = %q id %q", m.Payload, m.ID)
	}
	if _, err := e.b.Replay(context.Background(), "nope", nil); !errors.Is(err, bridge.ErrUnknownRoute) {
		t.Fatalf("replay unknown route: %v", err)
	}
}

func TestMaxAttempts(t *testing.T) {
	f := &fake{fail: func(bridge.Message, int) error { return errTransient }}
	rs := routes(t, fastRoute)
	rs[0].MaxAttempts = 3
	e := start(t, t.TempDir(), f, rs)
	offerN(t, e.b, 1, func(int) string { return "devices/d1/telemetry" })
	bridgetest.Eventually(t, wait, "dead-lettered", func() bool {
		dl, _ := e.b.DeadLetters("r", 0, 10)
		return len(dl) == 1 && dl[0].Attempts == 3 && dl[0].Reason == errTransient.Error()
	})
	if got := e.metric(t, "ferry_bridge_failed_total", "route", "r"); got != 3 {
		t.Fatalf("failed_total = %v", got)
	}
	if n, err := e.b.PurgeDeadLetters(context.Background(), "r", nil); err != nil || n != 1 {
		t.Fatalf("purge = %d, %v", n, err)
	}
	if dl, _ := e.b.DeadLetters("r", 0, 10); len(dl) != 0 {
		t.Fatalf("dead letters after purge: %+v", dl)
	}
}

// blocked returns a gate that holds every delivery until release is closed.
func blocked(release chan struct{}) func(context.Context, bridge.Message) error {
	return func(ctx context.Context, _ bridge.Message) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func TestOutboxFull(t *testing.T) {
	for _, tc := range []struct {
		policy      bridge.FullPolicy
		wantRefused bool
	}{
		{bridge.Block, true},
		{bridge.DropOldest, false},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			release := make(chan struct{})
			f := &fake{gate: blocked(release)}
			rs := routes(t, fastRoute)
			rs[0].MaxBytes, rs[0].WhenFull = 4096, tc.policy
			e := start(t, t.TempDir(), f, rs)
			payload := strings.Repeat("x", 200)
			refused := 0
			for range 100 {
				err := e.b.Offer(bridge.Message{Topic: "devices/d/telemetry", Payload: []byte(payload)})
				if errors.Is(err, bridge.ErrOutboxFull) {
					refused++
				} else if err != nil {
					t.Fatal(err)
				}
			}
			if (refused > 0) != tc.wantRefused {
				t.Fatalf("refused %d offers", refused)
			}
			if u := e.ob.Usage("r"); u.Bytes > 4096 {
				t.Fatalf("outbox holds %d bytes, bound 4096", u.Bytes)
			}
			dropped := e.metric(t, "ferry_bridge_dropped_total", "route", "r", "reason", "full")
			if tc.wantRefused && (dropped != 0 || e.metric(t, "ferry_bridge_refused_total", "route", "r") != float64(refused)) {
				t.Fatalf("dropped %v, refused metric %v, refused %d", dropped, e.metric(t, "ferry_bridge_refused_total", "route", "r"), refused)
			}
			if !tc.wantRefused && dropped == 0 {
				t.Fatal("drop-oldest dropped nothing")
			}
			close(release)
		})
	}
}

func TestMaxAgeExpires(t *testing.T) {
	release := make(chan struct{})
	f := &fake{gate: blocked(release)}
	rs := routes(t, fastRoute)
	rs[0].MaxAge, rs[0].BatchSize = 20*time.Millisecond, 1
	e := start(t, t.TempDir(), f, rs)
	offerN(t, e.b, 5, func(int) string { return "devices/d/telemetry" })
	// The first message is held by the gate while the others age.
	bridgetest.Eventually(t, wait, "messages aged", func() bool {
		old, _ := e.ob.Oldest("r")
		return time.Since(old) > 50*time.Millisecond
	})
	close(release)
	bridgetest.Eventually(t, wait, "expired counted", func() bool {
		return e.metric(t, "ferry_bridge_dropped_total", "route", "r", "reason", "expired") == 4
	})
	if n := len(f.delivered()); n != 1 {
		t.Fatalf("delivered %d, want 1 (the rest expired)", n)
	}
}

func TestPerKeyOrdering(t *testing.T) {
	release := make(chan struct{})
	f := &fake{gate: func(ctx context.Context, m bridge.Message) error {
		if strings.HasPrefix(m.Topic, "devices/slow/") {
			return blocked(release)(ctx, m)
		}
		return nil
	}}
	e := start(t, t.TempDir(), f, routes(t, fastRoute+`  ordering: per-key
  key: "{{.Segment 1}}"
  batch_size: 100
`))
	for i := range 20 {
		dev := []string{"slow", "fast"}[i%2]
		if err := e.b.Offer(bridge.Message{Topic: "devices/" + dev + "/telemetry", Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	// "fast" must not wait for "slow". Offers may have split across two
	// batches; the first batch holds at least one fast message.
	bridgetest.Eventually(t, wait, "fast key delivered while slow key blocked", func() bool { return len(f.delivered()) > 0 })
	for _, m := range f.delivered() {
		if !strings.Contains(m.Topic, "fast") {
			t.Fatalf("slow message delivered before release: %s", m.Topic)
		}
	}
	close(release)
	bridgetest.Eventually(t, wait, "all delivered", func() bool { return len(f.delivered()) == 20 })
	last := map[string]int{}
	for _, m := range f.delivered() {
		var n int
		fmt.Sscan(string(m.Payload), &n)
		if p, ok := last[m.Topic]; ok && n < p {
			t.Fatalf("key %s out of order: %d after %d", m.Topic, n, p)
		}
		last[m.Topic] = n
	}
}

func TestAtMostOnce(t *testing.T) {
	f := &fake{}
	e := start(t, t.TempDir(), f, routes(t, fastRoute+"  delivery: at-most-once\n"))
	offerN(t, e.b, 100, func(int) string { return "devices/d/telemetry" })
	bridgetest.Eventually(t, wait, "100 delivered", func() bool { return len(f.delivered()) == 100 })
	if u := e.ob.Usage("r"); u.Messages != 0 {
		t.Fatalf("at-most-once used the outbox: %+v", u)
	}
}

// TestRestartDelivers: messages accepted while the backend was down stay in
// the outbox across a bridge and outbox close, and the next bridge on the
// same directory delivers them.
func TestRestartDelivers(t *testing.T) {
	dir := t.TempDir()
	down := &fake{fail: func(bridge.Message, int) error { return errTransient }}
	e := start(t, dir, down, routes(t, fastRoute))
	offerN(t, e.b, 50, func(int) string { return "devices/d/telemetry" })
	e.close(t)

	up := &fake{}
	e2 := start(t, dir, up, routes(t, fastRoute))
	bridgetest.Eventually(t, wait, "50 delivered after restart", func() bool { return len(up.delivered()) == 50 })
	for i, m := range up.delivered() {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d = %q", i, m.Payload)
		}
	}
	// Ids continue: no reuse after restart.
	offerN(t, e2.b, 1, func(int) string { return "devices/d/telemetry" })
	bridgetest.Eventually(t, wait, "51st", func() bool { return len(up.delivered()) == 51 })
	if id := up.delivered()[50].ID; id != "r-51" {
		t.Fatalf("id after restart = %s", id)
	}
}

func TestIngress(t *testing.T) {
	f := &fake{in: make(chan bridge.Message)}
	e := start(t, t.TempDir(), f, routes(t, `
- name: commands
  direction: in
  from: {fake: {}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`))
	f.in <- bridge.Message{Subject: "commands.d7", Payload: []byte("reboot"), ID: "7"}
	f.in <- bridge.Message{Subject: "commands", Payload: []byte("no device")}
	bridgetest.Eventually(t, wait, "ingress handled", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.handleErr) == 2
	})
	got := e.pub.Messages()
	if len(got) != 1 || got[0].Topic != "devices/d7/commands" || got[0].QoS != 1 || string(got[0].Payload) != "reboot" ||
		got[0].UserProperties[0] != (bridge.Property{Key: bridge.IDProperty, Value: "7"}) {
		t.Fatalf("published %+v", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handleErr[0] != nil || !bridge.IsPermanent(f.handleErr[1]) {
		t.Fatalf("handler errors = %v", f.handleErr)
	}
}

func TestCloseStopsWorkersAndConnectors(t *testing.T) {
	bridgetest.NoLeaks(t)
	release := make(chan struct{})
	defer close(release)
	f := &fake{gate: blocked(release), in: make(chan bridge.Message)}
	e := start(t, t.TempDir(), f, routes(t, fastRoute+`
- name: in
  direction: in
  from: {fake: {}}
  to: {topic: "x"}
`))
	offerN(t, e.b, 3, func(int) string { return "devices/d/telemetry" })
	// A delivery hangs; Close must cancel it once its ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Offer(bridge.Message{Topic: "devices/d/telemetry"}); !errors.Is(err, bridge.ErrClosed) {
		t.Fatalf("offer after close: %v", err)
	}
	if err := e.b.Close(ctx); err != nil {
		t.Fatalf("second close: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed != 2 { // one connector instance serves both routes here
		t.Fatalf("connector closed %d times", f.closed)
	}
	if u := e.ob.Usage("r"); u.Messages != 3 {
		t.Fatalf("undelivered messages left the outbox: %+v", u)
	}
}

func BenchmarkOffer(b *testing.B) {
	ob, err := outbox.Open(outbox.Config{Dir: b.TempDir(), Sync: outbox.SyncAlways}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	var rs []bridge.RouteConfig
	for i := range 1000 {
		rs = append(rs, bridge.RouteConfig{Name: fmt.Sprint("r", i), From: bridge.Endpoint{Filters: []string{fmt.Sprintf("devices/%d/+/telemetry", i)}},
			To: bridge.Endpoint{Connector: "fake"}})
	}
	// Not started: offers stay in the outbox, so this measures the publish
	// path alone.
	f := &fake{}
	bg, err := bridge.New(rs, bridge.Deps{Outbox: ob, Factories: map[string]bridge.Factory{"fake": f.factory()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("no-match-1000-routes", func(b *testing.B) {
		m := bridge.Message{Topic: "other/1/x/telemetry", Payload: []byte("x"), QoS: 1}
		b.ReportAllocs()
		for b.Loop() {
			if err := bg.Offer(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("match-at-least-once-sync-always-parallel", func(b *testing.B) {
		m := bridge.Message{Topic: "devices/7/x/telemetry", Payload: make([]byte, 128), QoS: 1, ClientID: "c"}
		b.SetParallelism(32) // many publishers sharing fsyncs
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := bg.Offer(m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// TestStartFailureClosesStarted: when a connector fails to start, those
// already started are closed, the error names the route, and Close after
// it is safe.
func TestStartFailureClosesStarted(t *testing.T) {
	bridgetest.NoLeaks(t)
	ok, bad := &fake{}, &fake{startErr: errors.New("connection refused")}
	ob, err := outbox.Open(outbox.Config{Dir: t.TempDir(), Sync: outbox.SyncNone}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	b, err := bridge.New(routes(t, `
- {name: first, from: "a", to: {ok: {}}}
- {name: second, from: "b", to: {bad: {}}}
`), bridge.Deps{Outbox: ob, Factories: map[string]bridge.Factory{"ok": ok.factory(), "bad": bad.factory()}})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "route second: start fake: connection refused") {
		t.Fatalf("start error = %v", err)
	}
	if ok.closed != 1 || bad.closed != 1 {
		t.Fatalf("closed: started connector %d, failed one %d; want 1, 1", ok.closed, bad.closed)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}
