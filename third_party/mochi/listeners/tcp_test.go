// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package listeners

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNewTCP(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
	require.Equal(t, "t1", l.id)
	require.Equal(t, addr, l.address)
}

func TestTCPID(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
	require.Equal(t, "t1", l.ID())
}

func TestTCPAddress(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
	require.Equal(t, addr, l.Address())
}

func TestTCPProtocol(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
	require.Equal(t, "tcp", l.Protocol())
}

func TestTCPProtocolTLS(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	l := NewTCP(tlsConfig)
	require.NoError(t, l.Init(logger))
	defer l.listen.Close()
	require.Equal(t, "tcp", l.Protocol())
}

func TestTCPInit(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	l := NewTCP(basicConfig)
	err := l.Init(logger)
	l.Close(MockCloser)
	require.NoError(t, err)

	l2 := NewTCP(tlsConfig)
	err = l2.Init(logger)
	l2.Close(MockCloser)
	require.NoError(t, err)
	require.NotNil(t, l2.config.TLSConfig)
}

func TestTCPServeAndClose(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
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

	require.True(t, closed)
	<-o

	l.Close(MockCloser)      // coverage: close closed
	l.Serve(MockEstablisher) // coverage: serve closed
}

func TestTCPServeTLSAndClose(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	tlsConfig := Config{ID: "t1", Address: addr, TLSConfig: tlsConfigBasic}
	l := NewTCP(tlsConfig)
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

func TestTCPEstablishThenEnd(t *testing.T) {
	addr := freeTestAddr() // its own: a port shared by every test was taken between them in a loaded CI run
	basicConfig := Config{ID: "t1", Address: addr}
	l := NewTCP(basicConfig)
	err := l.Init(logger)
	require.NoError(t, err)

	o := make(chan bool)
	established := make(chan bool)
	go func() {
		l.Serve(func(id string, c net.Conn) error {
			established <- true
			return errors.New("ending") // return an error to exit immediately
		})
		o <- true
	}()

	time.Sleep(time.Millisecond)
	_, _ = net.Dial("tcp", l.listen.Addr().String())
	require.Equal(t, true, <-established)
	l.Close(MockCloser)
	<-o
}
