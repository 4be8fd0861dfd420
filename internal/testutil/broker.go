package testutil

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/persistence"
)

// Broker is a Ferry broker started for one test.
type Broker struct {
	// Addr is the MQTT TCP listener's host:port on 127.0.0.1.
	Addr string
	// URL is Addr as a paho broker URL, tcp://host:port.
	URL string
	// AdminURL is the admin endpoint, http://host:port.
	AdminURL string
	// B is the broker itself.
	B *broker.Broker
}

// TestConfig is the configuration StartBroker begins from: one TCP listener
// named "tcp" on 127.0.0.1:0, admin on 127.0.0.1:0, storage in dir.
func TestConfig(dir string) config.Config {
	admin := "127.0.0.1:0"
	return config.Config{
		Listeners: []config.Listener{{Name: "tcp", Type: config.ListenerTCP, Addr: "127.0.0.1:0"}},
		Storage:   persistence.Config{Dir: dir},
		Admin:     config.Admin{Addr: &admin},
	}
}

// StartBroker starts Ferry on loopback with TestConfig, changed by each
// mutate in turn, waits until it accepts, and shuts it down when the test
// ends. Set FERRY_TEST_LOG=1 to see its log.
func StartBroker(t testing.TB, mutate ...func(*config.Config)) *Broker {
	t.Helper()
	return StartBrokerWith(t, nil, mutate...)
}

// StartBrokerWith is StartBroker with broker options (the logger is set by
// StartBroker unless opts set one).
func StartBrokerWith(t testing.TB, opts []broker.Option, mutate ...func(*config.Config)) *Broker {
	t.Helper()
	cfg := TestConfig(t.TempDir())
	for _, m := range mutate {
		m(&cfg)
	}
	var w io.Writer = io.Discard
	if os.Getenv("FERRY_TEST_LOG") != "" {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := broker.New(cfg, append([]broker.Option{broker.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatalf("broker config: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("broker start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("broker shutdown: %v", err)
		}
	})
	tb := &Broker{B: b, Addr: b.Addr(cfg.Listeners[0].Name)}
	tb.URL = "tcp://" + tb.Addr
	if a := b.AdminAddr(); a != "" {
		tb.AdminURL = "http://" + a
	}
	return tb
}
