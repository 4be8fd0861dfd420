package persistence

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/ferrymq/ferry/internal/mochitest"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	st, err := Open(cfg, discard())
	if err != nil {
		t.Fatalf("open %s: %v", cfg.Dir, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// eventually polls fn until it is true or fails the test after timeout.
func eventually(t testing.TB, timeout time.Duration, msg string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, msg)
		}
		<-tick.C
	}
}

type broker struct {
	t    testing.TB
	once sync.Once
	srv  *mqtt.Server
	hook *Hook
	url  string
}

// startBroker serves a mochi server with the persistence hook on st.
func startBroker(t testing.TB, st *Store, caps func(*mqtt.Capabilities)) *broker {
	t.Helper()
	return startBrokerWith(t, st, caps, nil)
}

// startBrokerWith is startBroker with a chance to adjust the hook (its
// clock) before Serve loads the store.
func startBrokerWith(t testing.TB, st *Store, caps func(*mqtt.Capabilities), adjust func(*Hook)) *broker {
	t.Helper()
	opts := &mqtt.Options{Logger: discard(), InlineClient: true}
	if caps != nil {
		opts.Capabilities = mqtt.NewDefaultServerCapabilities()
		caps(opts.Capabilities)
	}
	srv := mqtt.New(opts)
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	h := NewHook(st, srv)
	if adjust != nil {
		adjust(h)
	}
	if err := srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	l := mochitest.Serve(t, srv)
	b := &broker{t: t, srv: srv, hook: h, url: l.URL()}
	t.Cleanup(b.close)
	return b
}

func (b *broker) close() { b.once.Do(func() { mochitest.Close(b.t, b.srv) }) }

func connect(t testing.TB, url, id string, clean bool, onMsg paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetConnectTimeout(5 * time.Second)
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() {
		if c.IsConnected() {
			c.Disconnect(0)
		}
	})
	return c
}

func wait(t testing.TB, what string, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// newServerWithHook returns an unstarted server with the hook on st.
func newServerWithHook(t testing.TB, st *Store) *mqtt.Server {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: discard()})
	if err := srv.AddHook(NewHook(st, srv), nil); err != nil {
		t.Fatal(err)
	}
	return srv
}
