// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bytes"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// outQueue is a client's queue of packets to write. It holds nothing while
// the client is idle: a slice that grows with the backlog instead of a
// channel whose whole capacity (Capabilities.MaximumClientWritesPending)
// every client reserved, and a writer goroutine that runs only while there
// is something to write. The writer takes the whole backlog at once and
// writes it with one system call.
type outQueue struct {
	mu      sync.Mutex
	pks     []queued
	spare   []queued // the previous batch's slice, if small, reused
	bytes   int64    // the approximate size of pks (pendingSize)
	writing bool     // a writer goroutine is running
	// owed: a QoS 1/2 delivery of a session that outlives the connection
	// found the queue full and was kept in flight instead of queued. No
	// PUBLISH is queued after it; once the client has taken what is
	// queued the connection is closed, and the session's resend delivers
	// what was kept back, in order, when it resumes.
	owed bool
	// paused: the connection is being established; what is queued waits
	// until its CONNACK and the resend of the session's in-flight
	// messages are written, which go out directly.
	paused bool
	// holds: writes a hook must see done before the PUBLISH with that
	// packet identifier leaves (HoldDelivery); taken by publishToClient.
	holds  map[uint16]AckWaiter
	nholds atomic.Int32 // len(holds), read without mu
	open   atomic.Int32 // publishToClient calls inside OnQosPublish

	// flushBy: the reader that last queued here without starting the
	// writer (deferWake); it starts it, or writes itself, once its read
	// buffer is done.
	flushBy *Client
	// noTry: the connection cannot write without blocking (TLS,
	// WebSocket); only the writer goroutine writes it.
	noTry atomic.Bool

	// wmu orders writes to the socket. It is the only lock a write holds:
	// publishers never wait for a client that stopped reading.
	wmu sync.Mutex
	// rest: what a direct write (flushDeferred) left unwritten because the
	// socket was full. Guarded by wmu; the next write sends it first, and
	// the writer goroutine, which the direct write started, sends it if
	// nothing else comes.
	rest []byte
	// writeSince is when the socket write under way began (Unix
	// nanoseconds), 0 when none is (WriteBlocked).
	writeSince atomic.Int64
}

// ErrHeldBack ends a connection that stopped reading while deliveries of
// its session were kept back (outQueue.owed); they are resent when the
// session resumes.
var ErrHeldBack = errors.New("client stopped reading while deliveries were held back")

// WriteBlocked returns how long the write to the client's socket under
// way has taken so far, 0 when none is: a client that stopped reading
// keeps it growing until the connection's write deadline.
func (cl *Client) WriteBlocked() time.Duration {
	if t := cl.State.outbound.writeSince.Load(); t != 0 {
		return time.Duration(time.Now().UnixNano() - t)
	}
	return 0
}

// writeSocket writes p to the client's socket, one write at a time,
// behind what a direct write left unwritten.
func (cl *Client) writeSocket(p []byte) (int, error) {
	q := &cl.State.outbound
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.writeSince.Store(time.Now().UnixNano())
	defer q.writeSince.Store(0)
	if err := cl.writeRestLocked(); err != nil {
		return 0, err
	}
	return cl.Net.Conn.Write(p)
}

// writeRestLocked writes, waiting as a write does, what a direct write
// left; with wmu held.
func (cl *Client) writeRestLocked() error {
	q := &cl.State.outbound
	if len(q.rest) == 0 {
		return nil
	}
	_, err := cl.Net.Conn.Write(q.rest)
	q.rest = nil
	return err
}

// pauseOutbound holds queued packets back until resumeOutbound: the client
// is in the index (a publisher can reach it) before its CONNACK and the
// resend of its session are written.
func (cl *Client) pauseOutbound() {
	q := &cl.State.outbound
	q.mu.Lock()
	q.paused = true
	q.mu.Unlock()
}

// resumeOutbound ends pauseOutbound and writes what was queued meanwhile.
func (cl *Client) resumeOutbound() {
	q := &cl.State.outbound
	q.mu.Lock()
	q.paused = false
	start := len(q.pks) > 0 && !q.writing
	if start {
		q.writing = true
	}
	q.mu.Unlock()
	if start {
		go cl.writeQueued()
	}
}

// Len returns the number of packets waiting to be written.
func (q *outQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pks)
}

// OutboundLen returns how many packets wait in the client's outbound
// queue, and OutboundCap how many it may hold
// (Capabilities.MaximumClientWritesPending); publishes beyond that are
// dropped. Hooks use them for flow control.
func (cl *Client) OutboundLen() int { return int(atomic.LoadInt32(&cl.State.outboundQty)) }

// OutboundCap returns the most packets the client's outbound queue holds.
func (cl *Client) OutboundCap() int {
	return int(cl.ops.options.Capabilities.MaximumClientWritesPending)
}

// OutboundBytes returns the approximate size of the packets waiting in the
// client's outbound queue, which Capabilities.MaximumClientWritesPendingBytes
// bounds.
func (cl *Client) OutboundBytes() int64 {
	q := &cl.State.outbound
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// awaitRoom holds a QoS 1/2 delivery to cl while cl is crowded
// (Options.DeliveryWait): the publisher reads nothing meanwhile, so TCP
// pushes back on it. It gives up once the wait has passed, or once cl's
// write has been blocked as long (the client stopped reading).
func (s *Server) awaitRoom(cl *Client) {
	wait := s.Options.DeliveryWait
	if wait <= 0 || cl.Net.Conn == nil || cl.Closed() || !s.crowded(cl) || cl.WriteBlocked() >= wait {
		return
	}
	atomic.AddInt64(&s.Info.DeliveriesWaited, 1)
	cl.startWriter() // a reader may have left it to the end of its buffer
	deadline := time.Now().Add(wait)
	for backoff := 50 * time.Microsecond; s.crowded(cl) && !cl.Closed(); backoff = min(2*backoff, 5*time.Millisecond) {
		if time.Now().After(deadline) || cl.WriteBlocked() >= wait {
			atomic.AddInt64(&s.Info.DeliveryWaitsTimedOut, 1)
			return
		}
		time.Sleep(backoff)
	}
}

// crowded says whether cl's outbound queue (in packets or bytes) or its
// in-flight window is at least three quarters full.
func (s *Server) crowded(cl *Client) bool {
	caps := s.Options.Capabilities
	return 4*cl.OutboundLen() >= 3*int(caps.MaximumClientWritesPending) ||
		caps.MaximumClientWritesPendingBytes > 0 && 4*cl.OutboundBytes() >= 3*caps.MaximumClientWritesPendingBytes ||
		4*cl.State.Inflight.Len() >= 3*int(caps.MaximumInflight)
}

// pendingSize approximates what pk takes in the outbound queue: its
// payload and topic, plus the fixed part of a PUBLISH.
func pendingSize(pk *packets.Packet) int64 {
	return int64(len(pk.Payload) + len(pk.TopicName) + 16)
}

// queued is a packet in the queue; done, if not nil, gets the outcome of
// its write.
type queued struct {
	pk     *packets.Packet
	done   chan<- error
	hold   AckWaiter // not nil: written only once hold is done (HoldDelivery)
	size   int64     // pendingSize, counted in outQueue.bytes
	pooled bool      // pk is the queue's own copy, from ops.deliveries
}

// What enqueue did with a delivery.
const (
	enqueued     = iota
	keptInFlight // the queue is full; owed: resent when the session resumes
	refused      // the queue is full: the delivery is dropped
)

// enqueue queues the delivery pk for writing, starting the writer if it is
// not running, or leaving that to from, the reader delivering it, once its
// read buffer is done (deferWake); hold, if not nil, must be done before
// pk is written. pooled says pk is from copyDelivery: it is given back
// once written, or at once if it is not queued. When
// the queue is full (Capabilities.MaximumClientWritesPending packets, or
// MaximumClientWritesPendingBytes) or keeps deliveries back (owed), a
// QoS 1/2 delivery of a session that outlives the connection stays in
// flight, owed, and any other is refused.
func (cl *Client) enqueue(pk *packets.Packet, hold AckWaiter, from *Client, pooled bool) int {
	q := &cl.State.outbound
	size := pendingSize(pk)
	caps := cl.ops.options.Capabilities
	q.mu.Lock()
	if q.owed || int32(len(q.pks)) >= caps.MaximumClientWritesPending ||
		caps.MaximumClientWritesPendingBytes > 0 && len(q.pks) > 0 && q.bytes+size > caps.MaximumClientWritesPendingBytes {
		kept := pk.FixedHeader.Qos > 0 && !endsWithConnection(cl)
		q.owed = q.owed || kept
		q.mu.Unlock()
		if pooled {
			cl.releaseDelivery(pk)
		}
		if kept {
			return keptInFlight
		}
		return refused
	}
	q.bytes += size
	crowded := 2*int32(len(q.pks)) >= caps.MaximumClientWritesPending ||
		caps.MaximumClientWritesPendingBytes > 0 && 2*q.bytes >= caps.MaximumClientWritesPendingBytes
	if crowded {
		from = nil // the writer is needed now
	}
	cl.pushLocked(queued{pk: pk, hold: hold, size: size, pooled: pooled}, from)
	if crowded {
		// The writer is falling behind: on a saturated core Go's scheduler
		// shares time evenly between goroutines, and one subscriber's
		// writer loses to the readers of many publishers. Let it run.
		runtime.Gosched()
	}
	return enqueued
}

// HoldDelivery makes the engine write the PUBLISH with packet identifier
// pid only once w is done, without blocking the goroutine delivering it:
// a storage hook calls it from OnQosPublish with the write of the
// delivery's new state (a QoS 2 message's packet identifier, which a
// resend after a crash must carry). Deliveries queued after it wait behind
// it, in order. If w fails the PUBLISH is not written and the connection
// is closed; the message stays in flight and is resent when the session
// resumes. It reports false outside OnQosPublish of a delivery; the hook
// must then wait for w itself.
func (cl *Client) HoldDelivery(pid uint16, w AckWaiter) bool {
	q := &cl.State.outbound
	if q.open.Load() == 0 {
		return false
	}
	q.mu.Lock()
	if q.holds == nil {
		q.holds = make(map[uint16]AckWaiter)
	}
	if old := q.holds[pid]; old != nil {
		settleWaits([]AckWaiter{old})
	} else {
		q.nholds.Add(1)
	}
	q.holds[pid] = w
	q.mu.Unlock()
	return true
}

// takeDeliveryHold returns and forgets the hold registered for pid.
func (cl *Client) takeDeliveryHold(pid uint16) AckWaiter {
	q := &cl.State.outbound
	if q.nholds.Load() == 0 {
		return nil
	}
	q.mu.Lock()
	w := q.holds[pid]
	if w != nil {
		delete(q.holds, pid)
		q.nholds.Add(-1)
	}
	q.mu.Unlock()
	return w
}

// writeInOrder writes the PUBLISH pk behind what the queue holds, and
// waits for that write; inQueue is false, with nothing done, when the queue
// is idle and the caller may write pk itself. A PUBLISH written directly (a
// resend, a message a storage hook feeds from disk) must not overtake
// deliveries queued before it.
func (cl *Client) writeInOrder(pk packets.Packet) (inQueue bool, err error) {
	q := &cl.State.outbound
	q.mu.Lock()
	if q.paused || len(q.pks) == 0 && !q.writing {
		q.mu.Unlock() // paused: the resend itself, which goes first
		return false, nil
	}
	done := make(chan error, 1)
	cl.pushLocked(queued{pk: &pk, done: done}, nil)
	return true, <-done
}

// pushLocked appends e and starts the writer if needed, or has from, a
// reader, see to it at the end of its read buffer (deferWake); it unlocks
// q.mu.
func (cl *Client) pushLocked(e queued, from *Client) {
	q := &cl.State.outbound
	if q.pks == nil {
		if q.spare != nil {
			q.pks, q.spare = q.spare[:0], nil
		} else if pool := cl.ops.batches; pool != nil {
			if b, ok := pool.Get().(*[]queued); ok {
				q.pks = (*b)[:0]
			}
		}
	}
	q.pks = append(q.pks, e)
	atomic.AddInt32(&cl.State.outboundQty, 1)
	start := !q.writing && !q.paused
	if start && from != nil && from.State.reading {
		if q.flushBy != from {
			q.flushBy = from
			from.State.flushTo = append(from.State.flushTo, cl)
		}
		start = false
	}
	if start {
		q.writing = true
	}
	q.mu.Unlock()
	if start {
		go cl.writeQueued()
	}
}

// queueAck queues the acknowledgement ack (PUBACK, PUBREC, PUBREL,
// PUBCOMP) behind what cl's queue holds, for the writer goroutine, which
// writes a window of acknowledgements, and the deliveries queued with
// them, with one system call. Written by the reader itself, each took a
// system call of its own. Left to the end of the reader's buffer
// (deferWake) instead, a few of 100 QoS 1 publishers waited seconds for
// theirs (p99 1.4 s against 48 ms), so the writer it is. A write that
// fails is the writer's, as a delivery's: the connection's reader finds
// it broken, and the client sends the message again.
//
// An acknowledgement is never refused for a full queue. The caller waits
// instead while the queue holds MaximumClientWritesPending packets or
// more: a client that publishes and does not read would otherwise have
// its acknowledgements pile up until the write timeout, where the reader
// writing them itself was held at the first one.
func (cl *Client) queueAck(ack packets.Packet) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}
	if cl.Net.Conn == nil {
		return nil
	}
	q := &cl.State.outbound
	p := cl.copyDelivery(&ack)
	q.mu.Lock()
	cl.pushLocked(queued{pk: p, pooled: true}, nil)
	limit := cl.ops.options.Capabilities.MaximumClientWritesPending
	for backoff := 50 * time.Microsecond; atomic.LoadInt32(&cl.State.outboundQty) >= limit && !cl.Closed(); backoff = min(2*backoff, 5*time.Millisecond) {
		time.Sleep(backoff)
	}
	return nil
}

// copyDelivery returns a copy of pk for the queue, in a packet from the
// server's pool: a delivery then costs no allocation of its own (808
// bytes each, which were half of what a QoS 0 fan-in allocated).
func (cl *Client) copyDelivery(pk *packets.Packet) *packets.Packet {
	var p *packets.Packet
	if pool := cl.ops.deliveries; pool != nil {
		p, _ = pool.Get().(*packets.Packet)
	}
	if p == nil {
		p = new(packets.Packet)
	}
	*p = *pk
	return p
}

// releaseDelivery gives back a packet of copyDelivery once nothing refers
// to it: it is cleared, so the pool keeps no payload alive.
func (cl *Client) releaseDelivery(p *packets.Packet) {
	*p = packets.Packet{}
	if pool := cl.ops.deliveries; pool != nil {
		pool.Put(p)
	}
}

// startWriter starts the writer if packets wait and none runs: a reader
// that deferred it (pushLocked) is about to wait.
func (cl *Client) startWriter() {
	q := &cl.State.outbound
	q.mu.Lock()
	start := !q.writing && !q.paused && len(q.pks) > 0
	if start {
		q.writing = true
	}
	q.mu.Unlock()
	if start {
		go cl.writeQueued()
	}
}

// flushDeferred sees to the clients this reader queued packets for
// without waking their writers, once its read buffer holds no complete
// packet: it writes each one's queue itself, without blocking, or starts
// its writer. As nats-server's flushClients: a burst of publishes in one
// read wakes each subscriber once, and a single message to an idle
// subscriber needs no goroutine at all.
func (cl *Client) flushDeferred() {
	if fns := cl.State.atReadEnd; len(fns) > 0 {
		cl.State.atReadEnd = nil
		for _, f := range fns {
			f()
		}
	}
	list := cl.State.flushTo
	if len(list) == 0 {
		return
	}
	for i, t := range list {
		list[i] = nil
		t.flushQueued(cl)
	}
	cl.State.flushTo = list[:0]
}

// AtReadEnd runs f once the client's reader has processed every packet its
// read buffer holds (or its connection ended), with the deliveries it
// deferred: a hook that batches work for a run of PUBLISHes (one network
// write for a publisher's whole buffer) sends the batch then. It may only
// be called from the hooks the client's reader runs; elsewhere (the inline
// client, another goroutine) it returns false and the caller must not
// wait for the end of a read buffer.
func (cl *Client) AtReadEnd(f func()) bool {
	if !cl.State.reading || cl.Net.Inline {
		return false
	}
	cl.State.atReadEnd = append(cl.State.atReadEnd, f)
	return true
}

// FlushDeferred writes now what this client's reader has queued for other
// clients and left to the end of its read buffer (deferWake). A hook about
// to hold the reader back (a storage hook making a publisher wait for room,
// say) calls it first, so that the subscribers of the messages read before
// do not wait with it. Only the client's reader may call it, from the hooks
// it runs; anywhere else it does nothing.
func (cl *Client) FlushDeferred() {
	if cl.State.reading {
		cl.flushDeferred()
	}
}

// flushQueued writes the queue directly, for by's flushDeferred, if no
// writer runs and nothing in it is held; what the socket does not take at
// once, and anything it cannot write, is left to the writer goroutine.
func (cl *Client) flushQueued(by *Client) {
	q := &cl.State.outbound
	q.mu.Lock()
	if q.flushBy == by {
		q.flushBy = nil
	}
	if q.writing || q.paused || len(q.pks) == 0 {
		q.mu.Unlock()
		return
	}
	q.writing = true
	direct := !q.noTry.Load() && cl.Net.Conn != nil && canTryWrite(cl.Net.Conn) && q.nholds.Load() == 0 && q.wmu.TryLock()
	if !direct {
		q.mu.Unlock()
		go cl.writeQueued()
		return
	}
	batch := q.pks
	q.pks = nil
	q.mu.Unlock()

	w := cl.borrowScratch()
	err := cl.writeBatchTo(w, len(batch), func(k int) *packets.Packet { return batch[k].pk }, true)
	left := len(q.rest) > 0
	q.wmu.Unlock()
	cl.returnScratch(w)
	if err != nil && !errors.Is(err, ErrConnectionClosed) {
		cl.ops.log.Debug("failed publishing packets", "error", err, "client", cl.ID, "packets", len(batch))
	}
	cl.settleBatch(batch, err)

	q.mu.Lock()
	if left || len(q.pks) > 0 || q.owed {
		q.mu.Unlock()
		go cl.writeQueued() // still writing: q.writing stays
		return
	}
	q.writing = false
	q.mu.Unlock()
}

// settleBatch reports the outcome of a written batch to those waiting for
// it and takes it off the queue's counts.
func (cl *Client) settleBatch(batch []queued, err error) {
	q := &cl.State.outbound
	for _, e := range batch {
		if e.done != nil {
			e.done <- err
		}
	}
	atomic.AddInt32(&cl.State.outboundQty, -int32(len(batch)))
	var size int64
	for i := range batch {
		size += batch[i].size
		if batch[i].pooled {
			cl.releaseDelivery(batch[i].pk)
		}
	}
	clear(batch)
	pool := cl.ops.batches
	if big := cap(batch) > 1024; big && pool != nil && cap(batch) <= maxPooledBatch {
		// A burst's slice goes to the server's pool, not to the client,
		// which may stay idle: the next burst, of any client, starts
		// with room instead of growing a slice again (at 490k msg/s
		// that growth was most of what a delivery allocated).
		pool.Put(&batch)
	}
	q.mu.Lock()
	q.bytes -= size
	if q.spare == nil && cap(batch) <= 1024 {
		q.spare = batch[:0]
	}
	q.mu.Unlock()
}

// maxPooledBatch is the largest queue slice the server's pool keeps.
const maxPooledBatch = 1 << 16

// writeQueued writes the queue until it is empty, each round the whole
// backlog in one write.
func (cl *Client) writeQueued() {
	q := &cl.State.outbound
	w := cl.borrowScratch()
	defer cl.returnScratch(w)
	for {
		// Let the goroutines that are handing this client packets (the
		// publishers' readers, each working through a read buffer) go on
		// first: what they add meanwhile joins this write. Without other
		// work this returns at once.
		runtime.Gosched()
		q.mu.Lock()
		batch := q.pks
		q.pks = nil
		if len(batch) == 0 && cl.hasRest() {
			q.mu.Unlock()
			cl.flushRest()
			continue
		}
		if len(batch) == 0 {
			q.writing = false
			owed := q.owed
			q.owed = false
			q.mu.Unlock()
			if owed && !cl.Closed() {
				// The client reads again, but what was kept back would
				// follow newer messages: the session's resend sends it
				// first.
				cl.ops.log.Info("closing connection: it stopped reading and deliveries were held back; they are resent when it reconnects", "client", cl.ID)
				cl.Stop(ErrHeldBack)
			}
			return
		}
		q.mu.Unlock()

		err := cl.writeHeld(w, batch)
		if err != nil && !errors.Is(err, ErrConnectionClosed) {
			cl.ops.log.Debug("failed publishing packets", "error", err, "client", cl.ID, "packets", len(batch))
		}
		cl.settleBatch(batch, err)
		if cl.ops.wrote != nil {
			cl.ops.wrote(cl)
		}
	}
}

// hasRest says whether a direct write left bytes for the writer.
func (cl *Client) hasRest() bool {
	q := &cl.State.outbound
	q.wmu.Lock()
	defer q.wmu.Unlock()
	return len(q.rest) > 0
}

// flushRest writes what a direct write left, waiting as a write does.
func (cl *Client) flushRest() {
	q := &cl.State.outbound
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.writeSince.Store(time.Now().UnixNano())
	defer q.writeSince.Store(0)
	if err := cl.writeRestLocked(); err != nil && !errors.Is(err, ErrConnectionClosed) {
		cl.ops.log.Debug("failed publishing packets", "error", err, "client", cl.ID)
	}
}

// writeHeld writes batch, each run of packets with one system call: a
// packet with a hold that is not done yet ends a run, and is written
// once its hold is. A packet whose hold failed is not written, and the
// connection is closed: what follows it must not overtake it.
func (cl *Client) writeHeld(w *scratch, batch []queued) error {
	from := 0
	for i := range batch {
		h := batch[i].hold
		if h == nil {
			continue
		}
		if !h.Ready() && i > from {
			if err := cl.writeBatch(w, i-from, func(k int) *packets.Packet { return batch[from+k].pk }); err != nil {
				settleQueued(batch[i:])
				return err
			}
			from = i
		}
		batch[i].hold = nil
		if err := h.Wait(); err != nil {
			settleQueued(batch[i+1:])
			if from < i {
				_ = cl.writeBatch(w, i-from, func(k int) *packets.Packet { return batch[from+k].pk })
			}
			cl.ops.log.Warn("delivery withheld: a hook's write for it failed; closing the connection", "client", cl.ID, "error", err)
			cl.Stop(err)
			return err
		}
	}
	return cl.writeBatch(w, len(batch)-from, func(k int) *packets.Packet { return batch[from+k].pk })
}

// settleQueued waits, off the writer, for the holds of packets that will
// not be written.
func settleQueued(batch []queued) {
	var waits []AckWaiter
	for i := range batch {
		if batch[i].hold != nil {
			waits = append(waits, batch[i].hold)
			batch[i].hold = nil
		}
	}
	settleWaits(waits)
}

// borrowScratch takes batch buffers from the server's pool.
func (cl *Client) borrowScratch() *scratch {
	if pool := cl.ops.scratch; pool != nil {
		if w, ok := pool.Get().(*scratch); ok {
			return w
		}
	}
	return new(scratch)
}

// returnScratch gives w back, unless a burst made it too big to keep.
func (cl *Client) returnScratch(w *scratch) {
	if pool := cl.ops.scratch; pool != nil && w.buf.Cap() <= 1<<20 {
		pool.Put(w)
	}
}

// writeBatch encodes n packets, the i-th given by at, into w's buffer and
// writes them with one system call, then counts them and tells the hooks.
func (cl *Client) writeBatch(w *scratch, n int, at func(i int) *packets.Packet) error {
	return cl.writeBatchTo(w, n, at, false)
}

// writeBatchTo is writeBatch; direct, with wmu held, it writes without
// blocking and leaves what the socket does not take in q.rest.
func (cl *Client) writeBatchTo(w *scratch, n int, at func(i int) *packets.Packet, direct bool) error {
	if cl.Closed() || cl.Net.Conn == nil {
		return ErrConnectionClosed
	}
	buf := &w.buf
	buf.Reset()
	ends, sent := w.ends[:0], w.sent[:0]
	defer func() {
		clear(sent) // they hold payloads
		w.ends, w.sent = ends[:0], sent[:0]
	}()
	// flush writes what is encoded so far, with one system call.
	flush := func() error {
		if buf.Len() == 0 {
			return nil
		}
		if direct {
			if err := cl.tryWriteLocked(buf.Bytes()); err != nil {
				return err
			}
		} else if _, err := cl.writeSocket(buf.Bytes()); err != nil {
			return err
		}
		start := 0
		for i := range sent {
			cl.countSent(&sent[i], int64(ends[i]-start))
			cl.ops.hooks.OnPacketSent(cl, sent[i], buf.Bytes()[start:ends[i]])
			start = ends[i]
		}
		clear(sent)
		buf.Reset()
		ends, sent = ends[:0], sent[:0]
		return nil
	}
	for i := range n {
		out, err := cl.encodePacket(*at(i), buf)
		if err != nil {
			cl.ops.log.Debug("failed writing packet", "error", err, "client", cl.ID)
			continue
		}
		ends = append(ends, buf.Len())
		sent = append(sent, out)
		// A backlog of large messages is written in chunks: the buffer
		// stays small enough to be reused instead of growing (and being
		// cleared) for every batch.
		if buf.Len() >= maxWriteChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// maxWriteChunk is the most a writer encodes before it writes.
const maxWriteChunk = 256 << 10

// scratch is what a writer needs for one batch. Writers run only while
// their client has something to write, so they borrow it from the server's
// pool instead of each client keeping its own.
type scratch struct {
	buf  bytes.Buffer
	ends []int
	sent []packets.Packet
}

// tryWriteLocked writes p without blocking, with wmu held: what the socket
// does not take, and all of p behind an earlier rest, is kept in q.rest
// for the writer. A connection that cannot write so is marked (noTry) and
// p goes to the writer whole.
func (cl *Client) tryWriteLocked(p []byte) error {
	q := &cl.State.outbound
	if len(q.rest) > 0 {
		q.rest = append(q.rest, p...)
		return nil
	}
	n, err := tryWrite(cl.Net.Conn, p)
	if errors.Is(err, errors.ErrUnsupported) && n == 0 {
		q.noTry.Store(true)
		err = nil
	}
	if err != nil {
		return err
	}
	if n < len(p) {
		q.rest = append(q.rest[:0:0], p[n:]...)
	}
	return nil
}
