// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// AckWaiter is a write a hook started for a publish, typically the commit
// of the message to durable storage. Wait returns once it is done, with its
// outcome, and is called exactly once; Ready says, before that, whether
// Wait would return at once.
type AckWaiter interface {
	Wait() error
	Ready() bool
}

// ackHolds is a client's queue of acknowledgements held until their
// writes are done. A hook that stores a message registers its write with
// HoldAck from OnPublish; the reader goes on with the next packet instead
// of waiting, so a publisher's whole window can share one commit (and one
// fsync), and the PUBACK or PUBREC goes out, in the order the publishes
// came, once the write is done. A failed write closes the connection
// without the acknowledgement: the client sends the message again.
type ackHolds struct {
	collecting bool         // the reader is inside OnPublish of a QoS 1/2 PUBLISH
	waits      []AckWaiter  // what the hooks registered for that PUBLISH
	readWaits  []AckWaiter  // what OnPacketRead registered for the PUBREC/PUBREL being processed
	mu         sync.Mutex   // guards queue, running
	queue      []heldAck    // acknowledgements not written yet, oldest first
	running    bool         // a goroutine is writing the queue
	pending    atomic.Int32 // len(queue), read without mu
}

// heldAck is an acknowledgement and the writes it waits for.
type heldAck struct {
	ack    packets.Packet
	waits  []AckWaiter
	before func() // runs once the writes are done, before the acknowledgement
	after  func() // runs once the acknowledgement is written
}

// HoldAck holds the acknowledgement of the QoS 1 or 2 PUBLISH being
// processed until w is done; called from OnPacketRead for a PUBREC or a
// PUBREL, it holds the PUBREL or PUBCOMP that answers it. It may only be
// called from those hooks. It reports false when the engine cannot hold
// this acknowledgement (QoS 0, the inline client, another hook or packet):
// the hook must then wait for w itself before it returns.
func (cl *Client) HoldAck(w AckWaiter) bool {
	if !cl.State.acks.collecting {
		return false
	}
	cl.State.acks.waits = append(cl.State.acks.waits, w)
	return true
}

// startCollecting opens HoldAck for the PUBLISH pk, on the reader. The
// inline client is left alone: it publishes from any goroutine, and is
// never acknowledged.
func (cl *Client) startCollecting(pk *packets.Packet) {
	if pk.FixedHeader.Qos > 0 && !cl.Net.Inline {
		cl.State.acks.collecting = true
	}
}

// startCollectingRead opens HoldAck for the PUBREC or PUBREL pk while
// OnPacketRead runs: a storage hook stores the flow's next state there, and
// its answer (PUBREL, PUBCOMP) must not leave before that state is durable.
func (cl *Client) startCollectingRead(pk *packets.Packet) {
	t := pk.FixedHeader.Type
	if (t == packets.Pubrec || t == packets.Pubrel) && !cl.Net.Inline {
		cl.State.acks.collecting = true
	}
}

// takeReadWaits returns what hooks registered in OnPacketRead for the
// packet being processed.
func (cl *Client) takeReadWaits() []AckWaiter {
	w := cl.State.acks.readWaits
	cl.State.acks.readWaits = nil
	return w
}

// stopCollecting closes HoldAck and returns what the hooks registered.
func (cl *Client) stopCollecting() []AckWaiter {
	h := &cl.State.acks
	if !h.collecting {
		return nil
	}
	h.collecting = false
	w := h.waits
	h.waits = nil
	return w
}

// writeAck writes ack now, or after waits are done and after every
// acknowledgement already held: acknowledgements leave in the order their
// publishes came [MQTT-4.6.0-2] [MQTT-4.6.0-3]. after, if not nil, runs once
// ack has been written (or dropped with the connection).
func (s *Server) writeAck(cl *Client, ack packets.Packet, waits []AckWaiter, after func()) error {
	return s.writeAckAfter(cl, ack, waits, nil, after)
}

// writeAckAfter is writeAck with before, which runs once waits are done
// and before ack is written (not at all if a write failed).
func (s *Server) writeAckAfter(cl *Client, ack packets.Packet, waits []AckWaiter, before, after func()) error {
	h := &cl.State.acks
	if len(waits) > 0 && h.pending.Load() == 0 && readyAll(waits) {
		// Done already (a hook that had nothing to write, a commit that
		// came first): no need for the held queue and its goroutine.
		if err := waitAll(waits); err != nil {
			waits = []AckWaiter{doneWaiter{err}} // the held queue fails it
		} else {
			waits = nil
		}
	}
	if len(waits) == 0 && h.pending.Load() == 0 {
		if before != nil {
			before()
		}
		err := cl.queueAck(ack)
		if after != nil {
			after()
		}
		return err
	}
	h.mu.Lock()
	h.queue = append(h.queue, heldAck{ack: ack, waits: waits, before: before, after: after})
	h.pending.Store(int32(len(h.queue)))
	start := !h.running
	h.running = true
	h.mu.Unlock()
	if start {
		go s.writeHeldAcks(cl)
	}
	return nil
}

// writeHeldAcks writes cl's held acknowledgements in order, each once its
// writes are done. Those whose writes are done together (typically a
// publisher's window, in one group commit) go out in one system call.
func (s *Server) writeHeldAcks(cl *Client) {
	h := &cl.State.acks
	var ready []heldAck
	for {
		h.mu.Lock()
		if len(h.queue) == 0 {
			h.running = false
			h.mu.Unlock()
			return
		}
		next := h.queue[0]
		h.mu.Unlock()

		failed := waitAll(next.waits)
		ready = append(ready[:0], next)
		h.mu.Lock()
		for failed == nil && len(ready) < len(h.queue) && len(ready) < maxAckBatch && readyAll(h.queue[len(ready)].waits) {
			a := h.queue[len(ready)]
			if err := waitAll(a.waits); err != nil {
				h.queue[len(ready)].waits = []AckWaiter{doneWaiter{err}} // fails the next round
				break
			}
			ready = append(ready, a)
		}
		clear(h.queue[:len(ready)])
		h.queue = h.queue[len(ready):]
		h.pending.Store(int32(len(h.queue)))
		h.mu.Unlock()

		if failed != nil {
			s.Log.Error("a hook's write for a publish failed: acknowledgement withheld and connection closed, the client will send it again",
				"client", cl.ID, "packet_id", next.ack.PacketID, "error", failed)
			if next.ack.FixedHeader.Type == packets.Pubrec && cl.State.Inflight.DeleteInbound(next.ack.PacketID) {
				atomic.AddInt64(&s.Info.Inflight, -1) // not accepted: its resend is a new message
			}
			cl.Stop(failed)
			s.dropHeldAcks(cl, next.after)
			return
		}
		for _, a := range ready {
			if a.before != nil {
				a.before()
			}
			_ = cl.queueAck(a.ack) // behind those queued before the hold: in order
		}
		for _, a := range ready {
			if a.after != nil {
				a.after()
			}
		}
		clear(ready)
	}
}

// maxAckBatch bounds the acknowledgements written with one system call.
const maxAckBatch = 1024

// waitAll waits for every w and returns the first error.
func waitAll(ws []AckWaiter) error {
	var err error
	for _, w := range ws {
		if werr := w.Wait(); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// readyAll says whether every w is done.
func readyAll(ws []AckWaiter) bool {
	for _, w := range ws {
		if !w.Ready() {
			return false
		}
	}
	return true
}

// doneWaiter is a write already done, with its outcome.
type doneWaiter struct{ err error }

func (d doneWaiter) Wait() error { return d.err }
func (d doneWaiter) Ready() bool { return true }

// dropHeldAcks forgets what is held for a closed connection. The writes
// not waited for yet are still waited for: a hook may settle its
// bookkeeping in Wait, which must run exactly once.
func (s *Server) dropHeldAcks(cl *Client, first func()) {
	if first != nil {
		first()
	}
	h := &cl.State.acks
	h.mu.Lock()
	rest := h.queue
	h.queue = nil
	h.pending.Store(0)
	h.running = false
	h.mu.Unlock()
	for _, a := range rest {
		// A write that is done is durable: its QoS 2 message is delivered,
		// as its PUBREC, not sent now, is when the client resends it.
		if waitAll(a.waits) == nil && a.before != nil {
			a.before()
		}
		if a.after != nil {
			a.after()
		}
	}
}
