// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/stretchr/testify/require"
)

// TestDeliveryWrittenBeforePuback: a QoS 1 publish's delivery to an idle
// subscriber is written by the publisher's reader itself, at the end of
// its read buffer, before the PUBACK. Upstream (and the writer goroutine
// before this change) wrote the PUBACK first and left the delivery to a
// goroutine that had to be woken: a client subscribed to its own topic got
// PUBACK, then PUBLISH.
func TestDeliveryWrittenBeforePuback(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 4, "self", true, 0)
	p.subscribe(1, "own/topic")
	for i := range 20 {
		p.send(publishPacket("own/topic", 1, uint16(i+1), "x"))
		require.Equal(t, "own/topic", p.expect(packets.Publish).TopicName, "message %d", i)
		require.Equal(t, uint16(i+1), p.expect(packets.Puback).PacketID)
		p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: uint16(i + 1)})
	}
}

// TestDeferredDeliveryNotHeldByPartialPacket: deliveries wait for the end
// of the publisher's read buffer, but not for a packet that has only partly
// arrived: the reader would wait for the network with them unwritten.
func TestDeferredDeliveryNotHeldByPartialPacket(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	sub, _ := connect(t, addr, 4, "sub", true, 0)
	sub.subscribe(1, "a/b")
	publisher, _ := connect(t, addr, 4, "pub", true, 0)

	var buf bytes.Buffer
	for _, payload := range []string{"first", "second"} {
		pk := publishPacket("a/b", 0, 0, payload)
		pk.ProtocolVersion = 4
		require.NoError(t, pk.PublishEncode(&buf))
	}
	raw := buf.Bytes()
	cut := len(raw) - 3 // the second PUBLISH without its last bytes
	_, err := publisher.conn.Write(raw[:cut])
	require.NoError(t, err)
	require.Equal(t, "first", string(sub.expect(packets.Publish).Payload))
	_, err = publisher.conn.Write(raw[cut:])
	require.NoError(t, err)
	require.Equal(t, "second", string(sub.expect(packets.Publish).Payload))
}

func publishPacket(topic string, qos byte, pid uint16, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: pid,
		TopicName: topic, Payload: []byte(payload)}
}

// unixListener is tcpListener on a Unix socket, whose small fixed buffers
// fill fast: a direct write to a subscriber that does not read ends short.
type unixListener struct {
	tcpListener
	path string
}

func (l *unixListener) Init(*slog.Logger) (err error) {
	l.ln, err = net.Listen("unix", l.path)
	return err
}

func (l *unixListener) Serve(establish listeners.EstablishFn) { l.tcpListener.Serve(establish) }

// TestDirectWriteRestKeepsStream: a direct write the subscriber's full
// socket cut short leaves the rest to the writer goroutine; nothing is
// lost, reordered or interleaved, also with a PINGRESP the subscriber's
// own reader writes meanwhile.
func TestDirectWriteRestKeepsStream(t *testing.T) {
	s := newLifecycleServer()
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	l := &unixListener{tcpListener: tcpListener{id: "unix"}, path: filepath.Join(t.TempDir(), "mqtt.sock")}
	require.NoError(t, s.AddListener(l))
	require.NoError(t, s.Serve())
	t.Cleanup(func() { closeWithin(t, s, lifecycleWait) })

	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.DialTimeout("unix", l.path, lifecycleWait)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		return c, bufio.NewReader(c)
	}
	codec := newClient(nil, &ops{info: new(system.Info), hooks: new(Hooks), log: logger,
		options: &Options{Capabilities: NewDefaultServerCapabilities()}})
	codec.Properties.ProtocolVersion = 4
	write := func(c net.Conn, pk packets.Packet) {
		var b bytes.Buffer
		pk.ProtocolVersion = 4
		_, err := codec.encodePacket(pk, &b)
		require.NoError(t, err)
		_, err = c.Write(b.Bytes())
		require.NoError(t, err)
	}
	read := func(c net.Conn, r *bufio.Reader) packets.Packet {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(lifecycleWait)))
		codec.Net.bconn = r
		fh := new(packets.FixedHeader)
		require.NoError(t, codec.ReadFixedHeader(fh))
		pk, err := codec.ReadPacket(fh)
		require.NoError(t, err)
		return pk
	}
	connectAs := func(c net.Conn, r *bufio.Reader, id string) {
		write(c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: id, Clean: true, Keepalive: 30, ProtocolName: []byte("MQTT")}})
		require.Equal(t, packets.Connack, read(c, r).FixedHeader.Type)
	}

	subc, subr := dial()
	connectAs(subc, subr, "sub")
	write(subc, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "big", Qos: 0}}})
	require.Equal(t, packets.Suback, read(subc, subr).FixedHeader.Type)
	pubc, pubr := dial()
	connectAs(pubc, pubr, "pub")

	// 2 MiB the subscriber does not read yet: far more than its socket
	// holds. Sent in bursts, so most go out by direct write.
	const n, size = 512, 4096
	payload := bytes.Repeat([]byte{'x'}, size)
	for i := range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "big",
			Payload: append([]byte(fmt.Sprintf("%06d", i)), payload...)}
		write(pubc, pk)
		if i == n/2 {
			// The subscriber's own reader answers a PING while the
			// deliveries are stuck behind its full socket.
			write(subc, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		}
	}
	pings := 0
	for i := 0; i < n; {
		pk := read(subc, subr)
		if pk.FixedHeader.Type == packets.Pingresp {
			pings++
			continue
		}
		require.Equal(t, packets.Publish, pk.FixedHeader.Type)
		require.Equal(t, fmt.Sprintf("%06d", i), string(pk.Payload[:6]), "delivery %d", i)
		require.Len(t, pk.Payload, size+6)
		i++
	}
	if pings == 0 {
		require.Equal(t, packets.Pingresp, read(subc, subr).FixedHeader.Type)
	}
}

// payloadHook records where the payload of each delivery it sees lives.
type payloadHook struct {
	HookBase
	mu   sync.Mutex
	seen map[string]*byte
}

func (h *payloadHook) ID() string           { return "payloads" }
func (h *payloadHook) Provides(b byte) bool { return b == OnQosPublish }
func (h *payloadHook) OnQosPublish(cl *Client, pk packets.Packet, _ int64, _ int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[cl.ID] = unsafe.SliceData(pk.Payload)
}

// TestDeliveriesShareThePayload: the copy of a message made for each
// subscriber points at the one payload read for it (CopyShared); upstream
// copied the payload for every subscriber.
func TestDeliveriesShareThePayload(t *testing.T) {
	s := newLifecycleServer()
	h := &payloadHook{seen: map[string]*byte{}}
	require.NoError(t, s.AddHook(h, nil))
	addr := startTCPServer(t, s)
	a, _ := connect(t, addr, 4, "a", true, 0)
	a.subscribe(1, "shared/payload")
	b, _ := connect(t, addr, 4, "b", true, 0)
	b.subscribe(1, "shared/payload")
	p, _ := connect(t, addr, 4, "p", true, 0)
	p.send(publishPacket("shared/payload", 1, 1, "one payload"))
	p.expect(packets.Puback)
	for _, sub := range []*peer{a, b} {
		require.Equal(t, "one payload", string(sub.expect(packets.Publish).Payload))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	require.Len(t, h.seen, 2)
	require.Same(t, h.seen["a"], h.seen["b"], "each subscriber got a copy of the payload")
}

// TestPublishAllocatesLittle: a QoS 0 publish delivered to a subscriber
// whose subscriptions overlap (so its Identifiers map holds 0s) allocates
// next to nothing in the engine. Upstream allocated three things for each:
// the publisher's packet, moved to the heap because a QoS 2 closure
// captured it (896 bytes); the subscriber's copy, queued by pointer (896
// bytes); and a slice of subscription identifiers that are never sent.
// Bytes are counted, not timed: the figure does not depend on the machine.
func TestPublishAllocatesLittle(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations; make test runs the Allocates tests without it")
	}
	s := newServer()
	sub := s.NewClient(nil, "t", "sub", false)
	sr, sw := net.Pipe()
	sub.Net.Conn = sw
	sub.Properties.ProtocolVersion = 5
	go func() { _, _ = io.Copy(io.Discard, sr) }()
	t.Cleanup(func() { _ = sr.Close(); _ = sw.Close() })
	s.Clients.Add(sub)
	s.Topics.Subscribe(sub.ID, packets.Subscription{Filter: "a/b"})
	s.Topics.Subscribe(sub.ID, packets.Subscription{Filter: "a/+"})

	pub := s.NewClient(nil, "t", "pub", false)
	pr, pw := net.Pipe()
	pub.Net.Conn = pw
	pub.Properties.ProtocolVersion = 4
	pub.State.Inflight.ResetReceiveQuota(100)
	t.Cleanup(func() { _ = pr.Close(); _ = pw.Close() })

	pk := publishPacket("a/b", 0, 0, "payload")
	pk.ProtocolVersion = 4
	publish := func() {
		require.NoError(t, s.processPublish(pub, pk))
		for sub.OutboundLen() > 0 || sub.State.outbound.Len() > 0 {
			runtime.Gosched() // the packet is back in the pool before the next
		}
	}
	for range 100 {
		publish()
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		publish()
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	objects := float64(after.Mallocs-before.Mallocs) / n
	t.Logf("%d bytes, %.2f objects allocated per publish", per, objects)
	require.Less(t, per, uint64(400), "bytes allocated per publish and delivery")
	require.Less(t, objects, 3.0, "objects allocated per publish and delivery")
}

// blockingHook holds the reader in OnRoute for the topic "block" until
// release is closed, calling FlushDeferred first when flush is set.
type blockingHook struct {
	HookBase
	flush   bool
	blocked chan struct{}
	release chan struct{}
}

func (h *blockingHook) ID() string           { return "blocking" }
func (h *blockingHook) Provides(b byte) bool { return b == OnRoute }
func (h *blockingHook) OnRoute(cl *Client, pk packets.Packet, _ *Route) error {
	if pk.TopicName != "block" {
		return nil
	}
	if h.flush {
		cl.FlushDeferred()
	}
	close(h.blocked)
	<-h.release
	return nil
}

// TestFlushDeferredBeforeBlocking: a hook that holds the publisher's reader
// back (as persistence's block-publisher policy does while a session's
// queue is full) first has the reader write what it deferred, so the
// subscriber of a message read earlier in the same buffer gets it while
// the reader waits, not after.
func TestFlushDeferredBeforeBlocking(t *testing.T) {
	s := newLifecycleServer()
	h := &blockingHook{flush: true, blocked: make(chan struct{}), release: make(chan struct{})}
	defer close(h.release) // also when the test fails: the server's close waits for the reader
	require.NoError(t, s.AddHook(h, nil))
	addr := startTCPServer(t, s)
	sub, _ := connect(t, addr, 4, "sub", true, 0)
	sub.subscribe(1, "a/b")
	publisher, _ := connect(t, addr, 4, "pub", true, 0)

	var buf bytes.Buffer
	for _, topic := range []string{"a/b", "block"} {
		pk := publishPacket(topic, 1, 7, topic)
		pk.ProtocolVersion = 4
		require.NoError(t, pk.PublishEncode(&buf))
	}
	_, err := publisher.conn.Write(buf.Bytes()) // one read buffer: a/b's delivery is deferred
	require.NoError(t, err)
	<-h.blocked
	require.Equal(t, "a/b", sub.expect(packets.Publish).TopicName, "delivered only once the reader went on")
}
