package outbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/internal/tmpfs"
	"github.com/ferrymq/ferry/persistence"
)

// TestAppendRefusedOnFullDisk: below storage.min_free_space (80 MiB by
// default) an append fails with persistence.ErrDiskFull and stores
// nothing, so the broker refuses the publish (PUBACK 0x97) instead of
// Badger filling the disk; appends work again once space is freed.
func TestAppendRefusedOnFullDisk(t *testing.T) {
	mnt := tmpfs.Mount(t, "128m")
	filler := filepath.Join(mnt, "filler")
	o, st := openShared(t, filepath.Join(mnt, "data"), SyncAlways)
	t.Cleanup(func() { _ = os.Remove(filler) }) // runs before the store closes
	ctx := context.Background()
	if err := o.Append(ctx, []bridge.Message{msg("r", "t/1", "one")}); err != nil {
		t.Fatal(err)
	}
	tmpfs.Fill(t, filler, 40<<20)
	eventually(t, func() bool { return st.DiskSpace() != nil })
	err := o.Append(ctx, []bridge.Message{msg("r", "t/2", "two")})
	if !errors.Is(err, persistence.ErrDiskFull) {
		t.Fatalf("append on a full disk: %v, want ErrDiskFull", err)
	}
	if n := o.Usage("r").Messages; n != 1 {
		t.Fatalf("%d messages in the outbox after a refused append, want 1", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return st.DiskSpace() == nil })
	if err := o.Append(ctx, []bridge.Message{msg("r", "t/2", "two")}); err != nil {
		t.Fatalf("append once space is back: %v", err)
	}
}

// eventually polls fn for up to 5 s (the store reads the free space four
// times a second); internal/testutil would be an import cycle.
func eventually(t *testing.T, fn func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !fn(); {
		if time.Now().After(deadline) {
			t.Fatal("the store did not see the change of free space within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
