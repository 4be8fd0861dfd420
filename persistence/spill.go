package persistence

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Overflow policies for QueueLimits.Policy.
const (
	// PolicyDropNewest does not queue a message for a session whose queue is
	// full.
	PolicyDropNewest = "drop-newest"
	// PolicyDropOldest drops the oldest message queued for the session and
	// not yet sent to it, to make room.
	PolicyDropOldest = "drop-oldest"
	// PolicyBlockPublisher makes a publisher wait, before its PUBACK, while
	// a connected subscriber's queue is at its bound, up to
	// QueueLimits.BlockWait; then, and at once for an offline session
	// (it could make the publisher wait forever), it acts as
	// PolicyDropNewest.
	PolicyBlockPublisher = "block-publisher"
)

// Defaults of QueueLimits.
const (
	// DefaultMaxQueuedMessages bounds the messages queued per session.
	DefaultMaxQueuedMessages = 100000
	// DefaultMaxQueuedBytes bounds their topic and payload bytes: 64 MiB.
	DefaultMaxQueuedBytes = 64 << 20
	// DefaultMemoryWindow is the most QoS 1/2 messages of one persistent
	// session kept in mochi's memory (in flight or queued) before the rest
	// of its queue stays in the store only. It is further capped at half
	// of mochi's MaximumInflight.
	DefaultMemoryWindow = 1000
	// DefaultBlockWait bounds the wait of PolicyBlockPublisher.
	DefaultBlockWait = 5 * time.Second
)

// QueueLimits bound what is queued for one persistent session. The zero
// value of each field means its default.
type QueueLimits struct {
	// MaxMessages bounds the QoS 1/2 messages queued for a session, in
	// flight or waiting, in memory or spilled to the store.
	MaxMessages int
	// MaxBytes bounds the bytes (topic plus payload) of those messages.
	MaxBytes int64
	// Policy is PolicyDropNewest (default), PolicyDropOldest or
	// PolicyBlockPublisher (waits for a connected session, then acts as
	// PolicyDropNewest).
	Policy string
	// MemoryWindow is the most messages of one session kept in mochi's
	// memory; the rest stays in the store until the client takes them.
	// Default DefaultMemoryWindow, capped at MaximumInflight/2.
	MemoryWindow int
	// BlockWait bounds how long PolicyBlockPublisher holds a publisher.
	// Default DefaultBlockWait.
	BlockWait time.Duration
}

func (q QueueLimits) withDefaults() QueueLimits {
	if q.MaxMessages <= 0 {
		q.MaxMessages = DefaultMaxQueuedMessages
	}
	if q.MaxBytes <= 0 {
		q.MaxBytes = DefaultMaxQueuedBytes
	}
	if q.Policy == "" {
		q.Policy = PolicyDropNewest
	}
	if q.MemoryWindow <= 0 {
		q.MemoryWindow = DefaultMemoryWindow
	}
	if q.BlockWait <= 0 {
		q.BlockWait = DefaultBlockWait
	}
	return q
}

// SetQueueLimits sets the per-session queue bounds and overflow policy.
// Call it before the server's Serve.
func (h *Hook) SetQueueLimits(q QueueLimits) { h.limits = q.withDefaults() }

// SetStalled tells the hook which clients have stopped taking what is
// written to them: their new messages are spilled to the store, and
// NextStored hands the engine nothing, until fn reports false again (the
// engine asks again within a second). fn must be cheap and must not block. Call it
// before the server's Serve.
func (h *Hook) SetStalled(fn func(cl *mqtt.Client) bool) { h.stalled = fn }

// stalledClient says whether cl is connected but takes nothing.
func (h *Hook) stalledClient(cl *mqtt.Client) bool {
	return h.stalled != nil && cl != nil && h.stalled(cl)
}

// QueueStats are cumulative counters of the session queues, for metrics.
type QueueStats struct {
	// DroppedNewest: messages not queued for a session whose queue was full.
	DroppedNewest uint64
	// DroppedOldest: queued messages dropped to make room for newer ones.
	DroppedOldest uint64
	// Expired: spilled messages that expired before they could be sent.
	Expired uint64
	// Spilled: messages queued in the store only, beyond a session's
	// memory window.
	Spilled uint64
	// Blocked: publishes that waited for a full queue (block-publisher);
	// BlockTimedOut: those that waited BlockWait in vain.
	Blocked, BlockTimedOut uint64
}

// QueueStats returns the queue counters.
func (h *Hook) QueueStats() QueueStats {
	return QueueStats{
		DroppedNewest: h.droppedNewest.Load(),
		DroppedOldest: h.droppedOldest.Load(),
		Expired:       h.expired.Load(),
		Spilled:       h.spilled.Load(),
		Blocked:       h.blocked.Load(),
		BlockTimedOut: h.blockTimedOut.Load(),
	}
}

// window is the number of messages of one session kept in mochi's memory.
func (h *Hook) window() int {
	w := h.limits.MemoryWindow
	if m := int(h.srv.Options.Capabilities.MaximumInflight) / 2; m < w {
		w = m
	}
	return max(w, 1)
}

// liveWindow is the window of a connected session: half of mochi's
// MaximumInflight (5,000 by default), at least window(). A connected
// subscriber that falls behind for a moment would otherwise have its
// messages written, read back and written again (measured: fan-in 10 -> 1
// QoS 1, sync always, 23k msg/s with a window of 1,000, 31k with 5,000 and
// no spill); RAM stays bounded per session, and an offline session keeps
// the small window.
func (h *Hook) liveWindow() int {
	return max(h.window(), int(h.srv.Options.Capabilities.MaximumInflight)/2)
}

// spillItem is a queued message of a session held in the store only: not
// in mochi's memory, no packet id yet.
type spillItem struct {
	seq   uint64
	msgID uint64
	size  uint32
	// expires is when the message expires, in Unix seconds: its own expiry
	// or the server's maximum, whichever comes first; 0 never. It sits in
	// what would be the struct's padding.
	expires uint32
}

// expiresAt is spillItem.expires of a message created at created with
// expiry (Unix seconds, 0 none) under the server's maximum message expiry
// interval maxExpiry (seconds, 0 none): the moment after which NextStored
// drops it.
func expiresAt(created, expiry, maxExpiry int64) uint32 {
	at := expiry
	if maxExpiry > 0 && (at <= 0 || created+maxExpiry < at) {
		at = created + maxExpiry
	}
	if at <= 0 {
		return 0
	}
	return uint32(min(at, math.MaxUint32))
}

// expiredBy says whether a message that expires at exp (as
// spillItem.expires) has expired at now (Unix seconds).
func expiredBy(exp uint32, now int64) bool { return exp != 0 && int64(exp) < now }

// spillQueue is a session's spilled messages in queue (seq) order.
type spillQueue struct {
	items []spillItem
	head  int
}

func (q *spillQueue) len() int { return len(q.items) - q.head }

func (q *spillQueue) front() spillItem { return q.items[q.head] }

// insert adds it in seq order; nearly always at the end.
func (q *spillQueue) insert(it spillItem) {
	i := len(q.items)
	for i > q.head && q.items[i-1].seq > it.seq {
		i--
	}
	q.items = append(q.items, spillItem{})
	copy(q.items[i+1:], q.items[i:])
	q.items[i] = it
}

// pushFront puts items, which are older than every queued item, back.
func (q *spillQueue) pushFront(items []spillItem) {
	if len(items) == 0 {
		return
	}
	if q.head >= len(items) {
		q.head -= len(items)
		copy(q.items[q.head:], items)
		return
	}
	rest := q.items[q.head:]
	n := make([]spillItem, 0, len(items)+len(rest))
	q.items = append(append(n, items...), rest...)
	q.head = 0
}

// filter keeps, in order, the items keep returns true for.
func (q *spillQueue) filter(keep func(spillItem) bool) {
	out := q.items[q.head:q.head]
	for _, it := range q.items[q.head:] {
		if keep(it) {
			out = append(out, it)
		}
	}
	q.items = q.items[:q.head+len(out)]
	q.compact()
}

// popFront removes and returns up to n items from the front.
func (q *spillQueue) popFront(n int) []spillItem {
	n = min(n, q.len())
	out := append([]spillItem(nil), q.items[q.head:q.head+n]...)
	q.head += n
	q.compact()
	return out
}

func (q *spillQueue) compact() {
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
		if cap(q.items) > 1024 {
			q.items = nil
		}
		return
	}
	if q.head > 1024 && q.head > len(q.items)/2 {
		q.items = append(q.items[:0:0], q.items[q.head:]...)
		q.head = 0
	}
}

// spillingLocked says whether new messages for ss must be spilled to keep
// the queue order: older ones are still in the store or being moved into
// mochi.
func (ss *session) spillingLocked() bool {
	return ss.backlog.len() > 0 || ss.pendingSpill > 0 || len(ss.transfer) > 0 || ss.feedCl != nil
}

func (ss *session) account(n int, size uint32) {
	ss.count += n
	ss.bytes += int64(n) * int64(size)
}

func messageSize(pk *packets.Packet) uint32 {
	return uint32(len(pk.TopicName) + len(pk.Payload))
}

// offline says whether cl has no network connection mochi could write to.
func offline(cl *mqtt.Client) bool { return cl.Net.Conn == nil || cl.Closed() }

// outFields returns what mochi's publishToClient would give the copy of pk
// it queues for sub: its QoS, retain flag and subscription identifiers.
func outFields(pk *packets.Packet, sub packets.Subscription, version byte, maxQos byte) (qos byte, retain bool, ids []int) {
	qos = min(pk.FixedHeader.Qos, sub.Qos, maxQos)
	retain = pk.FixedHeader.Retain && version == 5 && sub.RetainAsPublished
	if len(sub.Identifiers) > 0 {
		ids = make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			ids = append(ids, id)
		}
		sort.Ints(ids)
	}
	return qos, retain, ids
}

// overflowLocked applies the policy to a message of size bytes for session
// id whose queue would go over a bound. It reports whether the message may
// be queued (room was made).
func (h *Hook) overflowLocked(id string, ss *session, cl *mqtt.Client, size uint32, b *batch) bool {
	lim := &h.limits
	full := func() bool { return ss.count+1 > lim.MaxMessages || ss.bytes+int64(size) > lim.MaxBytes }
	if !full() {
		return true
	}
	if lim.Policy == PolicyDropOldest && int64(size) <= lim.MaxBytes {
		for full() && h.dropOldestLocked(id, ss, cl, b) {
		}
		if !full() {
			return true
		}
	}
	h.droppedNewest.Add(1)
	h.logOverflow(id)
	return false
}

// fullLocked says whether the queue of a connected persistent session
// among targets has no room for pk. Offline sessions are not waited for
// (block-publisher acts as drop-newest for them), nor a message larger
// than the byte bound.
func (h *Hook) fullLocked(origin string, pk *packets.Packet, targets map[string]packets.Subscription, maxQos byte) bool {
	size := int64(messageSize(pk))
	if size > h.limits.MaxBytes {
		return false
	}
	for id, sub := range targets {
		ss := h.sessions[id]
		if ss == nil || min(pk.FixedHeader.Qos, sub.Qos, maxQos) == 0 || (sub.NoLocal && id == origin) {
			continue
		}
		if ss.count+1 <= h.limits.MaxMessages && ss.bytes+size <= h.limits.MaxBytes {
			continue
		}
		if cl, ok := h.srv.Clients.Get(id); ok && !offline(cl) {
			return true
		}
	}
	return false
}

// blockWait is one publish's wait under block-publisher: at most
// QueueLimits.BlockWait in all, polling with a growing pause.
type blockWait struct {
	deadline time.Time
	pause    time.Duration
}

// more says whether the publish may wait again, counting the first wait
// and a wait that runs out.
func (w *blockWait) more(h *Hook) bool {
	now := time.Now()
	if w.deadline.IsZero() {
		h.blocked.Add(1)
		w.deadline, w.pause = now.Add(h.limits.BlockWait), 50*time.Microsecond
		return true
	}
	if now.After(w.deadline) {
		h.blockTimedOut.Add(1)
		return false
	}
	return true
}

func (w *blockWait) sleep() {
	time.Sleep(w.pause)
	w.pause = min(2*w.pause, 5*time.Millisecond)
}

func (h *Hook) logOverflow(id string) {
	now := time.Now().UnixNano()
	if last := h.lastOverflowLog.Load(); now-last > int64(10*time.Second) && h.lastOverflowLog.CompareAndSwap(last, now) {
		h.log.Warn("session queue full: messages dropped (counted in ferry_messages_dropped_total)", "client_id", id, "policy", h.limits.Policy,
			"max_queued_messages", h.limits.MaxMessages, "max_queued_bytes", h.limits.MaxBytes)
	}
}

// dropOldestLocked drops the oldest message queued for session id that was
// not yet sent on a live connection: for an offline session the oldest of
// its memory window and spilled messages, for a connected one the oldest
// spilled message. It reports false if there is none.
func (h *Hook) dropOldestLocked(id string, ss *session, cl *mqtt.Client, b *batch) bool {
	var oldest *entry
	var oldestPid uint16
	if cl != nil && offline(cl) {
		for pid, e := range ss.entries {
			if e.state == refPublish && e.msgID != 0 && (oldest == nil || e.seq < oldest.seq) {
				oldest, oldestPid = e, pid
			}
		}
	}
	if ss.backlog.len() > 0 && (oldest == nil || ss.backlog.front().seq < oldest.seq) {
		it := ss.backlog.popFront(1)[0]
		b.delete(b.queueKey(id, it.seq))
		h.releaseBodyLocked(it.msgID, b)
		ss.account(-1, it.size)
		h.droppedOldest.Add(1)
		return true
	}
	if oldest == nil {
		return false
	}
	if pk, ok := cl.State.Inflight.Get(oldestPid); ok && pk.FixedHeader.Type == packets.Publish {
		if cl.State.Inflight.Delete(oldestPid) {
			atomic.AddInt64(&h.srv.Info.Inflight, -1)
		}
	}
	h.removeEntryLocked(id, ss, oldestPid, b)
	h.droppedOldest.Add(1)
	return true
}

// settleSpilledLocked moves the spilled refs of p, now committed (ok) or
// refused, into their sessions' backlogs. The ref of a session dropped
// meanwhile is deleted into b: its deletion may have been committed before
// the ref was.
func (h *Hook) settleSpilledLocked(p *pendingMsg, ok bool, b *batch) {
	for id, ref := range p.refs {
		if !ref.spilled || ref.done {
			continue
		}
		ref.done = true
		ss := ref.ss
		ss.pendingSpill--
		if !ok {
			ss.account(-1, ref.size)
			continue
		}
		if h.sessions[id] != ss {
			b.delete(b.queueKey(id, ref.seq))
			h.releaseBodyLocked(p.msgID, b)
			continue
		}
		ss.backlog.insert(spillItem{seq: ref.seq, msgID: p.msgID, size: ref.size, expires: p.expires})
		h.noteExpiryLocked(id, ss, p.expires)
		h.spilled.Add(1)
		h.feedLocked(id, ss)
	}
}

// feedLocked has the engine feed session id's spilled backlog into its
// client (mqtt.Server.FeedStored), if that is connected. It does not
// block.
func (h *Hook) feedLocked(id string, ss *session) {
	if !h.loaded.Load() || ss.backlog.len() == 0 {
		return
	}
	if cl, ok := h.srv.Clients.Get(id); ok && !offline(cl) {
		h.srv.FeedStored(cl)
	}
}

// NextStored hands the engine up to n of the oldest spilled messages of
// cl's session (mqtt.StoredQueue), read back from the store in one read
// transaction. Messages whose ref or body is gone, that expired, or that
// cl may no longer read (SetReadCheck) are deleted instead. While the
// client is stalled (SetStalled) it returns mqtt.ErrFeedLater. What it
// hands over stays in ss.transfer, so that no live message overtakes it,
// until FiledStored maps each onto its packet id and QueuedStored ends the
// batch.
func (h *Hook) NextStored(cl *mqtt.Client, n int) ([]packets.Packet, error) {
	for {
		pks, more, err := h.nextStored(cl, n)
		if err != nil || len(pks) > 0 || !more {
			return pks, err
		}
		// Every message read was dropped, and more are stored.
	}
}

// nextStored is one read of NextStored; more says whether the backlog
// holds more.
func (h *Hook) nextStored(cl *mqtt.Client, n int) (pks []packets.Packet, more bool, err error) {
	id := cl.ID
	h.mu.Lock()
	ss := h.sessions[id]
	if ss == nil || !h.loaded.Load() {
		h.mu.Unlock()
		return nil, false, nil
	}
	ss.backlog.pushFront(ss.transfer) // left by a batch that did not end
	ss.transfer = nil
	if ss.backlog.len() == 0 {
		ss.feedCl = nil
		h.mu.Unlock()
		return nil, false, nil
	}
	if h.stalledClient(cl) {
		h.mu.Unlock()
		return nil, false, mqtt.ErrFeedLater
	}
	items := ss.backlog.popFront(min(n, feedChunk))
	ss.transfer, ss.feedCl = items, cl
	h.mu.Unlock()
	sps, err := h.st.loadSpilled(id, items)
	b := h.st.newBatch()
	h.mu.Lock()
	if h.sessions[id] != ss || ss.feedCl != cl {
		h.mu.Unlock()
		h.st.putBatch(b)
		return nil, false, nil
	}
	if err != nil {
		// Back they go, to be read again: never drop what could not be read.
		ss.backlog.pushFront(ss.transfer)
		ss.transfer, ss.feedCl = nil, nil
		h.mu.Unlock()
		h.st.putBatch(b)
		return nil, false, err
	}
	now := h.now().Unix()
	kept := ss.transfer[:0]
	for i := range sps {
		sp := &sps[i]
		if expired := sp.ok && expiredBy(sp.item.expires, now); !sp.ok || expired || h.unreadableLocked(cl, &sp.pk) {
			if expired {
				h.expired.Add(1)
			}
			b.delete(b.queueKey(id, sp.item.seq))
			h.releaseBodyLocked(sp.item.msgID, b)
			ss.account(-1, sp.item.size)
			continue
		}
		pk := sp.pk
		// A stored id on a spilled ref is one it had before a restart put
		// it back in the backlog (load.go): it may have been sent.
		pk.FixedHeader.Dup = sp.rec.PacketID != 0
		kept = append(kept, sp.item)
		pks = append(pks, pk)
	}
	ss.transfer = kept
	if len(kept) == 0 {
		ss.feedCl = nil
	}
	more = ss.backlog.len() > 0
	h.mu.Unlock()
	h.write(b, false)
	return pks, more, nil
}

// FiledStored records the packet id the engine gave the next message of
// the batch (mqtt.StoredQueue). For QoS 2 it returns the write of that
// id, which the engine waits for before it writes the message: a resend
// after a crash must carry the same id.
func (h *Hook) FiledStored(cl *mqtt.Client, pk packets.Packet) mqtt.AckWaiter {
	b := h.st.newBatch()
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.sessions[cl.ID]
	if ss == nil || ss.feedCl != cl || len(ss.transfer) == 0 {
		h.st.putBatch(b)
		return nil
	}
	it := ss.transfer[0]
	ss.transfer = ss.transfer[1:]
	// An acknowledged flow's entry may still be here: the engine frees
	// the id before the hooks hear of the acknowledgement (forget then
	// leaves the new entry alone).
	h.removeEntryLocked(cl.ID, ss, pk.PacketID, b)
	ss.entries[pk.PacketID] = &entry{seq: it.seq, msgID: it.msgID, state: refPublish, created: pk.Created, size: it.size}
	rec := refRec{State: refPublish, Qos: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		PacketID: pk.PacketID, MsgID: it.msgID, SubIDs: pk.Properties.SubscriptionIdentifier}
	b.set(b.queueKey(cl.ID, it.seq), rec.appendTo)
	// Queued under h.mu: once the packet is in Inflight, its
	// acknowledgement (or a takeover's resend and its acknowledgement) can
	// delete the ref, and that deletion must be committed after this write.
	if pk.FixedHeader.Qos != 2 {
		h.writeLocked(b, false)
		return nil
	}
	p, err := h.st.writeAsync(b)
	if err != nil {
		h.logWriteError(err)
		return nil
	}
	return p
}

// QueuedStored ends the engine's batch (mqtt.StoredQueue): what it did not
// file goes back to the front of the backlog.
func (h *Hook) QueuedStored(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ss := h.sessions[cl.ID]; ss != nil && ss.feedCl == cl {
		ss.backlog.pushFront(ss.transfer)
		ss.transfer, ss.feedCl = nil, nil
	}
}

// feedChunk bounds the messages read back in one read transaction.
const feedChunk = 128

// writeLocked hands b to the store's writer with h.mu held, so that it is
// committed before any write queued after h.mu is released. It waits only
// for room in the writer's queue, never for a commit; with wait the
// function it returns waits for the commit (and fsync), to be called
// without h.mu.
func (h *Hook) writeLocked(b *batch, wait bool) (done func()) {
	if err := h.st.enqueue(context.Background(), b, wait); err != nil {
		h.st.putBatch(b)
		h.logWriteError(err)
		return func() {}
	}
	if !wait {
		return func() {}
	}
	return func() {
		err := <-b.done
		h.st.putBatch(b)
		h.logWriteError(err)
	}
}

// reconcileLocked forgets the queue entries of session id that mochi no
// longer holds for cl, the client that resumes it. A takeover copies the
// old client's in-flight messages; an acknowledgement the old connection
// read after mochi marked it taken over (which this hook ignores, see
// forget) but before the copy removed a message from both without a word.
func (h *Hook) reconcileLocked(id string, ss *session, cl *mqtt.Client, b *batch) {
	for pid := range ss.entries {
		if _, ok := cl.State.Inflight.Get(pid); !ok {
			h.removeEntryLocked(id, ss, pid, b)
		}
	}
}

// spilledPacket is a spilled message read back from the store.
type spilledPacket struct {
	item spillItem
	rec  refRec
	pk   packets.Packet
	ok   bool // false: its ref or body is gone
}

// loadSpilled reads the refs and bodies of items of client id in one read
// transaction.
func (s *Store) loadSpilled(id string, items []spillItem) ([]spilledPacket, error) {
	out := make([]spilledPacket, len(items))
	err := s.db.View(func(txn *badger.Txn) error {
		for i, it := range items {
			sp := &out[i]
			sp.item = it
			val, err := getValue(txn, queueKey(id, it.seq))
			if err != nil || val == nil {
				if err != nil {
					return err
				}
				continue
			}
			if sp.rec, err = decodeRef(val); err != nil {
				return s.unreadable(queueKey(id, it.seq), err)
			}
			body, err := getValue(txn, messageKey(it.msgID))
			if err != nil {
				return err
			}
			if body == nil {
				continue
			}
			m, err := decodeMessage(body)
			if err != nil {
				return s.unreadable(messageKey(it.msgID), err)
			}
			sp.pk = m.packet()
			sp.pk.FixedHeader.Qos = sp.rec.Qos
			sp.pk.FixedHeader.Retain = sp.rec.Retain
			sp.pk.Properties.SubscriptionIdentifier = sp.rec.SubIDs
			sp.ok = true
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("load spilled messages: %w", err)
	}
	return out, nil
}

// getValue returns a copy of key's value, or nil if there is none.
func getValue(txn *badger.Txn, key []byte) ([]byte, error) {
	item, err := txn.Get(key)
	if err == badger.ErrKeyNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// noteExpiryLocked records that the backlog of session id holds a message
// that expires at exp (0: never), for sweepSpilledLocked.
func (h *Hook) noteExpiryLocked(id string, ss *session, exp uint32) {
	if exp == 0 {
		return
	}
	if ss.nextExpiry == 0 || exp < ss.nextExpiry {
		ss.nextExpiry = exp
	}
	h.expiring[id] = ss
}

// sweepSpilled deletes the spilled messages that expired before they could
// be sent. NextStored drops them too, but only once the session is back: an
// offline session's queue would otherwise stay full of dead messages, its
// new ones dropped for want of room, and the disk kept. (Messages in
// mochi's memory window are expired by mochi, which tells OnQosDropped.)
func (h *Hook) sweepSpilled(now int64) {
	b := h.st.newBatch()
	h.mu.Lock()
	n := 0
	for id, ss := range h.expiring {
		if h.sessions[id] != ss || ss.nextExpiry == 0 {
			delete(h.expiring, id)
			continue
		}
		if int64(ss.nextExpiry) >= now {
			continue
		}
		var next uint32
		earliest := func(exp uint32) {
			if exp != 0 && (next == 0 || exp < next) {
				next = exp
			}
		}
		ss.backlog.filter(func(it spillItem) bool {
			if expiredBy(it.expires, now) {
				b.delete(b.queueKey(id, it.seq))
				h.releaseBodyLocked(it.msgID, b)
				ss.account(-1, it.size)
				n++
				return false
			}
			earliest(it.expires)
			return true
		})
		// Handed to the engine, back in the backlog if it does not file them.
		for _, it := range ss.transfer {
			earliest(it.expires)
		}
		ss.nextExpiry = next
		if next == 0 {
			delete(h.expiring, id)
		}
	}
	h.mu.Unlock()
	if n == 0 {
		h.st.putBatch(b)
		return
	}
	h.expired.Add(uint64(n))
	h.write(b, false)
}
