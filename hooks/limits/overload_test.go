package limits

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestHeapGaugeSamples: however often the guard asks, runtime/metrics is
// read at most once per heapSampleEvery.
func TestHeapGaugeSamples(t *testing.T) {
	var reads atomic.Int64
	g := newHeapGauge(func() uint64 { return uint64(reads.Add(1)) * 1000 })
	start := time.Now()
	if v := g.get(); v != 1000 {
		t.Fatalf("first get = %d, want a fresh sample", v)
	}
	calls := 0
	for time.Since(start) < 3*heapSampleEvery+heapSampleEvery/2 {
		g.get()
		calls++
		runtime.Gosched()
	}
	elapsed := time.Since(start)
	n := reads.Load()
	if limit := 1 + int64(elapsed/heapSampleEvery); n > limit {
		t.Errorf("%d reads in %s for %d calls, want at most %d", n, elapsed, calls, limit)
	}
	if n < 2 {
		t.Errorf("%d reads in %s: the sample was never refreshed", n, elapsed)
	}
}

func TestReadHeapInUse(t *testing.T) {
	ballast := make([]byte, 8<<20)
	got := readHeapInUse()
	runtime.KeepAlive(ballast)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if got < 8<<20 {
		t.Errorf("heap in use %d with an 8 MiB allocation live", got)
	}
	// Same quantity as MemStats.HeapInuse, read at a different instant.
	if lo, hi := ms.HeapInuse/2, ms.HeapInuse*2; got < lo || got > hi {
		t.Errorf("heap in use %d, MemStats.HeapInuse %d", got, ms.HeapInuse)
	}
}
