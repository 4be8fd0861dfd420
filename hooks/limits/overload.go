package limits

import (
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// heapGauge caches the heap in use. Reading runtime/metrics costs a few
// microseconds and allocates; during a reconnect storm, the moment the guard
// matters most, that would run thousands of times a second. So the value is
// read at most once per heapSampleEvery and shared.
type heapGauge struct {
	start time.Time     // monotonic origin for next
	read  func() uint64 // readHeapInUse; replaced in tests
	mu    sync.Mutex    // held by the one caller refreshing the sample
	next  atomic.Int64  // nanoseconds after start when the sample goes stale
	value atomic.Uint64
}

func newHeapGauge(read func() uint64) *heapGauge {
	return &heapGauge{start: time.Now(), read: read}
}

// get returns the latest sample, refreshing it if it is stale. Callers that
// find another caller refreshing do not wait: they use the old value.
func (g *heapGauge) get() uint64 {
	now := int64(time.Since(g.start))
	if now >= g.next.Load() && g.mu.TryLock() {
		if now >= g.next.Load() { // another caller may have just refreshed it
			g.value.Store(g.read())
			g.next.Store(now + int64(heapSampleEvery))
		}
		g.mu.Unlock()
	}
	return g.value.Load()
}

// These two runtime/metrics add up to runtime.MemStats.HeapInuse, without
// the stop-the-world of runtime.ReadMemStats.
const (
	metricHeapObjects = "/memory/classes/heap/objects:bytes" // live and not yet swept objects
	metricHeapUnused  = "/memory/classes/heap/unused:bytes"  // free space in in-use spans
)

// readHeapInUse reads the heap in use from runtime/metrics.
func readHeapInUse() uint64 {
	samples := [...]metrics.Sample{{Name: metricHeapObjects}, {Name: metricHeapUnused}}
	metrics.Read(samples[:])
	var total uint64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			total += s.Value.Uint64()
		}
	}
	return total
}
