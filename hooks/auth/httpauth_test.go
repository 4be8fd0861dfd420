package auth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// authServer answers 200 for password "good", 403 for "bad", 500 for
// "boom", and hangs until the request is cancelled for "slow".
func authServer(t *testing.T) (*httptest.Server, *atomic.Int64, chan httpRequest) {
	t.Helper()
	var calls atomic.Int64
	seen := make(chan httpRequest, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var req httpRequest
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		seen <- req
		switch req.Password {
		case "good":
			w.WriteHeader(http.StatusNoContent)
		case "bad":
			w.WriteHeader(http.StatusForbidden)
		case "redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		case "slow":
			<-r.Context().Done()
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls, seen
}

func TestHTTPCallout(t *testing.T) {
	srv, calls, seen := authServer(t)
	h, err := New(Config{HTTP: HTTPConfig{URL: srv.URL, Timeout: 200 * time.Millisecond}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	conn := func(id, user, pass string) bool {
		cl := &mqtt.Client{ID: id}
		cl.Net.Remote = "192.0.2.1:5000"
		return h.OnConnectAuthenticate(cl, packets.Packet{Connect: packets.ConnectParams{
			Username: []byte(user), Password: []byte(pass), UsernameFlag: true, PasswordFlag: true}})
	}
	tests := []struct {
		name, id, pass string
		want           bool
		wantCalls      int64 // calls to the endpoint after this step
	}{
		{"2xx allows", "c1", "good", true, 1},
		{"cached allow", "c1", "good", true, 1},
		{"other client id is another key", "c2", "good", true, 2},
		{"4xx denies", "c1", "bad", false, 3},
		{"cached deny", "c1", "bad", false, 3},
		{"5xx denies", "c1", "boom", false, 4},
		{"5xx is not cached", "c1", "boom", false, 5},
		{"redirect denies", "c1", "redirect", false, 6},
		{"timeout denies", "c1", "slow", false, 7},
	}
	for _, tt := range tests {
		if got := conn(tt.id, "alice", tt.pass); got != tt.want {
			t.Errorf("%s: allowed = %v, want %v", tt.name, got, tt.want)
		}
		if got := calls.Load(); got != tt.wantCalls {
			t.Errorf("%s: %d calls, want %d", tt.name, got, tt.wantCalls)
		}
	}
	first := <-seen
	want := httpRequest{ClientID: "c1", Username: "alice", Password: "good", RemoteAddr: "192.0.2.1:5000"}
	if first != want {
		t.Errorf("request body %+v, want %+v", first, want)
	}
	if st := h.Stats(); st.HTTP.Success != 3 || st.HTTP.Failure != 6 {
		t.Errorf("http stats %+v", st.HTTP)
	}
}

func TestHTTPCalloutUnreachableFailsClosed(t *testing.T) {
	srv, _, _ := authServer(t)
	url := srv.URL
	srv.Close()
	a := newHTTPAuth(HTTPConfig{URL: url, Timeout: time.Second, CacheTTL: time.Minute, CacheSize: 10})
	ok, err := a.check(context.Background(), httpRequest{ClientID: "c", Password: "good"})
	if ok || err == nil {
		t.Fatalf("check = %v, %v; want false and an error", ok, err)
	}
	if a.cache.len() != 0 {
		t.Error("an error was cached")
	}
}

func TestTTLCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newTTLCache(2, 10*time.Second, func() time.Time { return now })
	k := func(s string) [32]byte { return cacheKey(s, "u", "p") }
	c.put(k("a"), true)
	c.put(k("b"), false)
	if v, ok := c.get(k("a")); !ok || !v { // a is now most recent
		t.Fatal("a missing")
	}
	c.put(k("c"), true) // evicts b, the least recently used
	if _, ok := c.get(k("b")); ok {
		t.Error("b not evicted")
	}
	if v, ok := c.get(k("c")); !ok || !v {
		t.Error("c missing")
	}
	now = now.Add(10 * time.Second)
	if _, ok := c.get(k("a")); ok {
		t.Error("a not expired")
	}
	if c.len() != 1 {
		t.Errorf("len %d, want 1", c.len())
	}
	if cacheKey("ab", "c", "") == cacheKey("a", "bc", "") {
		t.Error("cache key is ambiguous")
	}
}
