package broker

import (
	"runtime"
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

// flowHook keeps mochi v2.7.9 from dropping QoS 1/2 messages it has
// acknowledged. It serves block-publisher only; the queue bounds of
// persistent sessions (limits.max_queued_*) and all three policies at
// those bounds are the persistence hook's, which also keeps a persistent
// subscriber's messages beyond its memory window out of mochi (spilled to
// the store), so this hook waits mostly for sessions that are not
// persistent. mochi writes the PUBACK, then, for each subscriber, stores
// the message in the session (limits.max_inflight) and hands it to the
// subscriber's outbound queue (a channel of limits.client_writes_pending);
// for a connected subscriber whose store or queue is full it drops the
// message for good. Under block-publisher the publisher's goroutine waits,
// in OnQosPublish (after the message is stored, before it is queued),
// until the subscriber's store and queue are under three quarters full, or
// until overflow_wait passes: the message is queued, not dropped, and the
// publisher reads nothing meanwhile, so TCP pushes back on it.
type flowHook struct {
	mqtt.HookBase
	wait        time.Duration
	maxInflight int
	waited      atomic.Uint64 // deliveries that waited
	timedOut    atomic.Uint64 // deliveries that waited overflow_wait in vain
	pressure    atomic.Int64  // unix nanoseconds of the last drop on a full queue
}

func newFlowHook(wait time.Duration, maxInflight int) *flowHook {
	return &flowHook{wait: wait, maxInflight: maxInflight}
}

func (h *flowHook) ID() string { return "ferry-flow" }

func (h *flowHook) Provides(b byte) bool {
	return b == mqtt.OnQosPublish || b == mqtt.OnPublish || b == mqtt.OnPublishDropped
}

// OnPublishDropped notes the time of a drop on a full queue. For the next
// 100 ms every QoS 0 publish yields the processor once before it is
// delivered. On a saturated core the Go scheduler shares time evenly between
// goroutines, so a single subscriber's writer loses to ten publishers'
// readers and its queue overflows; measured on one pinned core, fan-in QoS 0
// 10 -> 1: 50k deliveries/s with 71 % dropped without the yield, 122k/s with
// 0.03 % dropped with it.
func (h *flowHook) OnPublishDropped(*mqtt.Client, packets.Packet) {
	h.pressure.Store(time.Now().UnixNano())
}

// OnPublish yields for a QoS 0 publish while queues have been overflowing.
func (h *flowHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 {
		if p := h.pressure.Load(); p != 0 && time.Now().UnixNano()-p < int64(100*time.Millisecond) {
			runtime.Gosched()
		}
	}
	return pk, nil
}

// full reports whether cl's outbound queue or session store is at least
// three quarters full.
func (h *flowHook) full(cl *mqtt.Client) bool {
	return 4*cl.OutboundLen() >= 3*cl.OutboundCap() || 4*cl.State.Inflight.Len() >= 3*h.maxInflight
}

// OnQosPublish runs on the publisher's goroutine for each QoS 1/2 delivery,
// after mochi stored the message for the subscriber cl and before it queues
// it: wait here while cl has no room.
func (h *flowHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, resends int) {
	if resends > 0 || pk.FixedHeader.Dup || cl.Net.Conn == nil || !h.full(cl) {
		return // resends are written directly, not queued
	}
	h.waited.Add(1)
	deadline := time.Now().Add(h.wait)
	backoff := 50 * time.Microsecond
	for h.full(cl) && !cl.Closed() {
		if time.Now().After(deadline) {
			h.timedOut.Add(1)
			return
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 5*time.Millisecond)
	}
}
