package broker

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// conn wraps every accepted connection. It counts the bytes that cross it,
// closes the connection of a client that stopped reading (Write), and
// closes lingering: FIN after the last write, then the client's remaining
// bytes are read and dropped for a short while, so the kernel does not
// answer the client's next write with RST and destroy the DISCONNECT the
// client has not read yet. Packets are framed, checked against the size
// limit and decoded once, by the engine.
//
// Reads happen on the engine's reader goroutine; Close may come from any.
type conn struct {
	net.Conn
	b        *Broker
	listener string
	ip       string // remote IP, when per-IP limits are on
	tlsState func() *tls.ConnectionState

	client atomic.Pointer[mqtt.Client] // set once CONNECT is processed
	// connected is set once CONNACK accepted the client (connLogHook).
	connected atomic.Bool
	// handled is closed once mochi's handler for the connection has
	// returned: the client's clean-up is done.
	handled chan struct{}

	// bytesIn and bytesOut count what crossed the socket, since when the
	// session was established, in Unix nanoseconds (admin API).
	bytesIn, bytesOut atomic.Uint64
	since             atomic.Int64

	mu        sync.Mutex // orders deadline changes against Close
	closed    atomic.Bool
	closeOnce sync.Once
}

// Write writes p as the engine handed it, one write at a time. A write
// that takes limits.write_timeout closes the connection: its client stopped
// reading. Only the client's own writer waits for it; publishers queue
// behind it in the engine, which bounds what a client may have pending.
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	wt := c.b.cfg.Limits.WriteTimeout
	if wt > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(wt))
	}
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.bytesOut.Add(uint64(n))
	if err != nil && isTimeout(err) && !c.closed.Load() {
		c.notReading()
	}
	return n, err
}

// TryWrite writes what a plain socket takes without blocking, for the
// engine's direct writes from a publisher's reader (mqtt.TryWriter), and
// counts it as Write does. It goes through SyscallConn, so a TLS or
// WebSocket connection, which frames its bytes above the socket, gets
// errors.ErrUnsupported, and the engine's writer goroutine writes through
// Write.
func (c *conn) TryWrite(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := mqtt.TryWrite(c, p)
	c.bytesOut.Add(uint64(n))
	return n, err
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.bytesIn.Add(uint64(n))
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return n, err
}

// SyscallConn lets the engine park the connection while it is idle (the
// engine's park.go): only a plain socket, whose bytes all pass through Read
// unbuffered. A TLS or WebSocket connection keeps state of its own above
// the socket and is never parked.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	switch nc := c.Conn.(type) {
	case *net.TCPConn:
		return nc.SyscallConn()
	case *net.UnixConn:
		return nc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// TLSConnectionState returns the TLS state of a tls or wss connection, nil
// otherwise.
func (c *conn) TLSConnectionState() *tls.ConnectionState {
	if c.tlsState == nil {
		return nil
	}
	return c.tlsState()
}

// ConnectionState is TLSConnectionState for code that expects *tls.Conn's
// method; the zero value on a plain connection.
func (c *conn) ConnectionState() tls.ConnectionState {
	if s := c.TLSConnectionState(); s != nil {
		return *s
	}
	return tls.ConnectionState{}
}

func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// Close sends FIN and drains the connection in the background for up to the
// configured linger, then closes it. Safe to call more than once.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed.Store(true)
		// A write blocked on a client that stopped reading ends now, not
		// at its deadline (a shutdown waits for it).
		_ = c.Conn.SetWriteDeadline(time.Now())
		cw, ok := c.Conn.(interface{ CloseWrite() error })
		linger := c.b.cfg.Limits.CloseLinger
		if !ok || linger <= 0 || cw.CloseWrite() != nil {
			c.mu.Unlock()
			_ = c.Conn.Close()
			c.b.untrack(c)
			return
		}
		// A deadline in the past wakes mochi's reader, which then sees
		// closed: its handler must end now, not when the client closes its
		// side (a takeover waits for it: mochi's Server.takeOver).
		_ = c.Conn.SetReadDeadline(time.Now())
		c.mu.Unlock()
		c.b.wg.Add(1)
		go func() {
			defer c.b.wg.Done()
			defer c.b.untrack(c)
			defer c.Conn.Close()
			// The drain's deadline must not be set before the reader
			// woke: it would sleep on.
			t := time.NewTimer(linger)
			select {
			case <-c.handled:
			case <-t.C:
			}
			t.Stop()
			_ = c.Conn.SetReadDeadline(time.Now().Add(linger))
			buf := make([]byte, 512)
			for {
				if _, err := c.Conn.Read(buf); err != nil {
					return
				}
			}
		}()
	})
	return nil
}

// notReading closes a connection whose client took nothing for
// write_timeout. A persistent session keeps its messages.
func (c *conn) notReading() {
	c.b.log.Warn("closing connection: client not reading", "client_id", c.clientID(), "remote", c.RemoteAddr().String(),
		"listener", c.listener, "write_timeout", c.b.cfg.Limits.WriteTimeout.String())
	c.b.writeTimeouts.Add(1)
	c.end(errNotReading)
}

var errNotReading = errors.New("client not reading (limits.write_timeout)")

// end closes the connection through the engine once a client is attached:
// the engine then ends its session, also while the connection is parked,
// which a socket closed under it would not tell it.
func (c *conn) end(cause error) {
	if cl := c.client.Load(); cl != nil {
		cl.Stop(cause)
		return
	}
	_ = c.Close()
}

// clientID is the connection's client id, "" before its CONNECT.
func (c *conn) clientID() string {
	if cl := c.client.Load(); cl != nil {
		return cl.ID
	}
	return ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// kill closes the socket at once, for a shutdown whose time is up.
func (c *conn) kill() {
	c.closed.Store(true)
	_ = c.Conn.Close()
}
