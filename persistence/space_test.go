package persistence

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/tmpfs"
)

// TestDiskSpaceStates runs a store on a 32 MiB tmpfs (1 MiB memtables:
// new messages refused below 10 MiB free, every write below 2 MiB) and
// moves its free space with a filler file: Admit and DiskSpace report
// ErrDiskFull below the limit while other writes go on; below the critical
// mark writes fail with ErrDiskFull before Badger sees them (Badger would
// die of SIGBUS in a full disk); everything comes back when space does.
// On a full disk Open refuses with ErrDiskFull, changing nothing, instead
// of Badger crashing while it flushes the logs a kill -9 left.
func TestDiskSpaceStates(t *testing.T) {
	mnt := tmpfs.Mount(t, "32m")
	dir, filler := filepath.Join(mnt, "data"), filepath.Join(mnt, "filler")
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways, MemTableSize: MinMemTableSize})
	// Cleanups run last first: space is back before the store closes
	// (its Close flushes the memtable).
	t.Cleanup(func() { _ = os.Remove(filler) })
	putRaw(t, st, "t/before", "v")
	set := func(leave int64) {
		t.Helper()
		tmpfs.Fill(t, filler, leave)
		st.checkSpace() // rather than waiting for the next tick
	}

	set(6 << 20)
	if err := st.Admit(); !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Admit below min_free_space: %v, want ErrDiskFull naming the dir", err)
	}
	if err := st.DiskSpace(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("DiskSpace: %v", err)
	}
	if s := st.Stats(); !s.DiskLow || s.DiskFullRefusals != 1 || s.FreeBytes > 6<<20 {
		t.Fatalf("stats %+v", s)
	}
	putRaw(t, st, "t/low", "sessions and deletions are still written")

	set(1 << 20)
	b := st.newBatch()
	b.setRaw([]byte("t/critical"), []byte("v"))
	if err := st.apply(b); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("write below the critical mark: %v, want ErrDiskFull", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "space back (by the store's own check)", func() bool {
		return st.Admit() == nil && st.DiskSpace() == nil
	})
	putRaw(t, st, "t/after", "v")
	if got := readAll(t, st); len(got) != 3 {
		t.Fatalf("store holds %v", got)
	}

	// A crash copy (its .mem must be flushed at open) on a full disk.
	crashed := filepath.Join(mnt, "crashed")
	if err := os.Mkdir(crashed, 0o700); err != nil {
		t.Fatal(err)
	}
	copyDir(t, dir, crashed)
	tmpfs.Fill(t, filler, 64<<10)
	before := fileSums(t, crashed)
	if st2, err := Open(Config{Dir: crashed, MemTableSize: MinMemTableSize}, nil); err == nil {
		_ = st2.Close()
		t.Fatal("opened a store on a full disk")
	} else if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), crashed) {
		t.Fatalf("open on a full disk: %v, want ErrDiskFull naming the dir", err)
	} else {
		t.Log(err)
	}
	if !maps.Equal(before, fileSums(t, crashed)) {
		t.Fatal("a refused open changed files")
	}
}

// TestAdmitReadsFreshSpace: a store that fills its disk between two ticks
// of its space check refuses at once. With the ticker alone, a fast
// publisher wrote megabytes past the limit (into the room Badger needs for
// its flushes) before the next tick noticed.
func TestAdmitReadsFreshSpace(t *testing.T) {
	mnt := tmpfs.Mount(t, "32m")
	dir, filler := filepath.Join(mnt, "data"), filepath.Join(mnt, "filler")
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways, MemTableSize: MinMemTableSize})
	t.Cleanup(func() { _ = os.Remove(filler) })
	if err := st.Admit(); err != nil {
		t.Fatalf("Admit on an empty disk: %v", err)
	}
	tmpfs.Fill(t, filler, 6<<20)
	time.Sleep(2 * spaceFresh) // the last reading is stale, the next tick is far
	if err := st.Admit(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Admit right after the disk filled: %v, want ErrDiskFull", err)
	}
}

// TestAdmitAllocatesNothing: Admit runs for every message a publish would
// store. Working out the space limits built Badger's options on each call
// (6 % of a core in a persistent QoS 1 fan-in, pprof).
func TestAdmitAllocatesNothing(t *testing.T) {
	st := openStore(t, Config{Dir: t.TempDir(), Sync: SyncAlways})
	if n := testing.AllocsPerRun(100, func() { _ = st.Admit() }); n != 0 {
		t.Fatalf("Admit allocates %.1f objects per call, want 0", n)
	}
}
