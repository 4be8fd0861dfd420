package persistence

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
			rec[0] = recordVersion + 1
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
	f, err := os.OpenFile(files[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
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
