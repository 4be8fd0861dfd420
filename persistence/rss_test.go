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

func settledRSS(t testing.TB) (r rss, heap uint64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return readRSS(t), ms.HeapInuse
}

func growth(a, b rss, ha, hb uint64) string {
	mb := func(v int64) float64 { return float64(v) / (1 << 20) }
	return fmt.Sprintf("RSS %+.1f MB (anonymous %+.1f MB, file-backed %+.1f MB; Go heap in use %+.1f MB)",
		mb(b.anon+b.file-a.anon-a.file), mb(b.anon-a.anon), mb(b.file-a.file), mb(int64(hb)-int64(ha)))
}

// TestQueuedRSS measures what an offline persistent session with N queued
// QoS 1 messages (128 B payloads) costs in RSS, while running and after a
// restart on the same store. Not a timed assertion: it reports the figures.
//
//	FERRY_RSS=100000 go test -run TestQueuedRSS -v ./persistence/
//
// With FERRY_RSS_WARM=1 Badger's memtables and caches are first filled
// with as much data, which is then deleted: the figure is then the cost
// of the queue itself rather than of Badger's fixed-size buffers.
func TestQueuedRSS(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FERRY_RSS"))
	if n <= 0 {
		t.Skip("set FERRY_RSS=<messages> to measure")
	}
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir})
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
	}

	rss0, heap0 := settledRSS(t)
	start := time.Now()
	fill("q/x")
	took := time.Since(start)
	rss1, heap1 := settledRSS(t)
	if f := os.Getenv("FERRY_RSS_HEAP"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(out)
		_ = out.Close()
	}
	cl, _ := b.srv.Clients.Get("slow")
	t.Logf("%d messages queued in %s; in mochi's RAM: %d; mochi dropped: %d; queue stats %+v", n, took.Round(time.Millisecond),
		cl.State.Inflight.Len(), b.srv.Info.InflightDropped, b.hook.QueueStats())
	t.Logf("running: %s", growth(rss0, rss1, heap0, heap1))

	b.close()
	_ = st.Close()
	rss2, heap2 := settledRSS(t)
	st = openStore(t, Config{Dir: dir})
	b = startBrokerWith(t, st, caps, lim)
	rss3, heap3 := settledRSS(t)
	if f := os.Getenv("FERRY_RSS_HEAP"); f != "" {
		out, err := os.Create(f + ".restart")
		if err != nil {
			t.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(out)
		_ = out.Close()
	}
	cl, _ = b.srv.Clients.Get("slow")
	t.Logf("after restart: %d in mochi's RAM; %s over the stopped broker", cl.State.Inflight.Len(), growth(rss2, rss3, heap2, heap3))
}
