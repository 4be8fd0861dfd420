package auth

import (
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func mustParseACL(t *testing.T, src string) *aclSet {
	t.Helper()
	s, err := parseACLFile(strings.NewReader(src), "acl")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// check is one ACL question for one client.
type check struct {
	user, client, cn string
	claims           map[string]any
	topic            string
	write            bool
	want             bool
}

func runChecks(t *testing.T, set *aclSet, checks []check) {
	t.Helper()
	h := &Hook{}
	h.state.Store(&state{acl: set})
	for _, c := range checks {
		id := &identity{username: c.user, clientID: c.client, cn: c.cn, claims: c.claims}
		if c.client == "" {
			id.clientID = "cid"
		}
		if got := h.allowed(id, c.topic, c.write); got != c.want {
			t.Errorf("user %q client %q cn %q topic %q write %v: allowed = %v, want %v",
				c.user, id.clientID, c.cn, c.topic, c.write, got, c.want)
		}
	}
}

func TestACLFileSemantics(t *testing.T) {
	set := mustParseACL(t, `
# anonymous clients: only these
topic read public/#
topic deny public/private

user alice
topic readwrite allowed
topic read a/+
topic write logs/alice
topic deny a/forbidden
topic secret/plain
topic	read	tabs/#

user bob smith
topic read bob/#

pattern write devices/%u/#
pattern read devices/%u/commands/%c
pattern deny devices/%u/locked
`)
	runChecks(t, set, []check{
		// anonymous
		{topic: "public/x", want: true},
		{topic: "public/x", write: true, want: false},
		{topic: "public/private", want: false},
		{topic: "allowed", want: false},
		{topic: "public/#", want: true},
		// alice: exact topics, no prefix or wildcard widening
		{user: "alice", topic: "allowed", write: true, want: true},
		{user: "alice", topic: "allowed", want: true},
		{user: "alice", topic: "allowed/secret", write: true, want: false},
		{user: "alice", topic: "allowed/secret", want: false},
		{user: "alice", topic: "a/b", want: true},
		{user: "alice", topic: "a/b", write: true, want: false},
		{user: "alice", topic: "a/b/c", want: false},
		{user: "alice", topic: "a", want: false},
		{user: "alice", topic: "a/forbidden", want: false},
		{user: "alice", topic: "logs/alice", write: true, want: true},
		{user: "alice", topic: "logs/alice", want: false},
		{user: "alice", topic: "secret/plain", write: true, want: true}, // no access word = readwrite
		{user: "alice", topic: "public/x", want: false},                 // anonymous rules are not hers
		// alice's subscriptions
		{user: "alice", topic: "a/#", want: true},           // overlaps a/+: filtered at delivery
		{user: "alice", topic: "a/+", want: true},           // covered
		{user: "alice", topic: "$share/g/a/+", want: true},  // shared subscription
		{user: "alice", topic: "b/#", want: false},          // no overlap
		{user: "alice", topic: "#", want: true},             // overlaps, delivery filters
		{user: "alice", topic: "$SYS/#", want: false},       // nothing readable under $SYS
		{user: "alice", topic: "a/forbidden/#", want: true}, // overlaps a/+ at a/forbidden; delivery denies it
		// patterns
		{user: "alice", topic: "devices/alice/x", write: true, want: true},
		{user: "alice", topic: "devices/alice", write: true, want: true},
		{user: "alice", topic: "devices/bob/x", write: true, want: false},
		{user: "alice", topic: "devices/alice/locked", write: true, want: false},
		{user: "alice", client: "c1", topic: "devices/alice/commands/c1", want: true},
		{user: "alice", client: "c1", topic: "devices/alice/commands/c2", want: false},
		// patterns with %u skip anonymous clients
		{topic: "devices//x", write: true, want: false},
		// names that would widen a pattern match nothing through it
		{user: "#", topic: "devices/#", write: true, want: false},
		{user: "#", topic: "devices/x", write: true, want: false},
		{user: "+", topic: "devices/x/y", write: true, want: false},
		{user: "bob/x", topic: "devices/bob/x/y", write: true, want: false},
		{user: "eve", client: "a/b", topic: "devices/eve/commands/a/b", want: false},
		{user: "eve", client: "#", topic: "devices/eve/commands/x", want: false},
		{user: "alice", topic: "tabs/x", want: true},
		// a user name with a space
		{user: "bob smith", topic: "bob/1", want: true},
		{user: "bob", topic: "bob/1", want: false},
		// unknown user gets only patterns
		{user: "carol", topic: "devices/carol/1", write: true, want: true},
		{user: "carol", topic: "allowed", want: false},
	})
}

func TestACLDenyWinsWhateverTheOrder(t *testing.T) {
	set := mustParseACL(t, "pattern deny x/%u\nuser alice\ntopic readwrite x/#\n")
	runChecks(t, set, []check{
		{user: "alice", topic: "x/alice", write: true, want: false},
		{user: "alice", topic: "x/alice", want: false},
		{user: "alice", topic: "x/bob", want: true},
		{user: "alice", topic: "x/alice/#", want: true},
		{user: "alice", topic: "x/+", want: true}, // partly denied: delivery filters
	})
	set = mustParseACL(t, "user alice\ntopic readwrite x/#\ntopic deny x/#\n")
	runChecks(t, set, []check{
		{user: "alice", topic: "x/#", want: false}, // wholly denied subscription
		{user: "alice", topic: "x/1", write: true, want: false},
	})
}

func TestACLFileErrors(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{"unknown keyword", "user a\nallow x\n", "acl:2: unknown keyword \"allow\""},
		{"bad access", "topic readwrit x\n", "acl:1: topic: access \"readwrit\""},
		{"missing filter", "topic\n", "acl:1: topic: missing topic filter"},
		{"user without name", "\n\nuser\n", "acl:3: user without a name"},
		{"bad filter", "topic read a/#/b\n", "acl:1: filter \"a/#/b\": not a valid MQTT topic filter"},
		{"wildcard in level", "pattern read a/%u+\n", "not a valid MQTT topic filter"},
		{"placeholder in topic", "user a\n# c\ntopic read d/%u\n", "acl:3: filter \"d/%u\": %u, %c and %{claim:...} work in pattern lines only"},
		{"bad claim", "pattern read d/%{sub}\n", "acl:1: filter \"d/%{sub}\": placeholder %{sub}: want %{claim:NAME}"},
		{"unterminated claim", "pattern read d/%{claim:x\n", "unterminated %{"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseACLFile(strings.NewReader(tt.in), "acl")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestYAMLRules(t *testing.T) {
	rules, err := compileYAMLRules([]ACLRule{
		{Users: []string{"alice", "bob"}, Allow: ACLAccess{Publish: []string{"devices/%u/#"}, Subscribe: []string{"commands/%u/#", "broadcast/#"}}},
		{Clients: []string{"gw-1"}, Allow: ACLAccess{Publish: []string{"gateway/#"}}},
		{CNs: []string{"sensor.example.com"}, Allow: ACLAccess{Publish: []string{"sensors/%c"}}},
		{Users: []string{"bob"}, Deny: ACLAccess{Subscribe: []string{"broadcast/secret"}}},
		{Anonymous: true, Allow: ACLAccess{Subscribe: []string{"public/#"}}},
		{Allow: ACLAccess{Subscribe: []string{"tenants/%{claim:tenant}/#"}}},
		{Users: []string{"carol"}, Clients: []string{"c-1"}, Allow: ACLAccess{Publish: []string{"carol"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	set := &aclSet{rules: rules}
	runChecks(t, set, []check{
		{user: "alice", topic: "devices/alice/t", write: true, want: true},
		{user: "alice", topic: "devices/bob/t", write: true, want: false},
		{user: "alice", topic: "devices/alice/t", want: false},
		{user: "alice", topic: "commands/alice/1", want: true},
		{user: "alice", topic: "commands/alice/1", write: true, want: false},
		{user: "alice", topic: "broadcast/secret", want: true},
		{user: "bob", topic: "broadcast/secret", want: false},
		{user: "bob", topic: "broadcast/other", want: true},
		{user: "carol", topic: "devices/carol/t", write: true, want: false},
		{user: "x", client: "gw-1", topic: "gateway/a", write: true, want: true},
		{user: "x", client: "gw-2", topic: "gateway/a", write: true, want: false},
		{user: "x", client: "s1", cn: "sensor.example.com", topic: "sensors/s1", write: true, want: true},
		{user: "x", client: "s1", cn: "other", topic: "sensors/s1", write: true, want: false},
		{topic: "public/x", want: true},
		{user: "alice", topic: "public/x", want: false},
		{user: "t", claims: map[string]any{"tenant": "acme"}, topic: "tenants/acme/x", want: true},
		{user: "t", claims: map[string]any{"tenant": "acme"}, topic: "tenants/other/x", want: false},
		{user: "t", claims: map[string]any{"tenant": "#"}, topic: "tenants/x/y", want: false},
		{user: "t", claims: map[string]any{"tenant": 7.0}, topic: "tenants/7/y", want: false},
		{user: "t", topic: "tenants//y", want: false},
		{user: "carol", client: "c-1", topic: "carol", write: true, want: true}, // every selector must match
		{user: "carol", client: "c-2", topic: "carol", write: true, want: false},
	})
}

func TestYAMLRuleErrors(t *testing.T) {
	_, err := compileYAMLRules([]ACLRule{
		{Users: []string{"a"}},
		{Allow: ACLAccess{Publish: []string{"ok", "a/#/b"}}},
		{Anonymous: true, Users: []string{"a"}, Allow: ACLAccess{Publish: []string{"x"}}},
		{Deny: ACLAccess{Subscribe: []string{"%{nope}"}}},
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"acl[0]: rule has no allow or deny filters",
		"acl[1].allow.publish[1]: filter \"a/#/b\": not a valid MQTT topic filter",
		"acl[2]: anonymous and users exclude each other",
		"acl[3].deny.subscribe[0]: filter \"%{nope}\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestACLCheckDoesNotAllocate(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", ACL: []ACLRule{
		{Users: []string{"alice"}, Allow: ACLAccess{Subscribe: []string{"a/+"}, Publish: []string{"devices/%u/#"}}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := &mqtt.Client{ID: "c"}
	if !h.OnConnectAuthenticate(cl, packets.Packet{Connect: packets.ConnectParams{Username: []byte("alice"), Password: []byte("secret")}}) {
		t.Fatal("refused")
	}
	h.OnACLCheck(cl, "a/b", false) // resolves the rules once
	allocs := testing.AllocsPerRun(100, func() {
		if !h.OnACLCheck(cl, "a/b", false) || !h.OnACLCheck(cl, "devices/alice/x", true) ||
			h.OnACLCheck(cl, "devices/bob/x", true) || h.OnACLCheck(cl, "a/b/c", false) {
			t.Fatal("wrong answer")
		}
	})
	if allocs != 0 {
		t.Errorf("allowed allocates %v times per run", allocs)
	}
}

func BenchmarkACLCheck(b *testing.B) {
	h, err := New(Config{AllowAnonymous: true, ACLFile: "", ACL: []ACLRule{
		{Allow: ACLAccess{Subscribe: []string{"a/+", "b/#", "c/+/d"}, Publish: []string{"devices/%c/#"}}},
		{Deny: ACLAccess{Subscribe: []string{"b/secret/#"}}},
	}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	cl := &mqtt.Client{ID: "c"}
	if !h.OnConnectAuthenticate(cl, packets.Packet{}) {
		b.Fatal("refused")
	}
	b.ReportAllocs()
	for b.Loop() {
		h.OnACLCheck(cl, "b/x/y", false)
	}
}
