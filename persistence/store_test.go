package persistence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings; none means valid
	}{
		{"defaults", Config{Dir: "d"}, nil},
		{"all modes", Config{Dir: "d", Sync: SyncNone}, nil},
		{"no dir", Config{}, []string{"dir: must not be empty"}},
		{"bad sync", Config{Dir: "d", Sync: "sometimes"}, []string{`sync: must be one of always, batch, none, got "sometimes"`}},
		{"bad interval", Config{Dir: "d", SyncInterval: time.Hour}, []string{"sync_interval: 1h0m0s is outside"}},
		{"negative gc", Config{Dir: "d", GCInterval: -time.Second}, []string{"gc_interval: -1s is less than allowed 1s"}},
		{"bad ratio", Config{Dir: "d", GCDiscardRatio: 1}, []string{"gc_discard_ratio: 1 must be"}},
		{"no free-space limit", Config{Dir: "d", MinFreeSpace: -1}, nil},
		{"bad free-space limit", Config{Dir: "d", MinFreeSpace: -2}, []string{"min_free_space: -2 must be -1 (no limit), 0 (the default) or a number of bytes"}},
		{"several", Config{Sync: "x", GCDiscardRatio: -1}, []string{"dir:", "sync:", "gc_discard_ratio:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.WithDefaults().Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if (Config{}).WithDefaults() != (Config{Sync: SyncBatch, SyncInterval: 100 * time.Millisecond, GCInterval: 5 * time.Minute, GCDiscardRatio: 0.5}) {
		t.Fatalf("defaults: %+v", Config{}.WithDefaults())
	}
	for _, c := range []struct {
		cfg            Config
		free, critical int64
	}{
		{Config{}, 80 << 20, 16 << 20},
		{Config{MemTableSize: 1 << 20}, 10 << 20, 2 << 20},
		{Config{MinFreeSpace: 1 << 20}, 1 << 20, 1 << 20},
		{Config{MinFreeSpace: -1}, 0, 0},
	} {
		if f, cr := c.cfg.minFreeSpace(), c.cfg.criticalSpace(); f != c.free || cr != c.critical {
			t.Errorf("%+v: min free %d, critical %d; want %d, %d", c.cfg, f, cr, c.free, c.critical)
		}
	}
}

func putRaw(t testing.TB, st *Store, key, val string) {
	t.Helper()
	b := st.newBatch()
	b.setRaw([]byte(key), []byte(val))
	if err := st.apply(b); err != nil {
		t.Fatal(err)
	}
}

func readAll(t testing.TB, st *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	if err := st.scan("", func(k, v []byte) error { out[string(k)] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	delete(out, keySchema)
	delete(out, keyCommit)
	return out
}

// TestGroupCommit: concurrent writers are all released, share batches, and
// in "always" mode every batch has exactly one fsync.
func TestGroupCommit(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	base := st.Stats()
	const writers, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				b := st.newBatch()
				b.setRaw([]byte(fmt.Sprintf("k/%03d/%03d", w, i)), []byte("v"))
				errs <- st.apply(b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s := st.Stats()
	batches, fsyncs := s.Batches-base.Batches, s.Fsyncs-base.Fsyncs
	if got := s.Records - base.Records; got != writers*each {
		t.Fatalf("records %d, want %d", got, writers*each)
	}
	if fsyncs != batches {
		t.Fatalf("%d fsyncs for %d batches, want one each", fsyncs, batches)
	}
	if batches >= writers*each {
		t.Fatalf("%d batches for %d concurrent writes: nothing was grouped", batches, writers*each)
	}
	if s.QueueDepth != 0 {
		t.Fatalf("queue depth %d after all writes returned", s.QueueDepth)
	}
	if got := len(readAll(t, st)); got != writers*each {
		t.Fatalf("%d keys stored, want %d", got, writers*each)
	}
	t.Logf("%d writes in %d batches, %d fsyncs, %s fsync time", writers*each, batches, fsyncs, s.FsyncTime)
}

func TestSyncModes(t *testing.T) {
	for _, tt := range []struct {
		mode      string
		wantFsync bool // an fsync follows a write within a second
	}{{SyncAlways, true}, {SyncBatch, true}, {SyncNone, false}} {
		t.Run(tt.mode, func(t *testing.T) {
			st := openStore(t, Config{Sync: tt.mode, SyncInterval: 5 * time.Millisecond})
			before := st.Stats().Fsyncs
			putRaw(t, st, "x", "1")
			if tt.mode == SyncAlways && st.Stats().Fsyncs == before {
				t.Fatal("always: write returned before its fsync")
			}
			if tt.wantFsync {
				eventually(t, time.Second, "an fsync after a write", func() bool { return st.Stats().Fsyncs > before })
			} else if st.Stats().Fsyncs != before {
				t.Fatal("none: fsynced")
			}
		})
	}
}

// TestCloseIdempotentAndReopen: data written then closed is there after a
// reopen, Close twice is fine, writes after Close fail with ErrClosed.
func TestCloseIdempotentAndReopen(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	putRaw(t, st, "a", "1")
	b := st.newBatch()
	b.setRaw([]byte("b"), []byte("2"))
	if err := st.write(b, false); err != nil { // not waited for: Close must still commit it
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := st.Ready(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ready after close: %v", err)
	}
	b = st.newBatch()
	b.setRaw([]byte("c"), nil)
	if err := st.apply(b); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	st2 := openStore(t, Config{Dir: dir})
	if got := readAll(t, st2); len(got) != 2 || got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("after reopen: %v", got)
	}
	if st2.Ready() != nil {
		t.Fatal("open store not ready")
	}
}

// TestCrashCopy simulates kill -9: the files of a store that is still open
// (never closed, never flushed) are copied and the copy is opened. Every
// write acknowledged in "always" mode must be in it.
func TestCrashCopy(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	for i := range 100 {
		putRaw(t, st, fmt.Sprintf("k%03d", i), "v")
	}
	crashed := t.TempDir()
	copyDir(t, st.Dir(), crashed)
	st2 := openStore(t, Config{Dir: crashed})
	if got := len(readAll(t, st2)); got != 100 {
		t.Fatalf("%d of 100 acknowledged writes survived the crash", got)
	}
}

func copyDir(t testing.TB, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "LOCK" {
			continue // held by the "crashed" process
		}
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeSparse(t, filepath.Join(to, e.Name()), data)
	}
}

// writeSparse writes data leaving all-zero blocks as holes: Badger's
// preallocated log files are mostly zeros.
func writeSparse(t testing.TB, name string, data []byte) {
	t.Helper()
	out, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	const block = 64 << 10
	for off := 0; off < len(data); off += block {
		chunk := data[off:min(off+block, len(data))]
		if !bytes.Equal(chunk, make([]byte, len(chunk))) {
			if _, err := out.WriteAt(chunk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := out.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpenFailsLocked(t *testing.T) {
	st := openStore(t, Config{})
	_, err := Open(Config{Dir: st.Dir()}, nil)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), st.Dir()) {
		t.Fatalf("second open: %v; want ErrLocked naming %s", err, st.Dir())
	}
}

// TestRandomOpsMatchModel applies random sets, deletes and prefix deletes
// through the writer, reopening now and then, and compares with a map.
func TestRandomOpsMatchModel(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	model := map[string]string{}
	st, err := Open(Config{Dir: dir, Sync: SyncNone}, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := func() string { return fmt.Sprintf("%c/%d", 'a'+rng.IntN(3), rng.IntN(40)) }
	for round := range 20 {
		for range 50 {
			b := st.newBatch()
			for range 1 + rng.IntN(5) {
				switch k := key(); rng.IntN(10) {
				case 0:
					p := k[:2]
					b.deletePrefix([]byte(p))
					for mk := range model {
						if strings.HasPrefix(mk, p) {
							delete(model, mk)
						}
					}
				case 1, 2, 3:
					b.delete([]byte(k))
					delete(model, k)
				default:
					v := fmt.Sprint(rng.Int())
					b.setRaw([]byte(k), []byte(v))
					model[k] = v
				}
			}
			if err := st.write(b, rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
		}
		if round%5 == 4 {
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			if st, err = Open(Config{Dir: dir, Sync: SyncNone}, nil); err != nil {
				t.Fatal(err)
			}
		}
		b := st.newBatch()
		if err := st.apply(b); err != nil { // a barrier: earlier writes are committed
			t.Fatal(err)
		}
		putRaw(t, st, "z/barrier", "1")
		model["z/barrier"] = "1"
		got := readAll(t, st)
		if len(got) != len(model) {
			t.Fatalf("round %d: %d keys, model has %d", round, len(got), len(model))
		}
		for k, v := range model {
			if got[k] != v {
				t.Fatalf("round %d: key %s = %q, model %q", round, k, got[k], v)
			}
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCloseWhileWriting: writers racing Close all return, with nil or
// ErrClosed, and whatever returned nil is on disk after a reopen.
func TestCloseWhileWriting(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(Config{Dir: dir, Sync: SyncAlways}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok []string
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				k := fmt.Sprintf("w%d/%d", w, i)
				b := st.newBatch()
				b.setRaw([]byte(k), []byte("v"))
				switch err := st.apply(b); {
				case errors.Is(err, ErrClosed):
					return
				case err != nil:
					t.Error(err)
					return
				}
				mu.Lock()
				ok = append(ok, k)
				mu.Unlock()
				if i == 20 && w == 0 {
					go st.Close()
				}
			}
		}()
	}
	wg.Wait()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t, Config{Dir: dir})
	got := readAll(t, st2)
	for _, k := range ok {
		if _, found := got[k]; !found {
			t.Fatalf("acknowledged write %s missing after reopen", k)
		}
	}
}

// TestCancelCreated: a round that creates a key and then deletes it writes
// nothing for it; a key that may have existed before (a plain set), or that
// is deleted before it is created, keeps its operations.
func TestCancelCreated(t *testing.T) {
	type o struct {
		kind byte
		key  string
	}
	for _, tc := range []struct {
		name    string
		batches [][]o
		want    []byte // kinds after cancelCreated, in order
	}{
		{"created then deleted", [][]o{{{opCreate, "k"}}, {{opDelete, "k"}}}, []byte{opSkip, opSkip}},
		{"created, set, deleted in one batch", [][]o{{{opCreate, "k"}, {opSet, "k"}, {opDelete, "k"}}}, []byte{opSkip, opSkip, opSkip}},
		{"set then deleted", [][]o{{{opSet, "k"}}, {{opDelete, "k"}}}, []byte{opSet, opDelete}},
		{"deleted then created", [][]o{{{opDelete, "k"}}, {{opCreate, "k"}}}, []byte{opDelete, opCreate}},
		{"set again after", [][]o{{{opCreate, "k"}, {opDelete, "k"}}, {{opSet, "k"}}}, []byte{opSkip, opSkip, opSet}},
		{"other keys kept", [][]o{{{opCreate, "a"}, {opCreate, "b"}}, {{opDelete, "a"}, {opDelete, "c"}}}, []byte{opSkip, opCreate, opSkip, opDelete}},
		{"created only", [][]o{{{opCreate, "k"}}}, []byte{opCreate}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reqs []*batch
			for _, ops := range tc.batches {
				b := &batch{}
				for _, x := range ops {
					b.ops = append(b.ops, op{kind: x.kind, key: []byte(x.key)})
				}
				reqs = append(reqs, b)
			}
			cancelCreated(reqs)
			var got []byte
			for _, b := range reqs {
				for _, x := range b.ops {
					got = append(got, x.kind)
				}
			}
			if string(got) != string(tc.want) {
				t.Fatalf("kinds %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCreatedAndDeletedInOneCommitLeavesNothing: through the writer, a key
// created and deleted in one commit does not exist afterwards and was not
// written; a key that existed before and is deleted is gone too.
func TestCreatedAndDeletedInOneCommitLeavesNothing(t *testing.T) {
	st := openStore(t, Config{Dir: t.TempDir(), Sync: SyncAlways})
	val := func(v string) func([]byte) []byte { return func(b []byte) []byte { return append(b, v...) } }
	old := st.newBatch()
	old.set([]byte("q/old"), val("1"))
	if err := st.apply(old); err != nil {
		t.Fatal(err)
	}
	// A stage holds the writer's round while a and b queue, so that the
	// next round takes both.
	hold, held := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.Update(context.Background(), false, func(*Txn) error {
			close(held)
			<-hold
			return nil
		})
	}()
	<-held
	a, b := st.newBatch(), st.newBatch()
	a.create([]byte("q/new"), val("2"))
	a.set([]byte("q/old"), val("3"))
	b.delete([]byte("q/new"))
	b.delete([]byte("q/old"))
	if err := st.write(a, false); err != nil {
		t.Fatal(err)
	}
	if err := st.enqueue(context.Background(), b, true); err != nil {
		t.Fatal(err)
	}
	close(hold)
	if err := <-b.done; err != nil {
		t.Fatal(err)
	}
	st.putBatch(b)
	for _, k := range []string{"q/new", "q/old"} {
		if err := st.db.View(func(txn *badger.Txn) error {
			_, err := txn.Get([]byte(k))
			return err
		}); !errors.Is(err, badger.ErrKeyNotFound) {
			t.Fatalf("%s: %v, want not found", k, err)
		}
	}
	if n := st.Stats().Cancelled; n != 2 {
		t.Fatalf("cancelled %d operations, want 2", n)
	}
}
