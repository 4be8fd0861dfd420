// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// gate is an AckWaiter that is done when its channel closes.
type gate struct {
	ch  chan struct{}
	err error
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) Wait() error { <-g.ch; return g.err }

func (g *gate) Ready() bool {
	select {
	case <-g.ch:
		return true
	default:
		return false
	}
}

// holdingHook holds the acknowledgement of each publish on the gate its
// payload names.
type holdingHook struct {
	HookBase
	gates     map[string]*gate
	held      atomic.Int32
	published atomic.Int32
}

func (h *holdingHook) ID() string { return "holding" }

func (h *holdingHook) Provides(b byte) bool { return b == OnPublish || b == OnPublished }

func (h *holdingHook) OnPublished(*Client, packets.Packet) { h.published.Add(1) }

func (h *holdingHook) OnPublish(cl *Client, pk packets.Packet) (packets.Packet, error) {
	if g := h.gates[string(pk.Payload)]; g != nil && cl.HoldAck(g) {
		h.held.Add(1)
	}
	return pk, nil
}

// readPacketType reads one packet from r and returns its type and id.
func readPacketType(t *testing.T, r *bufio.Reader) (byte, uint16) {
	t.Helper()
	fh, err := r.ReadByte()
	require.NoError(t, err)
	n, _, err := packets.DecodeLength(r)
	require.NoError(t, err)
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	require.NoError(t, err)
	var id uint16
	if n >= 2 {
		id = uint16(body[0])<<8 | uint16(body[1])
	}
	return fh >> 4, id
}

func publishQos(id uint16, qos byte, payload string) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		PacketID:    id,
		TopicName:   "a/b",
		Payload:     []byte(payload),
	}
}

// TestHoldAckOrder: an acknowledgement a hook holds goes out once its write
// is done, and the acknowledgements after it wait behind it, in the order
// the publishes came; the reader is not blocked meanwhile.
func TestHoldAckOrder(t *testing.T) {
	s := newServer()
	h := &holdingHook{gates: map[string]*gate{"slow": newGate()}}
	require.NoError(t, s.AddHook(h, nil))
	cl, r, _ := newTestClient()
	br := bufio.NewReader(r)

	require.NoError(t, s.processPacket(cl, publishQos(1, 1, "slow")))
	require.NoError(t, s.processPacket(cl, publishQos(2, 1, "fast")))
	require.NoError(t, s.processPacket(cl, publishQos(3, 2, "fast")))
	require.Equal(t, int32(1), h.held.Load())
	// Written straight away: not behind the held acknowledgements.
	done := make(chan struct{})
	go func() {
		defer close(done)
		require.NoError(t, s.processPacket(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}))
	}()
	typ, _ := readPacketType(t, br)
	require.Equal(t, packets.Pingresp, typ, "PINGRESP first: PUBACK 1 is held, and 2 and 3 wait behind it")
	<-done

	close(h.gates["slow"].ch)
	for _, want := range []struct {
		typ byte
		id  uint16
	}{{packets.Puback, 1}, {packets.Puback, 2}, {packets.Pubrec, 3}} {
		typ, id := readPacketType(t, br)
		require.Equal(t, want.typ, typ)
		require.Equal(t, want.id, id)
	}
}

// writtenConn keeps what is written to it instead of sending it.
type writtenConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *writtenConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *writtenConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

// TestHoldAckDoneAlready: an acknowledgement held on writes that are done
// already (a hook that had nothing to write, a commit that came first)
// skips the held queue and its goroutine, in which every later
// acknowledgement of the client queued too: in 100 QoS 1 pairs with a
// bridge whose route matched nothing (its offer done at once) that was a
// fifth of the core, in slices and wake-ups.
func TestHoldAckDoneAlready(t *testing.T) {
	s := newServer()
	cl, _, _ := newTestClient()
	wc := &writtenConn{Conn: cl.Net.Conn}
	cl.Net.Conn = wc
	done := newGate()
	close(done.ch)
	for id := uint16(1); id <= 3; id++ {
		require.NoError(t, s.writeAck(cl, s.buildAck(id, packets.Puback, 0, packets.QosCodes[1]), []AckWaiter{done}, nil))
		h := &cl.State.acks
		h.mu.Lock()
		running, held := h.running, len(h.queue)
		h.mu.Unlock()
		require.False(t, running, "PUBACK %d went to the held queue's goroutine", id)
		require.Zero(t, held)
	}
	waitWrites(t, cl)
	br := bufio.NewReader(bytes.NewReader(wc.written()))
	for id := uint16(1); id <= 3; id++ {
		typ, got := readPacketType(t, br)
		require.Equal(t, packets.Puback, typ)
		require.Equal(t, id, got)
	}
}

// TestAcksShareAWrite: acknowledgements go to the client's queue, so those
// queued while it waits (here paused, as while a connection is being
// established; in a run, while the writer writes) go out together, with
// one system call, in order. Upstream wrote each from the reader, with a
// call of its own.
func TestAcksShareAWrite(t *testing.T) {
	s := newServer()
	cl, _, _ := newTestClient()
	cl.ops.options.Capabilities.MaximumClientWritesPending = 1024
	wc := &countingConn{writtenConn: writtenConn{Conn: cl.Net.Conn}}
	cl.Net.Conn = wc
	cl.pauseOutbound() // as while a connection is established: what is queued waits
	for id := uint16(1); id <= 50; id++ {
		require.NoError(t, s.writeAck(cl, s.buildAck(id, packets.Puback, 0, packets.QosCodes[1]), nil, nil))
	}
	require.Zero(t, wc.writes.Load(), "an acknowledgement was written by the reader")
	cl.resumeOutbound()
	waitWrites(t, cl)
	require.Equal(t, int32(1), wc.writes.Load())
	br := bufio.NewReader(bytes.NewReader(wc.written()))
	for id := uint16(1); id <= 50; id++ {
		typ, got := readPacketType(t, br)
		require.Equal(t, packets.Puback, typ)
		require.Equal(t, id, got)
	}
}

// countingConn counts the writes made to it.
type countingConn struct {
	writtenConn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.writtenConn.Write(p)
}

// TestHoldAckFailure: a held write that fails withholds the acknowledgement
// and closes the connection, and a held QoS 2 message reaches nobody; a QoS
// 2 message held behind it whose own write is done is delivered.
func TestHoldAckFailure(t *testing.T) {
	s := newServer()
	g := newGate()
	g.err = errors.New("disk full")
	stored := newGate()
	close(stored.ch)
	h := &holdingHook{gates: map[string]*gate{"doomed": g, "stored": stored}}
	require.NoError(t, s.AddHook(h, nil))
	cl, r, _ := newTestClient()

	require.NoError(t, s.processPacket(cl, publishQos(5, 2, "doomed")))
	require.NoError(t, s.processPacket(cl, publishQos(6, 2, "stored")))
	_, held := cl.State.Inflight.GetInbound(5)
	require.True(t, held)
	require.Equal(t, int32(0), h.published.Load(), "delivered before it was durable")

	read := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r); read <- b }()
	close(g.ch)
	select {
	case b := <-read:
		require.Empty(t, b, "no PUBREC for a message that was not stored")
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after the held write failed")
	}
	require.Eventually(t, cl.Closed, 5*time.Second, time.Millisecond) // Stop closes the socket first
	_, held = cl.State.Inflight.GetInbound(5)
	require.False(t, held, "the resent PUBLISH must be taken as new, not refused as in use")
	require.Eventually(t, func() bool { return h.published.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the stored message is delivered, the failed one is not")
	require.Never(t, func() bool { return h.published.Load() > 1 }, 50*time.Millisecond, time.Millisecond)
	_, held = cl.State.Inflight.GetInbound(6)
	require.True(t, held, "the stored message's PUBREC state is kept: the client's resend is a duplicate")
}

// TestHoldAckOnlyFromOnPublish: outside OnPublish, or for QoS 0, HoldAck
// says no, so the caller knows to wait itself.
func TestHoldAckOnlyFromOnPublish(t *testing.T) {
	cl, _, _ := newTestClient()
	require.False(t, cl.HoldAck(newGate()))
	pk := publishQos(0, 0, "x")
	cl.startCollecting(&pk)
	require.False(t, cl.HoldAck(newGate()))
	cl.stopCollecting()
}

// TestPacketIDsPerDirection: the client's QoS 2 PUBLISH may use the
// identifier of the server's unacknowledged PUBLISH. Upstream took it for a
// resend of its own PUBREC flow or deleted the server's message.
func TestPacketIDsPerDirection(t *testing.T) {
	s := newServer()
	cl, r, w := newTestClient()
	cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "x"})
	go func() {
		require.NoError(t, s.processPacket(cl, publishQos(7, 2, "p")))
		waitWrites(t, cl) // the acknowledgement goes out through the writer (queueAck)
		_ = w.Close()
	}()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, []byte{packets.Pubrec << 4, 2, 0, 7}, b, "PUBREC success for the client's id 7")
	_, ok := cl.State.Inflight.Get(7)
	require.True(t, ok, "the server's PUBLISH 7 is still in flight")
	_, ok = cl.State.Inflight.GetInbound(7)
	require.True(t, ok, "the client's flow 7 awaits PUBREL")
}

// flowHook holds the answer to each PUBREC and PUBREL on its current gate,
// as a storage hook does while the flow's new state is written.
type flowHook struct {
	HookBase
	g    atomic.Pointer[gate]
	held atomic.Int32
}

func (h *flowHook) ID() string           { return "flow" }
func (h *flowHook) Provides(b byte) bool { return b == OnPacketRead }
func (h *flowHook) OnPacketRead(cl *Client, pk packets.Packet) (packets.Packet, error) {
	t := pk.FixedHeader.Type
	if (t == packets.Pubrec || t == packets.Pubrel) && cl.HoldAck(h.g.Load()) {
		h.held.Add(1)
	}
	return pk, nil
}

// TestHoldAckQos2Flow: a hook that stores a QoS 2 flow's new state from
// OnPacketRead holds the PUBREL answering a PUBREC, and the PUBCOMP
// answering a PUBREL, until its write is done; the reader goes on (a
// PINGREQ behind it is answered first).
func TestHoldAckQos2Flow(t *testing.T) {
	s := newServer()
	h := new(flowHook)
	require.NoError(t, s.AddHook(h, nil))
	cl, r, _ := newTestClient()
	cl.ops.hooks = s.hooks // ReadPacket calls OnPacketRead through the client's
	cl.Properties.ProtocolVersion = 4
	br := bufio.NewReader(r)
	// feed has the server read pk from the client and process it, as the
	// connection's one reader does: feeds never overlap.
	feed := func(pk packets.Packet) {
		pk.ProtocolVersion = 4
		var buf bytes.Buffer
		_, err := cl.encodePacket(pk, &buf)
		require.NoError(t, err)
		go func() { _, _ = r.Write(buf.Bytes()) }()
		fh := new(packets.FixedHeader)
		require.NoError(t, cl.ReadFixedHeader(fh))
		in, err := cl.ReadPacket(fh)
		require.NoError(t, err)
		require.NoError(t, s.processPacket(cl, in))
	}
	// feedAsync is feed for a packet whose answer is written at once (the
	// pipe blocks the write until the test reads it).
	feedAsync := func(pk packets.Packet) (done chan struct{}) {
		done = make(chan struct{})
		go func() { defer close(done); feed(pk) }()
		return done
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	held := func(answer byte, id uint16) {
		t.Helper()
		g := h.g.Load()
		done := feedAsync(ping)
		typ, _ := readPacketType(t, br)
		require.Equal(t, packets.Pingresp, typ, "the %s is held, the reader is not", packets.PacketNames[answer])
		<-done
		close(g.ch)
		typ, got := readPacketType(t, br)
		require.Equal(t, answer, typ)
		require.Equal(t, id, got)
	}

	// The client's flow: PUBLISH, PUBREC, PUBREL, PUBCOMP held.
	done := feedAsync(publishQos(1, 2, "in"))
	typ, _ := readPacketType(t, br)
	require.Equal(t, packets.Pubrec, typ)
	<-done
	h.g.Store(newGate())
	feed(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 1})
	require.Equal(t, int32(1), h.held.Load())
	held(packets.Pubcomp, 1)

	// The server's flow: PUBLISH, PUBREC, PUBREL held.
	sent := make(chan uint16, 1)
	go func() {
		out, _ := s.publishToClient(cl, packets.Subscription{Filter: "a/b", Qos: 2}, publishQos(0, 2, "out"))
		sent <- out.PacketID
	}()
	typ, _ = readPacketType(t, br) // (its "id" is the topic's length)
	require.Equal(t, packets.Publish, typ)
	id := <-sent
	h.g.Store(newGate())
	feed(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: id})
	require.Equal(t, int32(2), h.held.Load())
	held(packets.Pubrel, id)
}
