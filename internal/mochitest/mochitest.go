// Package mochitest serves a bare mochi server on loopback for tests, with a
// close that fails the test with every goroutine's stack instead of
// hanging. It imports only mochi, so any Ferry package's tests can use it.
package mochitest

import (
	"crypto/tls"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// CloseTimeout bounds how long Close may take before the test fails with a
// goroutine dump.
const CloseTimeout = 15 * time.Second

// Listener is a mochi TCP listener on 127.0.0.1:0 that reports the port it
// got (mochi's own reports the configured address).
type Listener struct {
	// TLS, when set before Init, makes it a TLS listener.
	TLS *tls.Config

	id  string
	ln  net.Listener
	end atomic.Bool
}

var _ listeners.Listener = (*Listener)(nil)

// NewListener returns a listener with the given id for srv.
func NewListener(_ *mqtt.Server, id string) *Listener {
	return &Listener{id: id}
}

// ID returns the listener's id.
func (l *Listener) ID() string { return l.id }

// Protocol returns "tcp".
func (l *Listener) Protocol() string { return "tcp" }

// Address returns the bound address, host:port.
func (l *Listener) Address() string { return l.ln.Addr().String() }

// URL returns tcp://host:port.
func (l *Listener) URL() string { return "tcp://" + l.Address() }

// Init binds 127.0.0.1:0.
func (l *Listener) Init(*slog.Logger) (err error) {
	l.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err == nil && l.TLS != nil {
		l.ln = tls.NewListener(l.ln, l.TLS)
	}
	return err
}

// Serve accepts until Close.
func (l *Listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil || l.end.Load() {
			return
		}
		go func() { _ = establish(l.id, conn) }()
	}
}

// Close stops accepting and has mochi disconnect this listener's clients.
func (l *Listener) Close(closeClients listeners.CloseFn) {
	if !l.end.CompareAndSwap(false, true) {
		return
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
	closeClients(l.id)
}

// Serve adds a Listener to srv, starts it and closes it when the test ends
// (see Close). It returns the listener.
func Serve(t testing.TB, srv *mqtt.Server) *Listener {
	t.Helper()
	return ServeTLS(t, srv, nil)
}

// ServeTLS is Serve with a TLS listener when cfg is not nil.
func ServeTLS(t testing.TB, srv *mqtt.Server, cfg *tls.Config) *Listener {
	t.Helper()
	l := NewListener(srv, "test")
	l.TLS = cfg
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(t, srv) })
	return l
}

// Close closes srv, failing the test with every goroutine's stack if it
// takes longer than CloseTimeout. Closing twice is harmless.
func Close(t testing.TB, srv *mqtt.Server) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Close()
	}()
	select {
	case <-done:
	case <-time.After(CloseTimeout):
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("mochi Server.Close did not return within %s; goroutines:\n%s", CloseTimeout, buf)
	}
}
