// Package bridgerun starts a bridge on a real outbox for connector tests:
// the set-up every connector's tests share.
package bridgerun

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/outbox"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// Bridge is a started bridge and its outbox.
type Bridge struct {
	B      *bridge.Bridge
	Outbox *outbox.Outbox
	Reg    *prometheus.Registry

	bridgeOnce, outboxOnce sync.Once
}

// Start runs routesYAML (a YAML list of routes) with factories on an outbox
// in dir (a new temporary directory when empty), handing ingress messages
// to pub. The bridge and then the outbox are closed when the test ends.
func Start(t testing.TB, dir, routesYAML string, pub bridge.Publisher, factories map[string]bridge.Factory) *Bridge {
	t.Helper()
	return StartLogged(t, dir, routesYAML, pub, factories, nil)
}

// StartLogged is Start with the bridge logging to log (nil: discarded).
func StartLogged(t testing.TB, dir, routesYAML string, pub bridge.Publisher, factories map[string]bridge.Factory, log *slog.Logger) *Bridge {
	t.Helper()
	var rs []bridge.RouteConfig
	if err := yaml.Unmarshal([]byte(routesYAML), &rs); err != nil {
		t.Fatal(err)
	}
	if dir == "" {
		dir = t.TempDir()
	}
	ob, err := outbox.Open(outbox.Config{Dir: dir, Sync: outbox.SyncBatch}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &Bridge{Outbox: ob, Reg: prometheus.NewRegistry()}
	r.B, err = bridge.New(rs, bridge.Deps{Outbox: ob, Publisher: pub, Registerer: r.Reg, Factories: factories, Logger: log})
	if err == nil {
		err = r.B.Start(context.Background())
	}
	if err != nil {
		_ = ob.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(t) })
	return r
}

// CloseBridge stops the bridge (workers, connectors), leaving the outbox
// open. Safe to call more than once.
func (r *Bridge) CloseBridge(t testing.TB) {
	r.bridgeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.B.Close(ctx); err != nil {
			t.Error(err)
		}
	})
}

// Close stops the bridge, then closes the outbox. Safe to call more than
// once.
func (r *Bridge) Close(t testing.TB) {
	r.CloseBridge(t)
	r.outboxOnce.Do(func() {
		if err := r.Outbox.Close(); err != nil {
			t.Error(err)
		}
	})
}
