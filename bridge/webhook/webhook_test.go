package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/outbox"
	"github.com/ferrymq/ferry/bridge/webhook"
)

const (
	wait   = 20 * time.Second
	secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
)

// TestSignVector checks Sign against the Standard Webhooks reference
// example.
func TestSignVector(t *testing.T) {
	key, err := webhook.DecodeSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	got := webhook.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
}

// receiver is a webhook endpoint that verifies signatures and records the
// envelopes it accepted; status decides the answer per request.
type receiver struct {
	t      *testing.T
	key    []byte
	mu     sync.Mutex
	got    []envelope
	ids    []string
	reqs   atomic.Int64
	status func(body batchBody) int
}

type envelope struct {
	ID      string          `json:"id"`
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
	Enc     string          `json:"payload_encoding"`
}

type batchBody struct {
	Type string     `json:"type"`
	Data []envelope `json:"data"`
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.reqs.Add(1)
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	id, ts := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp")
	n, _ := strconv.ParseInt(ts, 10, 64)
	if sig := r.Header.Get("webhook-signature"); sig != webhook.Sign(rc.key, id, n, raw) || r.Method != http.MethodPost {
		rc.t.Errorf("bad signature %q or method %s", sig, r.Method)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var b batchBody
	if err := json.Unmarshal(raw, &b); err != nil || b.Type != "mqtt.messages" {
		rc.t.Errorf("body %s: %v", raw, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	code := http.StatusOK
	rc.mu.Lock()
	if rc.status != nil {
		code = rc.status(b)
	}
	if code < 300 {
		rc.got = append(rc.got, b.Data...)
		rc.ids = append(rc.ids, id)
	}
	rc.mu.Unlock()
	w.WriteHeader(code)
	fmt.Fprintf(w, "status %d", code)
}

func (rc *receiver) setStatus(fn func(batchBody) int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.status = fn
}

func (rc *receiver) accepted() []envelope {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]envelope(nil), rc.got...)
}

func newReceiver(t *testing.T) (*receiver, *httptest.Server) {
	key, _ := webhook.DecodeSecret(secret)
	rc := &receiver{t: t, key: key}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return rc, srv
}

type testBridge struct {
	b   *bridge.Bridge
	ob  *outbox.Outbox
	reg *prometheus.Registry
}

func startBridge(t *testing.T, url, extra string) *testBridge {
	t.Helper()
	y := fmt.Sprintf(`
- name: hook
  from: "devices/#"
  to: {webhook: {url: %q, secret: %q, %s}}
  backoff: {initial: 5ms, max: 50ms}
`, url, secret, extra)
	var rs []bridge.RouteConfig
	if err := yaml.Unmarshal([]byte(y), &rs); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(outbox.Config{Dir: t.TempDir(), Sync: outbox.SyncBatch}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBridge{ob: ob, reg: prometheus.NewRegistry()}
	tb.b, err = bridge.New(rs, bridge.Deps{Outbox: ob, Registerer: tb.reg, Factories: map[string]bridge.Factory{"webhook": webhook.New}})
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

func (tb *testBridge) offer(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := tb.b.Offer(bridge.Message{Topic: fmt.Sprintf("devices/d%d/telemetry", i%3), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i)), QoS: 1}); err != nil {
			t.Fatalf("offer %d: %v", i, err)
		}
	}
}

func (tb *testBridge) metric(t *testing.T, name string) float64 {
	return bridgetest.Metric(t, tb.reg, name, "route", "hook")
}

// checkInOrder asserts envelopes 0..n-1 were accepted exactly in order.
func checkInOrder(t *testing.T, got []envelope, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("accepted %d, want %d", len(got), n)
	}
	for i, e := range got {
		if string(e.Payload) != fmt.Sprintf(`{"n":%d}`, i) || e.ID != fmt.Sprint("hook-", i+1) || e.Enc != "json" {
			t.Fatalf("envelope %d = %+v", i, e)
		}
	}
}

func TestBatches(t *testing.T) {
	bridgetest.NoLeaks(t)
	rc, srv := newReceiver(t)
	tb := startBridge(t, srv.URL, "batch_size: 4, linger: 20ms")
	tb.offer(t, 0, 10)
	bridgetest.Eventually(t, wait, "10 accepted", func() bool { return len(rc.accepted()) == 10 })
	checkInOrder(t, rc.accepted(), 10)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.ids) < 3 || rc.ids[0] != "hook-1_hook-4" {
		t.Fatalf("webhook-ids %v: want batches of at most 4", rc.ids)
	}
}

// Test500ThenOK: the endpoint fails with 500 for a while during a stream
// of 2,000 messages, then recovers: everything is delivered, in order.
func Test500ThenOK(t *testing.T) {
	rc, srv := newReceiver(t)
	rc.setStatus(func(batchBody) int { return http.StatusInternalServerError })
	tb := startBridge(t, srv.URL, "batch_size: 50")
	tb.offer(t, 0, 1000)
	bridgetest.Eventually(t, wait, "retries while failing", func() bool { return tb.metric(t, "ferry_bridge_retried_total") >= 3 })
	tb.offer(t, 1000, 2000)
	rc.setStatus(nil)
	bridgetest.Eventually(t, wait, "2000 accepted", func() bool { return len(rc.accepted()) == 2000 })
	checkInOrder(t, rc.accepted(), 2000)
	if d, _ := tb.b.DeadLetters("hook", 0, 10); len(d) != 0 {
		t.Fatalf("dead letters: %v", d)
	}
}

// TestBackendDown: connection refused while the endpoint is down, delivered
// once it listens again on the same address.
func TestBackendDown(t *testing.T) {
	rc, srv := newReceiver(t)
	addr := srv.Listener.Addr().String()
	srv.Close()
	tb := startBridge(t, "http://"+addr, "batch_size: 100")
	tb.offer(t, 0, 300)
	bridgetest.Eventually(t, wait, "failures while down", func() bool { return tb.metric(t, "ferry_bridge_failed_total") >= 2 })
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken by someone else meanwhile: %v", addr, err)
	}
	srv2 := httptest.NewUnstartedServer(rc)
	srv2.Listener.Close()
	srv2.Listener = l
	srv2.Start()
	t.Cleanup(srv2.Close)
	bridgetest.Eventually(t, wait, "300 accepted", func() bool { return len(rc.accepted()) == 300 })
	checkInOrder(t, rc.accepted(), 300)
}

// Test400DeadLetterThenReplay: a 400 is permanent: the refused message is
// dead-lettered with the reason, the rest of its batch is delivered, and a
// replay delivers it once the endpoint accepts it.
func Test400DeadLetterThenReplay(t *testing.T) {
	rc, srv := newReceiver(t)
	rc.setStatus(func(b batchBody) int {
		for _, e := range b.Data {
			if string(e.Payload) == `{"n":2}` {
				return http.StatusBadRequest
			}
		}
		return http.StatusOK
	})
	tb := startBridge(t, srv.URL, "batch_size: 10, linger: 20ms")
	tb.offer(t, 0, 5)
	var dl []bridge.DeadLetter
	bridgetest.Eventually(t, wait, "dead letter", func() bool {
		dl, _ = tb.b.DeadLetters("hook", 0, 10)
		return len(dl) == 1
	})
	if dl[0].ID != "hook-3" || !strings.Contains(dl[0].Reason, "http 400: status 400") {
		t.Fatalf("dead letter %s: %q", dl[0].ID, dl[0].Reason)
	}
	bridgetest.Eventually(t, wait, "4 accepted", func() bool { return len(rc.accepted()) == 4 })
	if tb.metric(t, "ferry_bridge_dead_lettered_total") != 1 || tb.metric(t, "ferry_bridge_retried_total") != 0 {
		t.Fatalf("dead_lettered %v retried %v", tb.metric(t, "ferry_bridge_dead_lettered_total"), tb.metric(t, "ferry_bridge_retried_total"))
	}
	rc.setStatus(nil)
	if n, err := tb.b.Replay(context.Background(), "hook", []uint64{dl[0].Seq}); err != nil || n != 1 {
		t.Fatalf("replay = %d, %v", n, err)
	}
	bridgetest.Eventually(t, wait, "replayed accepted", func() bool { return len(rc.accepted()) == 5 })
	if last := rc.accepted()[4]; last.ID != "hook-3" {
		t.Fatalf("replayed id %s", last.ID)
	}
}

// TestHangTimeout: the endpoint hangs on the first request; the timeout
// ends it, the retry succeeds, and no goroutine is left behind.
func TestHangTimeout(t *testing.T) {
	bridgetest.NoLeaks(t)
	key, _ := webhook.DecodeSecret(secret)
	rc := &receiver{t: t, key: key}
	var hung atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hung.Add(1) == 1 {
			// Hang until the client gives up (the server notices a closed
			// connection only once the body was read) or the test ends.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		rc.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	tb := startBridge(t, srv.URL, "timeout: 100ms")
	tb.offer(t, 0, 3)
	bridgetest.Eventually(t, wait, "3 accepted after the timeout", func() bool { return len(rc.accepted()) == 3 })
	checkInOrder(t, rc.accepted(), 3)
	if tb.metric(t, "ferry_bridge_retried_total") < 1 {
		t.Fatal("no retry after the hang")
	}
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		want          string
	}{
		{"no url", `{}`, `url: "" is not an http(s) URL`},
		{"ftp url", `{url: "ftp://x"}`, "url:"},
		{"bad secret", `{url: "http://x", secret: "whsec_!!!"}`, "secret: not a whsec_<base64> secret"},
		{"both secrets", `{url: "http://x", secret: "whsec_AAAA", secret_file: /nonexistent}`, "secret_file: set secret or secret_file"},
		{"batch size", `{url: "http://x", batch_size: -1, unsigned: true}`, "batch_size: -1 is not in"},
		{"no secret", `{url: "http://x"}`, "secret: required to sign requests (or secret_file; or unsigned: true"},
		{"unsigned with a secret", `{url: "http://x", secret: "whsec_AAAA", unsigned: true}`, "unsigned: true contradicts the secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := bridge.NewSpec("r", bridge.Out, tc.section)
			if err != nil {
				t.Fatal(err)
			}
			_, err = webhook.New(spec, bridge.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(fmt.Sprint(err), "!!!") {
				t.Fatalf("error leaks the secret: %v", err)
			}
		})
	}
}
