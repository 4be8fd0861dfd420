package testutil

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// NATSClusterName is the cluster name StartNATSCluster gives its
	// servers.
	NATSClusterName = "ferry-test"
	// NATSClusterReadyTimeout bounds how long StartNATSCluster and
	// NATSCluster.Start wait for the servers to accept clients and for
	// JetStream to have a meta leader that sees every running server as
	// current.
	NATSClusterReadyTimeout = 30 * time.Second
	// natsMaxMem and natsMaxFile are each server's JetStream limits, small
	// enough that n servers fit a CI machine's RAM and disk.
	natsMaxMem  = "256MB"
	natsMaxFile = "2GB"
	// natsExitTimeout bounds the wait for a SIGKILLed server to exit.
	natsExitTimeout = 10 * time.Second
	// logTail is how much of each process's log a failed test prints.
	logTail = 64 << 10
)

// NATSCluster is a cluster of real nats-server processes with JetStream,
// owned by one test: n servers named n1..nN on loopback, each with its own
// client, cluster (route) and monitoring port, configuration file and
// store directory in t.TempDir(), explicit routes to every other server,
// and no_advertise set, so a client only uses the URLs it was given. The
// servers are killed when the test ends; when it failed, their logs are
// printed.
//
// Methods take the *testing.T given to StartNATSCluster and fail it: call
// them from that test's goroutine (Kill is also safe from others).
// Servers are indexed from 0: server i is named n<i+1>.
type NATSCluster struct {
	t       testing.TB
	bin     string
	servers []*natsServer
	mu      sync.Mutex // guards each server's cmd, done and stopped
	// logged is set once a failure message included the logs, so the
	// cleanup does not print them twice.
	logged bool
}

type natsServer struct {
	name                              string
	clientPort, clusterPort, httpPort int
	dir                               string // configuration and store
	log                               *Log   // stdout and stderr of every run
	cmd                               *exec.Cmd
	done                              chan struct{}
	stopped                           bool // SIGSTOPped
}

// StartNATSCluster starts n nats-server processes forming one JetStream
// cluster (skipping the test when nats-server is not installed, failing
// under CI=true; FERRY_TEST_NATS_SERVER names the binary, else it is looked
// up in PATH and /usr/sbin), and waits up to NATSClusterReadyTimeout until
// every server accepts clients and serves the JetStream API, and the
// JetStream meta group has a leader that sees all n servers as current.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartNATSCluster: n is %d, want at least 1", n)
	}
	bin := os.Getenv("FERRY_TEST_NATS_SERVER")
	if bin == "" {
		bin = NeedCommand(t, "nats-server", "nats-server")
	}
	c := newNATSCluster(t, bin, n)
	t.Cleanup(c.printLogs) // registered first, so it runs after the kills
	for i := range c.servers {
		c.writeConfig(i)
	}
	t.Cleanup(c.killAll)
	for i := range c.servers {
		c.launch(i)
	}
	c.waitReady()
	return c
}

// newNATSCluster assigns names, ports and directories; it starts nothing.
func newNATSCluster(t testing.TB, bin string, n int) *NATSCluster {
	t.Helper()
	ports := freePorts(t, 3*n)
	c := &NATSCluster{t: t, bin: bin}
	for i := range n {
		c.servers = append(c.servers, &natsServer{
			name:       "n" + strconv.Itoa(i+1),
			clientPort: ports[3*i], clusterPort: ports[3*i+1], httpPort: ports[3*i+2],
			dir: t.TempDir(),
			log: &Log{},
		})
	}
	return c
}

// URLs is every server's client URL, comma-separated, as nats.Connect
// takes them.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.servers))
	for i := range c.servers {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// URL is server i's client URL, nats://127.0.0.1:port; it does not change
// when the server restarts.
func (c *NATSCluster) URL(i int) string {
	return "nats://127.0.0.1:" + strconv.Itoa(c.server(i).clientPort)
}

// Name is server i's server_name, n<i+1>, as JetStream reports it (for
// example as a stream's leader).
func (c *NATSCluster) Name(i int) string { return c.server(i).name }

// Index is the index of the server named name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, s := range c.servers {
		if s.name == name {
			return i
		}
	}
	return -1
}

// Len is the number of servers.
func (c *NATSCluster) Len() int { return len(c.servers) }

// Log is everything server i has written so far, over all its runs.
func (c *NATSCluster) Log(i int) string { return c.server(i).log.String() }

// Kill kills server i (SIGKILL, also when it is stopped) and waits until
// it has exited. A server that is not running is left alone.
func (c *NATSCluster) Kill(i int) {
	c.t.Helper()
	s := c.server(i)
	c.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.stopped = nil, false
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(natsExitTimeout):
		c.t.Fatalf("nats-server %s still running %s after SIGKILL", s.name, natsExitTimeout)
	}
}

// Start starts server i again (after Kill) on the same ports, configuration
// and store directory, and waits as StartNATSCluster does until the
// running servers form a ready cluster again.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	s := c.server(i)
	c.mu.Lock()
	running := s.cmd != nil
	c.mu.Unlock()
	if running {
		c.t.Fatalf("start nats-server %s: already running", s.name)
	}
	fmt.Fprintf(s.log, "=== testutil: restarting %s\n", s.name)
	c.launch(i)
	c.waitReady()
}

// Stop freezes server i (SIGSTOP): its sockets stay open but it answers
// nothing, as a hung or partitioned server, until Cont.
func (c *NATSCluster) Stop(i int) { c.t.Helper(); c.signal(i, syscall.SIGSTOP) }

// Cont resumes server i after Stop (SIGCONT). It does not wait for the
// server to catch up.
func (c *NATSCluster) Cont(i int) { c.t.Helper(); c.signal(i, syscall.SIGCONT) }

func (c *NATSCluster) signal(i int, sig syscall.Signal) {
	c.t.Helper()
	s := c.server(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.cmd == nil {
		c.t.Fatalf("signal %v to nats-server %s: not running", sig, s.name)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to nats-server %s: %v", sig, s.name, err)
	}
	s.stopped = sig == syscall.SIGSTOP
}

func (c *NATSCluster) server(i int) *natsServer {
	c.t.Helper()
	if i < 0 || i >= len(c.servers) {
		c.t.Fatalf("nats-server index %d out of range [0, %d)", i, len(c.servers))
	}
	return c.servers[i]
}

func (c *NATSCluster) confPath(i int) string {
	return filepath.Join(c.servers[i].dir, "nats-server.conf")
}

// config is server i's configuration file.
func (c *NATSCluster) config(i int) string {
	s := c.servers[i]
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\n", s.name)
	fmt.Fprintf(&b, "listen: \"127.0.0.1:%d\"\n", s.clientPort)
	fmt.Fprintf(&b, "http: \"127.0.0.1:%d\"\n", s.httpPort)
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n  max_mem: %s\n  max_file: %s\n}\n",
		filepath.Join(s.dir, "store"), natsMaxMem, natsMaxFile)
	fmt.Fprintf(&b, "cluster {\n  name: %s\n  listen: \"127.0.0.1:%d\"\n  no_advertise: true\n  routes: [\n",
		NATSClusterName, s.clusterPort)
	for j, o := range c.servers {
		if j != i {
			fmt.Fprintf(&b, "    \"nats://127.0.0.1:%d\"\n", o.clusterPort)
		}
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

func (c *NATSCluster) writeConfig(i int) {
	c.t.Helper()
	if err := os.WriteFile(c.confPath(i), []byte(c.config(i)), 0o600); err != nil {
		c.t.Fatalf("write nats-server %s config: %v", c.servers[i].name, err)
	}
}

// launch starts server i's process and returns at once.
func (c *NATSCluster) launch(i int) {
	c.t.Helper()
	s := c.servers[i]
	cmd := exec.Command(c.bin, "-c", c.confPath(i))
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start nats-server %s: %v", s.name, err)
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(s.log, "=== testutil: nats-server %s exited: %v\n", s.name, err)
		close(done)
	}()
	c.mu.Lock()
	s.cmd, s.done, s.stopped = cmd, done, false
	c.mu.Unlock()
}

func (c *NATSCluster) killAll() {
	for i := range c.servers {
		c.Kill(i)
	}
}

// waitReady polls until ready passes or NATSClusterReadyTimeout ends, then
// fails the test with the last reason and every server's log.
func (c *NATSCluster) waitReady() {
	c.t.Helper()
	deadline := time.Now().Add(NATSClusterReadyTimeout)
	for {
		err := c.ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.logged = true
			c.t.Fatalf("nats cluster not ready within %s: %v\n%s", NATSClusterReadyTimeout, err, c.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jsz is the part of nats-server's /jsz monitoring answer ready reads.
type jsz struct {
	Meta *struct {
		Leader   string `json:"leader"`
		Replicas []struct {
			Name    string `json:"name"`
			Current bool   `json:"current"`
			Offline bool   `json:"offline"`
		} `json:"replicas"`
	} `json:"meta_cluster"`
}

// ready checks the servers that run and are not stopped: each accepts a
// client and answers the JetStream API ($JS.API.INFO), all name the same
// meta leader, that leader is one of them, and its /jsz lists every other
// one as a current, online peer.
func (c *NATSCluster) ready() error {
	c.mu.Lock()
	var up []int
	for i, s := range c.servers {
		if s.cmd != nil && !s.stopped {
			up = append(up, i)
		}
	}
	c.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	leader := ""
	views := map[string]*jsz{}
	for _, i := range up {
		s := c.servers[i]
		var z jsz
		if err := getJSON(hc, fmt.Sprintf("http://127.0.0.1:%d/jsz", s.httpPort), &z); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if z.Meta == nil || z.Meta.Leader == "" {
			return fmt.Errorf("%s: no JetStream meta leader yet", s.name)
		}
		if leader == "" {
			leader = z.Meta.Leader
		} else if z.Meta.Leader != leader {
			return fmt.Errorf("%s sees meta leader %s, another server sees %s", s.name, z.Meta.Leader, leader)
		}
		views[s.name] = &z
	}
	if len(up) > 0 {
		lz, ok := views[leader]
		if !ok {
			return fmt.Errorf("meta leader %s is not a running server", leader)
		}
		for _, i := range up {
			name := c.servers[i].name
			if name == leader {
				continue
			}
			current := false
			for _, r := range lz.Meta.Replicas {
				if r.Name == name && r.Current && !r.Offline {
					current = true
				}
			}
			if !current {
				return fmt.Errorf("meta leader %s does not see %s as a current peer", leader, name)
			}
		}
	}
	for _, i := range up {
		if err := jsAvailable(c.URL(i)); err != nil {
			return fmt.Errorf("%s: %w", c.servers[i].name, err)
		}
	}
	return nil
}

func getJSON(hc *http.Client, url string, v any) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return nil
}

// jsAvailable connects to url alone and asks for the account's JetStream
// information.
func jsAvailable(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("$JS.API.INFO: %w", err)
	}
	return nil
}

// logs is the tail of every server's log, for a failure message.
func (c *NATSCluster) logs() string {
	var b strings.Builder
	for _, s := range c.servers {
		fmt.Fprintf(&b, "--- nats-server %s (client %d, cluster %d, http %d) log:\n%s",
			s.name, s.clientPort, s.clusterPort, s.httpPort, tail(s.log.String(), logTail))
	}
	return b.String()
}

func (c *NATSCluster) printLogs() {
	if c.t.Failed() && !c.logged {
		c.t.Log("nats cluster logs:\n" + c.logs())
	}
}

// tail is the last n bytes of s, from a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := len(s) - n
	if j := strings.IndexByte(s[cut:], '\n'); j >= 0 {
		cut += j + 1
	}
	return fmt.Sprintf("[... %d bytes left out ...]\n%s", cut, s[cut:])
}

// freePorts returns n distinct FreePort ports.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	seen := map[int]bool{}
	ports := make([]int, 0, n)
	for len(ports) < n {
		p := FreePort(t)
		if seen[p] {
			continue
		}
		seen[p] = true
		ports = append(ports, p)
	}
	return ports
}
