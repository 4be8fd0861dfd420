// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bufio"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// An idle connection is parked: after Options.IdleParkAfter without a byte
// from its client, its reading goroutine returns and gives its read buffer
// back, and the server's poller (park_linux.go) starts a new goroutine once
// the socket is readable, its keepalive runs out or the client is stopped.
// A goroutine that handled a CONNECT keeps the stack that grew for it
// (16 KB) for as long as it waits, and its read buffer too: parked, a silent
// connection costs only its Client and its socket. The poller is the
// system's (epoll), not a goroutine per connection.

// firstParkAfter bounds the first idle wait after CONNECT (see waitIdle).
const firstParkAfter = 20 * time.Millisecond

// errParked ends a Read whose connection was handed to the poller.
var errParked = errors.New("connection parked")

// parkState is a client's registration with the poller.
type parkState struct {
	rc    syscall.RawConn // the socket; nil: this connection is never parked
	id    int32           // the poller's key while parked
	timer *time.Timer     // wakes the client at its keepalive deadline
	shed  bool            // the first wait, on the goroutine that handled CONNECT, is over
	// deadline is when the connection ends without another packet (zero:
	// never); resumed says the reader was woken rather than given a packet.
	deadline time.Time
	resumed  bool
}

// parkable sets up cl to be parked when idle, if its connection is a
// socket the poller can wait on (not TLS, not a WebSocket, not a pipe).
func (s *Server) parkable(cl *Client) {
	if s.poller == nil || cl.Net.Conn == nil {
		return
	}
	sc, ok := cl.Net.Conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	cl.State.park.rc = rc
}

// waitIdle waits for the first byte of cl's next packet. With nothing
// buffered and parking on, it waits only until the connection has been
// idle for IdleParkAfter (or its keepalive runs out, if that comes first)
// and then parks it: parked is true, and the caller's goroutine must end.
func (cl *Client) waitIdle() (parked bool, err error) {
	after := cl.ops.options.IdleParkAfter
	if cl.packetBuffered() {
		// Read without touching the socket: the deadline matters only
		// for the read that will wait, and time.Now for every packet of
		// a full buffer was 2 % of a fan-in core.
		return false, nil
	}
	if cl.State.park.rc == nil || after <= 0 || cl.Net.bconn.Buffered() > 0 {
		cl.refreshDeadline(cl.State.Keepalive)
		return false, nil
	}
	cl.State.deadlineNext = 0 // the deadlines set below are not refreshDeadline's
	now := time.Now()
	ka := cl.State.park.deadline
	if !cl.State.park.resumed {
		// A packet was just read: the keepalive starts again.
		ka = keepaliveDeadline(now, cl.State.Keepalive)
		cl.State.park.deadline = ka
	}
	cl.State.park.resumed = false
	if !cl.State.park.shed {
		// The goroutine that handled CONNECT has the deepest stack of the
		// connection's life (hooks, the session's storage): it waits only
		// briefly, so a burst of connecting clients does not hold a grown
		// stack each for the whole of IdleParkAfter.
		cl.State.park.shed = true
		after = min(after, firstParkAfter)
	}
	idle := now.Add(after)
	if !ka.IsZero() && !idle.Before(ka) {
		_ = cl.Net.Conn.SetDeadline(ka)
		return false, nil
	}
	_ = cl.Net.Conn.SetReadDeadline(idle)
	if _, err := cl.Net.bconn.Peek(1); err == nil {
		// The rest of the packet is read under the keepalive's deadline.
		_ = cl.Net.Conn.SetDeadline(ka)
		return false, nil
	} else if !errors.Is(err, os.ErrDeadlineExceeded) || cl.Closed() {
		return false, err
	}
	if cl.ops.parker.park(cl, ka) {
		return true, nil
	}
	// Not parked (the poller is closing): wait here, as upstream does.
	_ = cl.Net.Conn.SetDeadline(ka)
	return false, nil
}

// keepaliveDeadline is when a connection with keepalive ka (seconds) ends
// if nothing arrives from now on; zero (no deadline) without a keepalive.
func keepaliveDeadline(now time.Time, ka uint16) time.Time {
	if ka == 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(ka+ka/2) * time.Second) // [MQTT-3.1.2-22]
}

// readers are the connections' read buffers, taken back while parked.
type readers struct {
	size int
	pool sync.Pool
}

func (r *readers) get(c net.Conn) *bufio.Reader {
	if b, ok := r.pool.Get().(*bufio.Reader); ok {
		b.Reset(c)
		return b
	}
	return bufio.NewReaderSize(c, r.size)
}

func (r *readers) put(b *bufio.Reader) {
	b.Reset(nil)
	r.pool.Put(b)
}

// resumeClient goes on reading cl's connection after the poller woke it.
func (s *Server) resumeClient(cl *Client) {
	defer s.recoverClient(cl)
	cl.State.park.resumed = true
	cl.Net.bconn = s.readers.get(cl.Net.Conn)
	s.readClient(cl)
}
