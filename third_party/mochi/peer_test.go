// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return client, server
}

// TestStaleConnectTakesNothingOver: a CONNECT read after its client closed
// the connection (the server was frozen or slow, and the client connected
// again) does not take the session over from the client's live
// connection; a CONNECT followed by more bytes before the close is served.
func TestStaleConnectTakesNothingOver(t *testing.T) {
	connect := packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt311).RawBytes // client id "zen"
	s := newServer()
	_ = s.Serve()
	defer s.Close()

	// The live connection.
	liveC, liveS := tcpPair(t)
	liveDone := make(chan error, 1)
	go func() { liveDone <- s.EstablishConnection("tcp", liveS) }()
	_, err := liveC.Write(connect)
	require.NoError(t, err)
	b := make([]byte, 4)
	_ = liveC.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = liveC.Read(b)
	require.NoError(t, err)
	require.Equal(t, []byte{packets.Connack << 4, 2, 0, 0}, b)
	live, ok := s.Clients.Get("zen")
	require.True(t, ok)

	// The stale one: written and closed before the server reads it.
	staleC, staleS := tcpPair(t)
	_, err = staleC.Write(connect)
	require.NoError(t, err)
	require.NoError(t, staleC.Close())
	time.Sleep(20 * time.Millisecond) // the FIN crosses loopback
	err = s.EstablishConnection("tcp", staleS)
	require.ErrorIs(t, err, ErrPeerClosed)
	require.False(t, live.Closed(), "the live connection was taken over by a stale CONNECT")
	now, ok := s.Clients.Get("zen")
	require.True(t, ok)
	require.Same(t, live, now)

	// CONNECT, PINGREQ and close: served (a client that does not wait).
	quickC, quickS := tcpPair(t)
	_, err = quickC.Write(append(append([]byte{}, connect...), packets.Pingreq<<4, 0))
	require.NoError(t, err)
	require.NoError(t, quickC.(*net.TCPConn).CloseWrite())
	time.Sleep(20 * time.Millisecond)
	quickDone := make(chan error, 1)
	go func() { quickDone <- s.EstablishConnection("tcp", quickS) }()
	_ = quickC.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 6)
	_, err = io.ReadFull(quickC, got)
	require.NoError(t, err)
	require.Equal(t, []byte{packets.Connack << 4, 2, 1, 0, packets.Pingresp << 4, 0}, got, "session present")
	select {
	case <-liveDone: // taken over by the quick one, as it should be
	case <-time.After(5 * time.Second):
		t.Fatal("the quick connection did not take the session over")
	}
	<-quickDone
}
