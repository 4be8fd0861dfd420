// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build !linux

package mqtt

import (
	"errors"
	"time"
)

// poller is only implemented on Linux (epoll); elsewhere connections are
// never parked.
type poller struct{}

func newPoller(*Server) (*poller, error) {
	return nil, errors.New("parking idle connections needs Linux")
}

func (p *poller) park(*Client, time.Time) bool { return false }
func (p *poller) wake(*Client)                 {}
func (p *poller) close()                       {}
func (p *poller) len() int                     { return 0 }
