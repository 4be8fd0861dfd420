package persistence

import (
	"context"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Pending is a write queued to the store's writer that its caller has not
// waited for yet. It lets the broker keep reading a client's next PUBLISH
// while the previous one is being committed, and hold only the PUBACK until
// the write is durable: a publisher with many messages in flight then
// shares one fsync among all of them instead of waiting for one fsync per
// message (mochi reads a connection's packets one after the other).
//
// Wait must be called once; a Pending that is never waited for only costs
// its buffer to the garbage collector.
type Pending struct {
	s *Store
	b *batch
}

// Waiter is a write in progress: Wait waits for it, once; Ready says,
// before that, whether Wait would return at once.
type Waiter interface {
	Wait() error
	Ready() bool
}

// Ready reports whether the write is done (Wait would not block). Only
// before Wait.
func (p *Pending) Ready() bool { return len(p.b.done) > 0 }

// Wait returns once the write is committed and, in "always" mode, fsynced,
// with its error. It must not be called twice.
func (p *Pending) Wait() error {
	err := <-p.b.done
	p.s.putBatch(p.b)
	return err
}

// UpdateAsync queues stage like Update but returns without waiting: the
// returned Pending's Wait does. ctx bounds only the wait for room in the
// writer's queue.
func (s *Store) UpdateAsync(ctx context.Context, durable bool, stage func(tx *Txn) error) (*Pending, error) {
	b := s.newBatch()
	b.stage, b.commitOnly = stage, !durable
	if err := s.enqueue(ctx, b, true); err != nil {
		s.putBatch(b)
		return nil, err
	}
	return &Pending{s: s, b: b}, nil
}

// writeAsync hands b to the writer like write(b, true) but returns at once;
// the Pending owns b from then on. A batch without operations is done
// already: it returns nil.
func (s *Store) writeAsync(b *batch) (*Pending, error) {
	if len(b.ops) == 0 {
		s.putBatch(b)
		return nil, nil
	}
	if err := s.enqueue(context.Background(), b, true); err != nil {
		s.putBatch(b)
		return nil, err
	}
	return &Pending{s: s, b: b}, nil
}

// commitDeferred queues b and has the engine hold the answer to pk (the
// PUBACK or PUBREC of a PUBLISH, the PUBREL or PUBCOMP of a QoS 2 flow's
// PUBREC or PUBREL) until it is committed (mqtt.Client.HoldAck); settle, if
// not nil, runs after the commit with its outcome, and pm, if held, is
// dropped if the commit fails. A failure to queue is returned (settle has
// not run); a failed commit later closes the connection instead of
// answering.
func (h *Hook) commitDeferred(cl *mqtt.Client, pk packets.Packet, pm *pendingMsg, b *batch, settle func(ok bool)) error {
	p, err := h.st.writeAsync(b)
	if err != nil {
		return err
	}
	if p == nil {
		if settle != nil {
			settle(true)
		}
		return nil
	}
	w := &publishWait{p: p, settle: settle, h: h, client: cl.ID, topic: pk.TopicName,
		packet: packets.PacketNames[pk.FixedHeader.Type]}
	if pm != nil && pm.held {
		w.held = pm
	}
	if cl.HoldAck(w) {
		return nil
	}
	return w.Wait()
}

// publishWait is the Waiter of a deferred publish's records, or of a QoS 2
// flow's new state.
type publishWait struct {
	p                     *Pending
	settle                func(ok bool)
	h                     *Hook
	client, topic, packet string
	held                  *pendingMsg // a QoS 2 message not delivered yet: dropped if its records fail
}

func (w *publishWait) Ready() bool { return w.p.Ready() }

func (w *publishWait) Wait() error {
	err := w.p.Wait()
	if w.settle != nil {
		w.settle(err == nil)
	}
	if err != nil {
		w.h.log.Error("records not stored, acknowledgement withheld", "client_id", w.client, "packet", w.packet, "topic", w.topic, "err", err)
		if w.held != nil {
			w.h.dropPendingMsg(w.client, w.held)
		}
	}
	return err
}

// refuse answers a publish whose records could not be stored: MQTT 5 gets
// reason 0x83, MQTT 3 no acknowledgement (the client resends).
func (h *Hook) refuse(cl *mqtt.Client, pk packets.Packet, pm *pendingMsg, err error) error {
	h.log.Error("message not stored, publish refused", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
	h.dropPendingMsg(cl.ID, pm)
	if cl.Properties.ProtocolVersion == 5 {
		return packets.ErrImplementationSpecificError
	}
	return packets.ErrRejectPacket
}
