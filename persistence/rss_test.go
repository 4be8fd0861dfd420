package persistence

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// rss is this process's resident memory: anonymous (heap, stacks, Badger's
// allocations) and file-backed (mapped Badger files, reclaimable page cache).
type rss struct{ anon, file int64 }

func readRSS(t testing.TB) rss {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var r rss
	for _, line := range strings.Split(string(b), "\n") {
		for key, dst := range map[string]*int64{"RssAnon:": &r.anon, "RssFile:": &r.file} {
			if rest, ok := strings.CutPrefix(line, key); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				*dst = kb << 10
			}
		}
	}
	return r
}

// mem is a settled snapshot: RSS after a GC that returned free heap to the
// OS (unless FERRY_RSS_NOFREE is set), and the Go runtime's view of the same
// moment.
type mem struct {
	rss   rss
	heap  uint64 // Go heap in use (includes untouched pages of large allocations)
	stack uint64 // goroutine stacks
	held  uint64 // heap memory the runtime holds from the OS (HeapSys - HeapReleased)
	sys   uint64 // all memory the runtime holds from the OS (Sys - HeapReleased)
}

func settledRSS(t testing.TB) mem {
	runtime.GC()
	if os.Getenv("FERRY_RSS_NOFREE") == "" {
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{rss: readRSS(t), heap: ms.HeapInuse, stack: ms.StackInuse, held: ms.HeapSys - ms.HeapReleased, sys: ms.Sys - ms.HeapReleased}
}

func growth(a, b mem) string {
	mb := func(v int64) float64 { return float64(v) / (1 << 20) }
	return fmt.Sprintf("RSS %+.1f MB (anonymous %+.1f MB, file-backed %+.1f MB; Go heap in use %+.1f MB, held from the OS %+.1f MB, runtime total %+.1f MB, stacks %+.1f MB)",
		mb(b.rss.anon+b.rss.file-a.rss.anon-a.rss.file), mb(b.rss.anon-a.rss.anon), mb(b.rss.file-a.rss.file),
		mb(int64(b.heap)-int64(a.heap)), mb(int64(b.held)-int64(a.held)), mb(int64(b.sys)-int64(a.sys)), mb(int64(b.stack)-int64(a.stack)))
}

// TestQueuedRSS measures what an offline persistent session with N queued
// QoS 1 messages (128 B payloads) costs in RSS, while running and after a
// restart on the same store. Not a timed assertion: it reports the figures.
//
//	FERRY_RSS=100000 go test -run TestQueuedRSS -v ./persistence/
//
// With FERRY_RSS_WARM=1 Badger's memtables and caches are first filled
// with as much data, which is then deleted (and, with FERRY_RSS_IDLE, the
// first snapshot waits as long): the figure is then the cost of the queue
// itself rather than of Badger's fixed-size buffers, which any writes fill.
//
// FERRY_RSS_MEMTABLE sets Config.MemTableSize (bytes). With
// FERRY_RSS_IDLE=20s the running broker is measured again after that
// long without writes: Badger keeps up to 8 table-building buffers after a
// write burst and frees one every 2s while idle. With FERRY_RSS_NOFREE=1
// memory the Go runtime has freed but not yet returned to the OS stays in
// the figures (debug.FreeOSMemory is not called). FERRY_RSS_HEAP=file
// writes heap profiles (file, file.idle, file.restart).
func TestQueuedRSS(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FERRY_RSS"))
	if n <= 0 {
		t.Skip("set FERRY_RSS=<messages> to measure")
	}
	memtable, _ := strconv.ParseInt(os.Getenv("FERRY_RSS_MEMTABLE"), 10, 64)
	idle, _ := time.ParseDuration(os.Getenv("FERRY_RSS_IDLE"))
	cfg := Config{Dir: t.TempDir(), MemTableSize: memtable}
	st := openStore(t, cfg)
	caps := func(c *mqtt.Capabilities) { c.MaximumInflight = 65535 }
	lim := func(h *Hook) { h.SetQueueLimits(QueueLimits{MaxMessages: n, MaxBytes: 1 << 40}) }
	b := startBrokerWith(t, st, caps, lim)
	offlineSubscriber(t, b, "slow", "q/#")

	fill := func(topic string) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := make([]byte, 128)
				for {
					i := next.Add(1)
					if i > int64(n) {
						return
					}
					copy(payload, fmt.Sprintf("%08d", i))
					if err := b.srv.Publish(topic, payload, false, 1); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	if os.Getenv("FERRY_RSS_WARM") != "" {
		// Fill Badger's memtables and caches with as much data first, then
		// drop it: what remains measured is the cost of the queue itself.
		offlineSubscriber(t, b, "warm", "w/#")
		fill("w/x")
		connect(t, b.url, "warm", true, nil).Disconnect(100)
		if idle > 0 {
			// Both snapshots then find Badger's buffers at rest.
			<-time.After(idle) // not a synchronisation: Badger frees buffers when idle
		}
	}

	m0 := settledRSS(t)
	start := time.Now()
	fill("q/x")
	took := time.Since(start)
	m1 := settledRSS(t)
	heapProfile(t, "")
	cl, _ := b.srv.Clients.Get("slow")
	t.Logf("%d messages queued in %s; in mochi's RAM: %d; mochi dropped: %d; queue stats %+v", n, took.Round(time.Millisecond),
		cl.State.Inflight.Len(), b.srv.Info.InflightDropped, b.hook.QueueStats())
	t.Logf("running: %s", growth(m0, m1))
	if idle > 0 {
		<-time.After(idle) // not a synchronisation: Badger frees buffers when idle
		t.Logf("running, idle %s: %s", idle, growth(m0, settledRSS(t)))
		heapProfile(t, ".idle")
	}

	b.close()
	_ = st.Close()
	m2 := settledRSS(t)
	st = openStore(t, cfg)
	b = startBrokerWith(t, st, caps, lim)
	m3 := settledRSS(t)
	heapProfile(t, ".restart")
	cl, _ = b.srv.Clients.Get("slow")
	t.Logf("after restart: %d in mochi's RAM; %s over the stopped broker", cl.State.Inflight.Len(), growth(m2, m3))
}

// heapProfile writes a heap profile to $FERRY_RSS_HEAP+suffix, if set.
func heapProfile(t *testing.T, suffix string) {
	f := os.Getenv("FERRY_RSS_HEAP")
	if f == "" {
		return
	}
	out, err := os.Create(f + suffix)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := pprof.WriteHeapProfile(out); err != nil {
		t.Fatal(err)
	}
}
