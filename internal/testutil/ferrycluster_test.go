package testutil

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// nodeConfig parses node i's configuration file as the broker would read
// it: from disk, into plain maps.
func nodeConfig(t *testing.T, c *FerryCluster, i int) map[string]any {
	t.Helper()
	b, err := os.ReadFile(c.nodes[i].confPath)
	if err != nil {
		t.Fatalf("read node %d config: %v", i, err)
	}
	if string(b) != c.Config(i) {
		t.Errorf("node %d: Config() differs from the file:\n%s\nfile:\n%s", i, c.Config(i), b)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("parse node %d config: %v\n%s", i, err, b)
	}
	return m
}

// at walks m along path (mapping keys), failing when a step is missing.
func at(t *testing.T, m map[string]any, path ...string) any {
	t.Helper()
	var v any = m
	for k, key := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s is %T, not a mapping", strings.Join(path[:k], "."), v)
		}
		if v, ok = mm[key]; !ok {
			t.Fatalf("%s missing", strings.Join(path[:k+1], "."))
		}
	}
	return v
}

func TestFerryClusterConfigEmbedded(t *testing.T) {
	c := newFerryCluster(t, "ferry", FerryClusterOptions{
		Replicas: 3,
		Extra:    "storage:\n  sync: always\nlog:\n  level: debug\n",
	})
	if c.Len() != DefaultFerryClusterNodes {
		t.Fatalf("%d nodes, want the default %d", c.Len(), DefaultFerryClusterNodes)
	}
	ports := map[string]string{} // address -> what uses it
	use := func(addr, what string) {
		if prev, dup := ports[addr]; dup {
			t.Errorf("%s given to both %s and %s", addr, prev, what)
		}
		ports[addr] = what
	}
	for i := range c.Len() {
		m := nodeConfig(t, c, i)
		id := "n" + string(rune('0'+i))
		if got := at(t, m, "cluster", "node_id"); got != id {
			t.Errorf("node %d: node_id %v, want %s", i, got, id)
		}
		if c.ID(i) != id {
			t.Errorf("ID(%d) = %s, want %s", i, c.ID(i), id)
		}
		if got := at(t, m, "cluster", "replicas"); got != 3 {
			t.Errorf("node %d: replicas %v, want 3", i, got)
		}
		ls := at(t, m, "listeners").([]any)
		want := []any{map[string]any{"name": "tcp", "type": "tcp", "addr": c.MQTTAddr(i)}}
		if !reflect.DeepEqual(ls, want) {
			t.Errorf("node %d: listeners %v, want %v (one tcp, no ws)", i, ls, want)
		}
		if got := at(t, m, "admin", "addr"); got != c.AdminAddr(i) {
			t.Errorf("node %d: admin.addr %v, want %s", i, got, c.AdminAddr(i))
		}
		if got, want := at(t, m, "storage", "dir"), filepath.Join(c.Dir(i), "data"); got != want {
			t.Errorf("node %d: storage.dir %v, want %s", i, got, want)
		}
		// Extra merges into the generated mappings and adds new ones.
		if got := at(t, m, "storage", "sync"); got != "always" {
			t.Errorf("node %d: storage.sync %v, want always (from Extra)", i, got)
		}
		if got := at(t, m, "log", "level"); got != "debug" {
			t.Errorf("node %d: log.level %v, want debug (from Extra)", i, got)
		}
		natsCfg := at(t, m, "cluster", "nats").(map[string]any)
		if _, ok := natsCfg["url"]; ok {
			t.Errorf("node %d: embedded mode has cluster.nats.url %v", i, natsCfg["url"])
		}
		client := at(t, m, "cluster", "nats", "embedded", "client_addr").(string)
		cluster := at(t, m, "cluster", "nats", "embedded", "cluster_addr").(string)
		if client != c.nodes[i].clientAddr || cluster != c.nodes[i].clusterAddr {
			t.Errorf("node %d: embedded client_addr %s cluster_addr %s, want %s %s",
				i, client, cluster, c.nodes[i].clientAddr, c.nodes[i].clusterAddr)
		}
		for _, a := range []string{c.MQTTAddr(i), c.AdminAddr(i), client, cluster} {
			if !strings.HasPrefix(a, "127.0.0.1:") {
				t.Errorf("node %d: address %s not on loopback", i, a)
			}
		}
		use(c.MQTTAddr(i), id+" mqtt")
		use(c.AdminAddr(i), id+" admin")
		use(client, id+" nats client")
		use(cluster, id+" nats cluster")
		var routes []string
		for _, r := range at(t, m, "cluster", "nats", "embedded", "routes").([]any) {
			routes = append(routes, r.(string))
		}
		var wantRoutes []string
		for j, o := range c.nodes {
			if j != i {
				wantRoutes = append(wantRoutes, "nats://"+o.clusterAddr)
			}
		}
		slices.Sort(routes)
		slices.Sort(wantRoutes)
		if !slices.Equal(routes, wantRoutes) {
			t.Errorf("node %d: routes %v, want every other node's cluster_addr %v", i, routes, wantRoutes)
		}
	}
}

func TestFerryClusterConfigExternal(t *testing.T) {
	nc := newNATSCluster(t, "nats-server", 3)
	c := newFerryCluster(t, "ferry", FerryClusterOptions{Nodes: 2, External: nc})
	if c.Len() != 2 {
		t.Fatalf("%d nodes, want 2", c.Len())
	}
	for i := range c.Len() {
		m := nodeConfig(t, c, i)
		natsCfg := at(t, m, "cluster", "nats").(map[string]any)
		want := map[string]any{"url": nc.URLs()}
		if !reflect.DeepEqual(natsCfg, want) {
			t.Errorf("node %d: cluster.nats %v, want %v", i, natsCfg, want)
		}
		if _, ok := at(t, m, "cluster").(map[string]any)["replicas"]; ok {
			t.Errorf("node %d: cluster.replicas written though Replicas is 0", i)
		}
	}
	if c.Dir(0) == c.Dir(1) || c.MQTTAddr(0) == c.MQTTAddr(1) {
		t.Errorf("nodes share a directory or address: %s %s, %s %s", c.Dir(0), c.Dir(1), c.MQTTAddr(0), c.MQTTAddr(1))
	}
}

// fakeFerry is a stand-in for the ferry binary that, like a cluster node,
// can only finish starting once every node has been launched: it marks
// itself started in $FAKE_DIR and waits until $FAKE_NODES nodes have.
const fakeFerry = `#!/bin/sh
[ "$1" = -c ] || { echo "usage: $0 -c FILE" >&2; exit 2; }
id=$(sed -n 's/^ *node_id: *//p' "$2")
echo "level=INFO msg=\"starting\" node_id=$id" >&2
touch "$FAKE_DIR/$id"
while [ "$(ls "$FAKE_DIR" | wc -l)" -lt "$FAKE_NODES" ]; do sleep 0.01; done
echo "level=INFO msg=\"ferry started\" node_id=$id" >&2
exec sleep 600
`

func TestFerryClusterProcesses(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ferry")
	if err := os.WriteFile(bin, []byte(fakeFerry), 0o755); err != nil {
		t.Fatal(err)
	}
	marks := filepath.Join(dir, "started")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c := StartFerryCluster(t, bin, FerryClusterOptions{Nodes: 3, Env: []string{"FAKE_DIR=" + marks, "FAKE_NODES=3"}})
	t.Logf("3 nodes started in %s", time.Since(start).Round(time.Millisecond))
	for i := range c.Len() {
		if !strings.Contains(c.Node(i).Log(), "node_id="+c.ID(i)) {
			t.Errorf("node %d's log is not its own:\n%s", i, c.Node(i).Log())
		}
	}

	c.Stop(1)
	c.Cont(1)

	addr, first := c.MQTTAddr(1), c.Node(1)
	c.Kill(1)
	if !first.exited() {
		t.Fatal("node 1 still running after Kill")
	}
	c.Kill(1) // a second Kill is a no-op
	c.Restart(1)
	if c.Node(1) == first || c.Node(1).exited() {
		t.Fatal("Restart did not start a new process for node 1")
	}
	if c.MQTTAddr(1) != addr {
		t.Errorf("MQTTAddr(1) changed across the restart: %s, then %s", addr, c.MQTTAddr(1))
	}
	if got := c.Node(1).Cmd.Args[1:]; !slices.Equal(got, []string{"-c", c.nodes[1].confPath}) {
		t.Errorf("node 1 runs with %v, want -c %s", got, c.nodes[1].confPath)
	}

	// Every node down, then all back at once.
	for i := range c.Len() {
		c.Kill(i)
	}
	c.Restart(0, 1, 2)
	for i := range c.Len() {
		if len(c.nodes[i].procs) < 2 {
			t.Errorf("node %d ran %d times, want at least 2", i, len(c.nodes[i].procs))
		}
	}
	logs := c.logs()
	for _, want := range []string{"--- ferry node n1 run 3 log:", "(exited: signal: killed)", "node_id: n2"} {
		if !strings.Contains(logs, want) {
			t.Errorf("failure logs lack %q:\n%s", want, logs)
		}
	}
	c.Node(2).Signal(t, syscall.SIGTERM)
	if err := c.Node(2).Wait(t, 5*time.Second); err == nil {
		t.Error("the fake node exited 0 on SIGTERM; want a signal error")
	}
}
