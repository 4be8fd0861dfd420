// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"errors"
	"net"
	"syscall"
)

// TryWriter is a connection that can write without blocking: TryWrite
// writes what the socket takes at once, possibly nothing, and returns how
// much that was. It returns errors.ErrUnsupported when the connection
// cannot (TLS, WebSocket). A connection wrapper that counts its bytes
// implements it so the engine's direct writes are counted too; a plain
// *net.TCPConn needs no wrapper.
type TryWriter interface {
	TryWrite(p []byte) (int, error)
}

// TryWrite writes to c what its socket takes without blocking. c must be a
// socket (syscall.Conn) whose bytes are written unchanged; anything else
// gives errors.ErrUnsupported, with nothing written.
func TryWrite(c net.Conn, p []byte) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, errors.ErrUnsupported
	}
	return rawTryWrite(rc, p)
}

// tryWrite is TryWrite through c's own TryWriter, if it has one.
func tryWrite(c net.Conn, p []byte) (int, error) {
	if tw, ok := c.(TryWriter); ok {
		return tw.TryWrite(p)
	}
	return TryWrite(c, p)
}

// canTryWrite says whether tryWrite may work on c; a plain TCP socket or a
// wrapper offering TryWrite.
func canTryWrite(c net.Conn) bool {
	switch c.(type) {
	case TryWriter, *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}
