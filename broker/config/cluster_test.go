package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/cluster"
)

// exampleCluster is the commented-out cluster section of
// ferry.example.yaml, uncommented, without the keys in drop (and what is
// indented under them).
func exampleCluster(t *testing.T, drop ...string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "ferry.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	in, skipUnder := false, -1
	for _, l := range strings.Split(string(data), "\n") {
		if l == "# cluster:" {
			in = true
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(l, "# ") {
			break
		}
		l = strings.TrimPrefix(l, "# ")
		indent := len(l) - len(strings.TrimLeft(l, " "))
		if skipUnder >= 0 && indent > skipUnder {
			continue
		}
		skipUnder = -1
		key, _, _ := strings.Cut(strings.TrimSpace(l), ":")
		for _, d := range drop {
			if key == d {
				skipUnder = indent
			}
		}
		if skipUnder < 0 {
			b.WriteString(l + "\n")
		}
	}
	if !in {
		t.Fatal("ferry.example.yaml has no commented-out cluster section")
	}
	return b.String()
}

// hostNodeID is node_id's default: the host name.
func hostNodeID(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Skipf("no host name: %v", err)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`).MatchString(h) {
		t.Skipf("host name %q is not a valid node id: cannot be the default", h)
	}
	return h
}

func show(c *cluster.Config) string {
	if c == nil {
		return "nil"
	}
	s := fmt.Sprintf("%+v", *c)
	if e := c.NATS.Embedded; e != nil {
		s += fmt.Sprintf(" embedded %+v", *e)
	}
	return s
}

func TestClusterSectionLoadsWithDefaults(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	host := hostNodeID(t)
	storage := "storage:\n  dir: " + data + "\n"
	for _, tc := range []struct {
		name string
		yaml string
		want *cluster.Config
	}{
		{"no cluster section is a single node", storage, nil},
		{"an empty cluster key is no section", storage + "cluster:\n", nil},
		{"example, embedded", storage + exampleCluster(t, "url"), &cluster.Config{
			NodeID: "a", Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{Embedded: &cluster.Embedded{
				ClientAddr: "127.0.0.1:4222", ClusterAddr: "127.0.0.1:6222",
				Routes:   []string{"nats://127.0.0.1:6223", "nats://127.0.0.1:6224"},
				StoreDir: filepath.Join(data, "nats"),
			}},
		}},
		{"example, url", storage + exampleCluster(t, "embedded"), &cluster.Config{
			NodeID: "a", Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{URL: "nats://127.0.0.1:4222,nats://127.0.0.1:4223"},
		}},
		{"defaults: node_id, replicas, start_timeout, client_addr, store_dir", storage +
			"cluster:\n  nats:\n    embedded:\n      cluster_addr: 127.0.0.1:6222\n", &cluster.Config{
			NodeID: host, Replicas: cluster.DefaultReplicas, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{Embedded: &cluster.Embedded{
				ClientAddr: cluster.DefaultEmbeddedClientAddr, ClusterAddr: "127.0.0.1:6222",
				StoreDir: filepath.Join(data, "nats"),
			}},
		}},
		{"store_dir under the default storage.dir", "cluster:\n  replicas: 1\n  nats:\n    embedded: {}\n", &cluster.Config{
			NodeID: host, Replicas: 1, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{Embedded: &cluster.Embedded{
				ClientAddr: cluster.DefaultEmbeddedClientAddr,
				StoreDir:   config.DefaultDataDir + string(os.PathSeparator) + "nats", // relative to the working directory
			}},
		}},
		{"set values kept", storage + "cluster:\n  node_id: n-2\n  replicas: 5\n  start_timeout: 2m\n" +
			"  nats: {url: \"nats://10.0.0.1:4222, nats://10.0.0.2:4222\"}\n", &cluster.Config{
			NodeID: "n-2", Replicas: 5, StartTimeout: 2 * time.Minute,
			NATS: cluster.NATS{URL: "nats://10.0.0.1:4222, nats://10.0.0.2:4222"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "ferry.yaml", tc.yaml)
			cfg, err := config.Load(config.Source{Path: path})
			if err != nil {
				t.Fatalf("%v\nin:\n%s", err, tc.yaml)
			}
			if !reflect.DeepEqual(cfg.Cluster, tc.want) {
				t.Errorf("cluster\n%s\nwant\n%s", show(cfg.Cluster), show(tc.want))
			}
		})
	}
}

// FERRY_CLUSTER_* variables set the section's fields, creating it, and
// --node-id wins over them.
func TestClusterFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	host := hostNodeID(t)
	file := writeFile(t, dir, "ferry.yaml", exampleCluster(t, "url"))
	nodeC := "c"
	defaultStore := config.DefaultDataDir + string(os.PathSeparator) + "nats"
	for _, tc := range []struct {
		name  string
		path  string
		env   []string
		flags config.Overrides
		want  *cluster.Config
	}{
		{"no cluster variable, no section", "", []string{"FERRY_LOG_LEVEL=debug", "FERRY_DATA_DIR=/srv/ferry"}, config.Overrides{}, nil},
		{"variables create the section", "", []string{"FERRY_CLUSTER_NODE_ID=n1", "FERRY_CLUSTER_REPLICAS=1",
			"FERRY_CLUSTER_NATS_EMBEDDED_CLIENT_ADDR=127.0.0.1:4333", "FERRY_CLUSTER_NATS_EMBEDDED_STORE_DIR=/var/lib/nats",
			"FERRY_CLUSTER_START_TIMEOUT=5s"}, config.Overrides{}, &cluster.Config{
			NodeID: "n1", Replicas: 1, StartTimeout: 5 * time.Second,
			NATS: cluster.NATS{Embedded: &cluster.Embedded{ClientAddr: "127.0.0.1:4333", StoreDir: "/var/lib/nats"}},
		}},
		{"routes comma separated", "", []string{"FERRY_CLUSTER_NATS_EMBEDDED_CLUSTER_ADDR=127.0.0.1:6222",
			"FERRY_CLUSTER_NATS_EMBEDDED_ROUTES=nats://127.0.0.1:6223, nats://127.0.0.1:6224,", "FERRY_DATA_DIR=/srv/ferry"},
			config.Overrides{}, &cluster.Config{
				NodeID: host, Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
				NATS: cluster.NATS{Embedded: &cluster.Embedded{
					ClientAddr: cluster.DefaultEmbeddedClientAddr, ClusterAddr: "127.0.0.1:6222",
					Routes:   []string{"nats://127.0.0.1:6223", "nats://127.0.0.1:6224"},
					StoreDir: filepath.Join("/srv/ferry", "nats"),
				}},
			}},
		{"url", "", []string{"FERRY_CLUSTER_NATS_URL=nats://10.0.0.1:4222,nats://10.0.0.2:4222"}, config.Overrides{}, &cluster.Config{
			NodeID: host, Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{URL: "nats://10.0.0.1:4222,nats://10.0.0.2:4222"},
		}},
		{"variables over the file", file, []string{"FERRY_CLUSTER_NODE_ID=b", "FERRY_CLUSTER_NATS_EMBEDDED_ROUTES=nats://127.0.0.1:7000"},
			config.Overrides{}, &cluster.Config{
				NodeID: "b", Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
				NATS: cluster.NATS{Embedded: &cluster.Embedded{
					ClientAddr: "127.0.0.1:4222", ClusterAddr: "127.0.0.1:6222",
					Routes: []string{"nats://127.0.0.1:7000"}, StoreDir: defaultStore,
				}},
			}},
		{"flag over variable over file", file, []string{"FERRY_CLUSTER_NODE_ID=b"}, config.Overrides{NodeID: &nodeC}, &cluster.Config{
			NodeID: "c", Replicas: 3, StartTimeout: cluster.DefaultStartTimeout,
			NATS: cluster.NATS{Embedded: &cluster.Embedded{
				ClientAddr: "127.0.0.1:4222", ClusterAddr: "127.0.0.1:6222",
				Routes:   []string{"nats://127.0.0.1:6223", "nats://127.0.0.1:6224"},
				StoreDir: defaultStore,
			}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, warnings, err := config.LoadWithWarnings(config.Source{Path: tc.path, Env: tc.env, Flags: tc.flags})
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %q", warnings)
			}
			if !reflect.DeepEqual(cfg.Cluster, tc.want) {
				t.Errorf("cluster\n%s\nwant\n%s", show(cfg.Cluster), show(tc.want))
			}
		})
	}
}

func TestUnknownClusterVariablesWarned(t *testing.T) {
	cfg, warnings, err := config.LoadWithWarnings(config.Source{Env: []string{
		"FERRY_CLUSTER_NATS_EMBEDED_ROUTES=nats://127.0.0.1:6223", "FERRY_CLUSTER_BOGUS=1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"environment variable FERRY_CLUSTER_BOGUS is not a Ferry setting and is ignored",
		"environment variable FERRY_CLUSTER_NATS_EMBEDED_ROUTES is not a Ferry setting and is ignored (did you mean FERRY_CLUSTER_NATS_EMBEDDED_ROUTES?)",
	}
	if strings.Join(warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(want, "\n"))
	}
	if cfg.Cluster != nil {
		t.Errorf("an unknown variable created the cluster section: %s", show(cfg.Cluster))
	}
}

// Every cluster problem names its field under cluster. and where its value
// came from: the file's line (the enclosing section's for a value the file
// left out), or the variable or flag.
func TestClusterErrorsNameFieldAndLine(t *testing.T) {
	dir := t.TempDir()
	badNode := "node.1"
	for _, tc := range []struct {
		name    string
		yaml    string
		env     []string
		flags   config.Overrides
		want    []string // substrings of the error
		notWant string
	}{
		{"example as is: url and embedded", exampleCluster(t), nil, config.Overrides{},
			[]string{"ferry.yaml:4: cluster.nats: nats.url and nats.embedded are exclusive: set one"}, ""},
		{"neither url nor embedded", "cluster:\n  node_id: a\n", nil, config.Overrides{},
			[]string{"ferry.yaml:1: cluster.nats: set nats.url (an existing NATS cluster) or nats.embedded"}, ""},
		{"bad route URL", "cluster:\n  nats:\n    embedded:\n      cluster_addr: 127.0.0.1:6222\n      routes:\n" +
			"        - nats://127.0.0.1:6223\n        - http://127.0.0.1:6224\n", nil, config.Overrides{},
			[]string{`ferry.yaml:7: cluster.nats.embedded.routes[1]: "http://127.0.0.1:6224": scheme must be one of nats, nats-route, tls`}, "routes[0]"},
		{"route without a scheme in a flow list", "cluster:\n  nats:\n    embedded:\n      cluster_addr: 127.0.0.1:6222\n" +
			"      routes: [nats://127.0.0.1:6223, 127.0.0.1:6224]\n", nil, config.Overrides{},
			[]string{`ferry.yaml:5: cluster.nats.embedded.routes[1]: "127.0.0.1:6224"`}, "routes[0]"},
		{"replicas 6", "cluster:\n  replicas: 6\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.replicas: 6 must be 1-5"}, ""},
		{"replicas -1", "cluster:\n  replicas: -1\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.replicas: -1 must be 1-5"}, ""},
		{"routes without cluster_addr", "cluster:\n  replicas: 1\n  nats:\n    embedded:\n      routes: [nats://127.0.0.1:6223]\n",
			nil, config.Overrides{}, []string{"ferry.yaml:4: cluster.nats.embedded.cluster_addr: required with routes"}, ""},
		{"default replicas on a lone embedded server", "cluster:\n  nats:\n    embedded: {}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:1: cluster.replicas: 3 needs as many JetStream servers"}, ""},
		{"node id with a dot", "cluster:\n  node_id: node.1\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{`ferry.yaml:2: cluster.node_id: "node.1" must be 1-64 letters, digits, '-' or '_'`}, ""},
		{"bad url scheme", "cluster:\n  replicas: 1\n  nats:\n    url: http://127.0.0.1:4222\n", nil, config.Overrides{},
			[]string{`ferry.yaml:4: cluster.nats.url: "http://127.0.0.1:4222": scheme must be one of nats, tls, ws, wss`}, ""},
		{"bad client_addr", "cluster:\n  replicas: 1\n  nats:\n    embedded:\n      client_addr: localhost\n", nil, config.Overrides{},
			[]string{`ferry.yaml:5: cluster.nats.embedded.client_addr: "localhost" is not host:port`}, ""},
		{"start_timeout without unit", "cluster:\n  start_timeout: 30\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.start_timeout: 30 has no unit"}, "less than the minimum"},
		{"start_timeout too short", "cluster:\n  start_timeout: 10ms\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.start_timeout: 10ms is less than the minimum 1s"}, ""},
		{"replicas not a number", "cluster:\n  replicas: three\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{`ferry.yaml:2: cluster.replicas: "three" is not an integer`}, ""},
		{"unknown cluster field", "cluster:\n  nodeid: a\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.nodeid: unknown field"}, ""},
		{"unknown embedded field", "cluster:\n  nats:\n    embedded:\n      routs: []\n", nil, config.Overrides{},
			[]string{"ferry.yaml:4: cluster.nats.embedded.routs: unknown field"}, ""},
		{"creds_file beside the file", "cluster:\n  nats: {url: \"nats://127.0.0.1:4222\", creds_file: ferry.creds}\n", nil, config.Overrides{},
			[]string{"ferry.yaml:2: cluster.nats.creds_file:", filepath.Join(dir, "ferry.creds")}, ""},
		{"replicas variable over the file", "cluster:\n  replicas: 1\n  nats: {url: \"nats://127.0.0.1:4222\"}\n",
			[]string{"FERRY_CLUSTER_REPLICAS=6"}, config.Overrides{},
			[]string{`FERRY_CLUSTER_REPLICAS="6": cluster.replicas: 6 must be 1-5`}, "ferry.yaml:2"},
		{"replicas variable not a number", "", []string{"FERRY_CLUSTER_REPLICAS=many", "FERRY_CLUSTER_NATS_URL=nats://127.0.0.1:4222"},
			config.Overrides{}, []string{`FERRY_CLUSTER_REPLICAS="many": cluster.replicas: not an integer`}, ""},
		{"bad route in the routes variable", "", []string{"FERRY_CLUSTER_NATS_EMBEDDED_CLUSTER_ADDR=127.0.0.1:6222",
			"FERRY_CLUSTER_NATS_EMBEDDED_ROUTES=nats://127.0.0.1:6223,bogus://x"}, config.Overrides{},
			[]string{`FERRY_CLUSTER_NATS_EMBEDDED_ROUTES="nats://127.0.0.1:6223,bogus://x": cluster.nats.embedded.routes[1]: "bogus://x": scheme must be`}, ""},
		{"url variable beside an embedded file section", exampleCluster(t, "url"), []string{"FERRY_CLUSTER_NATS_URL=nats://127.0.0.1:4222"},
			config.Overrides{}, []string{"ferry.yaml:4: cluster.nats: nats.url and nats.embedded are exclusive"}, ""},
		{"node id flag", "cluster:\n  node_id: a\n  nats: {url: \"nats://127.0.0.1:4222\"}\n", []string{"FERRY_CLUSTER_NODE_ID=b"},
			config.Overrides{NodeID: &badNode}, []string{`--node-id="node.1": cluster.node_id: "node.1" must be`}, "ferry.yaml:2"},
		{"node id flag alone needs nats", "", nil, config.Overrides{NodeID: &badNode},
			[]string{`--node-id="node.1": cluster.node_id:`, "cluster.nats: set nats.url"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "ferry.yaml", tc.yaml)
			_, err := config.Load(config.Source{Path: path, Env: tc.env, Flags: tc.flags})
			if err == nil {
				t.Fatal("accepted")
			}
			msg := strings.ReplaceAll(err.Error(), path, "ferry.yaml")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if tc.notWant != "" && strings.Contains(msg, tc.notWant) {
				t.Errorf("error %q contains %q", msg, tc.notWant)
			}
			for _, goType := range []string{"cluster.Config", "time.Duration", "!!", "not found in type"} {
				if strings.Contains(msg, goType) {
					t.Errorf("error %q names a Go or YAML type: %q", msg, goType)
				}
			}
		})
	}
}
