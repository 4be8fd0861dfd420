package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/persistence"
)

// TestStoreVerifyAndSalvage: verify reports a store whose MANIFEST was
// deleted (exit 1, naming the file); salvage copies all of its data into
// a new dir that Ferry opens; verify then finds that dir sound.
func TestStoreVerifyAndSalvage(t *testing.T) {
	dir := t.TempDir()
	st, err := persistence.Open(persistence.Config{Dir: dir, Sync: persistence.SyncAlways}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := range 200 {
		k, v := fmt.Sprintf("o/test/%03d", i), strings.Repeat("x", i)
		want[k] = v
		if err := st.Update(context.Background(), true, func(tx *persistence.Txn) error {
			tx.Set([]byte(k), []byte(v))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	var out, errb bytes.Buffer
	// While a broker has the dir open, its files change under the reader.
	if code := run([]string{"store", "verify", dir}, nil, nil, &out, &errb); code != exitDamaged || !strings.Contains(errb.String(), "locked") {
		t.Fatalf("verify of a store in use: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"store", "verify", dir}, nil, nil, &out, &errb); code != 0 {
		t.Fatalf("verify of a sound store: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if err := os.Remove(filepath.Join(dir, badger.ManifestFilename)); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"store", "verify", dir}, nil, nil, &out, &errb); code != exitDamaged || !strings.Contains(out.String(), "MANIFEST: missing") {
		t.Fatalf("verify of a store without MANIFEST: exit %d\n%s%s", code, out.String(), errb.String())
	}

	salvaged := filepath.Join(t.TempDir(), "new")
	out.Reset()
	if code := run([]string{"store", "salvage", dir, salvaged}, nil, nil, &out, &errb); code != 0 {
		t.Fatalf("salvage: exit %d\n%s%s", code, out.String(), errb.String())
	}
	t.Log(out.String())
	if _, err := os.Stat(filepath.Join(dir, badger.ManifestFilename)); !os.IsNotExist(err) {
		t.Fatalf("salvage changed the source dir: %v", err)
	}
	out.Reset()
	if code := run([]string{"store", "verify", salvaged}, nil, nil, &out, &errb); code != 0 {
		t.Fatalf("verify of the salvaged store: exit %d\n%s%s", code, out.String(), errb.String())
	}
	st, err = persistence.Open(persistence.Config{Dir: salvaged}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := 0
	if err := st.Update(context.Background(), false, func(tx *persistence.Txn) error {
		for k, v := range want {
			if val, ok, err := tx.Get([]byte(k)); err != nil {
				return err
			} else if ok && string(val) == v {
				got++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got != len(want) {
		t.Fatalf("salvaged %d of %d values", got, len(want))
	}
	if code := run([]string{"store", "salvage", dir, salvaged}, nil, nil, &out, &errb); code != exitDamaged {
		t.Fatalf("salvage into a dir that is not empty: exit %d", code)
	}
}
