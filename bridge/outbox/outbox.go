package outbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/persistence"
)

// ErrClosed is returned by every call after Close.
var ErrClosed = fmt.Errorf("outbox: %w", bridge.ErrClosed)

// Outbox is a bridge.Outbox kept in a persistence.Store.
type Outbox struct {
	st  *persistence.Store
	own bool // Close closes st (Open)
	log *slog.Logger

	// closeMu is held (read) across every write, so Close returns only
	// once none is in flight and the store may close after. Reads check
	// closed only: they run inside writes too (a route's first load), where
	// taking closeMu again could deadlock with a waiting Close.
	closeMu sync.RWMutex
	closed  atomic.Bool

	// routes maps a route name to its *routeState; loadMu serialises the
	// first load of a route so it is counted once.
	routes sync.Map
	loadMu sync.Mutex
}

var _ bridge.Outbox = (*Outbox)(nil)

// routeState is one route's counters. next is touched only by stage
// functions, which the store's writer runs one at a time (and by the load,
// before the state is published); msgs and bytes are read by anyone.
type routeState struct {
	next        uint64
	msgs, bytes atomic.Int64
	// below: every seq up to it was deleted when Oldest last looked. Seqs
	// only grow (a replay appends under new ones), so the next look can
	// start there instead of walking the deleted keys' tombstones again (a
	// /metrics scrape did, for 25 ms under load).
	below atomic.Uint64
}

// delta is a counter change of a write: applied by the writer at the end
// of the write's stage, taken back if the commit then fails.
type delta struct {
	st          *routeState
	msgs, bytes int64
}

// applyDeltas adds ds (sign 1) or takes them back (sign -1).
func applyDeltas(ds []delta, sign int64) {
	for _, d := range ds {
		d.st.msgs.Add(sign * d.msgs)
		d.st.bytes.Add(sign * d.bytes)
	}
}

// New returns the outbox kept in st, sharing its writer, group commit and
// fsyncs with everything else st stores. If st's directory holds an outbox
// in the layout of earlier Ferry versions (LegacyDir, its own Badger
// database), New first moves its records into st and renames the directory
// (see migrate). A nil logger discards logs. Close the outbox before st.
func New(st *persistence.Store, logger *slog.Logger) (*Outbox, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := &Outbox{st: st, log: logger}
	if err := o.migrate(); err != nil {
		return nil, err
	}
	return o, nil
}

// Open opens (creating) a store of the outbox's own in cfg.Dir and the
// outbox in it; Close closes both. For tools and tests; a broker shares its
// store through New. A nil logger discards logs.
func Open(cfg Config, logger *slog.Logger) (*Outbox, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: invalid config: %w", err)
	}
	st, err := persistence.Open(cfg.store(), logger)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	o, err := New(st, logger)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	o.own = true
	return o, nil
}

// Close waits for the calls in progress and makes later ones fail with
// ErrClosed; an outbox from Open also closes its store (which commits and
// fsyncs what is queued). Safe to call twice.
func (o *Outbox) Close() error {
	o.closeMu.Lock()
	defer o.closeMu.Unlock()
	if o.closed.Swap(true) {
		return nil
	}
	if o.own {
		if err := o.st.Close(); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// Fsyncs reports the fsyncs of the outbox's store, shared with everything
// else it stores; a test and benchmark figure for group commit.
func (o *Outbox) Fsyncs() uint64 { return o.st.Stats().Fsyncs }

// update runs stage in the store's group commit; see persistence.Store.
// Update for ctx and durable.
func (o *Outbox) update(ctx context.Context, durable bool, stage func(tx *persistence.Txn) error) error {
	o.closeMu.RLock()
	defer o.closeMu.RUnlock()
	if o.closed.Load() {
		return ErrClosed
	}
	return o.writeError(o.st.Update(ctx, durable, stage))
}

// writeError adds the store's directory to a write's error.
func (o *Outbox) writeError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, persistence.ErrClosed):
		return ErrClosed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrCorrupt):
		return err
	}
	return fmt.Errorf("outbox: write in %s: %w", o.st.Dir(), err)
}

// view runs fn in a read transaction of the store.
func (o *Outbox) view(fn func(txn *badger.Txn) error) error {
	if o.closed.Load() {
		return ErrClosed
	}
	err := o.st.View(fn)
	if errors.Is(err, persistence.ErrClosed) {
		return ErrClosed
	}
	return err
}

// Read implements bridge.Outbox.
func (o *Outbox) Read(route string, after uint64, limit int) ([]bridge.Message, error) {
	var out []bridge.Message
	err := o.scan('o', route, after, limit, func(seq uint64, v []byte) error {
		m, err := decodeMessage(v)
		if err != nil {
			return err
		}
		m.Route, m.Seq = route, seq
		out = append(out, m)
		return nil
	})
	return out, err
}

// DeadLetters implements bridge.Outbox.
func (o *Outbox) DeadLetters(route string, after uint64, limit int) ([]bridge.DeadLetter, error) {
	var out []bridge.DeadLetter
	err := o.scan('d', route, after, limit, func(seq uint64, v []byte) error {
		d, err := decodeDead(v)
		if err != nil {
			return err
		}
		d.Route, d.Seq = route, seq
		out = append(out, d)
		return nil
	})
	return out, err
}

// Oldest implements bridge.Outbox.
func (o *Outbox) Oldest(route string) (time.Time, error) {
	st, err := o.state(route)
	if err != nil {
		return time.Time{}, err
	}
	var t time.Time
	err = o.scan('o', route, st.below.Load(), 1, func(seq uint64, v []byte) error {
		m, err := decodeMessage(v)
		t = m.Created
		if err == nil && seq > 0 {
			st.below.Store(seq - 1)
		}
		return err
	})
	return t, err
}

// Usage implements bridge.Outbox. The first call for a route counts its
// records on disk; later calls read counters.
func (o *Outbox) Usage(route string) bridge.Usage {
	st, err := o.state(route)
	if err != nil {
		o.log.Error("outbox: load route", "route", route, "err", err)
		return bridge.Usage{}
	}
	return bridge.Usage{Messages: st.msgs.Load(), Bytes: st.bytes.Load()}
}

// scan calls fn for up to limit records of kind and route with seq > after.
func (o *Outbox) scan(kind byte, route string, after uint64, limit int, fn func(seq uint64, v []byte) error) error {
	if limit <= 0 {
		return nil
	}
	pre := prefix(kind, route)
	err := o.view(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = pre
		opts.PrefetchSize = min(limit, 100)
		it := txn.NewIterator(opts)
		defer it.Close()
		n := 0
		for it.Seek(seqKey(kind, route, after+1)); it.ValidForPrefix(pre) && n < limit; it.Next() {
			item := it.Item()
			seq := keySeq(item.Key())
			if err := item.Value(func(v []byte) error { return fn(seq, v) }); err != nil {
				return fmt.Errorf("key %s: %w", item.Key(), err)
			}
			n++
		}
		return nil
	})
	if errors.Is(err, ErrClosed) {
		return err
	}
	if err != nil {
		return fmt.Errorf("outbox: read %s in %s: %w", route, o.st.Dir(), err)
	}
	return nil
}

// state returns route's counters, loading them from disk on first use.
func (o *Outbox) state(route string) (*routeState, error) {
	// Fast path without a lock: Usage runs on every publish.
	if st, ok := o.routes.Load(route); ok {
		return st.(*routeState), nil
	}
	o.loadMu.Lock()
	defer o.loadMu.Unlock()
	if st, ok := o.routes.Load(route); ok {
		return st.(*routeState), nil
	}
	st := &routeState{}
	err := o.view(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		for _, kind := range []byte{'o', 'd'} {
			opts.Prefix = prefix(kind, route)
			it := txn.NewIterator(opts)
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				st.next = max(st.next, keySeq(item.Key()))
				if kind == 'o' {
					st.msgs.Add(1)
					st.bytes.Add(item.ValueSize())
				}
			}
			it.Close()
		}
		item, err := txn.Get(seqMetaKey(route))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: seq of %s", ErrCorrupt, route)
			}
			st.next = max(st.next, binary.BigEndian.Uint64(v))
			return nil
		})
	})
	if errors.Is(err, ErrClosed) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: load route %s in %s: %w", route, o.st.Dir(), err)
	}
	o.routes.Store(route, st)
	return st, nil
}
