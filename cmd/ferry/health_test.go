package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testutil"
)

// TestHealth: `ferry health` exits 0 only when /readyz says ready, finds the
// endpoint the way `ferry dlq` does, and never hangs on a stuck endpoint.
func TestHealth(t *testing.T) {
	b := testutil.StartBroker(t)
	ready := strings.TrimPrefix(b.AdminURL, "http://")
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: storage: opening", http.StatusServiceUnavailable)
	}))
	t.Cleanup(notReady.Close)
	release := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	t.Cleanup(func() { close(release); stuck.Close() })
	nobody := testutil.FreeAddr(t)

	cfgFile := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(cfgFile, []byte("admin: {addr: \""+ready+"\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A wildcard admin address, as in the container, is probed on loopback.
	_, port, _ := strings.Cut(ready, ":")

	for _, tc := range []struct {
		name     string
		env      []string
		args     []string
		code     int
		out, err string
	}{
		{name: "bare address", args: []string{ready}, out: "ready"},
		{name: "full URL", args: []string{b.AdminURL + "/readyz"}, out: "ready"},
		{name: "FERRY_ADMIN_ADDR", env: []string{"FERRY_ADMIN_ADDR=" + ready}, out: "ready"},
		{name: "wildcard FERRY_ADMIN_ADDR", env: []string{"FERRY_ADMIN_ADDR=0.0.0.0:" + port}, out: "127.0.0.1:" + port + "/readyz: ready"},
		{name: "config file", args: []string{"-c", cfgFile}, out: "ready"},
		{name: "not ready", args: []string{notReady.URL + "/readyz"}, code: 1, err: "503 Service Unavailable: not ready: storage: opening"},
		{name: "nothing listening", args: []string{nobody}, code: 1, err: "connection refused"},
		{name: "stuck endpoint", args: []string{"--timeout", "200ms", stuck.URL}, code: 1, err: "deadline exceeded"},
		{name: "admin disabled", env: []string{"FERRY_ADMIN_ADDR="}, code: exitUsage, err: "admin endpoint is disabled"},
		{name: "two URLs", args: []string{ready, ready}, code: exitUsage, err: "one URL at most, got 2\nusage: ferry health"},
		{name: "zero timeout", args: []string{"--timeout", "0s", ready}, code: exitUsage, err: "--timeout 0s: must be positive"},
		{name: "missing config", args: []string{"-c", filepath.Join(t.TempDir(), "missing.yaml")}, code: exitUsage, err: "missing.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, out, errs := runCmd(t, "", tc.env, append([]string{"health"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.err) {
				t.Errorf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tc.code, out, tc.out, errs, tc.err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}
