// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// StoredQueue is implemented by a storage hook that keeps the part of a
// persistent session's queue beyond the engine's memory on disk only. The
// engine feeds those messages into the session's connected client as its
// in-flight window frees, in batches: it asks NextStored for the oldest
// ones, files each in the client's Inflight under a new packet identifier,
// gives the store that identifier (FiledStored), queues the message behind
// whatever the client's queue holds, and ends the batch with
// QueuedStored. A client has at most one batch under way, and none once
// its connection has ended: a session taken over never gets half a batch.
//
// AddHook finds the implementation: the first hook that has these methods.
// Upstream had no such feed; a store put messages into Inflight and wrote
// them itself, from a goroutine of its own per session.
type StoredQueue interface {
	// NextStored hands over up to n of the oldest messages stored for
	// cl's session and not yet in flight, in queue order, each as it is to
	// be sent (QoS, retain flag, subscription identifiers, DUP). Messages
	// that expired, or that cl may no longer read, are dropped, not
	// returned. It returns nothing when nothing is stored, and ErrFeedLater
	// to be asked again in a while.
	NextStored(cl *Client, n int) ([]packets.Packet, error)
	// FiledStored gives, in order, the packet identifier of each message
	// the batch files. If it returns a waiter, the engine writes the
	// message only once that is done (the identifier of a QoS 2 message
	// must be stored before the client can see it).
	FiledStored(cl *Client, pk packets.Packet) AckWaiter
	// QueuedStored ends the batch: the messages FiledStored was called for
	// are in flight and queued for cl; the rest (the connection ended
	// meanwhile) stay the front of the stored queue.
	QueuedStored(cl *Client)
}

// ErrFeedLater is returned by StoredQueue.NextStored to be asked again
// after a while, or when FeedStored is called.
var ErrFeedLater = errors.New("stored messages held back for now")

// feedChunk bounds the messages of one batch.
const feedChunk = 128

// feedRetry is how long a feed waits after ErrFeedLater or an error.
const feedRetry = time.Second

// feedState is a client's feed of stored messages.
type feedState struct {
	mu      sync.Mutex                    // held for a batch, from NextStored to QueuedStored
	stopped bool                          // under mu: the connection ended, feed nothing more
	running atomic.Bool                   // a goroutine runs runFeed
	want    atomic.Bool                   // FeedStored was called since the store was last asked
	starved atomic.Bool                   // the feed stopped for want of room in the window
	kick    atomic.Pointer[chan struct{}] // wakes a feed waiting to ask again; made by its first wait
	parked  atomic.Pointer[func()]        // tests: runs inside parkFeed, between its two stores
}

// wake wakes the feed if it waits to ask again.
func (f *feedState) wake() {
	if k := f.kick.Load(); k != nil {
		select {
		case *k <- struct{}{}:
		default:
		}
	}
}

// feeders keeps count of the feed goroutines, so that Close waits for
// them, and starts none once Close has.
type feeders struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (f *feeders) add() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	return true
}

func (f *feeders) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
}

// FeedStored has the engine ask the StoredQueue hook for cl's stored
// messages, at once or once the batch under way is done. A store calls it
// when the stored queue of a connected client gains messages, or when a
// client it held back (ErrFeedLater) may take them. It never blocks and
// may be called with the store's locks held.
func (s *Server) FeedStored(cl *Client) {
	cl.State.feed.want.Store(true)
	cl.State.feed.wake()
	s.startFeed(cl)
}

// startFeed starts cl's feed unless it runs or there is no store.
func (s *Server) startFeed(cl *Client) {
	f := &cl.State.feed
	if s.hooks.storedQueue() == nil || !f.running.CompareAndSwap(false, true) {
		return
	}
	if !s.feeds.add() {
		f.running.Store(false)
		return
	}
	go s.runFeed(cl)
}

// freedWindow restarts cl's feed if it stopped for want of room; the
// acknowledgement handlers call it once they have freed a flow, and the
// client's writer after each write.
func (s *Server) freedWindow(cl *Client) {
	if f := &cl.State.feed; f.starved.Load() && f.starved.CompareAndSwap(true, false) {
		s.startFeed(cl)
	}
}

// stopFeed waits for cl's batch under way, if any, and feeds it nothing
// more. A connection's end calls it before the session can be taken over.
func (cl *Client) stopFeed() {
	f := &cl.State.feed
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.wake()
}

// queueRoom says whether cl's outbound queue takes a fed message of size
// bytes: the feed fills at most half of the queue (packets and bytes),
// leaving the rest to live deliveries. A full queue would keep the
// messages in flight and close the connection (owed), for its session's
// resend to deliver them.
func (cl *Client) queueRoom(size int64) bool {
	q := &cl.State.outbound
	caps := cl.ops.options.Capabilities
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.owed:
		return false
	case len(q.pks) == 0:
		return true
	case 2*int32(len(q.pks)+1) > caps.MaximumClientWritesPending:
		return false
	}
	return caps.MaximumClientWritesPendingBytes <= 0 || 2*(q.bytes+size) <= caps.MaximumClientWritesPendingBytes
}

// feedRoom is how many more flows cl may have in flight from the feed:
// half of MaximumInflight (the rest is for live deliveries), at most the
// client's Receive Maximum.
func (s *Server) feedRoom(cl *Client) int {
	limit := max(int(s.Options.Capabilities.MaximumInflight)/2, 1)
	if rm := int(cl.Properties.Props.ReceiveMaximum); rm > 0 && rm < limit {
		limit = rm
	}
	return limit - cl.State.Inflight.Len()
}

// feed outcomes of one batch.
const (
	feedMore    = iota // a batch was queued: ask again
	feedDone           // nothing stored, or the connection ended
	feedStarved        // no room in the window
	feedWait           // ErrFeedLater or an error: ask again later
)

func (s *Server) runFeed(cl *Client) {
	defer s.feeds.wg.Done()
	f := &cl.State.feed
	q := s.hooks.storedQueue()
	var timer *time.Timer
	for {
		switch s.feedBatch(cl, q) {
		case feedMore:
			continue
		case feedWait:
			if timer == nil {
				timer = time.NewTimer(feedRetry)
				defer timer.Stop()
			} else {
				timer.Reset(feedRetry)
			}
			k := f.kick.Load()
			if k == nil {
				c := make(chan struct{}, 1)
				f.kick.Store(&c)
				k = &c
			}
			select {
			case <-*k:
			case <-timer.C:
			}
			continue
		case feedStarved:
			if s.parkFeed(cl) {
				continue
			}
			return
		}
		f.running.Store(false)
		// FeedStored since the store was last asked, while this goroutine
		// still ran (so it started none).
		if f.want.Load() && !cl.feedStopped() && f.running.CompareAndSwap(false, true) {
			continue
		}
		return
	}
}

// parkFeed stops cl's feed for want of room, for freedWindow to restart,
// and reports whether it must go on at once instead: room was made while
// it stopped. Not running is set before starved: freedWindow restarts a
// feed that is starved, and cannot start one that still runs. Set the
// other way round, an acknowledgement between the two found the feed
// starved, cleared that and started nothing (it was still running), and
// the feed stopped for good with messages stored and the window empty
// (TestSpillDrainAcrossReconnects, 3 runs in 150 on a busy machine).
func (s *Server) parkFeed(cl *Client) bool {
	f := &cl.State.feed
	f.running.Store(false)
	if hook := f.parked.Load(); hook != nil {
		(*hook)()
	}
	f.starved.Store(true)
	return s.feedRoom(cl) > 0 && cl.queueRoom(0) && f.starved.CompareAndSwap(true, false) && f.running.CompareAndSwap(false, true)
}

func (cl *Client) feedStopped() bool {
	f := &cl.State.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped || cl.Closed()
}

// feedBatch asks the store for the next messages of cl and files and
// queues them, under the feed's lock.
func (s *Server) feedBatch(cl *Client, q StoredQueue) int {
	f := &cl.State.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped || cl.Closed() || cl.Net.Conn == nil {
		return feedDone
	}
	room := s.feedRoom(cl)
	if room <= 0 || !cl.queueRoom(0) {
		return feedStarved
	}
	f.want.Store(false)
	pks, err := q.NextStored(cl, min(room, feedChunk))
	if err != nil {
		if !errors.Is(err, ErrFeedLater) {
			s.Log.Error("stored messages not read; retrying", "client", cl.ID, "error", err)
		}
		return feedWait
	}
	if len(pks) == 0 {
		return feedDone
	}
	out := feedMore
	for i := range pks {
		if cl.Closed() {
			out = feedDone
			break
		}
		if !cl.queueRoom(pendingSize(&pks[i])) {
			out = feedStarved
			break
		}
		if !s.fileStored(cl, q, &pks[i]) {
			out = feedDone
			break
		}
	}
	q.QueuedStored(cl)
	return out
}

// fileStored puts a stored message in cl's Inflight under a new packet
// identifier and queues it.
func (s *Server) fileStored(cl *Client, q StoredQueue, pk *packets.Packet) bool {
	id, err := cl.NextPacketID()
	if err != nil {
		s.hooks.OnPacketIDExhausted(cl, *pk)
		s.Log.Warn("packet ids exhausted", "error", err, "client", cl.ID, "listener", cl.Net.Listener)
		return false
	}
	pk.PacketID = uint16(id)
	fresh, moved := cl.State.Inflight.setDelivery(*pk)
	if moved != nil {
		return false // the session moved on: its new connection gets it from the store
	}
	if fresh {
		atomic.AddInt64(&s.Info.Inflight, 1)
	}
	cl.State.Inflight.DecreaseSendQuota()
	hold := q.FiledStored(cl, *pk)
	if cl.enqueue(cl.copyDelivery(pk), hold, nil, true) != enqueued {
		// Kept in flight for the session's resend (a full queue), or, for a
		// session that ends with its connection, nothing more to do.
		settleWaits(holdList(hold))
	}
	return true
}
