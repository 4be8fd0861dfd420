package persistence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

func getKey(t *testing.T, st *Store, key string) (string, bool) {
	t.Helper()
	var val string
	found := false
	err := st.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		val, found = string(v), true
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return val, found
}

// TestUpdate: a stage reads its own buffered writes, earlier commits and
// nothing of a stage that failed or panicked; other requests are unharmed.
func TestUpdate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, Config{Sync: SyncAlways})
	if err := st.Update(ctx, true, func(tx *Txn) error {
		tx.Set([]byte("x/a"), []byte("1"))
		tx.Set([]byte("x/b"), []byte("2"))
		if v, ok, err := tx.Get([]byte("x/a")); err != nil || !ok || string(v) != "1" {
			return fmt.Errorf("own write: %q %v %v", v, ok, err)
		}
		tx.Delete([]byte("x/b"))
		if _, ok, _ := tx.ValueSize([]byte("x/b")); ok {
			return errors.New("own delete not seen")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		stage func(tx *Txn) error
		want  string
	}{
		{"error", func(tx *Txn) error { tx.Set([]byte("x/bad"), []byte("no")); return boom }, "boom"},
		{"panic", func(tx *Txn) error { tx.Set([]byte("x/bad"), []byte("no")); panic("oops") }, "panicked: oops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Concurrent good writers, so the failing stage shares batches.
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := st.Update(ctx, true, func(tx *Txn) error {
						tx.Set(fmt.Appendf(nil, "x/%s/%d", tc.name, i), []byte("ok"))
						return nil
					})
					if err != nil {
						t.Error(err)
					}
				}()
			}
			err := st.Update(ctx, true, tc.stage)
			wg.Wait()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, ok := getKey(t, st, "x/bad"); ok {
				t.Fatal("a failed stage wrote")
			}
			for i := range 16 {
				if v, _ := getKey(t, st, fmt.Sprintf("x/%s/%d", tc.name, i)); v != "ok" {
					t.Fatalf("good write %d lost: %q", i, v)
				}
			}
		})
	}
	if v, ok := getKey(t, st, "x/a"); !ok || v != "1" {
		t.Fatalf("x/a = %q, %v", v, ok)
	}
	if _, ok := getKey(t, st, "x/b"); ok {
		t.Fatal("x/b not deleted")
	}
	var keys []string
	_ = st.Update(ctx, false, func(tx *Txn) error {
		tx.Scan([]byte("x/"), func(k []byte, _ int64) bool { keys = append(keys, string(k)); return len(keys) < 2 })
		return nil
	})
	if len(keys) != 2 || keys[0] != "x/a" {
		t.Fatalf("scan = %q", keys)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Update(ctx, true, func(*Txn) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("update after close: %v", err)
	}
	if err := st.View(func(*badger.Txn) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("view after close: %v", err)
	}
}

// TestUpdateSharesFsync: in "always" mode, Updates and the hook's writes
// waiting at the same time share group commits and fsyncs; Updates that
// do not ask for durability cause none.
func TestUpdateSharesFsync(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, Config{Sync: SyncAlways})
	const writers, each = 32, 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(2)
		go func() { // like the hook: a body and a queue ref
			defer wg.Done()
			for range each {
				b := st.newBatch()
				id := st.nextSeq()
				b.setRaw(b.messageKey(id), []byte("body"))
				b.setRaw(b.queueKey("sub", st.nextSeq()), []byte("ref"))
				if err := st.apply(b); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() { // like the outbox
			defer wg.Done()
			for i := range each {
				if err := st.Update(ctx, true, func(tx *Txn) error {
					tx.Set(fmt.Appendf(nil, "o/r/%d/%d", w, i), []byte("msg"))
					return nil
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	s := st.Stats()
	if total := uint64(2 * writers * each); s.Fsyncs == 0 || s.Fsyncs*4 > total {
		t.Fatalf("%d fsyncs for %d waiting writes: not shared", s.Fsyncs, total)
	}
	before := st.Stats().Fsyncs
	for i := range 10 {
		if err := st.Update(ctx, false, func(tx *Txn) error {
			tx.Delete(fmt.Appendf(nil, "o/r/0/%d", i))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if after := st.Stats().Fsyncs; after != before {
		t.Fatalf("non-durable updates fsynced: %d -> %d", before, after)
	}
}

func TestUpdateContext(t *testing.T) {
	st := openStore(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The queue has room, so a cancelled ctx does not stop the write.
	if err := st.Update(ctx, true, func(tx *Txn) error { tx.Set([]byte("x/1"), nil); return nil }); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecoder: the exported decoder never panics, and what it reads
// re-encodes to a record that reads the same.
func FuzzDecoder(f *testing.F) {
	e := NewEncoder(nil)
	e.Header(1, 9)
	e.Byte(3)
	e.Varint(-5)
	e.Str("topic")
	e.Bytes([]byte{0, 1})
	e.Uvarint(1 << 40)
	f.Add(e.Record())
	f.Add([]byte{1, 9, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder(b)
		d.Header(1, 9)
		c, v, s, p, u := d.Byte(), d.Varint(), d.Str(), d.Bytes(), d.Uvarint()
		if d.End() != nil {
			return
		}
		e := NewEncoder(nil)
		e.Header(1, 9)
		e.Byte(c)
		e.Varint(v)
		e.Str(s)
		e.Bytes(p)
		e.Uvarint(u)
		d = NewDecoder(e.Record())
		d.Header(1, 9)
		c2, v2, s2, p2, u2 := d.Byte(), d.Varint(), d.Str(), d.Bytes(), d.Uvarint()
		if err := d.End(); err != nil || c2 != c || v2 != v || s2 != s || string(p2) != string(p) || u2 != u {
			t.Fatalf("round trip of %x: %v", b, err)
		}
	})
}
