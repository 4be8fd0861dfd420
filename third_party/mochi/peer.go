// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"errors"
	"syscall"
)

// ErrPeerClosed ends a connection whose client closed it before its
// session was set up.
var ErrPeerClosed = errors.New("client closed the connection before its CONNACK")

// peerClosed says whether cl's client has already closed a plain socket
// connection with nothing after its CONNECT. Such a CONNECT is stale: a
// server that was slow or frozen (SIGSTOP, a long pause) reads it after
// the client gave up waiting for its CONNACK and connected again, perhaps
// to another server of a cluster. Taking over the session for it would
// disconnect the client's live connection. Bytes after the CONNECT (a
// client that publishes and closes without waiting) keep the connection.
func (cl *Client) peerClosed() bool {
	if cl.Net.bconn != nil && cl.Net.bconn.Buffered() > 0 {
		return false
	}
	sc, ok := cl.Net.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	return rawPeerClosed(rc)
}
