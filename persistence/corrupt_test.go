package persistence

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/mochitest"
)

// filledDir returns a closed store directory holding a table file.
func filledDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	st, err := Open(Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := st.newBatch()
	rec := sampleSession
	b.set(sessionKey("c1"), rec.appendTo)
	if err := st.apply(b); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil { // Close flushes the memtable to an .sst
		t.Fatal(err)
	}
	return dir
}

func garble(t *testing.T, dir, pattern string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(files) == 0 {
		t.Fatalf("no %s in %s", pattern, dir)
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		junk := []byte(strings.Repeat("garbage!", int(max(fi.Size(), 64)/8)))
		if err := os.WriteFile(f, junk, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCorruptDirStopsOpen: whatever is damaged, Open or loading fails with
// ErrUnreadable (or ErrNewerSchema), names the dir, and says what to do.
// Nothing is wiped.
func TestCorruptDirStopsOpen(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir string)
		wantErr error
		onLoad  bool // the error comes from the hook's load, not Open
	}{
		{"garbage MANIFEST", func(t *testing.T, dir string) { garble(t, dir, "MANIFEST") }, ErrUnreadable, false},
		{"garbage sst", func(t *testing.T, dir string) { garble(t, dir, "*.sst") }, ErrUnreadable, false},
		{"bit flip in sst data", func(t *testing.T, dir string) { flipByte(t, dir, "*.sst", 20) }, ErrUnreadable, false},
		{"garbage vlog", func(t *testing.T, dir string) { garble(t, dir, "*.vlog") }, ErrUnreadable, false},
		{"newer schema", func(t *testing.T, dir string) { rawSet(t, dir, keySchema, binary.AppendUvarint(nil, schemaVersion+1)) }, ErrNewerSchema, false},
		{"bad schema bytes", func(t *testing.T, dir string) { rawSet(t, dir, keySchema, []byte{0xff}) }, ErrUnreadable, false},
		{"not a ferry store", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
			if err != nil {
				t.Fatal(err)
			}
			_ = db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("other"), []byte("app")) })
			_ = db.Close()
		}, ErrUnreadable, false},
		{"record with a newer version", func(t *testing.T, dir string) {
			rec := sampleSession.appendTo(nil)
			rec[0] = 0xff // a version no Ferry writes
			rawSet(t, dir, string(sessionKey("c2")), rec)
		}, ErrUnreadable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filledDir(t)
			tt.damage(t, dir)
			st, err := Open(Config{Dir: dir}, nil)
			if tt.onLoad {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer st.Close()
				srv := newServerWithHook(t, st)
				err = srv.Serve()
				mochitest.Close(t, srv)
			} else if err == nil {
				st.Close()
				t.Fatal("opened a damaged dir")
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error does not name the dir %s: %v", dir, err)
			}
			t.Log(err)
		})
	}
}

// rawSet writes a key with Badger directly, bypassing the codec.
func rawSet(t *testing.T, dir, key string, val []byte) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(key), val) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, dir, pattern string, off int64) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(files) == 0 {
		t.Fatalf("no %s in %s", pattern, dir)
	}
	flipAt(t, files[0], off)
}

// TestOrphanTableAfterCrashOpens: a kill while Badger writes a table (a
// memtable flush, a compaction) leaves a table file the MANIFEST does not
// list, often empty. That is not damage: Open succeeds, Badger deletes the
// file, and the data is intact.
func TestOrphanTableAfterCrashOpens(t *testing.T) {
	dir := filledDir(t)
	orphan := filepath.Join(dir, "999999.sst")
	if err := os.WriteFile(orphan, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, Config{Dir: dir})
	found := false
	if err := st.scan(prefixSession, func(key, _ []byte) error {
		found = found || string(key) == string(sessionKey("c1"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("session c1 lost")
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan table not deleted by Badger: %v", err)
	}
}

// TestEmptyWALAfterCrashOpens: Badger creates a write-ahead log, then
// sizes it; a kill in between leaves a .mem file of 0 bytes, which made
// Badger's Open fail (Badger #2207) and Ferry refuse to start after a
// crash (TestCrashRecovery saw it once under load). The file holds
// nothing: Open removes it and keeps every record.
func TestEmptyWALAfterCrashOpens(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fixture func(*testing.T) storeFixture
	}{
		{"after a crash", crashedStore},
		{"after a clean close", closedStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := tc.fixture(t)
			empty := filepath.Join(fx.dir, "00099.mem")
			if err := os.WriteFile(empty, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			st := openStore(t, Config{Dir: fx.dir, Sync: SyncAlways, MemTableSize: MinMemTableSize})
			got := readAll(t, st)
			if n := intact(got, fx.want); n != len(fx.want) {
				t.Fatalf("%d of %d records intact after the open", n, len(fx.want))
			}
			if _, err := os.Stat(empty); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("empty write-ahead log still there: %v", err)
			}
		})
	}
}

// storeFixture is a data dir with every kind of Badger file holding data,
// and the values written to it (the test keys under t/).
type storeFixture struct {
	dir  string
	want map[string]string
}

// fillStore writes about 3 MiB of small values (more than the 1 MiB
// memtable, so tables are flushed) and a few values above the value
// threshold (kept in the .vlog), all acknowledged in "always" mode.
func fillStore(t *testing.T, st *Store) map[string]string {
	t.Helper()
	want := map[string]string{}
	for i := range 6000 {
		k, v := fmt.Sprintf("t/%05d", i), strings.Repeat(fmt.Sprintf("%05d", i), 100)
		if i%1000 == 999 {
			v = strings.Repeat(v, 400) // 200 KB: above the 128 KiB threshold
		}
		putRaw(t, st, k, v)
		want[k] = v
	}
	return want
}

// crashedStore returns a copy of a store's files taken while it was open,
// as kill -9 leaves them: tables, a write-ahead log (.mem) and a value
// log, none of them closed.
func crashedStore(t *testing.T) storeFixture {
	t.Helper()
	st := openStore(t, Config{Sync: SyncAlways, MemTableSize: MinMemTableSize})
	want := fillStore(t, st)
	// The state file follows the last fsync asynchronously.
	eventually(t, 5*time.Second, "state file records the last commit", func() bool {
		c, err := readState(st.Dir())
		return err == nil && c == st.synced.Load()
	})
	dir := t.TempDir()
	copyDir(t, st.Dir(), dir)
	for _, pattern := range []string{"*.sst", "*.mem", "*.vlog"} {
		if m, _ := filepath.Glob(filepath.Join(dir, pattern)); len(m) == 0 {
			t.Fatalf("fixture has no %s", pattern)
		}
	}
	return storeFixture{dir: dir, want: want}
}

// closedStore returns a store closed gracefully (no .mem left).
func closedStore(t *testing.T) storeFixture {
	t.Helper()
	dir := t.TempDir()
	st, err := Open(Config{Dir: dir, Sync: SyncAlways, MemTableSize: MinMemTableSize}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := fillStore(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return storeFixture{dir: dir, want: want}
}

// fileSums hashes every file of dir but Badger's LOCK.
func fileSums(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string][32]byte{}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sums[e.Name()] = sha256.Sum256(b)
	}
	return sums
}

// largest returns the largest file of dir matching pattern.
func largest(t *testing.T, dir, pattern string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(files) == 0 {
		t.Fatalf("no %s in %s", pattern, dir)
	}
	best, bestSize := "", int64(-1)
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Size() > bestSize {
			best, bestSize = f, fi.Size()
		}
	}
	return best
}

// dataEnd is the offset after the last non-zero byte of name: a crashed
// log file is mostly preallocated zeros.
func dataEnd(t *testing.T, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00")))
}

func truncateTo(t *testing.T, name string, size int64) {
	t.Helper()
	if err := os.Truncate(name, size); err != nil {
		t.Fatal(err)
	}
}

func flipAt(t *testing.T, name string, off int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptionTable damages each kind of file of a store (MANIFEST,
// .sst, .vlog, .mem) by truncating, deleting and flipping a byte, after a
// graceful stop and after a crash. Every case must end in a refusal that
// names the dir and changes no file, or in a start with every
// acknowledged value intact: never a panic, a silent empty start, or lost
// data.
func TestCorruptionTable(t *testing.T) {
	type damage func(t *testing.T, dir string)
	half := func(pattern string) damage {
		return func(t *testing.T, dir string) {
			f := largest(t, dir, pattern)
			truncateTo(t, f, dataEnd(t, f)/2)
		}
	}
	del := func(pattern string) damage {
		return func(t *testing.T, dir string) {
			if err := os.Remove(largest(t, dir, pattern)); err != nil {
				t.Fatal(err)
			}
		}
	}
	flip := func(pattern string, at func(end int64) int64) damage {
		return func(t *testing.T, dir string) {
			f := largest(t, dir, pattern)
			flipAt(t, f, at(dataEnd(t, f)))
		}
	}
	middle := func(end int64) int64 { return end / 2 }
	early := func(end int64) int64 { return min(end-1, 5000) }
	late := func(end int64) int64 { return end - 10 }
	tests := []struct {
		name    string
		crashed bool
		damage  damage
	}{
		{"undamaged", false, func(*testing.T, string) {}},
		{"crashed: undamaged", true, func(*testing.T, string) {}},
		{"MANIFEST truncated to half", false, half("MANIFEST")},
		{"MANIFEST deleted", false, del("MANIFEST")},
		{"MANIFEST bit flip", false, flip("MANIFEST", middle)},
		{"sst truncated", false, half("*.sst")},
		{"sst deleted", false, del("*.sst")},
		{"sst bit flip early", false, flip("*.sst", early)},
		{"sst bit flip middle", false, flip("*.sst", middle)},
		{"sst bit flip in the footer", false, flip("*.sst", late)},
		{"vlog truncated", false, half("*.vlog")},
		{"vlog deleted", false, del("*.vlog")},
		{"vlog bit flip", false, flip("*.vlog", middle)},
		{"crashed: MANIFEST truncated to half", true, half("MANIFEST")},
		{"crashed: MANIFEST deleted", true, del("MANIFEST")},
		{"crashed: sst bit flip", true, flip("*.sst", middle)},
		{"crashed: vlog truncated", true, half("*.vlog")},
		{"crashed: vlog deleted", true, del("*.vlog")},
		{"crashed: vlog bit flip", true, flip("*.vlog", middle)},
		{"crashed: mem truncated to 4096 B", true, func(t *testing.T, dir string) { truncateTo(t, largest(t, dir, "*.mem"), 4096) }},
		{"crashed: mem truncated to half its data", true, half("*.mem")},
		{"crashed: mem deleted", true, del("*.mem")},
		{"crashed: mem bit flip at 5000", true, flip("*.mem", early)},
		{"crashed: mem bit flip in the middle", true, flip("*.mem", middle)},
		{"crashed: mem bit flip in the last record", true, flip("*.mem", late)},
	}
	// Fixtures are costly (3 MB written with fsyncs): one of each kind,
	// copied per case.
	fixtures := map[bool]storeFixture{false: closedStore(t), true: crashedStore(t)}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := fixtures[tt.crashed]
			dir := t.TempDir()
			copyDir(t, fx.dir, dir)
			tt.damage(t, dir)
			before := fileSums(t, dir)
			st, err := Open(Config{Dir: dir}, discard())
			if err != nil {
				if !errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("refused without ErrUnreadable or the dir: %v", err)
				}
				if after := fileSums(t, dir); !maps.Equal(before, after) {
					t.Fatalf("a refused start changed files:\nbefore %v\nafter  %v", fileNames(before), fileNames(after))
				}
				t.Log(err)
				return
			}
			defer st.Close()
			got := readAll(t, st)
			for k, v := range fx.want {
				if got[k] != v {
					t.Fatalf("started, but %s is lost or changed (%d of %d values intact)", k, intact(got, fx.want), len(fx.want))
				}
			}
		})
	}
}

func fileNames(m map[string][32]byte) []string { return slices.Sorted(maps.Keys(m)) }

func intact(got, want map[string]string) int {
	n := 0
	for k, v := range want {
		if got[k] == v {
			n++
		}
	}
	return n
}

// TestSalvageDamaged: salvage of a damaged store never panics, leaves the
// source unchanged, and gives a store that opens; what was not damaged is
// all there (a lost MANIFEST loses nothing), and a damaged log still gives
// every transaction before the damage.
func TestSalvageDamaged(t *testing.T) {
	fixtures := map[bool]storeFixture{false: closedStore(t), true: crashedStore(t)}
	tests := []struct {
		name    string
		crashed bool
		damage  func(t *testing.T, dir string)
		atLeast int // values intact of 6000
	}{
		{"MANIFEST deleted", false, func(t *testing.T, dir string) { _ = os.Remove(filepath.Join(dir, "MANIFEST")) }, 6000},
		{"crashed: MANIFEST truncated", true, func(t *testing.T, dir string) { truncateTo(t, filepath.Join(dir, "MANIFEST"), 20) }, 6000},
		{"crashed: mem bit flip at 5000", true, func(t *testing.T, dir string) { flipAt(t, largest(t, dir, "*.mem"), 5000) }, 5200},
		{"sst bit flip", false, func(t *testing.T, dir string) { f := largest(t, dir, "*.sst"); flipAt(t, f, dataEnd(t, f)/2) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			copyDir(t, fixtures[tt.crashed].dir, src)
			tt.damage(t, src)
			before := fileSums(t, src)
			out := filepath.Join(t.TempDir(), "salvaged")
			rep, err := Salvage(src, out, discard())
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(before, fileSums(t, src)) {
				t.Fatal("salvage changed the source")
			}
			st := openStore(t, Config{Dir: out})
			n := intact(readAll(t, st), fixtures[tt.crashed].want)
			t.Logf("%d of 6000 intact; %+v", n, rep)
			if n < tt.atLeast {
				t.Fatalf("%d values intact, want at least %d", n, tt.atLeast)
			}
		})
	}
}
