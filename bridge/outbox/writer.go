package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/bridge"
)

// writer is the only goroutine that writes. It takes every request waiting
// (up to MaxWriterBatch) into one transaction, commits, fsyncs according to
// the sync mode, then answers them all: group commit.
func (o *Outbox) writer() {
	defer o.wg.Done()
	var tick <-chan time.Time
	if o.cfg.Sync == SyncBatch {
		t := time.NewTicker(o.cfg.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	dirty := false
	batch := make([]*request, 0, MaxWriterBatch)
	for {
		select {
		case r := <-o.reqs:
			batch = append(batch[:0], r)
		fill:
			for len(batch) < MaxWriterBatch {
				select {
				case r := <-o.reqs:
					batch = append(batch, r)
				default:
					break fill
				}
			}
			dirty = o.apply(batch) || dirty
			if o.cfg.Sync != SyncBatch {
				dirty = false
			}
		case <-tick:
			if dirty {
				// Crash (power loss) before this Sync: the commits of the last
				// interval, already acknowledged, may be lost. After it they are
				// on disk.
				o.sync()
				dirty = false
			}
		case <-o.quit:
			// Close waited for every sender, so what is queued is all there is.
			for {
				select {
				case r := <-o.reqs:
					o.apply([]*request{r})
					continue
				default:
				}
				break
			}
			// Crash before this Sync: in batch or none mode the last commits
			// may be lost on power loss; after it everything committed is on
			// disk.
			o.sync()
			return
		}
	}
}

func (o *Outbox) sync() {
	if err := o.db.Sync(); err != nil {
		o.log.Error("outbox: fsync", "dir", o.cfg.Dir, "err", err)
	}
	o.fsyncs.Add(1)
}

// apply runs batch in one transaction (split only if Badger finds it too
// big), fsyncs in "always" mode, updates the counters and answers every
// request. It reports whether something durable was written.
func (o *Outbox) apply(batch []*request) bool {
	w := &wtx{db: o.db, txn: o.db.NewTransaction(true)}
	touched := map[*routeState]string{}
	errs := make([]error, len(batch))
	for i, r := range batch {
		errs[i] = o.stage(w, r, touched)
	}
	var err error
	for st, route := range touched {
		if err = w.set(seqMetaKey(route), binary.BigEndian.AppendUint64(nil, st.next)); err != nil {
			break
		}
	}
	if err == nil {
		err = w.txn.Commit()
	} else {
		w.txn.Discard()
	}
	if err != nil {
		err = fmt.Errorf("outbox: commit in %s: %w", o.cfg.Dir, err)
		if errors.Is(err, badger.ErrDBClosed) {
			err = ErrClosed
		}
	}
	durable := false
	for _, r := range batch {
		if r.op != opDelete {
			durable = true
		}
	}
	if err == nil && durable && o.cfg.Sync == SyncAlways {
		// Crash before this Sync: the batch may be lost, but no caller was
		// answered yet, so no publisher was acknowledged for it (MQTT
		// clients resend). After it every record of the batch is on disk
		// and the callers may acknowledge.
		if serr := o.db.Sync(); serr != nil {
			err = fmt.Errorf("outbox: fsync %s: %w", o.cfg.Dir, serr)
		}
		o.fsyncs.Add(1)
	}
	for i, r := range batch {
		e := errs[i]
		if e == nil {
			e = err
		}
		if e == nil {
			for _, d := range r.deltas {
				d.st.msgs.Add(d.msgs)
				d.st.bytes.Add(d.bytes)
			}
		}
		r.done <- e
	}
	return durable && err == nil
}

// wtx is the writer's transaction; a Set or Delete that does not fit
// commits what is staged and continues in a new transaction.
type wtx struct {
	db  *badger.DB
	txn *badger.Txn
}

func (w *wtx) retry(op func(*badger.Txn) error) error {
	err := op(w.txn)
	if !errors.Is(err, badger.ErrTxnTooBig) {
		return err
	}
	if err := w.txn.Commit(); err != nil {
		return err
	}
	w.txn = w.db.NewTransaction(true)
	return op(w.txn)
}

func (w *wtx) set(k, v []byte) error {
	return w.retry(func(t *badger.Txn) error { return t.Set(k, v) })
}

func (w *wtx) del(k []byte) error {
	return w.retry(func(t *badger.Txn) error { return t.Delete(k) })
}

// size returns the value size of k, or -1 when k does not exist.
func (w *wtx) size(k []byte) (int64, error) {
	item, err := w.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return item.ValueSize(), nil
}

// stage writes r's records into w and records its counter changes.
func (o *Outbox) stage(w *wtx, r *request, touched map[*routeState]string) error {
	var st *routeState
	if r.op != opAppend {
		var err error
		if st, err = o.state(r.route); err != nil {
			return err
		}
	}
	switch r.op {
	case opAppend:
		for i := range r.msgs {
			m := &r.msgs[i]
			s, err := o.state(m.Route)
			if err != nil {
				return err
			}
			n, err := appendOne(w, s, m, touched)
			if err != nil {
				return err
			}
			r.deltas = append(r.deltas, delta{s, 1, n})
		}
		return nil
	case opDelete:
		for _, seq := range r.seqs {
			if err := o.remove(w, st, r, seqKey('o', r.route, seq)); err != nil {
				return err
			}
		}
		return nil
	case opDrop:
		return o.drop(w, st, r)
	case opDead:
		for i := range r.dead {
			d := &r.dead[i]
			if err := o.remove(w, st, r, seqKey('o', r.route, d.Seq)); err != nil {
				return err
			}
			if err := w.set(seqKey('d', r.route, d.Seq), encodeDead(d)); err != nil {
				return err
			}
		}
		return nil
	case opReplay:
		return o.replay(w, st, r, touched)
	case opDeadDelete:
		for _, k := range deadKeys(w, r) {
			n, err := w.size(k)
			if err != nil {
				return err
			}
			if n < 0 {
				continue
			}
			if err := w.del(k); err != nil {
				return err
			}
			r.n++
		}
		return nil
	}
	return fmt.Errorf("outbox: unknown op %d", r.op)
}

// appendOne assigns m the route's next seq, stages its record and returns
// the record's size.
func appendOne(w *wtx, st *routeState, m *bridge.Message, touched map[*routeState]string) (int64, error) {
	st.next++
	m.Seq = st.next
	if m.ID == "" {
		m.ID = bridge.MessageID(m.Route, m.Seq)
	}
	touched[st] = m.Route
	v := encodeMessage(m)
	if err := w.set(seqKey('o', m.Route, m.Seq), v); err != nil {
		return 0, err
	}
	return int64(len(v)), nil
}

// remove stages the deletion of outbox key k, if it exists.
func (o *Outbox) remove(w *wtx, st *routeState, r *request, k []byte) error {
	n, err := w.size(k)
	if err != nil || n < 0 {
		return err
	}
	if err := w.del(k); err != nil {
		return err
	}
	r.deltas = append(r.deltas, delta{st, -1, -n})
	r.n++
	return nil
}

// drop stages the deletion of the route's oldest records until r.bytes
// bytes are freed.
func (o *Outbox) drop(w *wtx, st *routeState, r *request) error {
	pre := prefix('o', r.route)
	var keys [][]byte
	var sizes []int64
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = pre
	it := w.txn.NewIterator(opts)
	freed := int64(0)
	for it.Rewind(); it.Valid() && freed < r.bytes; it.Next() {
		item := it.Item()
		keys = append(keys, item.KeyCopy(nil))
		sizes = append(sizes, item.ValueSize())
		freed += item.ValueSize()
	}
	it.Close()
	for i, k := range keys {
		if err := w.del(k); err != nil {
			return err
		}
		r.deltas = append(r.deltas, delta{st, -1, -sizes[i]})
		r.n++
	}
	return nil
}

// replay stages moving dead letters back to the end of the outbox.
func (o *Outbox) replay(w *wtx, st *routeState, r *request, touched map[*routeState]string) error {
	now := time.Now()
	for _, k := range deadKeys(w, r) {
		item, err := w.txn.Get(k)
		if errors.Is(err, badger.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		d, err := decodeDead(v)
		if err != nil {
			return fmt.Errorf("key %s: %w", k, err)
		}
		m := d.Message
		// The id stays, so a backend that stored the message before can
		// still discard it; Created restarts so max_age and lag count from
		// the replay.
		m.Route, m.Created = r.route, now
		n, err := appendOne(w, st, &m, touched)
		if err != nil {
			return err
		}
		if err := w.del(k); err != nil {
			return err
		}
		r.deltas = append(r.deltas, delta{st, 1, n})
		r.n++
	}
	return nil
}

// deadKeys returns the d/ keys r names: r.seqs, or every dead letter of
// r.route when r.seqs is nil.
func deadKeys(w *wtx, r *request) [][]byte {
	var keys [][]byte
	if r.seqs != nil {
		for _, s := range r.seqs {
			keys = append(keys, seqKey('d', r.route, s))
		}
		return keys
	}
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = prefix('d', r.route)
	it := w.txn.NewIterator(opts)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		keys = append(keys, it.Item().KeyCopy(nil))
	}
	return keys
}
