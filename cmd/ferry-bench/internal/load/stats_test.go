package load

import (
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Nonce: 0xdeadbeef, Publisher: 77, Seq: 1<<40 + 3, SentNanos: time.Now().UnixNano()}
	b := make([]byte, 64)
	h.Put(b)
	got, ok := ParseHeader(b)
	if !ok || got != h {
		t.Fatalf("got %+v, %v; want %+v", got, ok, h)
	}
	if _, ok := ParseHeader(b[:HeaderSize-1]); ok {
		t.Fatal("short payload parsed")
	}
}

func TestSeqSet(t *testing.T) {
	tests := []struct {
		name        string
		have        []uint64
		want        []uint64 // the acked set
		below       uint64
		missing     int64
		missBelow   int64
		max         int64
		newOnSecond bool
	}{
		{name: "empty", below: 5, missBelow: 5, max: -1},
		{name: "contiguous", have: []uint64{0, 1, 2, 3}, want: []uint64{0, 1, 2, 3}, below: 4, max: 3},
		{name: "gaps", have: []uint64{0, 2, 4}, want: []uint64{0, 1, 2, 3, 4}, below: 5, missing: 2, missBelow: 2, max: 4},
		{name: "word boundary", have: []uint64{63, 64, 65}, want: []uint64{62, 63, 64, 65, 200}, below: 66, missing: 2, missBelow: 63, max: 65},
		{name: "received beyond limit", have: []uint64{1, 100}, below: 50, missBelow: 49, max: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, w := newSeqSet(), newSeqSet()
			for _, v := range tc.have {
				if !s.add(v) {
					t.Fatalf("add %d reported a duplicate", v)
				}
				if s.add(v) {
					t.Fatalf("second add %d reported new", v)
				}
			}
			for _, v := range tc.want {
				w.add(v)
			}
			if got := s.missing(w); got != tc.missing {
				t.Errorf("missing %d, want %d", got, tc.missing)
			}
			if got := s.missingBelow(tc.below); got != tc.missBelow {
				t.Errorf("missingBelow(%d) %d, want %d", tc.below, got, tc.missBelow)
			}
			if s.max != tc.max || s.n != int64(len(tc.have)) {
				t.Errorf("max %d n %d", s.max, s.n)
			}
		})
	}
}

func TestHistogramQuantiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var raw []time.Duration
	for range 100000 {
		// log-uniform from 1 µs to 10 s
		d := time.Duration(float64(time.Microsecond) * math.Pow(10, r.Float64()*7))
		raw = append(raw, d)
		h.Record(d)
	}
	slices.Sort(raw)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := raw[int(q*float64(len(raw)))-1]
		got := h.Quantile(q)
		if rel := float64(got-exact) / float64(exact); rel < -0.01 || rel > 0.01 {
			t.Errorf("q%v: got %v, exact %v (%.2f%% off)", q, got, exact, rel*100)
		}
	}
	if h.Max() != raw[len(raw)-1] || h.Count() != uint64(len(raw)) {
		t.Errorf("max %v count %d", h.Max(), h.Count())
	}
	var m Histogram
	m.Merge(&h)
	m.Record(-time.Second) // a clock step counts as zero
	if m.Count() != h.Count()+1 || m.Quantile(1e-9) != 0 {
		t.Errorf("merge: count %d min quantile %v", m.Count(), m.Quantile(1e-9))
	}
}

func TestHistIndexMonotonic(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1, 1<<64 - 1} {
		i := histIndex(v)
		if i <= prev && v != 0 {
			t.Fatalf("index of %d is %d, not above %d", v, i, prev)
		}
		if i >= len(Histogram{}.counts) {
			t.Fatalf("index of %d is %d, out of range", v, i)
		}
		if hv := histValue(i); hv < v {
			t.Fatalf("bucket %d upper bound %d below value %d", i, hv, v)
		}
		prev = i
	}
}

func TestProcCPU(t *testing.T) {
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until /proc (10 ms ticks) shows it; bounded by wall time.
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x += i
		}
		if now, err := procCPU(os.Getpid()); err == nil && now > before {
			return
		}
	}
	t.Fatalf("cpu time did not advance (%d)", x)
}

func TestProcCPUMissing(t *testing.T) {
	if _, err := procCPU(-1); err == nil {
		t.Fatal("want an error for a missing process")
	}
	if _, err := ReadRSS(-1); err == nil {
		t.Fatal("want an error for a missing process")
	}
}

func TestDeliverAccounting(t *testing.T) {
	r := newRun(Config{Scenario: Pairs}.withDefaults(), 42)
	s := &subscriber{r: r}
	payload := make([]byte, HeaderSize+8)
	send := func(nonce, pub uint32, seq uint64) {
		t.Helper()
		Header{Nonce: nonce, Publisher: pub, Seq: seq, SentNanos: time.Now().UnixNano()}.Put(payload)
		if err := s.deliver(&mqttc.Packet{Type: mqttc.PUBLISH, Payload: payload}, time.Now().UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	// publisher 0: 0 2 1 1 3; publisher 1: 5 4; a stale run; a short payload
	for _, seq := range []uint64{0, 2, 1, 1, 3} {
		send(42, 0, seq)
	}
	send(42, 1, 5)
	send(42, 1, 4)
	send(7, 0, 9)
	if err := s.deliver(&mqttc.Packet{Type: mqttc.PUBLISH, Payload: []byte("short")}, 0); err != nil {
		t.Fatal(err)
	}
	if s.recv.Load() != 7 || s.uniq.Load() != 6 || s.dupes != 1 || s.ooo != 2 || s.stale != 2 || s.hist.Count() != 6 {
		t.Fatalf("recv %d uniq %d dupes %d ooo %d stale %d samples %d; want 7 6 1 2 2 6",
			s.recv.Load(), s.uniq.Load(), s.dupes, s.ooo, s.stale, s.hist.Count())
	}
	if got := s.stream(0).set.missingBelow(5); got != 1 {
		t.Fatalf("publisher 0 missing below 5: %d, want 1 (seq 4)", got)
	}
}
