// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package listeners

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

func TestNewWebsocket(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	require.Equal(t, "t1", l.id)
	require.Equal(t, addr, l.address)
}

func TestWebsocketID(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	require.Equal(t, "t1", l.ID())
}

func TestWebsocketAddress(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	require.Equal(t, addr, l.Address())
}

func TestWebsocketProtocol(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	require.Equal(t, "ws", l.Protocol())
}

func TestWebsocketProtocolTLS(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	l := NewWebsocket(tlsConfig)
	require.Equal(t, "wss", l.Protocol())
}

func TestWebsocketInit(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	require.Nil(t, l.listen)
	err := l.Init(logger)
	require.NoError(t, err)
	require.NotNil(t, l.listen)
}

func TestWebsocketServeAndClose(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	_ = l.Init(logger)

	o := make(chan bool)
	go func(o chan bool) {
		l.Serve(MockEstablisher)
		o <- true
	}(o)

	time.Sleep(time.Millisecond)

	var closed bool
	l.Close(func(id string) {
		closed = true
	})

	require.True(t, closed)
	<-o
}

func TestWebsocketServeTLSAndClose(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	l := NewWebsocket(tlsConfig)
	err := l.Init(logger)
	require.NoError(t, err)

	o := make(chan bool)
	go func(o chan bool) {
		l.Serve(MockEstablisher)
		o <- true
	}(o)

	time.Sleep(time.Millisecond)
	var closed bool
	l.Close(func(id string) {
		closed = true
	})
	require.Equal(t, true, closed)
	<-o
}

func TestWebsocketFailedToServe(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	config := tlsConfig
	config.Address = "wrong_addr"
	l := NewWebsocket(config)
	err := l.Init(logger)
	require.NoError(t, err)

	o := make(chan bool)
	go func(o chan bool) {
		l.Serve(MockEstablisher)
		o <- true
	}(o)

	<-o
	var closed bool
	l.Close(func(id string) {
		closed = true
	})
	require.Equal(t, true, closed)
}

func TestWebsocketUpgrade(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	_ = l.Init(logger)

	e := make(chan bool)
	l.establish = func(id string, c net.Conn) error {
		e <- true
		return nil
	}

	s := httptest.NewServer(http.HandlerFunc(l.handler))
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(s.URL, "http"), nil)
	require.NoError(t, err)
	require.Equal(t, true, <-e)

	s.Close()
	_ = ws.Close()
}

func TestWebsocketConnectionReads(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewWebsocket(basicConfig)
	_ = l.Init(nil)

	recv := make(chan []byte)
	l.establish = func(id string, c net.Conn) error {
		var out []byte
		for {
			buf := make([]byte, 2048)
			n, err := c.Read(buf)
			require.NoError(t, err)
			out = append(out, buf[:n]...)
			if n < 2048 {
				break
			}
		}

		recv <- out
		return nil
	}

	s := httptest.NewServer(http.HandlerFunc(l.handler))
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(s.URL, "http"), nil)
	require.NoError(t, err)

	pkt := make([]byte, 3000) // make sure this is >2048
	for i := 0; i < len(pkt); i++ {
		pkt[i] = byte(i % 100)
	}

	err = ws.WriteMessage(websocket.BinaryMessage, pkt)
	require.NoError(t, err)

	got := <-recv
	require.Equal(t, 3000, len(got))
	require.Equal(t, pkt, got)

	s.Close()
	_ = ws.Close()
}

// TestHTTPListenersLeaveTLSConfigAlone: the HTTP listeners (WebSocket,
// $SYS info, health check) serve TLS on a copy of the caller's tls.Config.
// net/http adds HTTP/2 to the config it serves with: upstream handed it the
// caller's, so listeners sharing one config wrote it from two goroutines (a
// data race the race detector reported in a fresh-clone CI run of Ferry,
// TestWebsocketServeTLSAndClose against TestHTTPStatsServeTLSAndClose).
func TestHTTPListenersLeaveTLSConfigAlone(t *testing.T) {
	shared := tlsConfigBasic.Clone()
	ls := []Listener{
		NewWebsocket(Config{ID: "ws", Address: freeTestAddr(), TLSConfig: shared}),
		NewHTTPStats(Config{ID: "stats", Address: freeTestAddr(), TLSConfig: shared}, nil),
		NewHTTPHealthCheck(Config{ID: "health", Address: freeTestAddr(), TLSConfig: shared}),
	}
	done := make(chan bool, len(ls))
	for _, l := range ls {
		require.NoError(t, l.Init(logger))
		go func() {
			l.Serve(MockEstablisher)
			done <- true
		}()
	}
	for _, l := range ls {
		waitServing(t, l.Address())
	}
	for _, l := range ls {
		l.Close(func(string) {})
		<-done
	}
	require.Empty(t, shared.NextProtos, "the caller's tls.Config was changed")
}
