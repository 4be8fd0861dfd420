// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build unix

package mqtt

import (
	"errors"
	"syscall"
)

// rawPeerClosed peeks at rc's socket without blocking: true when the peer
// has closed it (end of stream or reset) and nothing is left to read.
func rawPeerClosed(rc syscall.RawConn) bool {
	closed := false
	_ = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			closed = (n == 0 && err == nil) || errors.Is(err, syscall.ECONNRESET)
			return true // never wait for data
		}
	})
	return closed
}
