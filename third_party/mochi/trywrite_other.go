// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build !unix

package mqtt

import (
	"errors"
	"syscall"
)

func rawTryWrite(syscall.RawConn, []byte) (int, error) { return 0, errors.ErrUnsupported }
