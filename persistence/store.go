package persistence

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// maxBatchRequests caps how many requests one group commit takes, so one
// transaction stays well under Badger's size limit in the common case.
const maxBatchRequests = 1024

// Badger memory: what each option costs is in docs/persistence.md ("Memory").
const (
	// numMemtables bounds Badger's memtables: the one being written and
	// those waiting to be flushed. When all are full, writes wait for a
	// flush, which bounds the RAM a write burst can take.
	numMemtables = 3
	// blockCacheSize bounds Badger's cache of decompressed table blocks.
	// OnTableRead checksum verification reads every block of each new or
	// opened table through it, so it fills to this size at once. A larger
	// cache makes reading spilled messages back faster (a point read of a
	// block outside it decompresses the block) at the cost of as much RAM.
	blockCacheSize = 4 << 20
	// maxValueThreshold is the largest value kept in the LSM tree rather
	// than the value log (Badger's own maximum).
	maxValueThreshold = 1 << 20
	// maxPooledOps is the capacity above which a batch's ops slice is not
	// kept for reuse: dropping a session deletes one key per queued message
	// in one batch.
	maxPooledOps = 1 << 14
)

// queueSize is how many requests may wait for the writer before writers
// block (backpressure).
const queueSize = 4096

// Store is Ferry's Badger store. All writes go through one writer goroutine
// that commits whatever requests are waiting as one transaction and, in
// "always" mode, fsyncs once for all of them (group commit).
//
// Other packages that keep records in the store (the bridge outbox) write
// through Update, which runs their stage function in the same group commit,
// and read through View.
//
// A Store is safe for concurrent use. Open starts its goroutines; Close
// stops them and must be called exactly when the broker no longer writes.
type Store struct {
	cfg    Config
	log    *slog.Logger
	db     *badger.DB
	always bool

	// reqs is buffered so that writers not waiting for their batch do not
	// wait for the writer's current fsync either. mu makes "closing" and
	// a send into reqs atomic with respect to Close.
	reqs    chan *batch
	mu      sync.RWMutex
	closing bool
	quit    chan struct{}
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool

	seq  atomic.Uint64
	pool sync.Pool

	// txnNo is the commit number (keyCommit) of the writer's open
	// transaction, only used by the writer; committed the number of the
	// last transaction that committed; synced the one reached at the last
	// successful fsync, which stateLoop records in state (stateFileName).
	txnNo     uint64
	committed atomic.Uint64
	synced    atomic.Uint64
	state     *stateFile
	stateKick chan struct{}
	stateQuit chan struct{}
	stateWG   sync.WaitGroup

	batches, records, fsyncs, fsyncNanos, failures atomic.Uint64
	// cancelled counts operations cancelCreated dropped.
	cancelled atomic.Uint64
	queued    atomic.Int64

	// spaceLow is set while less than cfg.MinFreeSpace is free (space.go).
	spaceLow  atomic.Bool
	freeBytes atomic.Int64
	// spaceCritical is set while less than criticalSpace is free: every
	// write is refused.
	spaceCritical atomic.Bool
	// spaceMu lets one goroutine at a time read the free space and switch
	// the states above; spaceCheckedAt is when it last did (unix ns).
	spaceMu        sync.Mutex
	spaceCheckedAt atomic.Int64
	// minFree and critical are cfg.minFreeSpace() and cfg.criticalSpace(),
	// worked out once: refreshSpace runs on every stored publish, and
	// working them out builds Badger's options (6 % of a core in a
	// persistent QoS 1 fan-in).
	minFree, critical int64
	diskRefusals      atomic.Uint64
}

// Stats are cumulative counters of the store since Open, for metrics.
type Stats struct {
	Batches uint64 // transactions committed by the writer
	Records uint64 // operations (set, delete, delete-prefix) in them
	// Cancelled counts operations not written because their round both
	// created and deleted the key (a message acknowledged before the
	// commit that would have stored it).
	Cancelled    uint64
	Fsyncs       uint64        // explicit fsyncs (db.Sync)
	FsyncTime    time.Duration // sum of fsync latencies
	Failures     uint64        // batches whose commit or fsync failed
	QueueDepth   int64         // requests waiting for the writer now
	SyncAlways   bool          // whether acknowledged writes are fsynced first
	SyncInterval time.Duration // fsync period in "batch" mode
	// FreeBytes is the free space of the data dir's filesystem at the last
	// check (0 if the limit is disabled); DiskLow whether it is below
	// MinFreeSpace; DiskFullRefusals counts messages refused for that.
	FreeBytes        int64
	DiskLow          bool
	DiskFullRefusals uint64
}

// Open validates cfg (after WithDefaults), opens or creates the data
// directory and starts the writer and garbage-collection goroutines.
//
// Open fails, and never repairs or wipes anything, if the directory is
// locked by another process (ErrLocked), unreadable or corrupt
// (ErrUnreadable), or written by a newer Ferry (ErrNewerSchema); the error
// names the directory and what to do. The one file it removes is a
// write-ahead log a crash left empty (removeEmptyWALs), which holds
// nothing. A nil logger discards logs.
func Open(cfg Config, logger *slog.Logger) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("persistence: invalid config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := badgerOptions(cfg).WithLogger(badgerLogger{logger})
	// Read everything first, changing nothing: Badger itself would start
	// empty over a dir without MANIFEST, cut a damaged log short, or
	// panic on a damaged table, and it modifies files as it opens.
	rep, err := inspect(opts)
	if errors.Is(err, ErrLocked) {
		return nil, err
	}
	if err != nil {
		return nil, openError(cfg.Dir, err)
	}
	if err := rep.Err(); err != nil {
		return nil, err
	}
	for _, n := range rep.Notes {
		logger.Warn("storage: "+n, "dir", cfg.Dir)
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("persistence: create data dir %s: %w", cfg.Dir, err)
	}
	if err := checkOpenSpace(cfg); err != nil {
		return nil, err
	}
	if err := removeEmptyWALs(cfg.Dir, logger); err != nil {
		return nil, err
	}
	db, err := openBadger(opts)
	if err != nil {
		return nil, openError(cfg.Dir, err)
	}
	s := &Store{
		cfg:    cfg,
		log:    logger,
		db:     db,
		always: cfg.Sync == SyncAlways,
		reqs:   make(chan *batch, queueSize),

		minFree:  cfg.minFreeSpace(),
		critical: cfg.criticalSpace(),
		quit:     make(chan struct{}),

		stateKick: make(chan struct{}, 1),
		stateQuit: make(chan struct{}),
	}
	s.pool.New = func() any { return &batch{done: make(chan error, 1)} }
	if err := s.checkSchema(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.loadSequence(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if s.state, err = openState(cfg.Dir); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("persistence: %w", err)
	}
	// Only what this process fsyncs raises the recorded number: the
	// transactions read at open may not be on disk yet (a kill -9 leaves
	// them in the page cache). A new file starts with what is known.
	s.synced.Store(rep.Recorded)
	if err := s.state.record(rep.Recorded); err != nil {
		_ = s.state.close()
		_ = db.Close()
		return nil, fmt.Errorf("persistence: %s: %w", cfg.Dir, err)
	}
	if cfg.Sync == SyncNone {
		logger.Warn("storage.sync is none: acknowledged messages are not fsynced and a power loss can lose them", "dir", cfg.Dir)
	}
	s.checkSpace()
	s.wg.Add(3)
	go s.writer()
	go s.gcLoop()
	go s.spaceLoop()
	s.stateWG.Add(1)
	go s.stateLoop()
	return s, nil
}

// badgerOptions are the Badger options of a store with cfg (defaults
// applied), without a logger.
func badgerOptions(cfg Config) badger.Options {
	return badger.DefaultOptions(cfg.Dir).
		WithLogger(nil).
		// Durability is decided by this package (one db.Sync per batch),
		// not per transaction: SyncWrites fsyncs every commit separately.
		WithSyncWrites(false).
		// Only the writer goroutine writes; there is nothing to conflict.
		WithDetectConflicts(false).
		WithNumVersionsToKeep(1).
		// Catch a corrupt table when it is opened rather than on first read.
		WithChecksumVerificationMode(options.OnTableRead).
		// Memory (docs/persistence.md, "Memory"): Badger's buffers are
		// sized by these options, not by how much is stored.
		WithMemTableSize(cfg.memTableSize()).
		WithNumMemtables(numMemtables).
		// Badger rejects a value threshold above its largest write batch
		// (15% of the memtable); larger values go to the value log.
		WithValueThreshold(min(maxValueThreshold, cfg.memTableSize()/8)).
		WithBlockCacheSize(blockCacheSize).
		WithNumCompactors(2).
		// Smaller value-log files let GC reclaim space in smaller steps.
		WithValueLogFileSize(64 << 20)
}

// openBadger turns a panic inside Badger (seen on some garbage table files)
// into an error, so a corrupt directory stops startup with a message.
func openBadger(opts badger.Options) (db *badger.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("badger panicked while opening: %v", r)
		}
	}()
	return badger.Open(opts)
}

func openError(dir string, err error) error {
	if strings.Contains(err.Error(), "Another process is using this Badger database") {
		return fmt.Errorf("%w: %s (is another ferry running with storage.dir %s? stop it or choose another dir): %w", ErrLocked, dir, dir, err)
	}
	return fmt.Errorf("%w: %s: %w; Ferry does not repair or wipe it: check its permissions and free disk space, "+
		"or restore it from a backup, or move it aside to start with an empty store (its sessions, queued and retained messages are then lost)",
		ErrUnreadable, dir, err)
}

// unreadable wraps a bad record found after Open.
func (s *Store) unreadable(key []byte, err error) error {
	return fmt.Errorf("%w: %s: record %q: %w; Ferry does not repair or wipe it: restore the dir from a backup, "+
		"or move it aside to start with an empty store", ErrUnreadable, s.cfg.Dir, key, err)
}

func (s *Store) checkSchema() error {
	var version uint64
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keySchema))
		if errors.Is(err, badger.ErrKeyNotFound) {
			it := txn.NewIterator(badger.IteratorOptions{})
			it.Rewind()
			nonEmpty := it.Valid()
			it.Close()
			if nonEmpty {
				return fmt.Errorf("%w: %s holds data but no %q key: it is not a Ferry store; point storage.dir elsewhere", ErrUnreadable, s.cfg.Dir, keySchema)
			}
			version = schemaVersion
			return txn.Set([]byte(keySchema), binary.AppendUvarint(nil, schemaVersion))
		}
		if err != nil {
			return openError(s.cfg.Dir, err)
		}
		return item.Value(func(v []byte) error {
			n, k := binary.Uvarint(v)
			if k <= 0 || k != len(v) || n == 0 {
				return s.unreadable([]byte(keySchema), fmt.Errorf("bad schema version bytes %x", v))
			}
			version = n
			return nil
		})
	})
	if err != nil {
		return err
	}
	if version > schemaVersion {
		return fmt.Errorf("%w: %s has schema version %d but this Ferry reads up to %d: run the newer Ferry that wrote it", ErrNewerSchema, s.cfg.Dir, version, schemaVersion)
	}
	// A fresh directory: make the schema key durable before anything else.
	return s.db.Sync()
}

// loadSequence sets the id/sequence counter above every id on disk, so ids
// stay unique and queue order (by sequence) survives restarts, and reads
// the commit number.
func (s *Store) loadSequence() error {
	var max uint64
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []string{prefixQueue, prefixMessage} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
			for it.Rewind(); it.Valid(); it.Next() {
				key := it.Item().Key()
				var seq uint64
				var err error
				if prefix == prefixQueue {
					_, seq, err = parseQueueKey(key)
				} else {
					seq, err = parseMessageKey(key)
				}
				if err != nil {
					it.Close()
					return s.unreadable(key, err)
				}
				max = maxU64(max, seq)
			}
			it.Close()
		}
		return nil
	})
	s.seq.Store(max)
	if err != nil {
		return err
	}
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyCommit))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return s.unreadable([]byte(keyCommit), err)
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return s.unreadable([]byte(keyCommit), fmt.Errorf("%d bytes, want 8", len(v)))
			}
			s.txnNo = binary.BigEndian.Uint64(v)
			s.committed.Store(s.txnNo)
			return nil
		})
	})
}

func maxU64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// nextSeq returns a new id, increasing across restarts.
func (s *Store) nextSeq() uint64 { return s.seq.Add(1) }

// Ready returns nil while the store is open, ErrClosed after Close.
func (s *Store) Ready() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// DiskSpace returns nil unless the store refuses new messages for lack of
// disk space (see Admit): then an error wrapping ErrDiskFull that says how
// much is left. For readiness checks; it counts nothing.
func (s *Store) DiskSpace() error {
	if s.spaceLow.Load() {
		return s.spaceError()
	}
	return nil
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Batches:      s.batches.Load(),
		Records:      s.records.Load(),
		Cancelled:    s.cancelled.Load(),
		Fsyncs:       s.fsyncs.Load(),
		FsyncTime:    time.Duration(s.fsyncNanos.Load()),
		Failures:     s.failures.Load(),
		QueueDepth:   s.queued.Load(),
		SyncAlways:   s.always,
		SyncInterval: s.cfg.SyncInterval,

		FreeBytes:        s.freeBytes.Load(),
		DiskLow:          s.spaceLow.Load(),
		DiskFullRefusals: s.diskRefusals.Load(),
	}
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.cfg.Dir }

// Close commits what is queued, fsyncs, stops the goroutines and closes
// Badger. It is idempotent; writes after Close fail with ErrClosed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.mu.Lock() // waits for sends in progress; later writes see closing
		s.closing = true
		s.mu.Unlock()
		close(s.quit)
		s.wg.Wait()
		close(s.stateQuit)
		s.stateWG.Wait()
		s.closeErr = s.db.Close()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("persistence: close %s: %w", s.cfg.Dir, s.closeErr)
		} else if err := s.state.record(s.committed.Load()); err != nil {
			// Badger closed cleanly: every commit is on disk.
			s.closeErr = fmt.Errorf("persistence: close %s: %w", s.cfg.Dir, err)
		}
		if err := s.state.close(); err != nil && s.closeErr == nil {
			s.closeErr = fmt.Errorf("persistence: close %s: %w", s.cfg.Dir, err)
		}
	})
	return s.closeErr
}

// Operations in a batch.
const (
	opSet byte = iota
	opDelete
	opDeletePrefix
	// opCreate sets a key that has never existed (a queue ref or message
	// body under a fresh sequence): a round that also deletes it writes
	// neither (cancelCreated).
	opCreate
	// opSkip is an operation cancelCreated dropped.
	opSkip
)

type op struct {
	kind     byte
	key, val []byte
}

// batch is one writer request: operations applied in order, in the same
// transaction as the requests committed with it. Values are encoded into buf
// so a pooled batch allocates nothing in the steady state.
//
// An Update's batch carries a stage instead, run by the writer to fill ops;
// its error (stageErr) is that request's alone. commitOnly releases the
// caller after the commit without waiting for (or causing) an fsync.
type batch struct {
	ops  []op
	buf  []byte
	wait bool
	done chan error

	stage      func(*Txn) error
	stageErr   error
	commitOnly bool
}

func (s *Store) newBatch() *batch { return s.pool.Get().(*batch) }

func (s *Store) putBatch(b *batch) {
	clear(b.ops)
	b.ops, b.buf, b.wait = b.ops[:0], b.buf[:0], false
	b.stage, b.stageErr, b.commitOnly = nil, nil, false
	if cap(b.buf) > 1<<20 { // do not pin one huge payload's buffer forever
		b.buf = nil
	}
	if cap(b.ops) > maxPooledOps { // nor one dropped session's deletions
		b.ops = nil
	}
	s.pool.Put(b)
}

// copyBytes stores v in the batch's buffer. Earlier slices stay valid when
// buf grows: they keep the old array, which append never writes again.
func (b *batch) copyBytes(v []byte) []byte {
	start := len(b.buf)
	b.buf = append(b.buf, v...)
	return b.buf[start:len(b.buf):len(b.buf)]
}

// queueKey and messageKey build keys in the batch's buffer (no allocation).
func (b *batch) queueKey(client string, seq uint64) []byte {
	start := len(b.buf)
	b.buf = append(b.buf, prefixQueue...)
	b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(len(client)))
	b.buf = append(b.buf, client...)
	b.buf = binary.BigEndian.AppendUint64(b.buf, seq)
	return b.buf[start:len(b.buf):len(b.buf)]
}

func (b *batch) messageKey(id uint64) []byte {
	start := len(b.buf)
	b.buf = append(b.buf, prefixMessage...)
	b.buf = binary.BigEndian.AppendUint64(b.buf, id)
	return b.buf[start:len(b.buf):len(b.buf)]
}

func (b *batch) set(key []byte, encode func([]byte) []byte) {
	start := len(b.buf)
	b.buf = encode(b.buf)
	b.ops = append(b.ops, op{kind: opSet, key: key, val: b.buf[start:len(b.buf):len(b.buf)]})
}

// create is set for a key that has never existed (opCreate).
func (b *batch) create(key []byte, encode func([]byte) []byte) {
	b.set(key, encode)
	b.ops[len(b.ops)-1].kind = opCreate
}

func (b *batch) setRaw(key, val []byte) {
	b.ops = append(b.ops, op{kind: opSet, key: key, val: b.copyBytes(val)})
}

func (b *batch) delete(key []byte) { b.ops = append(b.ops, op{kind: opDelete, key: key}) }

func (b *batch) deletePrefix(prefix []byte) {
	b.ops = append(b.ops, op{kind: opDeletePrefix, key: prefix})
}

// write hands b to the writer. With wait it returns once b is committed and,
// in "always" mode, fsynced; b is then the caller's to reuse or release.
// Without wait it returns at once (unless queueSize requests are waiting)
// and the writer releases b; errors are then only logged. Requests are committed in the order write is called
// from one goroutine.
func (s *Store) write(b *batch, wait bool) error {
	if len(b.ops) == 0 {
		if !wait {
			s.putBatch(b)
		}
		return nil
	}
	if err := s.enqueue(context.Background(), b, wait); err != nil {
		if !wait {
			s.putBatch(b)
		}
		return err
	}
	if !wait {
		return nil
	}
	return <-b.done
}

// enqueue hands b to the writer, waiting for room in its queue until ctx
// ends. On error b was not queued and is still the caller's.
func (s *Store) enqueue(ctx context.Context, b *batch, wait bool) error {
	b.wait = wait
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closing {
		return ErrClosed
	}
	s.refreshSpace()
	if s.spaceCritical.Load() {
		// A Badger write now could hit a full disk through its memory
		// maps: SIGBUS (space.go). Refused before it reaches Badger.
		return s.spaceError()
	}
	s.queued.Add(1)
	select {
	case s.reqs <- b:
		return nil
	default:
	}
	select {
	case s.reqs <- b:
		return nil
	case <-ctx.Done():
		s.queued.Add(-1)
		return ctx.Err()
	}
}

// apply writes b, waits, and releases it.
func (s *Store) apply(b *batch) error {
	err := s.write(b, true)
	s.putBatch(b)
	return err
}

// writer is the only goroutine writing to Badger.
func (s *Store) writer() {
	defer s.wg.Done()
	var tick <-chan time.Time
	if s.cfg.Sync == SyncBatch {
		t := time.NewTicker(s.cfg.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	pending := make([]*batch, 0, maxBatchRequests)
	dirty := false
	for {
		select {
		case b := <-s.reqs:
			pending = append(pending[:0], b)
			pending = s.drain(pending)
			s.commit(pending)
			dirty = true
		case <-tick:
			if dirty {
				// Crash before this Sync: commits of the last interval may be
				// lost (they were acknowledged). After it: they are on disk.
				_ = s.sync()
				dirty = false
			}
		case <-s.quit:
			for {
				pending = s.drain(pending[:0])
				if len(pending) == 0 {
					break
				}
				s.commit(pending)
			}
			// Crash before this Sync: as for the ticker above; after it all
			// committed data is on disk and Close only tidies up.
			_ = s.sync()
			return
		}
	}
}

func (s *Store) drain(pending []*batch) []*batch {
	for len(pending) < maxBatchRequests {
		select {
		case b := <-s.reqs:
			pending = append(pending, b)
		default:
			return pending
		}
	}
	return pending
}

// commit applies the requests in one transaction (more only if Badger says
// it is too big), fsyncs in "always" mode, then releases every request.
func (s *Store) commit(reqs []*batch) {
	s.queued.Add(-int64(len(reqs)))
	err := s.commitTxn(reqs)
	waited := false
	for _, b := range reqs {
		waited = waited || (b.wait && !b.commitOnly)
	}
	// Only a batch someone waits for is fsynced: the others (packet ids of
	// QoS 1 deliveries, deletions of acknowledged messages) may be lost to
	// a power cut at the price of a redelivery, and the next fsync writes
	// them too. Under QoS 1 load this halves the fsyncs.
	if err == nil && s.always && waited {
		// Crash before this Sync: the batch may be lost, but no caller was
		// released, so nothing in it was acknowledged. After it: the batch
		// (and every earlier commit) is on disk and the callers acknowledge.
		err = s.sync()
	}
	if err != nil {
		s.failures.Add(1)
		s.log.Error("storage write failed", "dir", s.cfg.Dir, "requests", len(reqs), "err", err)
	}
	for _, b := range reqs {
		if b.wait {
			if b.stageErr != nil {
				b.done <- b.stageErr
				continue
			}
			b.done <- err
		} else {
			s.putBatch(b)
		}
	}
}

func (s *Store) commitTxn(reqs []*batch) error {
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	if err := s.stampCommit(txn); err != nil {
		return err
	}
	cancelCreated(reqs)
	n := 0
	var keys [][]byte
	for _, b := range reqs {
		if b.stage != nil {
			b.stageErr = s.runStage(txn, b)
		}
		for _, o := range b.ops {
			if o.kind == opSkip {
				s.cancelled.Add(1)
				continue
			}
			n++
			if o.kind == opDeletePrefix {
				keys = keys[:0]
				it := txn.NewIterator(badger.IteratorOptions{Prefix: o.key})
				for it.Rewind(); it.Valid(); it.Next() {
					keys = append(keys, it.Item().KeyCopy(nil))
				}
				it.Close()
				for _, k := range keys {
					if err := s.txnDo(&txn, op{kind: opDelete, key: k}); err != nil {
						return err
					}
				}
				continue
			}
			if err := s.txnDo(&txn, o); err != nil {
				return err
			}
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.committed.Store(s.txnNo)
	s.batches.Add(1)
	s.records.Add(uint64(n))
	return nil
}

// cancelCreated drops from one round of requests every operation on a key
// that the round creates (opCreate) and then deletes: the key did not
// exist before the round and does not after it, so Badger need write
// neither the value nor a tombstone. A persistent subscriber that
// acknowledges a message before the commit that stores it (QoS 1 goes out
// before its publisher's PUBACK waits for that commit) then costs the
// store nothing: its ref and body were created and deleted in one round.
func cancelCreated(reqs []*batch) {
	creates, deletes := 0, 0
	for _, b := range reqs {
		for _, o := range b.ops {
			switch o.kind {
			case opCreate:
				creates++
			case opDelete:
				deletes++
			}
		}
	}
	if creates == 0 || deletes == 0 {
		return
	}
	// Positions in the round of a created key's create and of its last
	// delete after it (-1: none). The keys are the batches' own bytes,
	// which outlive the round: no copy.
	type span struct{ at, deleted int }
	keyOf := func(k []byte) string { return unsafe.String(unsafe.SliceData(k), len(k)) }
	created := make(map[string]span, creates)
	pos := 0
	for _, b := range reqs {
		for _, o := range b.ops {
			if o.kind == opCreate {
				created[keyOf(o.key)] = span{at: pos, deleted: -1}
			}
			pos++
		}
	}
	found := false
	pos = 0
	for _, b := range reqs {
		for _, o := range b.ops {
			if o.kind == opDelete {
				if c, ok := created[keyOf(o.key)]; ok && c.at < pos {
					c.deleted, found = pos, true
					created[keyOf(o.key)] = c
				}
			}
			pos++
		}
	}
	if !found {
		return
	}
	pos = 0
	for _, b := range reqs {
		for i := range b.ops {
			o := &b.ops[i]
			if c, ok := created[keyOf(o.key)]; ok && c.deleted >= 0 && o.kind != opDeletePrefix && pos >= c.at && pos <= c.deleted {
				o.kind = opSkip
			}
			pos++
		}
	}
}

// txnDo applies o, committing and starting a new transaction if the current
// one is full. A batch split that way is not atomic; callers never rely on
// atomicity across records (see doc.go).
func (s *Store) txnDo(txn **badger.Txn, o op) error {
	do := func(t *badger.Txn) error {
		if o.kind == opSet || o.kind == opCreate {
			return t.Set(o.key, o.val)
		}
		return t.Delete(o.key)
	}
	err := do(*txn)
	if !errors.Is(err, badger.ErrTxnTooBig) {
		return err
	}
	if err := (*txn).Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.committed.Store(s.txnNo)
	s.batches.Add(1)
	*txn = s.db.NewTransaction(true)
	if err := s.stampCommit(*txn); err != nil {
		return err
	}
	return do(*txn)
}

// sync fsyncs the store: every transaction committed before it is then on
// disk, and stateLoop may record that.
func (s *Store) sync() error {
	start := time.Now()
	reached := s.committed.Load()
	err := s.db.Sync()
	s.fsyncNanos.Add(uint64(time.Since(start)))
	s.fsyncs.Add(1)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", s.cfg.Dir, err)
	}
	s.markSynced(reached)
	return nil
}

// markSynced hands stateLoop a commit number now on disk.
func (s *Store) markSynced(commit uint64) {
	for {
		cur := s.synced.Load()
		if commit <= cur || s.synced.CompareAndSwap(cur, commit) {
			break
		}
	}
	select {
	case s.stateKick <- struct{}{}:
	default:
	}
}

// stateInterval is the shortest time between two writes of the state
// file: under load (an fsync per group commit in "always" mode) its own
// fsyncs stay at 100 a second, and it lags the store by about this much.
const stateInterval = 10 * time.Millisecond

// stateLoop records synced commit numbers in the state file, off the
// writer's path: a publisher never waits for this fsync.
func (s *Store) stateLoop() {
	defer s.stateWG.Done()
	written := s.synced.Load()
	failed := false
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-s.stateKick:
		case <-s.stateQuit:
			return
		}
		select { // let the kicks of the next group commits coalesce
		case <-pause.C:
		case <-s.stateQuit:
			return
		}
		pause.Reset(stateInterval)
		c := s.synced.Load()
		if c <= written {
			continue
		}
		if err := s.state.record(c); err != nil {
			if !failed { // once, not per fsync
				s.log.Error("storage: cannot record the commit number; damage to the newest data will not be detected at start", "dir", s.cfg.Dir, "err", err)
			}
			failed = true
			continue
		}
		written, failed = c, false
	}
}

// stampCommit sets keyCommit in txn to the next commit number. A number
// whose transaction fails is skipped: numbers only increase.
func (s *Store) stampCommit(txn *badger.Txn) error {
	s.txnNo++
	return txn.Set([]byte(keyCommit), binary.BigEndian.AppendUint64(nil, s.txnNo))
}

func (s *Store) gcLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			for s.db.RunValueLogGC(s.cfg.GCDiscardRatio) == nil {
				select {
				case <-s.quit:
					return
				default:
				}
			}
		}
	}
}

// scan calls fn for every key with prefix, in key order, in one read
// transaction. key and val are only valid during the call.
func (s *Store) scan(prefix string, fn func(key, val []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			val, err := item.ValueCopy(nil)
			if err != nil {
				return s.unreadable(item.Key(), err)
			}
			if err := fn(item.Key(), val); err != nil {
				return err
			}
		}
		return nil
	})
}

// badgerLogger sends Badger's logs to slog; its chatty info goes to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, v ...any) { b.l.Error(trimf(f, v...), "component", "badger") }
func (b badgerLogger) Warningf(f string, v ...any) {
	b.l.Warn(trimf(f, v...), "component", "badger")
}
func (b badgerLogger) Infof(f string, v ...any)  { b.l.Debug(trimf(f, v...), "component", "badger") }
func (b badgerLogger) Debugf(f string, v ...any) { b.l.Debug(trimf(f, v...), "component", "badger") }

func trimf(f string, v ...any) string {
	return string(bytes.TrimSpace([]byte(fmt.Sprintf(f, v...))))
}

// removeEmptyWALs deletes the write-ahead logs (.mem) of dir that are
// empty: Badger creates one, then sizes it, and a kill between the two
// leaves a file of 0 bytes that holds nothing but makes Badger's Open fail
// ("while opening memtables ... Create a new file", Badger #2207, open
// upstream; a second Open would succeed). A value log (.vlog) left empty
// is not affected: Badger initialises it.
func removeEmptyWALs(dir string, logger *slog.Logger) error {
	names, err := filepath.Glob(filepath.Join(dir, "*.mem"))
	if err != nil {
		return fmt.Errorf("persistence: list %s: %w", dir, err)
	}
	for _, name := range names {
		fi, err := os.Stat(name)
		if err != nil || fi.Size() != 0 {
			continue // a stat error is Badger's to report
		}
		if err := os.Remove(name); err != nil {
			return fmt.Errorf("persistence: remove the empty write-ahead log %s a crash left: %w", name, err)
		}
		logger.Warn("storage: removed an empty write-ahead log left by a crash (it held nothing)", "file", filepath.Base(name), "dir", dir)
	}
	return nil
}
