package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// fakeAdmin answers the dead-letter API the way the broker does, and
// records what it was asked.
func fakeAdmin(t *testing.T) (addr string, last func() string) {
	t.Helper()
	var mu sync.Mutex
	var reqs []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		switch {
		case r.Method == http.MethodGet:
			_, _ = fmt.Fprint(w, `[{"seq":7,"id":"r-7","topic":"dev/x","created":"2026-12-03T09:00:00Z","reason":"400 Bad Request"}]`)
		default:
			var req struct{ Seqs []uint64 }
			_ = json.NewDecoder(r.Body).Decode(&req)
			n := len(req.Seqs)
			if n == 0 {
				n = 3
			}
			key := "replayed"
			if r.Method == http.MethodDelete {
				key = "purged"
			}
			_, _ = fmt.Fprintf(w, `{%q:%d}`, key, n)
		}
	}))
	t.Cleanup(hs.Close)
	return strings.TrimPrefix(hs.URL, "http://"), func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(reqs) == 0 {
			return ""
		}
		return reqs[len(reqs)-1]
	}
}

func TestDLQReadsTheConfigFile(t *testing.T) {
	addr, last := fakeAdmin(t)
	cfg := writeConfig(t, fmt.Sprintf("admin:\n  addr: %q\n  token: s3cret\n", addr))
	for _, tc := range []struct {
		name    string
		args    []string
		env     []string
		out     string
		request string
	}{
		{"list, -c first", []string{"dlq", "-c", cfg, "list", "hooks"}, nil,
			"7    r-7  dev/x  2026-12-03T09:00:00Z  400 Bad Request", "GET /api/v1/bridges/hooks/deadletters Bearer s3cret"},
		{"replay all, -c last", []string{"dlq", "replay", "hooks", "-c", cfg}, nil,
			"replayed 3 dead letters of route hooks", "POST /api/v1/bridges/hooks/deadletters/replay Bearer s3cret"},
		{"replay one", []string{"dlq", "replay", "-c", cfg, "hooks", "7"}, nil,
			"replayed 1 dead letter of route hooks", "POST /api/v1/bridges/hooks/deadletters/replay Bearer s3cret"},
		{"purge all", []string{"dlq", "-c", cfg, "purge", "hooks", "--all"}, nil,
			"purged 3 dead letters of route hooks", "DELETE /api/v1/bridges/hooks/deadletters Bearer s3cret"},
		{"purge one", []string{"dlq", "-c", cfg, "purge", "hooks", "7"}, nil,
			"purged 1 dead letter of route hooks", "DELETE /api/v1/bridges/hooks/deadletters Bearer s3cret"},
		{"the variable over the file", []string{"dlq", "-c", cfg, "list", "hooks"}, []string{"FERRY_ADMIN_TOKEN=other"},
			"dev/x", "GET /api/v1/bridges/hooks/deadletters Bearer other"},
		{"the flag over the file", []string{"dlq", "-c", cfg, "--token", "flag", "list", "hooks"}, nil,
			"dev/x", "GET /api/v1/bridges/hooks/deadletters Bearer flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "", tc.env, tc.args...)
			if code != 0 || !strings.Contains(out, tc.out) {
				t.Fatalf("exit %d, stdout %q (want %q), stderr %q", code, out, tc.out, errs)
			}
			if got := last(); got != tc.request {
				t.Errorf("request %q, want %q", got, tc.request)
			}
		})
	}
}

func TestDLQUsageErrors(t *testing.T) {
	disabled := writeConfig(t, "admin:\n  addr: \"\"\n")
	bad := writeConfig(t, "admin:\n  addr: nowhere\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"admin disabled in the file", []string{"dlq", "-c", disabled, "list", "r"}, "admin endpoint is disabled"},
		{"bad file", []string{"dlq", "-c", bad, "list", "r"}, "admin.addr"},
		{"no route", []string{"dlq", "list"}, "usage: ferry dlq"},
		{"bad sequence", []string{"dlq", "replay", "r", "x1", "--admin-addr", "127.0.0.1:1"}, `"x1" is not a sequence number`},
		{"purge without seqs or --all", []string{"dlq", "purge", "r", "--admin-addr", "127.0.0.1:1"}, "give the seqs to delete, or --all"},
		{"purge with seqs and --all", []string{"dlq", "purge", "r", "7", "--all", "--admin-addr", "127.0.0.1:1"}, "give the seqs to delete, or --all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runCmd(t, "", nil, tc.args...)
			if code != exitUsage || !strings.Contains(errs, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errs, exitUsage, tc.want)
			}
		})
	}
}
