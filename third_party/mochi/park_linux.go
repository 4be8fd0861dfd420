// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// poller waits, in one epoll instance, for the parked connections to become
// readable. The epoll descriptor is itself in Go's network poller (it is
// readable while it has events), so waiting takes no thread.
type poller struct {
	s      *Server
	ep     *os.File
	epfd   int // ep's descriptor, used under mu while !closed
	rc     syscall.RawConn
	mu     sync.Mutex
	parked map[int32]*Client
	next   int32
	closed bool
}

func newPoller(s *Server) (*poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		_ = syscall.Close(fd)
		return nil, fmt.Errorf("epoll descriptor non-blocking: %w", err)
	}
	ep := os.NewFile(uintptr(fd), "mqtt-poller")
	rc, err := ep.SyscallConn()
	if err != nil {
		_ = ep.Close()
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	p := &poller{s: s, ep: ep, epfd: fd, rc: rc, parked: make(map[int32]*Client)}
	go p.run()
	return p, nil
}

// park hands cl's connection to the poller until it is readable, its
// keepalive deadline ka (zero: none) passes, or the client is stopped. The
// caller's goroutine must then end; false if cl could not be parked.
func (p *poller) park(cl *Client, ka time.Time) bool {
	b := cl.Net.bconn
	cl.Net.bconn = nil
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cl.Net.bconn = b
		return false
	}
	for {
		p.next++
		if p.next <= 0 {
			p.next = 1
		}
		if _, taken := p.parked[p.next]; !taken {
			break
		}
	}
	id := p.next
	var cerr error
	err := cl.State.park.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: id}
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		p.mu.Unlock()
		cl.Net.bconn = b
		return false
	}
	cl.State.park.id = id
	p.parked[id] = cl
	if !ka.IsZero() {
		cl.State.park.timer = time.AfterFunc(time.Until(ka), func() { p.wake(cl) })
	}
	p.mu.Unlock()
	p.s.readers.put(b)
	// Stop sets Closed before it wakes a parked client: one of the two sees
	// the other.
	if cl.Closed() {
		p.wake(cl)
	}
	return true
}

// wake resumes cl's reading on a new goroutine if it is parked.
func (p *poller) wake(cl *Client) {
	p.mu.Lock()
	id := cl.State.park.id
	if id == 0 || p.parked[id] != cl {
		p.mu.Unlock()
		return
	}
	p.unpark(cl)
	p.mu.Unlock()
	go p.s.resumeClient(cl)
}

// unpark removes cl from the poller; p.mu is held.
func (p *poller) unpark(cl *Client) {
	delete(p.parked, cl.State.park.id)
	cl.State.park.id = 0
	if t := cl.State.park.timer; t != nil {
		t.Stop()
		cl.State.park.timer = nil
	}
	// A descriptor already closed has left the epoll set with it.
	_ = cl.State.park.rc.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// run resumes the clients whose connections became readable, until close.
func (p *poller) run() {
	events := make([]syscall.EpollEvent, 256)
	for {
		var n int
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			n, werr = syscall.EpollWait(int(fd), events, 0)
			if werr == syscall.EINTR {
				n, werr = 0, nil
			}
			return n > 0 || werr != nil
		})
		if err != nil {
			return // closed
		}
		if werr != nil {
			p.s.Log.Error("parked connections' poller failed; parked clients are woken", "error", werr)
			p.close()
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			cl := p.parked[ev.Fd]
			if cl == nil {
				continue
			}
			p.unpark(cl)
			go p.s.resumeClient(cl)
		}
		p.mu.Unlock()
	}
}

// close wakes every parked client and parks no more.
func (p *poller) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for _, cl := range p.parked {
		p.unpark(cl)
		go p.s.resumeClient(cl)
	}
	p.mu.Unlock()
	_ = p.ep.Close()
}

// len is the number of parked connections.
func (p *poller) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}
