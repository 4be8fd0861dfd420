package outbox

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/persistence"
)

// writeLegacy creates an outbox in the layout of earlier Ferry versions
// (its own Badger database in <dataDir>/outbox) holding route r's messages
// 5 and 7, dead letter 6 and last seq 9 (8 and 9 were delivered).
func writeLegacy(t *testing.T, dataDir string) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dataDir, LegacyDir)).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		for _, seq := range []uint64{5, 7} {
			m := msg("r", "t", "p"+string(rune('0'+seq)))
			m.ID = bridge.MessageID("r", seq)
			if err := txn.Set(seqKey('o', "r", seq), encodeMessage(&m)); err != nil {
				return err
			}
		}
		d := bridge.DeadLetter{Message: msg("r", "t", "dead"), Reason: "http 400", Attempts: 3, Failed: time.Unix(2, 0)}
		if err := txn.Set(seqKey('d', "r", 6), encodeDead(&d)); err != nil {
			return err
		}
		return txn.Set(seqMetaKey("r"), binary.BigEndian.AppendUint64(nil, 9))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateLegacy: an outbox of an earlier Ferry is moved into the store
// on the first start: records, dead letters and the seq counter survive,
// the directory is renamed, and the next start does nothing more.
func TestMigrateLegacy(t *testing.T) {
	dir := t.TempDir()
	writeLegacy(t, dir)
	check := func(o *Outbox) {
		t.Helper()
		got, err := o.Read("r", 0, 10)
		if err != nil || len(got) != 2 || got[0].Seq != 5 || got[1].Seq != 7 || string(got[1].Payload) != "p7" || got[1].ID != "r-7" {
			t.Fatalf("read = %+v, %v", got, err)
		}
		dead, err := o.DeadLetters("r", 0, 10)
		if err != nil || len(dead) != 1 || dead[0].Seq != 6 || dead[0].Reason != "http 400" {
			t.Fatalf("dead = %+v, %v", dead, err)
		}
		if u := o.Usage("r"); u.Messages != 2 {
			t.Fatalf("usage = %+v", u)
		}
	}
	func() {
		st, err := persistence.Open(persistence.Config{Dir: dir}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		o, err := New(st, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		check(o)
		ms := []bridge.Message{msg("r", "t", "new")}
		if err := o.Append(context.Background(), ms); err != nil || ms[0].Seq != 10 {
			t.Fatalf("append after migration: seq %d, %v", ms[0].Seq, err)
		}
	}()
	if _, err := os.Stat(filepath.Join(dir, LegacyDir)); !os.IsNotExist(err) {
		t.Fatalf("legacy dir still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, LegacyDir+".migrated", badger.ManifestFilename)); err != nil {
		t.Fatalf("legacy dir not renamed: %v", err)
	}
	o, st := openShared(t, dir, SyncAlways)
	got, _ := o.Read("r", 0, 10)
	if len(got) != 3 || got[2].Seq != 10 {
		t.Fatalf("after reopen: %+v", got)
	}
	found := false
	_ = st.View(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte(keyMigrating))
		found = err == nil
		return nil
	})
	if found {
		t.Fatal("migration marker left behind")
	}
}

// TestMigrateResumes: a migration interrupted after copying part of the
// records (the marker is set) is completed on the next start.
func TestMigrateResumes(t *testing.T) {
	dir := t.TempDir()
	writeLegacy(t, dir)
	st, err := persistence.Open(persistence.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := msg("r", "t", "p5")
	m.ID = "r-5"
	err = st.Update(context.Background(), true, func(tx *persistence.Txn) error {
		tx.Set([]byte(keyMigrating), []byte{1})
		tx.Set(seqKey('o', "r", 5), encodeMessage(&m))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	o, _ := openShared(t, dir, SyncNone)
	got, err := o.Read("r", 0, 10)
	if err != nil || len(got) != 2 || string(got[0].Payload) != "p5" {
		t.Fatalf("read = %+v, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, LegacyDir)); !os.IsNotExist(err) {
		t.Fatalf("legacy dir still there: %v", err)
	}
}

// TestMigrateMarkerAfterRename: a crash after the rename leaves only the
// marker, which the next start removes.
func TestMigrateMarkerAfterRename(t *testing.T) {
	dir := t.TempDir()
	st, err := persistence.Open(persistence.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := &Outbox{st: st}
	if err := o.setMarker(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := New(st, nil); err != nil {
		t.Fatal(err)
	}
	if resuming, _, err := o.migrationState(); err != nil || resuming {
		t.Fatalf("marker still set: %v %v", resuming, err)
	}
	_ = st.Close()
}

// TestMigrateRefusesMerge: a legacy directory next to a store that already
// holds outbox records (and no interrupted migration) is refused with what
// to do, and nothing is touched.
func TestMigrateRefusesMerge(t *testing.T) {
	dir := t.TempDir()
	func() {
		o, _ := openShared(t, dir, SyncNone)
		if err := o.Append(context.Background(), []bridge.Message{msg("r", "t", "x")}); err != nil {
			t.Fatal(err)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		if err := o.st.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	writeLegacy(t, dir)
	st, err := persistence.Open(persistence.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = New(st, nil)
	if err == nil || !strings.Contains(err.Error(), "refusing to merge") || !strings.Contains(err.Error(), "move") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, LegacyDir, badger.ManifestFilename)); err != nil {
		t.Fatalf("legacy dir touched: %v", err)
	}
}

// TestMigrateRefusesForeign: a LegacyDir that holds other keys is not
// poured into the store.
func TestMigrateRefusesForeign(t *testing.T) {
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, LegacyDir)).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("c/client"), []byte("x")) }); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	st, err := persistence.Open(persistence.Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := New(st, nil); err == nil || !strings.Contains(err.Error(), "not an outbox key") {
		t.Fatalf("err = %v", err)
	}
}
