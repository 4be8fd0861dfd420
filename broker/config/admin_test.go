package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/broker/config"
)

// TestAdminTokenRequiredBeyondLoopback: an admin endpoint reachable from
// other hosts needs a token, unless explicitly allowed without.
func TestAdminTokenRequiredBeyondLoopback(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		env        []string
		wantErr    string
	}{
		{"loopback without token", "admin: {addr: \"127.0.0.1:8080\"}\n", nil, ""},
		{"localhost without token", "admin: {addr: \"localhost:8080\"}\n", nil, ""},
		{"ipv6 loopback without token", "admin: {addr: \"[::1]:8080\"}\n", nil, ""},
		{"disabled", "admin: {addr: \"\"}\n", nil, ""},
		{"all interfaces without token", "admin: {addr: \":8080\"}\n", nil, `admin.token: required because admin.addr ":8080" is reachable from other hosts`},
		{"wildcard without token", "admin: {addr: \"0.0.0.0:8080\"}\n", nil, "admin.token: required"},
		{"host name without token", "admin: {addr: \"ferry.example:8080\"}\n", nil, "admin.token: required"},
		{"env address without token", "", []string{"FERRY_ADMIN_ADDR=0.0.0.0:8080"}, "admin.token: required"},
		{"all interfaces with token", "admin: {addr: \":8080\", token: s3cret}\n", nil, ""},
		{"token from env", "admin: {addr: \":8080\"}\n", []string{"FERRY_ADMIN_TOKEN=s3cret"}, ""},
		{"explicitly unauthenticated", "admin: {addr: \":8080\", allow_unauthenticated: true}\n", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.Load(config.Source{Path: path, Env: tc.env})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
