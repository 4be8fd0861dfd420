// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build linux

package mqtt

import (
	"bytes"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// Tests of idle connections parked in the server's poller (park.go): over
// real TCP connections, since a pipe is never parked.

func newParkingServer(t *testing.T) (*Server, string) {
	t.Helper()
	s := New(&Options{Logger: logger, InlineClient: true, IdleParkAfter: 30 * time.Millisecond})
	require.NotNil(t, s.poller, "no poller on Linux")
	return s, startTCPServer(t, s)
}

func waitParked(t *testing.T, s *Server, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return s.poller.len() == n }, lifecycleWait, time.Millisecond,
		"want %d parked connections", n)
}

// TestIdleConnectionParks: a silent connection keeps no goroutine and no
// read buffer; it still gets its deliveries, and is read again, and parked
// again, when its client speaks.
func TestIdleConnectionParks(t *testing.T) {
	s, addr := newParkingServer(t)
	sub, _ := connect(t, addr, 4, "sub", true, 0)
	sub.subscribe(1, "a/b")
	waitParked(t, s, 1)
	cl, ok := s.Clients.Get("sub")
	require.True(t, ok)
	require.Nil(t, cl.Net.bconn, "a parked connection keeps its read buffer")

	// Deliveries are written by the server, not the parked reader.
	require.NoError(t, s.Publish("a/b", []byte("while parked"), false, 0))
	pk := sub.expect(packets.Publish)
	require.Equal(t, "while parked", string(pk.Payload))

	// The client speaks: read on a new goroutine, then parked again.
	for range 3 {
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		sub.expect(packets.Pingresp)
		waitParked(t, s, 1)
	}
	// A packet that arrives in pieces, with the pause that parks it in the
	// middle of its body, is read whole.
	var buf bytes.Buffer
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName: "a/b", Payload: []byte("in two pieces")}
	pub.ProtocolVersion = 4
	require.NoError(t, pub.PublishEncode(&buf))
	raw := buf.Bytes()
	_, err := sub.conn.Write(raw[:5])
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // > IdleParkAfter
	_, err = sub.conn.Write(raw[5:])
	require.NoError(t, err)
	require.Equal(t, "in two pieces", string(sub.expectEach(packets.Puback, packets.Publish)[packets.Publish].Payload))
}

// TestParkedConnectionEnds: a parked connection's end is noticed whatever
// ends it: the client closing it, the keepalive running out (the will is
// sent), the server disconnecting it, a takeover, the server closing.
func TestParkedConnectionEnds(t *testing.T) {
	s, addr := newParkingServer(t)
	watcher, _ := connect(t, addr, 4, "watcher", true, 0)
	watcher.subscribe(1, "will/#")

	t.Run("client closes", func(t *testing.T) {
		p, _ := connect(t, addr, 4, "closer", true, 0)
		waitParked(t, s, 2)
		require.NoError(t, p.conn.Close())
		require.Eventually(t, func() bool { _, ok := s.Clients.Get("closer"); return !ok }, lifecycleWait, time.Millisecond)
		waitParked(t, s, 1)
	})

	t.Run("keepalive runs out", func(t *testing.T) {
		p := dialPeer(t, addr, 4)
		start := time.Now()
		p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ClientIdentifier: "silent", Clean: true, Keepalive: 1, ProtocolName: []byte("MQTT"),
				WillFlag: true, WillTopic: "will/silent", WillPayload: []byte("gone")}})
		p.expect(packets.Connack)
		waitParked(t, s, 2)
		p.expectClosed()
		// 1.5 x keepalive, in whole seconds as upstream counts it: 1s.
		require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "closed before the keepalive ran out")
		require.Equal(t, "gone", string(watcher.expect(packets.Publish).Payload))
		waitParked(t, s, 1)
	})

	t.Run("server disconnects", func(t *testing.T) {
		p, _ := connect(t, addr, 5, "kicked", true, 0)
		waitParked(t, s, 2)
		cl, ok := s.Clients.Get("kicked")
		require.True(t, ok)
		_ = s.DisconnectClient(cl, packets.ErrAdministrativeAction) // returns the code it sent
		got := p.expectClosed()
		require.Len(t, got, 1)
		require.Equal(t, packets.ErrAdministrativeAction.Code, got[0].ReasonCode)
		select {
		case <-cl.State.handled:
		case <-time.After(lifecycleWait):
			t.Fatal("the parked connection's handler never ended")
		}
		waitParked(t, s, 1)
	})

	t.Run("takeover", func(t *testing.T) {
		old, _ := connect(t, addr, 5, "moving", false, 60)
		old.subscribe(1, "moving/x")
		waitParked(t, s, 2)
		_, ack := connect(t, addr, 5, "moving", false, 60)
		require.True(t, ack.SessionPresent)
		got := old.expectClosed()
		require.Len(t, got, 1)
		require.Equal(t, packets.ErrSessionTakenOver.Code, got[0].ReasonCode)
	})

	t.Run("server closes", func(t *testing.T) {
		waitParked(t, s, 1) // the watcher (the new "moving" ended with its subtest)
		closeWithin(t, s, lifecycleWait)
		require.Zero(t, s.poller.len())
		require.Zero(t, atomic.LoadInt64(&s.Info.ClientsConnected))
		watcher.expectClosed()
	})
}

// panicHook panics on a PINGREQ.
type panicHook struct{ HookBase }

func (h *panicHook) Provides(b byte) bool { return b == OnPacketRead }
func (h *panicHook) OnPacketRead(cl *Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Pingreq {
		panic("hook bug")
	}
	return pk, nil
}

// TestAttachRecoversPanic: a panic while a connection is served, here on
// the goroutine that resumed it, ends that connection, with a PanicError,
// and not the process; its clean session is removed.
func TestAttachRecoversPanic(t *testing.T) {
	s := New(&Options{Logger: logger, IdleParkAfter: 30 * time.Millisecond})
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	require.NoError(t, s.AddHook(new(panicHook), nil))
	require.NoError(t, s.Serve())
	t.Cleanup(func() { closeWithin(t, s, lifecycleWait) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ended := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			s.Attach("t", c, func(err error) { ended <- err })
		}
	}()
	p, _ := connect(t, ln.Addr().String(), 4, "panics", true, 0)
	waitParked(t, s, 1)
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	p.expectClosed()
	select {
	case err := <-ended:
		var pe *PanicError
		require.True(t, errors.As(err, &pe), "ended with %v", err)
		require.Equal(t, "hook bug", pe.Value)
		require.NotEmpty(t, pe.Stack)
	case <-time.After(lifecycleWait):
		t.Fatal("done not called")
	}
	_, ok := s.Clients.Get("panics")
	require.False(t, ok, "the clean session of the panicked connection is kept")
	require.Zero(t, atomic.LoadInt64(&s.Info.ClientsConnected))
}
