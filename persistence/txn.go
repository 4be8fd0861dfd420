package persistence

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// Txn is what an Update's stage function reads and writes through: the
// writer's group-commit transaction, shared with every request committed in
// the same batch. It is valid only during the stage call.
//
// Writes are buffered until the stage returns nil and then applied in
// order; a stage that returns an error (or panics) writes nothing, and the
// other requests of the batch are not affected. Get and ValueSize see the
// stage's own buffered writes, earlier requests of the batch and everything
// committed; Scan sees the latter two only.
type Txn struct {
	cur *badger.Txn
	b   *batch
}

// Set stages key = val. Neither slice may be modified until Update returns.
func (t *Txn) Set(key, val []byte) { t.b.ops = append(t.b.ops, op{kind: opSet, key: key, val: val}) }

// Delete stages the deletion of key (a missing key is not an error). key may
// not be modified until Update returns.
func (t *Txn) Delete(key []byte) { t.b.ops = append(t.b.ops, op{kind: opDelete, key: key}) }

// pending returns the stage's last buffered write of key, if any.
func (t *Txn) pending(key []byte) (op, bool) {
	for i := len(t.b.ops) - 1; i >= 0; i-- {
		if bytes.Equal(t.b.ops[i].key, key) {
			return t.b.ops[i], true
		}
	}
	return op{}, false
}

// Get returns a copy of key's value, or ok false when key does not exist.
func (t *Txn) Get(key []byte) (val []byte, ok bool, err error) {
	if o, found := t.pending(key); found {
		return bytes.Clone(o.val), o.kind == opSet, nil
	}
	item, err := t.cur.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	val, err = item.ValueCopy(nil)
	return val, err == nil, err
}

// ValueSize returns the size of key's value without reading it, or ok false
// when key does not exist.
func (t *Txn) ValueSize(key []byte) (size int64, ok bool, err error) {
	if o, found := t.pending(key); found {
		return int64(len(o.val)), o.kind == opSet, nil
	}
	item, err := t.cur.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return item.ValueSize(), true, nil
}

// Scan calls fn with every key under prefix, in key order, and its value
// size, until fn returns false. key is valid only during the call. Scan
// does not see the stage's own buffered writes: read first, then write.
func (t *Txn) Scan(prefix []byte, fn func(key []byte, valueSize int64) bool) {
	it := t.cur.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if !fn(it.Item().Key(), it.Item().ValueSize()) {
			return
		}
	}
}

// Update runs stage on the writer goroutine, inside the transaction of the
// group commit it joins (batched with every other write waiting, the
// mochi hook's included), and returns once stage's writes are committed:
// stage's error, the commit's error, or nil. With durable, in "always" mode,
// it returns only after the fsync that covers them (one for the whole
// batch); without, it does not wait for (or cause) an fsync: use that for
// writes whose loss in a power cut is harmless, like deletions of delivered
// messages.
//
// stage runs exactly once, serially with every other write, so what it
// reads cannot change under it; it must be quick, must not block and must
// not call the Store. Like every batch, a commit Badger finds too big is
// split: a stage's writes land atomically unless that happens.
//
// ctx bounds only the wait for room in the writer's queue; once queued the
// write happens and Update waits for it. After Close it returns ErrClosed.
func (s *Store) Update(ctx context.Context, durable bool, stage func(tx *Txn) error) error {
	b := s.newBatch()
	b.stage, b.commitOnly = stage, !durable
	err := s.enqueue(ctx, b, true)
	if err == nil {
		err = <-b.done
	}
	s.putBatch(b)
	return err
}

// runStage runs b's stage against txn, buffering its writes in b.ops; on
// failure they are dropped.
func (s *Store) runStage(txn *badger.Txn, b *batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("persistence: update panicked: %v", r)
		}
		if err != nil {
			clear(b.ops)
			b.ops = b.ops[:0]
		}
	}()
	t := Txn{cur: txn, b: b}
	return b.stage(&t)
}

// View runs fn in a read-only transaction that sees every committed write.
// Values and keys are valid only during fn. After Close it returns
// ErrClosed.
func (s *Store) View(fn func(txn *badger.Txn) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, badger.ErrDBClosed) {
		return ErrClosed
	}
	return err
}

// Sync fsyncs what is committed, whatever the sync mode, and counts it in
// Stats().Fsyncs. For callers that must know data is on disk before a step
// outside the store (renaming a migrated directory).
func (s *Store) Sync() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.sync()
}
