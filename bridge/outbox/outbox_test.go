package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/persistence"
)

// openTest opens a persistence store in dir, as the broker does, and the
// outbox in it; both close when the test ends, the outbox first.
func openTest(t testing.TB, dir string, mode SyncMode) *Outbox {
	t.Helper()
	o, _ := openShared(t, dir, mode)
	return o
}

func openShared(t testing.TB, dir string, mode SyncMode) (*Outbox, *persistence.Store) {
	t.Helper()
	st, err := persistence.Open(persistence.Config{Dir: dir, Sync: string(mode)}, nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	o, err := New(st, nil)
	if err != nil {
		_ = st.Close()
		t.Fatalf("open outbox: %v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Error(err)
		}
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return o, st
}

func msg(route, topic, payload string) bridge.Message {
	return bridge.Message{Route: route, Topic: topic, Payload: []byte(payload), QoS: 1, ClientID: "c1",
		UserProperties: []bridge.Property{{Key: "k", Value: "v"}}, Created: time.Unix(1700000000, 5)}
}

func TestAppendReadDelete(t *testing.T) {
	ctx := context.Background()
	o := openTest(t, t.TempDir(), SyncAlways)
	ms := []bridge.Message{msg("a", "t/1", "one"), msg("b", "t/2", "two"), msg("a", "t/3", "three")}
	if err := o.Append(ctx, ms); err != nil {
		t.Fatal(err)
	}
	if ms[0].Seq != 1 || ms[2].Seq != 2 || ms[1].Seq != 1 || ms[2].ID != "a-2" {
		t.Fatalf("seqs/ids = %d %d %d %q", ms[0].Seq, ms[1].Seq, ms[2].Seq, ms[2].ID)
	}
	got, err := o.Read("a", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[1].Payload) != "three" || got[1].Seq != 2 || got[1].Route != "a" ||
		got[0].UserProperties[0] != (bridge.Property{Key: "k", Value: "v"}) || !got[0].Created.Equal(ms[0].Created) {
		t.Fatalf("read = %+v", got)
	}
	if u := o.Usage("a"); u.Messages != 2 || u.Bytes <= 0 {
		t.Fatalf("usage = %+v", u)
	}
	if got, _ := o.Read("a", 1, 10); len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("read after 1 = %+v", got)
	}
	if err := o.Delete(ctx, "a", []uint64{1, 2, 99}); err != nil {
		t.Fatal(err)
	}
	if u := o.Usage("a"); u != (bridge.Usage{}) {
		t.Fatalf("usage after delete = %+v", u)
	}
	if old, err := o.Oldest("b"); err != nil || !old.Equal(ms[1].Created) {
		t.Fatalf("oldest = %v, %v", old, err)
	}
}

// TestReopen: records and counters survive a close without draining, and
// seqs continue after the highest ever assigned, also when every record was
// deleted (ids are never reused).
func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o, err := Open(Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := o.Append(ctx, []bridge.Message{msg("r", "t", fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Delete(ctx, "r", []uint64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := o.Append(ctx, []bridge.Message{msg("gone", "t", "x")}); err != nil {
		t.Fatal(err)
	}
	if err := o.Delete(ctx, "gone", []uint64{1}); err != nil {
		t.Fatal(err)
	}
	want := o.Usage("r")
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Append(ctx, []bridge.Message{msg("r", "t", "late")}); !errors.Is(err, bridge.ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}

	o = openTest(t, dir, SyncAlways)
	if got := o.Usage("r"); got != want {
		t.Fatalf("usage after reopen = %+v, want %+v", got, want)
	}
	got, err := o.Read("r", 0, 10)
	if err != nil || len(got) != 3 || got[0].Seq != 3 || string(got[2].Payload) != "4" {
		t.Fatalf("read after reopen = %+v, %v", got, err)
	}
	ms := []bridge.Message{msg("r", "t", "5"), msg("gone", "t", "y")}
	if err := o.Append(ctx, ms); err != nil {
		t.Fatal(err)
	}
	if ms[0].Seq != 6 || ms[1].Seq != 2 {
		t.Fatalf("seqs after reopen = %d, %d; want 6, 2", ms[0].Seq, ms[1].Seq)
	}
}

func TestDeadLetterReplay(t *testing.T) {
	ctx := context.Background()
	o := openTest(t, t.TempDir(), SyncAlways)
	ms := []bridge.Message{msg("r", "t", "a"), msg("r", "t", "b"), msg("r", "t", "c")}
	if err := o.Append(ctx, ms); err != nil {
		t.Fatal(err)
	}
	dl := []bridge.DeadLetter{{Message: ms[1], Reason: "http 400", Attempts: 1, Failed: time.Unix(1, 0)}}
	if err := o.DeadLetter(ctx, "r", dl); err != nil {
		t.Fatal(err)
	}
	if u := o.Usage("r"); u.Messages != 2 {
		t.Fatalf("usage = %+v", u)
	}
	dead, err := o.DeadLetters("r", 0, 10)
	if err != nil || len(dead) != 1 || dead[0].Seq != 2 || dead[0].Reason != "http 400" || string(dead[0].Payload) != "b" {
		t.Fatalf("dead = %+v, %v", dead, err)
	}
	n, err := o.Replay(ctx, "r", []uint64{2, 77})
	if err != nil || n != 1 {
		t.Fatalf("replay = %d, %v", n, err)
	}
	got, _ := o.Read("r", 0, 10)
	if len(got) != 3 || got[2].Seq != 4 || got[2].ID != "r-2" || string(got[2].Payload) != "b" {
		t.Fatalf("after replay = %+v", got)
	}
	if dead, _ := o.DeadLetters("r", 0, 10); len(dead) != 0 {
		t.Fatalf("dead after replay = %+v", dead)
	}
	// Delete: by seq, then all.
	dl = []bridge.DeadLetter{{Message: got[0], Reason: "x"}, {Message: got[1], Reason: "y"}, {Message: got[2], Reason: "z"}}
	if err := o.DeadLetter(ctx, "r", dl); err != nil {
		t.Fatal(err)
	}
	if n, err := o.DeleteDeadLetters(ctx, "r", []uint64{got[0].Seq, 999}); err != nil || n != 1 {
		t.Fatalf("delete dead = %d, %v", n, err)
	}
	if n, err := o.DeleteDeadLetters(ctx, "r", nil); err != nil || n != 2 {
		t.Fatalf("delete all dead = %d, %v", n, err)
	}
	if dead, _ := o.DeadLetters("r", 0, 10); len(dead) != 0 || o.Usage("r").Messages != 0 {
		t.Fatalf("after deletes: dead %+v, usage %+v", dead, o.Usage("r"))
	}
}

func TestDropOldest(t *testing.T) {
	ctx := context.Background()
	o := openTest(t, t.TempDir(), SyncNone)
	for i := range 10 {
		if err := o.Append(ctx, []bridge.Message{msg("r", "t", string(bytes.Repeat([]byte{'x'}, 100))+fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	before := o.Usage("r")
	per := before.Bytes / 10
	n, err := o.DropOldest(ctx, "r", 2*per+1)
	if err != nil || n != 3 {
		t.Fatalf("drop = %d, %v; want 3", n, err)
	}
	got, _ := o.Read("r", 0, 1)
	if got[0].Seq != 4 {
		t.Fatalf("oldest after drop = %d", got[0].Seq)
	}
	if u := o.Usage("r"); u.Messages != 7 || u.Bytes != before.Bytes-3*per {
		t.Fatalf("usage = %+v (before %+v)", u, before)
	}
}

// TestGroupCommit: concurrent appends share fsyncs in "always" mode.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	o := openTest(t, t.TempDir(), SyncAlways)
	const writers, each = 32, 20
	concurrently(t, writers, each, func(w, i int) error {
		return o.Append(ctx, []bridge.Message{msg("r", "t", fmt.Sprint(w, i))})
	})
	if u := o.Usage("r"); u.Messages != writers*each {
		t.Fatalf("messages = %d", u.Messages)
	}
	if f := o.Fsyncs(); f == 0 || f >= writers*each {
		t.Fatalf("fsyncs = %d for %d appends: no group commit", f, writers*each)
	}
	got, _ := o.Read("r", 0, writers*each)
	for i, m := range got {
		if m.Seq != uint64(i+1) {
			t.Fatalf("seq %d at %d", m.Seq, i)
		}
	}
}

// TestSharedFsync: in "always" mode, appends and other writes to the
// store (the persistence hook's session queues) waiting at the same time
// share group commits and fsyncs: one fsync covers both kinds.
func TestSharedFsync(t *testing.T) {
	ctx := context.Background()
	o, st := openShared(t, t.TempDir(), SyncAlways)
	const writers, each = 32, 10
	// Half the writers append, half write as the persistence hook does.
	concurrently(t, 2*writers, each, func(w, i int) error {
		if w%2 == 0 {
			return o.Append(ctx, []bridge.Message{msg("r", "t", fmt.Sprint(w, i))})
		}
		return st.Update(ctx, true, func(tx *persistence.Txn) error {
			tx.Set(fmt.Appendf(nil, "q/test/%d/%d", w, i), []byte("ref"))
			return nil
		})
	})
	total := uint64(2 * writers * each)
	s := st.Stats()
	if s.Fsyncs == 0 || s.Fsyncs*4 > total || o.Fsyncs() != s.Fsyncs {
		t.Fatalf("%d fsyncs (outbox reports %d) for %d waiting writes: not shared", s.Fsyncs, o.Fsyncs(), total)
	}
	if u := o.Usage("r"); u.Messages != writers*each {
		t.Fatalf("usage = %+v", u)
	}
	t.Logf("%d writes, %d batches, %d fsyncs", total, s.Batches, s.Fsyncs)
}

// concurrently runs fn(w, i) for i in [0, each) on each of writers
// goroutines w at once, and waits for them; an error ends that writer.
func concurrently(t *testing.T, writers, each int, fn func(w, i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := fn(w, i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestSyncModes(t *testing.T) {
	for _, tc := range []struct {
		mode      SyncMode
		wantFsync bool // before Close
	}{
		{SyncAlways, true},
		{SyncNone, false},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			o := openTest(t, t.TempDir(), tc.mode)
			if err := o.Append(context.Background(), []bridge.Message{msg("r", "t", "x")}); err != nil {
				t.Fatal(err)
			}
			if got := o.Fsyncs() > 0; got != tc.wantFsync {
				t.Fatalf("fsynced = %v, want %v", got, tc.wantFsync)
			}
		})
	}
	t.Run("batch", func(t *testing.T) {
		o, err := Open(Config{Dir: t.TempDir(), Sync: SyncBatch, SyncInterval: 5 * time.Millisecond}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		if err := o.Append(context.Background(), []bridge.Message{msg("r", "t", "x")}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for o.Fsyncs() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("no fsync within 5s in batch mode")
			}
			pollStep()
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no dir", Config{}, "dir: must not be empty"},
		{"bad sync", Config{Dir: "x", Sync: "sometimes"}, `sync: must be one of always, batch, none, got "sometimes"`},
		{"tiny interval", Config{Dir: "x", SyncInterval: time.Microsecond}, "sync_interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WithDefaults().Validate()
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if err := (Config{Dir: "x"}).WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkOutboxAppendParallel(b *testing.B) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch} {
		b.Run(string(mode), func(b *testing.B) {
			o := openTest(b, b.TempDir(), mode)
			benchParallel(b, o.Fsyncs, func(ctx context.Context, ms []bridge.Message) error { return o.Append(ctx, ms) })
		})
	}
}

// BenchmarkAppendThenQueueParallel is a QoS 1 publish routed at least once
// while a persistent session subscribes, in "always" mode: each op appends
// to the outbox and then writes a body and a queue ref (as the bridge tap
// and then the persistence hook do before the PUBACK), waiting for each.
// "shared" keeps the outbox in the same store (one writer, one fsync per
// batch for both); "separate" in a store of its own, as Ferry did before.
func BenchmarkAppendThenQueueParallel(b *testing.B) {
	for _, shared := range []bool{true, false} {
		name := "separate"
		if shared {
			name = "shared"
		}
		b.Run(name, func(b *testing.B) {
			o, st := openShared(b, b.TempDir(), SyncAlways)
			fsyncs := func() uint64 { return st.Stats().Fsyncs }
			if !shared {
				var err error
				if o, err = Open(Config{Dir: b.TempDir(), Sync: SyncAlways}, nil); err != nil {
					b.Fatal(err)
				}
				defer o.Close()
				fsyncs = func() uint64 { return st.Stats().Fsyncs + o.Fsyncs() }
			}
			var seq atomic.Uint64
			benchParallel(b, fsyncs, func(ctx context.Context, ms []bridge.Message) error {
				if err := o.Append(ctx, ms); err != nil {
					return err
				}
				id := seq.Add(1)
				return st.Update(ctx, true, func(tx *persistence.Txn) error {
					tx.Set(binary.BigEndian.AppendUint64([]byte("p/"), id), ms[0].Payload)
					tx.Set(binary.BigEndian.AppendUint64([]byte("q/\x00\x03sub"), id), []byte("ref"))
					return nil
				})
			})
		})
	}
}

// benchParallel runs op with a 128-byte message from many goroutines at
// once, as publishers on a broker (group commit shares fsyncs among them),
// and reports fsyncs per op.
func benchParallel(b *testing.B, fsyncs func() uint64, op func(ctx context.Context, ms []bridge.Message) error) {
	payload := bytes.Repeat([]byte{'x'}, 128)
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		ms := make([]bridge.Message, 1)
		for pb.Next() {
			ms[0] = bridge.Message{Route: "bench", Topic: "devices/d1/telemetry", Payload: payload, QoS: 1}
			if err := op(ctx, ms); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(fsyncs())/float64(b.N), "fsyncs/op")
}
