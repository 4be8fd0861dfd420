package broker

import (
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Overflow policies for a QoS 1/2 message whose subscriber cannot take it
// now.
const (
	// OverflowBlockPublisher makes the publisher wait, up to
	// limits.overflow_wait, before its PUBACK/PUBREC: backpressure instead of
	// loss.
	OverflowBlockPublisher = "block-publisher"
	// OverflowDropNewest lets mochi drop the new message for that
	// subscriber (counted in ferry_messages_dropped_total).
	OverflowDropNewest = "drop-newest"
	// OverflowDropOldest drops the oldest message queued for the
	// subscriber that was not yet written to it. Only a persistent
	// session has such a queue Ferry can reach into: the persistence
	// hook's, in the store, beyond the session's memory window (see
	// persistence.PolicyDropOldest). What mochi already handed to a
	// connection (its outbound channel, its in-flight window) cannot be
	// taken back, so a subscriber without a persistent session, or whose
	// memory window and outbound queue are full with nothing spilled,
	// gets drop-newest (counted as such).
	OverflowDropOldest = "drop-oldest"
)

// maxPendingBytes bounds what a client's outbound queue holds, beside
// limits.client_writes_pending: a client that stopped reading holds at most
// this much in memory.
const maxPendingBytes = 8 << 20

// dropPolicyWriteWait is how long a client's write may be blocked, under
// the drop policies, before its client counts as stalled: long enough for
// a client that is merely slow to take what the socket holds.
const dropPolicyWriteWait = 50 * time.Millisecond

// A stalled client.
//
// A write to a client that stopped reading blocks only that client's
// writer, until limits.write_timeout closes the connection (conn.Write);
// publishers queue behind it in the engine. Once the write has been
// blocked for as long as a publisher may be held (stallWait) the client
// is stalled:
//   - block-publisher no longer holds its publishers (flowHook);
//   - the persistence hook spills the new messages of its persistent
//     session to the store and feeds it nothing until it reads again;
//   - what reaches its full queue (maxPendingBytes, client_writes_pending)
//     is dropped and counted (client_queue_full), or, for a QoS 1/2 message
//     of a persistent session, kept in flight by the engine: a client that
//     then starts reading again is disconnected once it has taken what was
//     queued, so that the resend delivers those messages before newer ones.

// stalled says whether cl's writes have been blocked for longer than a
// publisher may be held.
func (b *Broker) stalled(cl *mqtt.Client) bool {
	return cl.WriteBlocked() >= b.stallWait()
}

// stallWait is how long one write may hold the publishers of its client.
func (b *Broker) stallWait() time.Duration {
	if b.cfg.Limits.OverflowPolicy == OverflowBlockPublisher {
		return b.cfg.Limits.OverflowWait
	}
	return dropPolicyWriteWait
}

// flowHook keeps the engine from dropping QoS 1/2 messages it has
// acknowledged. It serves block-publisher only; the queue bounds of
// persistent sessions (limits.max_queued_*) and all three policies at
// those bounds are the persistence hook's, which also keeps a persistent
// subscriber's messages beyond its memory window out of the engine
// (spilled to the store), so this hook waits mostly for sessions that are
// not persistent. The engine writes the PUBACK, then, for each subscriber,
// stores the message in the session (limits.max_inflight) and queues it
// for the subscriber's writer; for a subscriber whose store or queue is
// full it drops the message. Under block-publisher the publisher's
// goroutine waits, in OnQosPublish (after the message is stored, before it
// is queued), until the subscriber's store and queue are under three
// quarters full, until overflow_wait passes, or until the subscriber is
// stalled: the publisher reads nothing meanwhile, so TCP pushes back on it.
type flowHook struct {
	mqtt.HookBase
	b           *Broker
	maxInflight int
	waited      atomic.Uint64 // deliveries that waited
	timedOut    atomic.Uint64 // deliveries that waited overflow_wait in vain
}

func newFlowHook(b *Broker) *flowHook {
	return &flowHook{b: b, maxInflight: b.cfg.Limits.MaxInflight}
}

func (h *flowHook) ID() string { return "ferry-flow" }

func (h *flowHook) Provides(b byte) bool {
	return b == mqtt.OnQosPublish
}

// full reports whether cl's outbound queue or session store is at least
// three quarters full.
func (h *flowHook) full(cl *mqtt.Client) bool {
	return 4*cl.OutboundLen() >= 3*cl.OutboundCap() || 4*cl.OutboundBytes() >= 3*maxPendingBytes ||
		4*cl.State.Inflight.Len() >= 3*h.maxInflight
}

// OnQosPublish runs on the publisher's goroutine for each QoS 1/2 delivery,
// after the engine stored the message for the subscriber cl and before it
// queues it: wait here while cl has no room.
func (h *flowHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, resends int) {
	if resends > 0 || pk.FixedHeader.Dup || cl.Net.Conn == nil || !h.full(cl) || h.b.stalled(cl) {
		return // resends are written directly, not queued
	}
	h.waited.Add(1)
	deadline := time.Now().Add(h.b.cfg.Limits.OverflowWait)
	backoff := 50 * time.Microsecond
	for h.full(cl) && !cl.Closed() {
		if time.Now().After(deadline) || h.b.stalled(cl) {
			h.timedOut.Add(1)
			return
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 5*time.Millisecond)
	}
}
