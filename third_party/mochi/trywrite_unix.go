// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build unix

package mqtt

import (
	"errors"
	"syscall"
)

// rawTryWrite makes one write(2) on rc's non-blocking socket: EAGAIN is
// nothing written, not an error. RawConn.Write holds the socket's write
// lock, so it cannot interleave with a write through net.Conn.
func rawTryWrite(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), p)
			if !errors.Is(werr, syscall.EINTR) {
				return true // never wait for the socket to drain
			}
		}
	})
	if n < 0 {
		n = 0
	}
	if err != nil {
		return n, err
	}
	if errors.Is(werr, syscall.EAGAIN) {
		werr = nil
	}
	return n, werr
}
