package admin_test

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/ferrymq/ferry/broker/admin"
	"github.com/prometheus/client_golang/prometheus"
)

func TestTokenAndReadiness(t *testing.T) {
	var notReady atomic.Pointer[error]
	s := admin.New(admin.Config{Addr: "127.0.0.1:0", Token: "s3cret", Pprof: true},
		func() error {
			if e := notReady.Load(); e != nil {
				return *e
			}
			return nil
		}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Handle("POST /api/v1/thing", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("done")) }))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	base := "http://" + s.Addr()
	do := func(method, path, token string) int {
		req, _ := http.NewRequest(method, base+path, nil)
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
		name, method, path, token string
		want                      int
	}{
		{"healthz needs no token", "GET", "/healthz", "", 200},
		{"readyz needs no token", "GET", "/readyz", "", 200},
		{"metrics without token", "GET", "/metrics", "", 401},
		{"metrics with a wrong token", "GET", "/metrics", "nope", 401},
		{"metrics with the token", "GET", "/metrics", "s3cret", 200},
		{"pprof without token", "GET", "/debug/pprof/", "", 401},
		{"pprof with the token", "GET", "/debug/pprof/", "s3cret", 200},
		{"api without token", "POST", "/api/v1/thing", "", 401},
		{"api with the token", "POST", "/api/v1/thing", "s3cret", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := do(tc.method, tc.path, tc.token); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	e := errors.New("storage closed")
	notReady.Store(&e)
	if got := do("GET", "/readyz", ""); got != 503 {
		t.Fatalf("readyz while not ready: %d, want 503", got)
	}
}
