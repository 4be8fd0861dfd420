package activemq_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/activemq/stomp"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/internal/testutil"
)

// The users scripts/activemq.sh configures: ferry may use queues and
// topics named ferry.>, not restricted.>.
const (
	login    = "ferry"
	passcode = "ferry"
)

const howTo = "start ActiveMQ with scripts/activemq.sh (activemq_start DIR exports it)"

// needServer returns the STOMP address of the ActiveMQ `make test`
// started, skipping (failing under CI=true) without one.
func needServer(t testing.TB) string {
	t.Helper()
	return testutil.Need(t, "FERRY_TEST_ACTIVEMQ_STOMP", howTo)
}

// needDir returns the directory of the ActiveMQ scripts/activemq.sh
// started, for tests that stop and restart it (DIR/stop.sh, DIR/start.sh).
func needDir(t testing.TB) string {
	t.Helper()
	needServer(t)
	return testutil.Need(t, "FERRY_TEST_ACTIVEMQ_DIR", howTo)
}

// passcodeFile writes the test user's passcode to a file.
func passcodeFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(p, []byte(passcode+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// control runs DIR/stop.sh or DIR/start.sh.
func control(t testing.TB, script string) {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(needDir(t), script)).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

var queueSeq atomic.Int64

// queue returns a queue name unique to this test run, under ferry.>.
func queue(name string) string {
	return fmt.Sprintf("ferry.test.%d.%d.%d.%s", os.Getpid(), time.Now().UnixNano()%1e6, queueSeq.Add(1), name)
}

// client is a test STOMP connection as the ferry user, closed at cleanup;
// it retries while the server is (re)starting.
func client(t testing.TB) *stomp.Conn {
	t.Helper()
	addr := needServer(t)
	var c *stomp.Conn
	bridgetest.Eventually(t, 30*time.Second, "test client connected", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		c, err = stomp.Dial(ctx, addr, stomp.Options{Login: login, Passcode: passcode, HeartBeat: 2 * time.Second})
		return err == nil
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// drain consumes the queue (client-individual, acking each) until it has
// been quiet for quiet, and returns the messages.
func drain(t testing.TB, c *stomp.Conn, queue string, want int, quiet time.Duration) []*stomp.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := c.Subscribe(ctx, "/queue/"+queue, stomp.AckClientIndividual, 256, stomp.Header{Key: "activemq.prefetchSize", Value: "256"})
	if err != nil {
		t.Fatal(err)
	}
	var got []*stomp.Frame
	for {
		wait := quiet
		if len(got) < want {
			wait = 30 * time.Second
		}
		nctx, ncancel := context.WithTimeout(ctx, wait)
		m, err := sub.Next(nctx)
		ncancel()
		if err != nil {
			break
		}
		if err := c.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	return got
}

// send puts messages on a queue as the test user.
func send(t testing.TB, c *stomp.Conn, queue string, msgs ...stomp.Message) {
	t.Helper()
	for i := range msgs {
		msgs[i].Destination = "/queue/" + queue
		msgs[i].Headers = append(msgs[i].Headers, stomp.Header{Key: "persistent", Value: "true"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := c.SendAll(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// proxy forwards TCP connections to target until cut closes them all, so
// a test can drop a connector's connection without touching the server.
type proxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(out, in); _ = out.Close() }()
			go func() { defer p.wg.Done(); _, _ = io.Copy(in, out); _ = in.Close() }()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

// cut closes every proxied connection; new ones are still accepted.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}
