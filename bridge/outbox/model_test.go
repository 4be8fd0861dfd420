package outbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ferrymq/ferry/bridge"
)

// TestRandomOpsAgainstModel runs random operations on three routes,
// closing and reopening now and then, and after each step compares the
// outbox and dead letters with an in-memory model.
func TestRandomOpsAgainstModel(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	routes := []string{"a", "b", "c"}
	type entry struct {
		seq     uint64
		payload string
	}
	live := map[string][]entry{} // route → undelivered, in seq order
	dead := map[string][]entry{}
	next := map[string]uint64{}
	o, err := Open(Config{Dir: dir, Sync: SyncNone}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = o.Close() }()
	remove := func(es []entry, seq uint64) ([]entry, *entry) {
		for i, e := range es {
			if e.seq == seq {
				return slices.Delete(es, i, i+1), &e
			}
		}
		return es, nil
	}
	for step := range 400 {
		r := routes[rng.IntN(len(routes))]
		switch op := rng.IntN(10); {
		case op < 4: // append a few, possibly across routes
			var ms []bridge.Message
			for range 1 + rng.IntN(3) {
				rr := routes[rng.IntN(len(routes))]
				ms = append(ms, bridge.Message{Route: rr, Topic: "t", Payload: []byte(fmt.Sprint("p", step, len(ms)))})
			}
			if err := o.Append(ctx, ms); err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				next[m.Route]++
				if m.Seq != next[m.Route] {
					t.Fatalf("step %d: seq %d, model %d", step, m.Seq, next[m.Route])
				}
				live[m.Route] = append(live[m.Route], entry{m.Seq, string(m.Payload)})
			}
		case op < 6 && len(live[r]) > 0: // delete a random one
			e := live[r][rng.IntN(len(live[r]))]
			if err := o.Delete(ctx, r, []uint64{e.seq}); err != nil {
				t.Fatal(err)
			}
			live[r], _ = remove(live[r], e.seq)
		case op < 7 && len(live[r]) > 0: // dead-letter the oldest
			e := live[r][0]
			d := bridge.DeadLetter{Message: bridge.Message{Seq: e.seq, Topic: "t", Payload: []byte(e.payload)}, Reason: "x"}
			if err := o.DeadLetter(ctx, r, []bridge.DeadLetter{d}); err != nil {
				t.Fatal(err)
			}
			live[r] = live[r][1:]
			dead[r] = append(dead[r], e)
			slices.SortFunc(dead[r], func(a, b entry) int { return int(a.seq) - int(b.seq) })
		case op < 8 && len(dead[r]) > 0: // replay all
			n, err := o.Replay(ctx, r, nil)
			if err != nil || n != len(dead[r]) {
				t.Fatalf("replay = %d, %v; model %d", n, err, len(dead[r]))
			}
			for _, e := range dead[r] {
				next[r]++
				live[r] = append(live[r], entry{next[r], e.payload})
			}
			dead[r] = nil
		case op < 9 && len(live[r]) > 0: // drop the oldest by bytes
			if n, err := o.DropOldest(ctx, r, 1); err != nil || n != 1 {
				t.Fatalf("drop = %d, %v", n, err)
			}
			live[r] = live[r][1:]
		default: // restart
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			if o, err = Open(Config{Dir: dir, Sync: SyncNone}, nil); err != nil {
				t.Fatal(err)
			}
		}
		for _, rr := range routes {
			got, err := o.Read(rr, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(live[rr]) || o.Usage(rr).Messages != int64(len(live[rr])) {
				t.Fatalf("step %d route %s: %d read, usage %+v, model %d", step, rr, len(got), o.Usage(rr), len(live[rr]))
			}
			for i, m := range got {
				if m.Seq != live[rr][i].seq || string(m.Payload) != live[rr][i].payload {
					t.Fatalf("step %d route %s [%d]: seq %d %q, model %+v", step, rr, i, m.Seq, m.Payload, live[rr][i])
				}
			}
			dl, err := o.DeadLetters(rr, 0, 1000)
			if err != nil || len(dl) != len(dead[rr]) {
				t.Fatalf("step %d route %s: %d dead, model %d (%v)", step, rr, len(dl), len(dead[rr]), err)
			}
		}
	}
}
