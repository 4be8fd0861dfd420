package testutil

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// FreePort returns a loopback TCP port that nothing listened on a moment
// ago, for a server that must come back on the same port after a restart.
// It is taken from 10000-29999, below Linux's ephemeral range
// (32768-60999), as scripts/services.sh does: a port from the ephemeral
// range can be taken, while the server is down, by a client's own end of a
// connection, or by a client reconnecting to it (a connection to a closed
// port from that same port connects to itself), and the restart fails with
// "address already in use".
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(10000+rand.IntN(20000)))
		if err == nil {
			defer l.Close()
			return l.Addr().(*net.TCPAddr).Port
		}
	}
	t.Fatal("no free loopback port in 10000-29999 after 200 tries")
	return 0
}

// FreeAddr is 127.0.0.1:FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(FreePort(t))
}

// Redis is a redis-server process owned by one test, with its append-only
// file (appendfsync always) in its own directory, so a restart on the same
// port and directory keeps every entry Redis acknowledged.
type Redis struct {
	// Addr is 127.0.0.1:port.
	Addr string
	// Dir holds the append-only file.
	Dir  string
	bin  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts redis-server (skipping the test when it is not
// installed, failing under CI=true) on a free loopback port with
// --appendonly yes --appendfsync always in t.TempDir(), waits until it
// answers PING, and kills it when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{bin: NeedCommand(t, "redis-server", "redis-server"), port: FreePort(t), Dir: t.TempDir()}
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
	r.Start(t)
	t.Cleanup(r.Kill)
	return r
}

// Start starts the server again on the same port and directory (after
// Stop or Kill) and waits until it has loaded its data and answers PING.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	if r.cmd != nil {
		t.Fatal("redis-server already running")
	}
	cmd := exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", r.Dir)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(r.done)
	c := r.Client(t)
	defer c.Close()
	Eventually(t, 20*time.Second, "redis-server at "+r.Addr+" ready", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil // LOADING while the AOF is replayed
	})
}

// Stop shuts the server down cleanly (SIGTERM: Redis fsyncs the AOF and
// exits) and waits until it has exited.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	if r.cmd == nil {
		return
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stop redis-server: %v", err)
	}
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatal("redis-server still running 20s after SIGTERM")
	}
	r.cmd = nil
}

// Kill kills the server (SIGKILL) if it runs and waits until it exited.
func (r *Redis) Kill() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// Client returns a go-redis client for the server without retries; the
// caller closes it.
func (r *Redis) Client(t testing.TB) *goredis.Client {
	t.Helper()
	return goredis.NewClient(&goredis.Options{Addr: r.Addr, MaxRetries: -1, DisableIdentity: true})
}

// Proxy is a TCP proxy on loopback in front of a server, which a test cuts
// to make the server unreachable without stopping it (useful when the
// server is shared with other tests).
type Proxy struct {
	// Addr is the proxy's listening address.
	Addr   string
	target string
	l      net.Listener
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards every connection
// to target; it is closed when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer p.drop(c)
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(s) {
		_ = s.Close()
		return
	}
	defer p.drop(s)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(s, c)
	go pipe(c, s)
	<-done // one side ended: close both, which ends the other copy
	p.drop(c)
	p.drop(s)
	<-done
}

// track registers a server-side connection unless the proxy was cut
// meanwhile.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// Cut closes every proxied connection and refuses new ones (they are
// accepted and closed at once) until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Restore forwards new connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *Proxy) close() {
	_ = p.l.Close()
	p.Cut()
	p.wg.Wait()
}
