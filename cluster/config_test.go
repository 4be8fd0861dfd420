package cluster

import (
	"strings"
	"testing"
)

func TestNodeIDFromHost(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"ferry-1", "ferry-1"},
		{"ip-10-0-0-1.ec2.internal", "ip-10-0-0-1"},
		{"host name", "host-name"},
		{"ünï", "--n--"},
		{strings.Repeat("a", 80), strings.Repeat("a", 64)},
	} {
		got := nodeIDFromHost(tc.host)
		if got != tc.want {
			t.Errorf("nodeIDFromHost(%q) = %q, want %q", tc.host, got, tc.want)
		}
		if !nodeIDRe.MatchString(got) {
			t.Errorf("nodeIDFromHost(%q) = %q is not a valid node id", tc.host, got)
		}
	}
}

func TestValidate(t *testing.T) {
	emb := func(e Embedded) NATS { return NATS{Embedded: &e} }
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error, nil: valid
	}{
		{"embedded alone", Config{NodeID: "a", Replicas: 1, NATS: emb(Embedded{StoreDir: "/d"})}, nil},
		{"embedded cluster", Config{NodeID: "a", NATS: emb(Embedded{ClusterAddr: "127.0.0.1:6222", Routes: []string{"nats://127.0.0.1:6223"}, StoreDir: "/d"})}, nil},
		{"url", Config{NodeID: "a", NATS: NATS{URL: "nats://h1:4222, nats://h2:4222"}}, nil},
		{"neither", Config{NodeID: "a"}, []string{"nats: set nats.url"}},
		{"both", Config{NodeID: "a", NATS: NATS{URL: "nats://h:1", Embedded: &Embedded{StoreDir: "/d"}}}, []string{"exclusive"}},
		{"bad node", Config{NodeID: "a.b", NATS: NATS{URL: "nats://h:1"}}, []string{"node_id"}},
		{"replicas", Config{NodeID: "a", Replicas: 6, NATS: NATS{URL: "nats://h:1"}}, []string{"replicas: 6 must be 1-5"}},
		{"lone server, 3 replicas", Config{NodeID: "a", NATS: emb(Embedded{StoreDir: "/d"})}, []string{"replicas: 3 needs"}},
		{"routes without cluster", Config{NodeID: "a", Replicas: 1, NATS: emb(Embedded{Routes: []string{"nats://h:1"}, StoreDir: "/d"})}, []string{"cluster_addr: required with routes"}},
		{"bad route", Config{NodeID: "a", NATS: emb(Embedded{ClusterAddr: "127.0.0.1:6222", Routes: []string{"http://h:1"}, StoreDir: "/d"})}, []string{"routes[0]", "scheme"}},
		{"bad url", Config{NodeID: "a", NATS: NATS{URL: "nats://h:1,ftp://x"}}, []string{"nats.url", "scheme"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WithDefaults("/data").Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
