package broker

import (
	"runtime"
	"testing"
)

// TestReturnFreeMemoryAfterBurst: memory a burst freed goes back to the
// system at the next check; with nothing freed, nothing is forced.
func TestReturnFreeMemoryAfterBurst(t *testing.T) {
	runtime.GC()
	if returnFreeMemory() {
		runtime.GC()
	}
	var burst [][]byte
	for range 256 {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1 // resident
		}
		burst = append(burst, b)
	}
	runtime.KeepAlive(burst)
	burst = nil
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	if !returnFreeMemory() {
		t.Fatalf("256 MiB freed (idle %d, released %d, in use %d), not returned", before.HeapIdle, before.HeapReleased, before.HeapInuse)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if after.HeapReleased < before.HeapReleased+200<<20 {
		t.Fatalf("released %d -> %d bytes, want 200 MiB more", before.HeapReleased, after.HeapReleased)
	}
	if returnFreeMemory() {
		t.Fatal("returned again with nothing left to return")
	}
}
