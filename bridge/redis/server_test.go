package redis_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
)

// redisServer is a redis-server process the test owns (restartable) or
// the shared server named by FERRY_TEST_REDIS_ADDR.
type redisServer struct {
	t    *testing.T
	addr string
	port int
	dir  string
	aof  bool
	pass string // requirepass, when set
	cmd  *exec.Cmd
}

// keySeq makes key names unique within the process, so tests can share a
// server.
var keySeq atomic.Int64

// key returns a key name unique to this test run.
func key(t *testing.T, name string) string {
	return fmt.Sprintf("ferrytest:%d:%d:%s", os.Getpid(), keySeq.Add(1), name)
}

// redisBinary returns the redis-server path, skipping (failing under
// CI=true) when there is none.
func redisBinary(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not found (apt-get install redis-server, or set FERRY_TEST_REDIS_ADDR=host:port)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// sharedRedis returns FERRY_TEST_REDIS_ADDR's server, else a private one.
func sharedRedis(t *testing.T) *redisServer {
	t.Helper()
	if addr := os.Getenv("FERRY_TEST_REDIS_ADDR"); addr != "" {
		rs := &redisServer{t: t, addr: addr}
		rs.waitReady()
		return rs
	}
	return ownRedis(t, false)
}

// ownRedis starts a redis-server on a free port in a temp dir, stopped at
// cleanup; aof turns on the append-only file with fsync on every write,
// so a restart keeps every acked entry.
func ownRedis(t *testing.T, aof bool) *redisServer {
	t.Helper()
	return ownRedisPass(t, aof, "")
}

// ownRedisPass is ownRedis with requirepass pass (none when empty).
func ownRedisPass(t *testing.T, aof bool, pass string) *redisServer {
	t.Helper()
	redisBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rs := &redisServer{t: t, port: port, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: t.TempDir(), aof: aof, pass: pass}
	rs.start()
	t.Cleanup(rs.stop)
	return rs
}

func (rs *redisServer) start() {
	rs.t.Helper()
	appendonly := "no"
	if rs.aof {
		appendonly = "yes"
	}
	args := []string{"--port", strconv.Itoa(rs.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", appendonly, "--appendfsync", "always", "--dir", rs.dir}
	if rs.pass != "" {
		args = append(args, "--requirepass", rs.pass)
	}
	cmd := exec.Command(redisBinary(rs.t), args...)
	if err := cmd.Start(); err != nil {
		rs.t.Fatalf("start redis-server: %v", err)
	}
	rs.cmd = cmd
	rs.waitReady()
}

// stop kills the process (SIGKILL: no shutdown save).
func (rs *redisServer) stop() {
	if rs.cmd == nil {
		return
	}
	_ = rs.cmd.Process.Kill()
	_ = rs.cmd.Wait()
	rs.cmd = nil
}

func (rs *redisServer) waitReady() {
	rs.t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: rs.addr, Password: rs.pass, MaxRetries: -1, DisableIdentity: true})
	defer func() { _ = c.Close() }()
	bridgetest.Eventually(rs.t, 10*time.Second, "redis-server at "+rs.addr+" ready", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	})
}

// client is a test client, closed at cleanup.
func (rs *redisServer) client(t *testing.T) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: rs.addr, Password: rs.pass, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}
