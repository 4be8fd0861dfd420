package auth

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAllowedFor(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("user bridge\ntopic write devices/+/commands\npattern write clients/%c/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{ACLFile: acl, AllowAnonymous: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := NewIdentity("bridge", "ferry-bridge")
	other := NewIdentity("someone", "x")
	for _, tc := range []struct {
		name  string
		id    *Identity
		topic string
		want  bool
	}{
		{"granted topic", id, "devices/d1/commands", true},
		{"beyond the rule", id, "devices/d1/telemetry", false},
		{"pattern with the client id", id, "clients/ferry-bridge/x", true},
		{"another user", other, "devices/d1/commands", false},
		{"$SYS", id, "$SYS/broker/x", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := h.AllowedFor(tc.id, tc.topic, true); got != tc.want {
				t.Fatalf("AllowedFor(%s) = %v, want %v", tc.topic, got, tc.want)
			}
		})
	}
}
