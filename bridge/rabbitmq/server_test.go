package rabbitmq_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
)

// serverBinary is where Debian's rabbitmq-server package puts the server.
const serverBinary = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// script is scripts/rabbitmq.sh, relative to this package.
var script = filepath.Join("..", "..", "scripts", "rabbitmq.sh")

// server is the RabbitMQ the tests use, set by TestMain: FERRY_TEST_RABBITMQ_URL
// (and FERRY_TEST_RABBITMQ_DIR when the script started it), or one
// TestMain started. Empty url: none (skip reason in skipWhy).
var server struct{ url, dir, skipWhy string }

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	server.url = os.Getenv("FERRY_TEST_RABBITMQ_URL")
	server.dir = os.Getenv("FERRY_TEST_RABBITMQ_DIR")
	if server.url == "" {
		if _, err := os.Stat(serverBinary); err != nil {
			server.skipWhy = "rabbitmq-server not found (apt-get install rabbitmq-server, or set FERRY_TEST_RABBITMQ_URL)"
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "ferry-rabbitmq-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		server.dir = dir
		url, err := scriptCall("rabbitmq_start", "; echo $FERRY_TEST_RABBITMQ_URL")
		defer func() {
			if _, err := scriptCall("rabbitmq_stop", ""); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		server.url = url
	}
	return m.Run()
}

// scriptCall runs `fn server.dir` from scripts/rabbitmq.sh, then tail, and
// returns the last line of its output.
func scriptCall(fn, tail string, args ...string) (string, error) {
	cmdline := fmt.Sprintf(". %q && %s %q", script, fn, server.dir)
	for _, a := range args {
		cmdline += fmt.Sprintf(" %q", a)
	}
	out, err := exec.Command("bash", "-c", cmdline+tail).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", fn, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// needServer returns the server's URL, skipping (failing under CI=true)
// when there is none.
func needServer(t *testing.T) string {
	t.Helper()
	if server.url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(server.skipWhy)
		}
		t.Skip(server.skipWhy)
	}
	return server.url
}

// needDir is needServer for tests that stop, restart or administer the
// server through the script: they need its directory.
func needDir(t *testing.T) {
	t.Helper()
	needServer(t)
	if server.dir == "" {
		t.Skip("FERRY_TEST_RABBITMQ_DIR not set: the server is not one scripts/rabbitmq.sh started")
	}
}

func stopServer(t *testing.T) {
	t.Helper()
	if _, err := scriptCall("rabbitmq_stop", ""); err != nil {
		t.Fatal(err)
	}
}

func startServer(t *testing.T) {
	t.Helper()
	if _, err := scriptCall("rabbitmq_start", ""); err != nil {
		t.Fatal(err)
	}
}

// closeAllConnections makes the server drop every client connection.
func closeAllConnections(t *testing.T) {
	t.Helper()
	if _, err := scriptCall("rabbitmq_ctl", "", "close_all_connections", "ferry test"); err != nil {
		t.Fatal(err)
	}
}

var nameSeq atomic.Int64

// name returns an exchange or queue name unique to this test run.
func name(kind string) string {
	return fmt.Sprintf("ferrytest.%d.%d.%s", os.Getpid(), nameSeq.Add(1), kind)
}

// client is a test connection and channel, closed at cleanup.
func client(t *testing.T) *amqp.Channel {
	t.Helper()
	var conn *amqp.Connection
	bridgetest.Eventually(t, 20*time.Second, "test client connected", func() bool {
		var err error
		conn, err = amqp.Dial(needServer(t))
		return err == nil
	})
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return ch
}

// declare declares a durable exchange of kind and a durable queue bound to
// it with key; it returns their names.
func declare(t *testing.T, ch *amqp.Channel, kind, key string) (exchange, queue string) {
	t.Helper()
	exchange, queue = name("x"), name("q")
	if err := ch.ExchangeDeclare(exchange, kind, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, key, exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	return exchange, queue
}
