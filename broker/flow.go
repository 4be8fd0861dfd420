package broker

import (
	"errors"
	"reflect"
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
)

// flowHook keeps mochi v2.7.9 from acknowledging a QoS 1/2 message and then
// dropping it: mochi writes the PUBACK, then hands the message to each
// subscriber's outbound queue (a channel of limits.client_writes_pending)
// and session store (limits.max_inflight), and drops it, for good, for a
// connected subscriber whose queue or store is full. Under
// block-publisher, before mochi acknowledges, the publisher waits until
// every connected subscriber that will receive the message at QoS 1/2 has
// room (each at most three quarters full), or until overflow_wait passes.
//
// mochi does not expose the outbound queue's length; it is read by
// reflection from the unexported ClientState.outbound field. If a future
// mochi renames it, New fails loudly rather than losing messages quietly.
type flowHook struct {
	mqtt.HookBase
	b           *Broker
	wait        time.Duration
	queueField  []int
	maxInflight int
	waited      atomic.Uint64 // publishes that waited
	timedOut    atomic.Uint64 // publishes that waited overflow_wait in vain
}

func newFlowHook(b *Broker, wait time.Duration, maxInflight int) (*flowHook, error) {
	f, ok := reflect.TypeOf(mqtt.ClientState{}).FieldByName("outbound")
	if !ok || f.Type.Kind() != reflect.Chan {
		return nil, errMochiInternals
	}
	return &flowHook{b: b, wait: wait, queueField: f.Index, maxInflight: maxInflight}, nil
}

func (h *flowHook) ID() string { return "ferry-flow" }

func (h *flowHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// full reports whether cl's outbound queue or session store is at least
// three quarters full.
func (h *flowHook) full(cl *mqtt.Client, self bool) bool {
	q := reflect.ValueOf(&cl.State).Elem().FieldByIndex(h.queueField)
	if 4*q.Len() >= 3*q.Cap() {
		return true
	}
	// A client's own acknowledgements are read by the goroutine that is
	// waiting here: never wait for its own store to drain.
	return !self && 4*cl.State.Inflight.Len() >= 3*h.maxInflight
}

// OnPublish waits, before mochi acknowledges a QoS 1/2 publish, until its
// connected subscribers have room.
func (h *flowHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		return pk, nil
	}
	subs := h.b.mochi.Topics.Subscribers(pk.TopicName)
	var deadline time.Time
	backoff := 50 * time.Microsecond
	for id, sub := range subs.Subscriptions {
		if sub.Qos == 0 {
			continue // delivered at QoS 0: may be dropped, and is counted
		}
		sc, ok := h.b.mochi.Clients.Get(id)
		if !ok || sc.Closed() || sc.Net.Conn == nil {
			continue // offline: the message waits in its session
		}
		for h.full(sc, id == cl.ID) && !sc.Closed() && !cl.Closed() {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(h.wait)
				h.waited.Add(1)
			}
			if now.After(deadline) {
				h.timedOut.Add(1)
				return pk, nil
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, 5*time.Millisecond)
		}
	}
	return pk, nil
}

// errMochiInternals: the mochi in use lacks an internal flow control reads.
var errMochiInternals = errors.New("broker: mochi's ClientState has no outbound channel: flow control was written for mochi v2.7.9; set limits.overflow_policy: drop-newest")
