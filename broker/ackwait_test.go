package broker

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// pipeConn is a conn over net.Pipe and the reader of the client's end.
func pipeConn(t *testing.T) (*conn, *bufio.Reader) {
	t.Helper()
	srv, cli := net.Pipe()
	b := &Broker{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c := &conn{Conn: srv, b: b}
	c.acond.L = &c.amu
	c.released = true
	t.Cleanup(func() { _ = srv.Close(); _ = cli.Close(); b.wg.Wait() })
	return c, bufio.NewReader(cli)
}

// chanWait is done when its channel is closed.
type chanWait struct {
	ch  chan struct{}
	err error
}

func (w chanWait) Wait() error { <-w.ch; return w.err }

func (w chanWait) Ready() bool {
	select {
	case <-w.ch:
		return true
	default:
		return false
	}
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestDeferredAcksCoalesce: acknowledgements whose writes completed together
// go out in one write, in order.
func TestDeferredAcksCoalesce(t *testing.T) {
	c, r := pipeConn(t)
	cc := &countingConn{Conn: c.Conn}
	c.Conn = cc
	done := make(chan struct{})
	for pid := uint16(1); pid <= 3; pid++ {
		c.DeferAck(pid, chanWait{done, nil})
		if _, err := c.Write(ack(packets.Puback, pid)); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	var all []byte
	for range 3 {
		all = append(all, readPacket(t, r)...)
	}
	want := append(append(ack(packets.Puback, 1), ack(packets.Puback, 2)...), ack(packets.Puback, 3)...)
	if string(all) != string(want) {
		t.Fatalf("got %v, want %v", all, want)
	}
	if n := cc.writes.Load(); n != 1 {
		t.Fatalf("%d writes for three acknowledgements done together, want 1", n)
	}
}

func ack(typ byte, pid uint16) []byte {
	return []byte{typ << 4, 2, byte(pid >> 8), byte(pid)}
}

// readPacket reads one packet of the short kinds these tests write.
func readPacket(t *testing.T, r *bufio.Reader) []byte {
	t.Helper()
	h := make([]byte, 2)
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("read: %v", err)
	}
	body := make([]byte, h[1])
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read: %v", err)
	}
	return append(h, body...)
}

// TestDeferredAckOrder: a PUBACK whose wait is not done is held, and so is
// everything written after it; they go out in order once it is done, and a
// connection without deferred acknowledgements writes straight through.
func TestDeferredAckOrder(t *testing.T) {
	c, r := pipeConn(t)
	got := make(chan []byte, 16)
	go func() {
		for {
			h := make([]byte, 2)
			if _, err := io.ReadFull(r, h); err != nil {
				close(got)
				return
			}
			body := make([]byte, h[1])
			_, _ = io.ReadFull(r, body)
			got <- append(h, body...)
		}
	}()

	// Nothing deferred: straight through.
	if _, err := c.Write(ack(packets.Puback, 1)); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p[3] != 1 {
		t.Fatalf("got %v", p)
	}

	done := make(chan struct{})
	c.DeferAck(7, chanWait{done, nil})
	publish := []byte{packets.Publish << 4, 3, 0, 1, 'x'}
	// One write holding the deferred PUBACK and a PUBLISH after it, then a
	// PUBACK without waits: all three must wait, in order.
	if _, err := c.Write(append(ack(packets.Puback, 7), publish...)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ack(packets.Puback, 8)); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		t.Fatalf("%v written before its wait was done", p)
	case <-time.After(50 * time.Millisecond):
	}
	close(done)
	for i, want := range [][]byte{ack(packets.Puback, 7), publish, ack(packets.Puback, 8)} {
		p := <-got
		if string(p) != string(want) {
			t.Fatalf("packet %d: got %v, want %v", i, p, want)
		}
	}
	// Once drained, writes go straight through again.
	testDrained(t, c)
}

func testDrained(t *testing.T, c *conn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.slow.Load() {
		if time.Now().After(deadline) {
			t.Fatal("connection still on the ordered path")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDeferredAckFailure: when the store fails, the PUBACK is never sent
// and the connection is closed, so the client resends the message.
func TestDeferredAckFailure(t *testing.T) {
	c, r := pipeConn(t)
	c.DeferAck(3, failed{errors.New("disk full")})
	go func() { _, _ = c.Write(ack(packets.Puback, 3)) }()
	h := make([]byte, 1)
	if _, err := r.Read(h); err == nil {
		t.Fatalf("read %v: the PUBACK of a message that was not stored was sent", h)
	}
	if !c.closed.Load() {
		t.Fatal("connection not closed")
	}
}

// TestDeferredAckPubrecAndOthers: waits match by packet id and kind
// (PUBACK, PUBREC); other packets with the same id bytes are not held on
// their own.
func TestDeferredAckPubrecAndOthers(t *testing.T) {
	c, r := pipeConn(t)
	done := make(chan struct{})
	c.DeferAck(9, chanWait{done, nil})
	// A PUBCOMP with id 9 is not what the wait is for: it goes at once.
	go func() { _, _ = c.Write(ack(packets.Pubcomp, 9)) }()
	if p := readPacket(t, r); p[0]>>4 != packets.Pubcomp {
		t.Fatalf("got %v", p)
	}
	go func() { _, _ = c.Write(ack(packets.Pubrec, 9)) }()
	close(done)
	if p := readPacket(t, r); p[0]>>4 != packets.Pubrec || p[3] != 9 {
		t.Fatalf("got %v", p)
	}
	testDrained(t, c)
}
