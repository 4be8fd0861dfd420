// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// memQueue is a StoredQueue in memory: messages stored per client id, fed
// to the engine in order. It feeds a session once it is established.
type memQueue struct {
	HookBase
	s *Server

	mu      sync.Mutex
	stored  map[string][]packets.Packet // not yet handed over
	handed  map[string][]packets.Packet // handed over, not yet filed
	filed   map[*Client][]string        // payloads filed, by client
	asked   []int                       // n of each NextStored
	later   int                         // NextStored calls to answer ErrFeedLater
	block   chan struct{}               // not nil: NextStored waits for it to close
	reading chan struct{}               // NextStored closes it when it blocks
	hold    *waitFor                    // not nil: FiledStored returns it for QoS 2
}

func newMemQueue(s *Server) *memQueue {
	return &memQueue{s: s, stored: map[string][]packets.Packet{}, handed: map[string][]packets.Packet{},
		filed: map[*Client][]string{}}
}

func (q *memQueue) ID() string { return "mem-queue" }
func (q *memQueue) Provides(b byte) bool {
	return b == OnSessionEstablished
}

func (q *memQueue) OnSessionEstablished(cl *Client, _ packets.Packet) { q.s.FeedStored(cl) }

// store queues n QoS qos messages for id, payloads from..from+n-1.
func (q *memQueue) store(id string, qos byte, from, n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := from; i < from+n; i++ {
		q.stored[id] = append(q.stored[id], packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
			TopicName: "fs/x", Payload: []byte(strconv.Itoa(i)), Created: time.Now().Unix()})
	}
}

func (q *memQueue) NextStored(cl *Client, n int) ([]packets.Packet, error) {
	q.mu.Lock()
	block, reading := q.block, q.reading
	q.mu.Unlock()
	if block != nil {
		close(reading)
		<-block
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.asked = append(q.asked, n)
	if q.later > 0 {
		q.later--
		return nil, ErrFeedLater
	}
	all := q.stored[cl.ID]
	n = min(n, len(all))
	out := append([]packets.Packet(nil), all[:n]...)
	q.stored[cl.ID] = all[n:]
	q.handed[cl.ID] = append(q.handed[cl.ID], out...)
	return out, nil
}

func (q *memQueue) FiledStored(cl *Client, pk packets.Packet) AckWaiter {
	q.mu.Lock()
	defer q.mu.Unlock()
	h := q.handed[cl.ID]
	if len(h) == 0 || string(h[0].Payload) != string(pk.Payload) {
		panic("FiledStored out of order: " + string(pk.Payload))
	}
	q.handed[cl.ID] = h[1:]
	q.filed[cl] = append(q.filed[cl], string(pk.Payload))
	if pk.FixedHeader.Qos == 2 && q.hold != nil {
		return q.hold
	}
	return nil
}

func (q *memQueue) QueuedStored(cl *Client) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stored[cl.ID] = append(q.handed[cl.ID], q.stored[cl.ID]...)
	delete(q.handed, cl.ID)
}

func (q *memQueue) left(id string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.stored[id]) + len(q.handed[id])
}

// waitFor is an AckWaiter done when its channel closes.
type waitFor struct{ done chan struct{} }

func (w *waitFor) Wait() error { <-w.done; return nil }
func (w *waitFor) Ready() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func newFeedServer(t *testing.T, maxInflight uint16) (*Server, *memQueue, string) {
	s := New(&Options{Logger: logger})
	s.Options.Capabilities.MaximumInflight = maxInflight
	q := newMemQueue(s)
	require.NoError(t, s.AddHook(q, nil))
	return s, q, startTCPServer(t, s)
}

// expectPayloads reads PUBLISHes with payloads from..to-1 in order,
// acknowledging each if ack.
func expectPayloads(t *testing.T, p *peer, from, to int, ack bool) {
	t.Helper()
	for i := from; i < to; i++ {
		pk := p.expect(packets.Publish)
		require.Equal(t, strconv.Itoa(i), string(pk.Payload))
		require.False(t, pk.FixedHeader.Dup)
		if ack {
			p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
	}
}

// TestStoredFeedFollowsTheWindow: a session's stored messages are fed in
// order as acknowledgements free its in-flight window (half of
// MaximumInflight), never more at once.
func TestStoredFeedFollowsTheWindow(t *testing.T) {
	s, q, addr := newFeedServer(t, 8)
	q.store("fs", 1, 0, 20)
	p, _ := connect(t, addr, 5, "fs", false, 3600)

	var first []packets.Packet
	for range 4 {
		first = append(first, p.expect(packets.Publish))
	}
	cl, ok := s.Clients.Get("fs")
	require.True(t, ok)
	require.Equal(t, 4, cl.State.Inflight.Len())
	require.Equal(t, 16, q.left("fs"), "fed beyond the window")
	for i, pk := range first {
		require.Equal(t, strconv.Itoa(i), string(pk.Payload))
		p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	expectPayloads(t, p, 4, 20, true)
	require.Eventually(t, func() bool { return cl.State.Inflight.Len() == 0 }, lifecycleWait, time.Millisecond)
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, n := range q.asked {
		require.LessOrEqual(t, n, 4)
	}
	require.Len(t, q.filed[cl], 20)

	// Stored later, while connected: fed when the store says so.
	q.mu.Unlock()
	q.store("fs", 1, 20, 3)
	s.FeedStored(cl)
	expectPayloads(t, p, 20, 23, true)
	q.mu.Lock()
}

// TestStoredFeedHoldsQos2UntilFiled: a QoS 2 message is written only once
// the store's write of its packet identifier is done.
func TestStoredFeedHoldsQos2UntilFiled(t *testing.T) {
	s, q, addr := newFeedServer(t, 8)
	q.hold = &waitFor{done: make(chan struct{})}
	q.store("fs", 2, 0, 1)
	p, _ := connect(t, addr, 5, "fs", false, 3600)
	cl, ok := s.Clients.Get("fs")
	require.True(t, ok)
	require.Eventually(t, func() bool { return cl.State.Inflight.Len() == 1 }, lifecycleWait, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // time it would take to write it
	require.Empty(t, p.in, "written before its identifier was stored")
	close(q.hold.done)
	pk := p.expect(packets.Publish)
	require.Equal(t, "0", string(pk.Payload))
	require.Equal(t, byte(2), pk.FixedHeader.Qos)
}

// TestStoredFeedLater: ErrFeedLater has the feed ask again, at the latest
// after feedRetry, at once when the store calls FeedStored.
func TestStoredFeedLater(t *testing.T) {
	s, q, addr := newFeedServer(t, 8)
	q.later = 1
	q.store("fs", 1, 0, 2)
	p, _ := connect(t, addr, 5, "fs", false, 3600)
	cl, _ := s.Clients.Get("fs")
	s.FeedStored(cl)
	expectPayloads(t, p, 0, 2, true)
}

// TestStoredFeedStopsBeforeTakeover: a connection taken over while its
// feed reads the store ends only once that batch has ended; the batch
// files nothing into the ended connection, and the new connection gets
// every message, in order, once.
func TestStoredFeedStopsBeforeTakeover(t *testing.T) {
	s, q, addr := newFeedServer(t, 8)
	old, _ := connect(t, addr, 5, "fs", false, 3600)
	oldCl, _ := s.Clients.Get("fs")
	q.store("fs", 1, 0, 6)
	q.mu.Lock()
	q.block, q.reading = make(chan struct{}), make(chan struct{})
	block, reading := q.block, q.reading
	q.mu.Unlock()
	s.FeedStored(oldCl)
	<-reading // the feed of the old connection is in NextStored

	connected := make(chan *peer)
	go func() {
		p, _ := connect(t, addr, 5, "fs", false, 3600)
		connected <- p
	}()
	_ = old.expectClosed()
	select {
	case <-connected:
		t.Fatal("session taken over during the old connection's batch")
	case <-time.After(50 * time.Millisecond):
	}
	q.mu.Lock()
	q.block = nil
	q.mu.Unlock()
	close(block)
	p := <-connected
	expectPayloads(t, p, 0, 6, true)
	q.mu.Lock()
	defer q.mu.Unlock()
	require.Empty(t, q.filed[oldCl], "filed into the connection taken over")
}

// TestStoredFeedLeavesQueueRoom: the feed fills at most half of a client's
// outbound queue and goes on as the writer empties it. Filling it would
// keep messages in flight and close the connection (ErrHeldBack), found by
// Ferry's TestStuckSubscriberHoldsPublishersOnlyOverflowWait: a stalled
// subscriber that came back was disconnected again by its own backlog.
func TestStoredFeedLeavesQueueRoom(t *testing.T) {
	s, q, addr := newFeedServer(t, 64)
	one := pendingSize(&packets.Packet{TopicName: "fs/x", Payload: []byte("10")})
	s.Options.Capabilities.MaximumClientWritesPendingBytes = 4 * one
	p, _ := connect(t, addr, 5, "fs", false, 3600)
	cl, _ := s.Clients.Get("fs")
	cl.State.outbound.wmu.Lock() // nothing is written for now
	q.store("fs", 1, 0, 20)
	s.FeedStored(cl)
	require.Eventually(t, func() bool {
		cl.State.outbound.mu.Lock()
		defer cl.State.outbound.mu.Unlock()
		return len(cl.State.outbound.pks) > 0
	}, lifecycleWait, time.Millisecond)
	time.Sleep(20 * time.Millisecond) // time for the feed to overfill it
	cl.State.outbound.mu.Lock()
	owed, bytes := cl.State.outbound.owed, cl.State.outbound.bytes
	cl.State.outbound.mu.Unlock()
	if owed {
		cl.State.outbound.wmu.Unlock()
		t.Fatal("queue overfilled")
	}
	cl.State.outbound.wmu.Unlock()
	require.LessOrEqual(t, bytes, s.Options.Capabilities.MaximumClientWritesPendingBytes)
	expectPayloads(t, p, 0, 20, true)
}

// TestStoredFeedRestartsAfterStarving: an acknowledgement that frees the
// window while the feed is stopping for want of room restarts it; the
// feed does not end up stopped with room in the window and messages
// stored.
func TestStoredFeedRestartsAfterStarving(t *testing.T) {
	s, q, addr := newFeedServer(t, 4) // the feed's window: 2
	p, _ := connect(t, addr, 5, "fs", false, 3600)
	cl, _ := s.Clients.Get("fs")
	q.store("fs", 1, 0, 6)
	// The acknowledgement comes while the feed stops, after its first
	// batch filled the window.
	var once sync.Once
	parked := func() {
		once.Do(func() {
			for _, pk := range cl.State.Inflight.GetAll(false) {
				if cl.State.Inflight.Delete(pk.PacketID) {
					break
				}
			}
			s.freedWindow(cl)
		})
	}
	cl.State.feed.parked.Store(&parked)
	s.FeedStored(cl)
	// Two go out; the freed slot takes a third without an acknowledgement.
	expectPayloads(t, p, 0, 3, false)
}
