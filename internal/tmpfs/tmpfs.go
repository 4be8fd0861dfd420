// Package tmpfs mounts small filesystems that really fill up, for tests of
// a full disk. It imports nothing of Ferry, so every package's tests may
// use it.
package tmpfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size (mount's syntax: "32m") on a new temporary
// dir, returns it, and unmounts it at test end. Mounting needs root (or
// CAP_SYS_ADMIN): without it the test is skipped with the reason, and
// fails under CI=true.
func Mount(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount a %s tmpfs under CI=true (%v: %s): run the tests as root", size, err, out)
		}
		t.Skipf("cannot mount a %s tmpfs (%v: %s): run as root to test a full disk", size, err, out)
	}
	// Registered after TempDir's cleanup, so it runs first.
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// Free returns the space still free on dir's filesystem.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// Fill grows or shrinks the file name (creating it) so that about leave
// bytes stay free on its filesystem. It never frees space on the way to a
// smaller figure.
func Fill(t testing.TB, name string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	size := max(0, fi.Size()+Free(t, filepath.Dir(name))-leave)
	if size > fi.Size() {
		// Written, not a hole: tmpfs allocates what is written.
		_, err = f.WriteAt(make([]byte, size-fi.Size()), fi.Size())
	} else {
		err = f.Truncate(size)
	}
	if err != nil {
		t.Fatal(err)
	}
}
