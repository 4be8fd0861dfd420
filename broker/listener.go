package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is one MQTT endpoint. It implements mochi's listeners.Listener so
// mochi drives its lifecycle, but accepting is Ferry's: every connection is
// wrapped in a conn and served under recover(), and accepting can stop
// before clients are disconnected (mochi's own listeners disconnect first).
type listener struct {
	cfg    config.Listener
	b      *Broker
	tlsCfg *tls.Config
	ln     net.Listener
	hs     *http.Server // ws and wss only
	// establish is mochi's callback, known once Serve is called.
	establish atomic.Pointer[listeners.EstablishFn]
	closed    atomic.Bool

	accepted          atomic.Uint64 // connections accepted
	handshakeFailures atomic.Uint64 // failed TLS handshakes
}

var _ listeners.Listener = (*listener)(nil)

func (l *listener) ID() string       { return l.cfg.Name }
func (l *listener) Protocol() string { return l.cfg.Type }

// Address is the bound address once open (the real port when 0 was asked).
func (l *listener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.cfg.Addr
}

// Init opens the socket; mochi calls it from AddListener.
func (l *listener) Init(*slog.Logger) error {
	network := "tcp"
	if l.cfg.Type == config.ListenerUnix {
		network = "unix"
		// A socket file left by a crashed run would make bind fail; only a
		// socket is removed, never a regular file.
		if fi, err := os.Lstat(l.cfg.Addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(l.cfg.Addr)
		}
	}
	ln, err := net.Listen(network, l.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listener %s (%s %s): %w", l.cfg.Name, l.cfg.Type, l.cfg.Addr, err)
	}
	if l.tlsCfg != nil && l.cfg.Type == config.ListenerTLS {
		ln = tls.NewListener(ln, l.tlsCfg)
	}
	l.ln = ln
	if l.cfg.Type == config.ListenerWS || l.cfg.Type == config.ListenerWSS {
		l.hs = l.newHTTPServer()
	}
	return nil
}

// Serve accepts until the listener is closed. mochi runs it on its own
// goroutine.
func (l *listener) Serve(establish listeners.EstablishFn) {
	if l.hs != nil {
		l.establish.Store(&establish)
		l.serveHTTP()
		return
	}
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, don't spin.
			l.b.log.Error("accept", "listener", l.cfg.Name, "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		var state func() *tls.ConnectionState
		if tc, ok := c.(*tls.Conn); ok {
			state = func() *tls.ConnectionState { s := tc.ConnectionState(); return &s }
		}
		l.b.wg.Add(1)
		go l.b.serveConn(l, c, state, l.b.wg.Done)
	}
}

func (l *listener) serveHTTP() {
	var err error
	if l.cfg.Type == config.ListenerWSS {
		err = l.hs.ServeTLS(l.ln, "", "")
	} else {
		err = l.hs.Serve(l.ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !l.closed.Load() {
		l.b.log.Error("websocket listener stopped", "listener", l.cfg.Name, "err", err)
	}
}

// newHTTPServer upgrades requests on the configured path to MQTT over
// WebSocket and hands them to establish.
func (l *listener) newHTTPServer() *http.Server {
	up := websocket.Upgrader{
		Subprotocols: []string{"mqtt", "mqttv3.1"},
		// Devices and dashboards connect from any origin; authentication is
		// MQTT's, not the browser's.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc(l.cfg.Path, func(w http.ResponseWriter, r *http.Request) {
		establish := l.establish.Load()
		if establish == nil {
			http.Error(w, "not serving", http.StatusServiceUnavailable)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered the client
		}
		var state func() *tls.ConnectionState
		if r.TLS != nil {
			st := *r.TLS
			state = func() *tls.ConnectionState { return &st }
		}
		// A WebSocket connection is never parked, but the handler must not
		// return before it ends whatever the engine does.
		ended := make(chan struct{})
		l.b.wg.Add(1)
		defer l.b.wg.Done()
		l.b.serveConn(l, &wsConn{Conn: ws}, state, func() { close(ended) })
		<-ended
	})
	return &http.Server{Handler: mux, TLSConfig: l.tlsCfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: l.httpErrorLog()}
}

// stopAccepting closes the socket; connections already accepted go on.
func (l *listener) stopAccepting() {
	if !l.closed.CompareAndSwap(false, true) {
		return
	}
	if l.hs != nil {
		// Close, not Shutdown: upgraded websockets are hijacked and
		// untouched by either; Shutdown would only wait for idle handlers.
		_ = l.hs.Close()
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

// Close is called by mochi's Server.Close: stop accepting, then let mochi
// disconnect this listener's clients (MQTT 5 with DISCONNECT 0x8B, 3.x by
// closing the connection).
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.cfg.Name)
}

// ready reports whether the listener is accepting.
func (l *listener) ready() error {
	if l.ln == nil {
		return fmt.Errorf("listener %s is not open", l.cfg.Name)
	}
	if l.closed.Load() {
		return fmt.Errorf("listener %s is closed", l.cfg.Name)
	}
	return nil
}

// wsConn is a websocket as a byte stream: MQTT packets may span binary
// messages and a message may hold several packets.
type wsConn struct {
	*websocket.Conn
	r  io.Reader
	mu sync.Mutex // one write at a time
	// writeDeadline is the deadline for writes, in Unix nanoseconds (0:
	// none). gorilla keeps its own in a field that its writes read without
	// a lock, so Write hands it over under mu.
	writeDeadline atomic.Int64
}

var _ net.Conn = (*wsConn)(nil)

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT needs binary frames, got a text frame")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t time.Time
	if ns := c.writeDeadline.Load(); ns != 0 {
		t = time.Unix(0, ns)
	}
	_ = c.Conn.SetWriteDeadline(t)
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline may be called while a write is under way (conn.Close
// ends a write blocked on a client that stopped reading): it sets the
// socket's deadline, which ends that write, and the one the next write
// hands gorilla. Calling gorilla's directly raced with its writes
// (-race, in a fresh-clone CI run).
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	c.writeDeadline.Store(ns)
	return c.NetConn().SetWriteDeadline(t)
}

func (c *wsConn) SetDeadline(t time.Time) error {
	_ = c.SetWriteDeadline(t)
	return c.NetConn().SetDeadline(t)
}

// closeAll is how listeners stop during a shutdown: all stop accepting first.
