package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
)

func openTest(t testing.TB, dir string, mode SyncMode) *Outbox {
	t.Helper()
	o, err := Open(Config{Dir: dir, Sync: mode}, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = o.Close() })
	return o
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
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := o.Append(ctx, []bridge.Message{msg("r", "t", fmt.Sprint(w, i))}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
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
		{"bad sync", Config{Dir: "x", Sync: "sometimes"}, `sync: "sometimes"`},
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
			payload := bytes.Repeat([]byte{'x'}, 128)
			// Many publishers at once, as on a broker: group commit shares
			// fsyncs among them.
			b.SetParallelism(32)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				ms := make([]bridge.Message, 1)
				for pb.Next() {
					ms[0] = bridge.Message{Route: "bench", Topic: "devices/d1/telemetry", Payload: payload, QoS: 1}
					if err := o.Append(ctx, ms); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(o.Fsyncs())/float64(b.N), "fsyncs/op")
		})
	}
}
