package broker

import (
	"time"

	"github.com/ferrymq/ferry/broker/config"
	mqtt "github.com/mochi-mqtt/server/v2"
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
//   - block-publisher no longer holds its publishers (the engine's
//     Options.DeliveryWait, which otherwise holds a QoS 1/2 publisher, up
//     to limits.overflow_wait, while a subscriber's queue or in-flight
//     window is three quarters full);
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

// deliveryWait is how long the engine holds a publisher for a crowded
// subscriber: limits.overflow_wait under block-publisher, never under the
// drop policies.
func deliveryWait(cfg config.Config) time.Duration {
	if cfg.Limits.OverflowPolicy == OverflowBlockPublisher {
		return cfg.Limits.OverflowWait
	}
	return 0
}
