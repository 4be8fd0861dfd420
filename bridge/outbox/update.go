package outbox

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/persistence"
)

// Every write below is a stage function run by the store's writer inside
// its group commit (persistence.Store.Update): serially, so a route's next
// seq and what a stage reads cannot change under it. A stage that fails
// writes nothing. Its counter changes (deltas) are applied by the writer at
// the end of the stage, so they are in commit order, and taken back if the
// commit fails.
//
// m/seq/<route> is written, before anything is deleted, by every write that
// deletes records: the highest seq is then always on disk, in a key or in
// m/seq, so seqs (and ids) are never reused after a restart. Appends need
// not write it: their own keys carry the seq.

// Append implements bridge.Outbox. It returns once the messages are
// committed and, in "always" mode, fsynced (with whatever else the store's
// batch held).
func (o *Outbox) Append(ctx context.Context, msgs []bridge.Message) error {
	p, err := o.AppendAsync(ctx, msgs)
	if err != nil {
		return err
	}
	return p.Wait()
}

// AppendAsync implements bridge.Outbox: Append, with the wait for the
// commit left to the returned Pending. msgs must not be touched until its
// Wait returns (their Seq and ID are set by the writer).
func (o *Outbox) AppendAsync(ctx context.Context, msgs []bridge.Message) (bridge.Pending, error) {
	if len(msgs) == 0 {
		return done{}, nil
	}
	var deltas []delta
	applied := false
	stage := func(tx *persistence.Txn) error {
		deltas = deltas[:0]
		for i := range msgs {
			m := &msgs[i]
			st, err := o.state(m.Route)
			if err != nil {
				return err
			}
			deltas = append(deltas, delta{st, 1, appendOne(tx, st, m)})
		}
		applyDeltas(deltas, 1)
		applied = true
		return nil
	}
	o.closeMu.RLock()
	defer o.closeMu.RUnlock()
	if o.closed.Load() {
		return nil, ErrClosed
	}
	// Disk almost full: refused like a full outbox, before anything is
	// staged (the broker maps persistence.ErrDiskFull to PUBACK 0x97).
	if err := o.st.Admit(); err != nil {
		return nil, o.writeError(err)
	}
	p, err := o.st.UpdateAsync(ctx, true, stage)
	if err != nil {
		return nil, o.writeError(err)
	}
	return &appendWait{o: o, p: p, deltas: &deltas, applied: &applied}, nil
}

// appendWait is AppendAsync's Pending: the store's, plus taking the
// counters back if the commit failed.
type appendWait struct {
	o       *Outbox
	p       *persistence.Pending
	deltas  *[]delta
	applied *bool
}

func (w *appendWait) Ready() bool { return w.p.Ready() }

func (w *appendWait) Wait() error {
	err := w.p.Wait()
	if err != nil && *w.applied {
		applyDeltas(*w.deltas, -1) // staged, but the commit failed
	}
	if err != nil {
		return w.o.writeError(err)
	}
	return nil
}

// done is a Pending that has nothing to wait for.
type done struct{}

func (done) Wait() error { return nil }
func (done) Ready() bool { return true }

// write runs stage in the store's group commit and applies its deltas.
func (o *Outbox) write(ctx context.Context, durable bool, stage func(tx *persistence.Txn, deltas *[]delta) error) error {
	var deltas []delta
	applied := false
	err := o.update(ctx, durable, func(tx *persistence.Txn) error {
		deltas = deltas[:0]
		if err := stage(tx, &deltas); err != nil {
			return err
		}
		applyDeltas(deltas, 1)
		applied = true
		return nil
	})
	if err != nil && applied {
		applyDeltas(deltas, -1) // staged, but the commit failed
	}
	return err
}

// appendOne assigns m the route's next seq, stages its record and returns
// the record's size.
func appendOne(tx *persistence.Txn, st *routeState, m *bridge.Message) int64 {
	st.next++
	m.Seq = st.next
	if m.ID == "" {
		m.ID = bridge.MessageID(m.Route, m.Seq)
	}
	v := encodeMessage(m)
	tx.Set(seqKey('o', m.Route, m.Seq), v)
	return int64(len(v))
}

// keepSeq stages the route's highest seq, before a deletion.
func keepSeq(tx *persistence.Txn, route string, st *routeState) {
	tx.Set(seqMetaKey(route), binary.BigEndian.AppendUint64(nil, st.next))
}

// routeUpdate runs stage for one route's state; n is stage's result count.
func (o *Outbox) routeUpdate(ctx context.Context, route string, durable bool,
	stage func(tx *persistence.Txn, st *routeState, deltas *[]delta) (int, error)) (int, error) {
	n := 0
	err := o.write(ctx, durable, func(tx *persistence.Txn, deltas *[]delta) error {
		st, err := o.state(route)
		if err != nil {
			return err
		}
		n, err = stage(tx, st, deltas)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// remove stages the deletion of outbox key k, if it exists, and reports
// whether it did.
func remove(tx *persistence.Txn, st *routeState, deltas *[]delta, k []byte) (bool, error) {
	size, ok, err := tx.ValueSize(k)
	if err != nil || !ok {
		return false, err
	}
	tx.Delete(k)
	*deltas = append(*deltas, delta{st, -1, -size})
	return true, nil
}

// Delete implements bridge.Outbox. It waits for the commit, not for an
// fsync: a deletion lost in a power cut means a redelivery, which the
// message id lets the backend discard.
func (o *Outbox) Delete(ctx context.Context, route string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	_, err := o.routeUpdate(ctx, route, false, func(tx *persistence.Txn, st *routeState, deltas *[]delta) (int, error) {
		keepSeq(tx, route, st)
		for _, seq := range seqs {
			if _, err := remove(tx, st, deltas, seqKey('o', route, seq)); err != nil {
				return 0, err
			}
		}
		return 0, nil
	})
	return err
}

// DropOldest implements bridge.Outbox.
func (o *Outbox) DropOldest(ctx context.Context, route string, bytes int64) (int, error) {
	return o.routeUpdate(ctx, route, true, func(tx *persistence.Txn, st *routeState, deltas *[]delta) (int, error) {
		var keys [][]byte
		var sizes []int64
		freed := int64(0)
		tx.Scan(prefix('o', route), func(k []byte, size int64) bool {
			if freed >= bytes {
				return false
			}
			keys = append(keys, append([]byte(nil), k...))
			sizes = append(sizes, size)
			freed += size
			return true
		})
		keepSeq(tx, route, st)
		for i, k := range keys {
			tx.Delete(k)
			*deltas = append(*deltas, delta{st, -1, -sizes[i]})
		}
		return len(keys), nil
	})
}

// DeadLetter implements bridge.Outbox.
func (o *Outbox) DeadLetter(ctx context.Context, route string, dead []bridge.DeadLetter) error {
	if len(dead) == 0 {
		return nil
	}
	_, err := o.routeUpdate(ctx, route, true, func(tx *persistence.Txn, st *routeState, deltas *[]delta) (int, error) {
		for i := range dead {
			d := &dead[i]
			if _, err := remove(tx, st, deltas, seqKey('o', route, d.Seq)); err != nil {
				return 0, err
			}
			tx.Set(seqKey('d', route, d.Seq), encodeDead(d))
		}
		return 0, nil
	})
	return err
}

// Replay implements bridge.Outbox.
func (o *Outbox) Replay(ctx context.Context, route string, seqs []uint64) (int, error) {
	if seqs != nil && len(seqs) == 0 {
		return 0, nil
	}
	now := time.Now()
	return o.routeUpdate(ctx, route, true, func(tx *persistence.Txn, st *routeState, deltas *[]delta) (int, error) {
		n := 0
		for _, k := range deadKeys(tx, route, seqs) {
			v, ok, err := tx.Get(k)
			if err != nil {
				return 0, err
			}
			if !ok {
				continue
			}
			d, err := decodeDead(v)
			if err != nil {
				return 0, fmt.Errorf("key %s: %w", k, err)
			}
			m := d.Message
			// The id stays, so a backend that stored the message before can
			// still discard it; Created restarts so max_age and lag count
			// from the replay.
			m.Route, m.Created = route, now
			*deltas = append(*deltas, delta{st, 1, appendOne(tx, st, &m)})
			tx.Delete(k)
			n++
		}
		return n, nil
	})
}

// DeleteDeadLetters implements bridge.Outbox.
func (o *Outbox) DeleteDeadLetters(ctx context.Context, route string, seqs []uint64) (int, error) {
	if seqs != nil && len(seqs) == 0 {
		return 0, nil
	}
	return o.routeUpdate(ctx, route, true, func(tx *persistence.Txn, st *routeState, _ *[]delta) (int, error) {
		keys := deadKeys(tx, route, seqs)
		keepSeq(tx, route, st)
		n := 0
		for _, k := range keys {
			_, ok, err := tx.ValueSize(k)
			if err != nil {
				return 0, err
			}
			if ok {
				tx.Delete(k)
				n++
			}
		}
		return n, nil
	})
}

// deadKeys returns the d/ keys of route named by seqs, or every one when
// seqs is nil.
func deadKeys(tx *persistence.Txn, route string, seqs []uint64) [][]byte {
	var keys [][]byte
	if seqs != nil {
		for _, s := range seqs {
			keys = append(keys, seqKey('d', route, s))
		}
		return keys
	}
	tx.Scan(prefix('d', route), func(k []byte, _ int64) bool {
		keys = append(keys, append([]byte(nil), k...))
		return true
	})
	return keys
}
