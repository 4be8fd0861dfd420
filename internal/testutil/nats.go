package testutil

import (
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// StartNATS runs an embedded NATS server with JetStream on 127.0.0.1:port
// (-1: any free port), storing in dir (a new temporary directory when
// empty), and waits until it accepts connections. The caller shuts it
// down; starting again on the same port and dir is a restart.
func StartNATS(t testing.TB, port int, dir string) *natsserver.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready after 10s")
	}
	return ns
}
