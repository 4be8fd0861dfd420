// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build !unix

package mqtt

import "syscall"

func rawPeerClosed(syscall.RawConn) bool { return false }
