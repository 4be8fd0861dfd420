package testutil

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	// DefaultFerryClusterNodes is FerryClusterOptions.Nodes when zero.
	DefaultFerryClusterNodes = 3
	// FerryClusterStartTimeout bounds how long StartFerryCluster waits for
	// every node's "ferry started" line, and Restart for the restarted
	// nodes': longer than StartFerry's 30 s, as nodes built with -race
	// start JetStream and wait for a quorum.
	FerryClusterStartTimeout = 60 * time.Second
	// ferryExitTimeout bounds the wait for a SIGKILLed node to exit.
	ferryExitTimeout = 10 * time.Second
)

// FerryClusterOptions configures StartFerryCluster. The zero value is three
// nodes, each with NATS embedded.
type FerryClusterOptions struct {
	// Nodes is how many ferry processes run. Default 3.
	Nodes int
	// External is the NATS cluster the nodes use (cluster.nats.url is its
	// URLs()); nil runs NATS embedded in each node (cluster.nats.embedded),
	// routed to every other node's.
	External *NATSCluster
	// Replicas is cluster.replicas; 0 leaves it out of the configuration
	// (the broker's default).
	Replicas int
	// Extra is YAML merged into every node's configuration: its mappings
	// are merged key by key into the generated ones (storage: {sync:
	// always} keeps storage.dir), other values replace the generated value.
	// Replacing listeners, admin.addr or cluster.nats makes MQTTAddr,
	// AdminAddr or the routes wrong.
	Extra string
	// Env is added to every node's environment (KEY=value entries).
	Env []string
}

// FerryCluster is N ferry processes run as one cluster by a test. Node i
// has node_id n<i>, its own data directory (kept when it restarts), a tcp
// MQTT listener named "tcp" and an admin endpoint on free loopback ports
// that stay the same across restarts, no WebSocket listener, and with
// embedded NATS a client and a cluster port of its own, routed to every
// other node's cluster port. Each node's configuration is written to
// <its dir>/ferry.yaml and the node runs `ferry -c` that file.
//
// Every process is killed when the test ends; when the test failed, each
// node's configuration and log (of every run) are printed.
//
// Methods fail the test given to StartFerryCluster: call them from that
// test's goroutine.
type FerryCluster struct {
	t     testing.TB
	bin   string
	env   []string
	nodes []*ferryNode
}

type ferryNode struct {
	id          string
	dir         string
	confPath    string
	config      string
	mqttAddr    string
	adminAddr   string
	clientAddr  string  // embedded NATS only
	clusterAddr string  // embedded NATS only
	procs       []*Proc // every run; the last is the current one
}

// StartFerryCluster writes each node's configuration, starts every node at
// once (a node cannot finish starting before the JetStream quorum is
// there), and waits up to FerryClusterStartTimeout until each has logged
// "ferry started". bin is the ferry binary (BuildFerry).
func StartFerryCluster(t testing.TB, bin string, o FerryClusterOptions) *FerryCluster {
	t.Helper()
	c := newFerryCluster(t, bin, o)
	t.Cleanup(c.printLogs) // registered first, so it runs after the kills
	all := make([]int, len(c.nodes))
	for i := range c.nodes {
		all[i] = i
	}
	c.start(all)
	return c
}

// newFerryCluster assigns ports and directories and writes every node's
// configuration; it starts nothing.
func newFerryCluster(t testing.TB, bin string, o FerryClusterOptions) *FerryCluster {
	t.Helper()
	n := o.Nodes
	if n == 0 {
		n = DefaultFerryClusterNodes
	}
	if n < 1 {
		t.Fatalf("FerryClusterOptions.Nodes is %d, want at least 1", n)
	}
	if o.Replicas < 0 {
		t.Fatalf("FerryClusterOptions.Replicas is %d, want 0 (default) or more", o.Replicas)
	}
	var extra map[string]any
	if err := yaml.Unmarshal([]byte(o.Extra), &extra); err != nil {
		t.Fatalf("FerryClusterOptions.Extra is not a YAML mapping: %v\n%s", err, o.Extra)
	}
	perNode := 2
	if o.External == nil {
		perNode = 4
	}
	ports := freePorts(t, perNode*n)
	addr := func(k int) string { return "127.0.0.1:" + strconv.Itoa(ports[k]) }
	c := &FerryCluster{t: t, bin: bin, env: o.Env}
	for i := range n {
		dir := t.TempDir()
		nd := &ferryNode{
			id:        "n" + strconv.Itoa(i),
			dir:       dir,
			confPath:  filepath.Join(dir, "ferry.yaml"),
			mqttAddr:  addr(perNode * i),
			adminAddr: addr(perNode*i + 1),
		}
		if o.External == nil {
			nd.clientAddr, nd.clusterAddr = addr(perNode*i+2), addr(perNode*i+3)
		}
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		cfg := map[string]any{
			"listeners": []any{map[string]any{"name": "tcp", "type": "tcp", "addr": nd.mqttAddr}},
			"admin":     map[string]any{"addr": nd.adminAddr},
			"storage":   map[string]any{"dir": filepath.Join(nd.dir, "data")},
			"cluster":   c.clusterSection(nd, o),
		}
		mergeYAML(cfg, extra)
		var b bytes.Buffer
		enc := yaml.NewEncoder(&b)
		enc.SetIndent(2)
		if err := enc.Encode(cfg); err != nil {
			t.Fatalf("ferry node %s: encode config: %v", nd.id, err)
		}
		if err := enc.Close(); err != nil {
			t.Fatalf("ferry node %s: encode config: %v", nd.id, err)
		}
		nd.config = b.String()
		if err := os.WriteFile(nd.confPath, b.Bytes(), 0o600); err != nil {
			t.Fatalf("ferry node %s: write config: %v", nd.id, err)
		}
	}
	return c
}

// clusterSection is node nd's cluster: section.
func (c *FerryCluster) clusterSection(nd *ferryNode, o FerryClusterOptions) map[string]any {
	natsCfg := map[string]any{}
	if o.External != nil {
		natsCfg["url"] = o.External.URLs()
	} else {
		routes := []any{}
		for _, other := range c.nodes {
			if other != nd {
				routes = append(routes, "nats://"+other.clusterAddr)
			}
		}
		natsCfg["embedded"] = map[string]any{
			"client_addr":  nd.clientAddr,
			"cluster_addr": nd.clusterAddr,
			"routes":       routes,
		}
	}
	sec := map[string]any{"node_id": nd.id, "nats": natsCfg}
	if o.Replicas > 0 {
		sec["replicas"] = o.Replicas
	}
	return sec
}

// mergeYAML merges src into dst: mappings key by key, other values
// replace.
func mergeYAML(dst, src map[string]any) {
	for k, v := range src {
		sm, ok1 := v.(map[string]any)
		dm, ok2 := dst[k].(map[string]any)
		if ok1 && ok2 {
			mergeYAML(dm, sm)
			continue
		}
		dst[k] = v
	}
}

// Len is the number of nodes.
func (c *FerryCluster) Len() int { return len(c.nodes) }

// ID is node i's node_id, n<i>.
func (c *FerryCluster) ID(i int) string { return c.node(i).id }

// Node is node i's current (last started) process.
func (c *FerryCluster) Node(i int) *Proc {
	nd := c.node(i)
	return nd.procs[len(nd.procs)-1]
}

// MQTTAddr is node i's MQTT TCP listener, 127.0.0.1:port, the same across
// restarts.
func (c *FerryCluster) MQTTAddr(i int) string { return c.node(i).mqttAddr }

// AdminAddr is node i's admin endpoint, 127.0.0.1:port, the same across
// restarts.
func (c *FerryCluster) AdminAddr(i int) string { return c.node(i).adminAddr }

// Config is node i's YAML configuration, for failure messages.
func (c *FerryCluster) Config(i int) string { return c.node(i).config }

// Dir is node i's directory: its ferry.yaml and its data directory, data.
func (c *FerryCluster) Dir(i int) string { return c.node(i).dir }

// Kill kills node i (SIGKILL, also when it is stopped) and waits until it
// has exited. A node that has exited already is left alone.
func (c *FerryCluster) Kill(i int) {
	c.t.Helper()
	p := c.Node(i)
	if p.exited() {
		return
	}
	_ = p.Cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(ferryExitTimeout):
		c.t.Fatalf("ferry node %s still running %s after SIGKILL", c.nodes[i].id, ferryExitTimeout)
	}
}

// Stop freezes node i (SIGSTOP) until Cont: its sockets stay open but it
// answers nothing, as a hung or partitioned node.
func (c *FerryCluster) Stop(i int) { c.t.Helper(); c.signal(i, syscall.SIGSTOP) }

// Cont resumes node i after Stop (SIGCONT).
func (c *FerryCluster) Cont(i int) { c.t.Helper(); c.signal(i, syscall.SIGCONT) }

func (c *FerryCluster) signal(i int, sig syscall.Signal) {
	c.t.Helper()
	p := c.Node(i)
	if p.exited() {
		c.t.Fatalf("signal %v to ferry node %s: it has exited\n%s", sig, c.nodes[i].id, c.logs())
	}
	if err := p.Cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to ferry node %s: %v", sig, c.nodes[i].id, err)
	}
}

// Restart starts the given nodes again, all at once, with their
// configuration and data, and waits up to FerryClusterStartTimeout until
// each has logged "ferry started". Each must have exited (Kill, or a
// signal and Proc.Wait). Restarting several nodes together is how a
// cluster that lost its quorum comes back: one at a time, the first could
// not finish starting.
func (c *FerryCluster) Restart(nodes ...int) {
	c.t.Helper()
	for _, i := range nodes {
		if !c.Node(i).exited() {
			c.t.Fatalf("restart ferry node %s: still running (Kill it first)", c.nodes[i].id)
		}
	}
	c.start(nodes)
}

// start launches the given nodes, then waits for each.
func (c *FerryCluster) start(nodes []int) {
	c.t.Helper()
	for _, i := range nodes {
		nd := c.node(i)
		nd.procs = append(nd.procs, LaunchFerry(c.t, c.bin, c.env, "-c", nd.confPath))
	}
	deadline := time.Now().Add(FerryClusterStartTimeout)
	for _, i := range nodes {
		nd := c.nodes[i]
		p := c.Node(i)
		if err := p.waitStarted(time.Until(deadline)); err != nil {
			c.t.Fatalf("ferry node %s: %v", nd.id, err)
		}
		if got := p.Addr("tcp"); got != "" && got != nd.mqttAddr {
			c.t.Fatalf("ferry node %s: MQTT listener on %s, configured %s", nd.id, got, nd.mqttAddr)
		}
	}
}

func (c *FerryCluster) node(i int) *ferryNode {
	c.t.Helper()
	if i < 0 || i >= len(c.nodes) {
		c.t.Fatalf("ferry node index %d out of range [0, %d)", i, len(c.nodes))
	}
	return c.nodes[i]
}

// logs is every node's configuration and the tail of each run's log.
func (c *FerryCluster) logs() string {
	var b strings.Builder
	for _, nd := range c.nodes {
		fmt.Fprintf(&b, "--- ferry node %s config (%s):\n%s", nd.id, nd.confPath, nd.config)
		for run, p := range nd.procs {
			fmt.Fprintf(&b, "--- ferry node %s run %d log:\n%s", nd.id, run+1, tail(p.Log(), logTail))
			if p.exited() {
				fmt.Fprintf(&b, "(exited: %v)\n", p.err)
			}
		}
	}
	return b.String()
}

func (c *FerryCluster) printLogs() {
	if c.t.Failed() {
		c.t.Log("ferry cluster:\n" + c.logs())
	}
}
