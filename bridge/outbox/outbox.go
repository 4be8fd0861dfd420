package outbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/ferrymq/ferry/bridge"
)

// ErrClosed is returned by every call after Close.
var ErrClosed = fmt.Errorf("outbox: %w", bridge.ErrClosed)

// Outbox is a bridge.Outbox on its own Badger database.
type Outbox struct {
	cfg Config
	log *slog.Logger
	db  *badger.DB

	// sendMu makes Close wait for callers that are handing a request to
	// the writer, so no request is sent after the writer's last drain.
	sendMu sync.RWMutex
	closed bool
	reqs   chan *request
	quit   chan struct{}
	wg     sync.WaitGroup

	// routes maps a route name to its *routeState; mu serialises the
	// first load of a route so it is counted once.
	routes sync.Map
	mu     sync.Mutex

	fsyncs atomic.Uint64
}

var _ bridge.Outbox = (*Outbox)(nil)

// routeState is one route's counters. next is touched by the writer only
// (after load); msgs and bytes are read by anyone.
type routeState struct {
	next        uint64
	msgs, bytes atomic.Int64
}

type opKind int

const (
	opAppend opKind = iota
	opDelete
	opDrop
	opDead
	opReplay
	opDeadDelete
)

// request is one call handed to the writer; done gets exactly one value.
type request struct {
	op    opKind
	route string
	msgs  []bridge.Message
	seqs  []uint64
	dead  []bridge.DeadLetter
	bytes int64

	n      int     // result count
	deltas []delta // counter changes, applied after the commit
	done   chan error
}

type delta struct {
	st          *routeState
	msgs, bytes int64
}

// Open opens (creating) the outbox in cfg.Dir and starts its writer. A nil
// logger discards logs. The caller must Close it.
func Open(cfg Config, logger *slog.Logger) (*Outbox, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: invalid config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("outbox: create dir %s: %w", cfg.Dir, err)
	}
	opts := badger.DefaultOptions(cfg.Dir).
		WithLogger(badgerLogger{logger}).
		// Durability is decided here (one db.Sync per group commit), not per
		// transaction: SyncWrites would fsync every commit separately.
		WithSyncWrites(false).
		// Only the writer goroutine writes; there is nothing to conflict.
		WithDetectConflicts(false).
		WithNumVersionsToKeep(1).
		WithChecksumVerificationMode(options.OnTableRead).
		WithMemTableSize(16 << 20).
		WithBlockCacheSize(8 << 20).
		WithNumCompactors(2).
		WithValueLogFileSize(64 << 20)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("outbox: open %s: %w", cfg.Dir, err)
	}
	o := &Outbox{
		cfg:  cfg,
		log:  logger,
		db:   db,
		reqs: make(chan *request, MaxWriterBatch),
		quit: make(chan struct{}),
	}
	if cfg.Sync == SyncNone {
		logger.Warn("outbox: sync is none: acknowledged messages are not fsynced and a power loss can lose them", "dir", cfg.Dir)
	}
	o.wg.Add(2)
	go o.writer()
	go o.gcLoop()
	return o, nil
}

// Close stops the writer after the requests already handed to it, fsyncs,
// and closes the database. Safe to call twice.
func (o *Outbox) Close() error {
	o.sendMu.Lock()
	if o.closed {
		o.sendMu.Unlock()
		return nil
	}
	o.closed = true
	o.sendMu.Unlock()
	close(o.quit)
	o.wg.Wait()
	if err := o.db.Close(); err != nil {
		return fmt.Errorf("outbox: close %s: %w", o.cfg.Dir, err)
	}
	return nil
}

// Fsyncs reports how many times the outbox called db.Sync; a test and
// benchmark figure for group commit.
func (o *Outbox) Fsyncs() uint64 { return o.fsyncs.Load() }

// do hands r to the writer and waits for its result. ctx bounds only the
// wait for room in the writer's queue: once queued, the write happens and
// do waits for it.
func (o *Outbox) do(ctx context.Context, r *request) error {
	r.done = make(chan error, 1)
	o.sendMu.RLock()
	if o.closed {
		o.sendMu.RUnlock()
		return ErrClosed
	}
	select {
	case o.reqs <- r:
	case <-ctx.Done():
		o.sendMu.RUnlock()
		return ctx.Err()
	}
	o.sendMu.RUnlock()
	return <-r.done
}

// Append implements bridge.Outbox.
func (o *Outbox) Append(ctx context.Context, msgs []bridge.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return o.do(ctx, &request{op: opAppend, msgs: msgs})
}

// Delete implements bridge.Outbox.
func (o *Outbox) Delete(ctx context.Context, route string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	return o.do(ctx, &request{op: opDelete, route: route, seqs: seqs})
}

// DropOldest implements bridge.Outbox.
func (o *Outbox) DropOldest(ctx context.Context, route string, bytes int64) (int, error) {
	r := &request{op: opDrop, route: route, bytes: bytes}
	err := o.do(ctx, r)
	return r.n, err
}

// DeadLetter implements bridge.Outbox.
func (o *Outbox) DeadLetter(ctx context.Context, route string, dead []bridge.DeadLetter) error {
	if len(dead) == 0 {
		return nil
	}
	return o.do(ctx, &request{op: opDead, route: route, dead: dead})
}

// Replay implements bridge.Outbox.
func (o *Outbox) Replay(ctx context.Context, route string, seqs []uint64) (int, error) {
	r := &request{op: opReplay, route: route, seqs: seqs}
	if seqs != nil && len(seqs) == 0 {
		return 0, nil
	}
	err := o.do(ctx, r)
	return r.n, err
}

// DeleteDeadLetters implements bridge.Outbox.
func (o *Outbox) DeleteDeadLetters(ctx context.Context, route string, seqs []uint64) (int, error) {
	if seqs != nil && len(seqs) == 0 {
		return 0, nil
	}
	r := &request{op: opDeadDelete, route: route, seqs: seqs}
	err := o.do(ctx, r)
	return r.n, err
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
	var t time.Time
	err := o.scan('o', route, 0, 1, func(_ uint64, v []byte) error {
		m, err := decodeMessage(v)
		t = m.Created
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
	err := o.db.View(func(txn *badger.Txn) error {
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
	if errors.Is(err, badger.ErrDBClosed) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("outbox: read %s in %s: %w", route, o.cfg.Dir, err)
	}
	return nil
}

// state returns route's counters, loading them from disk on first use.
func (o *Outbox) state(route string) (*routeState, error) {
	// Fast path without a lock: Usage runs on every publish.
	if st, ok := o.routes.Load(route); ok {
		return st.(*routeState), nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if st, ok := o.routes.Load(route); ok {
		return st.(*routeState), nil
	}
	st := &routeState{}
	err := o.db.View(func(txn *badger.Txn) error {
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
	if err != nil {
		return nil, fmt.Errorf("outbox: load route %s in %s: %w", route, o.cfg.Dir, err)
	}
	o.routes.Store(route, st)
	return st, nil
}

// badgerLogger sends Badger's logs to slog; its chatty info goes to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, v ...any) { b.l.Error(trim(f, v), "component", "outbox") }
func (b badgerLogger) Warningf(f string, v ...any) {
	b.l.Warn(trim(f, v), "component", "outbox")
}
func (b badgerLogger) Infof(f string, v ...any)  { b.l.Debug(trim(f, v), "component", "outbox") }
func (b badgerLogger) Debugf(f string, v ...any) { b.l.Debug(trim(f, v), "component", "outbox") }

func trim(f string, v []any) string { return strings.TrimSpace(fmt.Sprintf(f, v...)) }
