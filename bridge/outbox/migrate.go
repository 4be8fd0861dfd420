package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/persistence"
)

// LegacyDir is where Ferry kept the outbox before it moved into the
// persistence store: its own Badger database in <storage.dir>/outbox, with
// the same keys and records it has now.
const LegacyDir = "outbox"

// keyMigrating marks a migration in progress: its records may be partly
// copied. Its value is unused.
const keyMigrating = "m/outbox-migration"

// migrateChunk bounds the records copied per group commit.
const migrateChunk = 512

// migrate moves a legacy outbox (LegacyDir inside the store's directory)
// into the store: it copies every record unchanged (a route's m/seq/ takes
// the larger value), fsyncs the store, then renames the directory to
// outbox.migrated (outbox.migrated.N if that exists) and drops the marker.
//
// A crash at any point is safe: until the rename the legacy directory is
// whole and the marker makes the next start copy again (copying the same
// record twice writes the same value); after it, the records are on disk
// in the store and the next start only drops the marker. If the store already holds outbox records without the
// marker (the legacy directory was recreated, say by an older Ferry run
// after an upgrade), the two could hold different messages under the same
// seqs: migrate refuses and says what to do.
func (o *Outbox) migrate() error {
	dir := filepath.Join(o.st.Dir(), LegacyDir)
	_, err := os.Stat(filepath.Join(dir, badger.ManifestFilename))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("outbox: legacy outbox %s: %w", dir, err)
	}
	legacy := err == nil
	resuming, existing, err := o.migrationState()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if !legacy {
		if resuming { // a crash after the rename: the move is complete
			return o.setMarker(ctx, false)
		}
		return nil
	}
	if existing && !resuming {
		return fmt.Errorf("outbox: %s holds an outbox of an earlier Ferry, but the store %s already holds outbox records; "+
			"refusing to merge them (their seqs may clash): start an earlier Ferry on this data dir to deliver the old outbox, "+
			"or move %s aside to drop its messages", dir, o.st.Dir(), dir)
	}
	if !resuming {
		if err := o.setMarker(ctx, true); err != nil {
			return err
		}
		// The marker is on disk before any copied record can be: a start
		// after a power cut finds the marker with whatever copies survived.
		if err := o.st.Sync(); err != nil {
			return fmt.Errorf("outbox: migrate %s: %w", dir, err)
		}
	}
	n, err := o.copyLegacy(ctx, dir)
	if err != nil && n == 0 && !resuming {
		// Nothing copied: take the marker back, so the directory can be
		// moved aside without leaving a migration pending.
		_ = o.setMarker(ctx, false)
	}
	if err != nil {
		return fmt.Errorf("outbox: migrate %s into %s: %w; nothing was removed, the next start tries again", dir, o.st.Dir(), err)
	}
	// Crash before this Sync (in batch or none mode): a power loss may lose
	// copied records, but the legacy directory is still whole and the
	// marker makes the next start copy again. After it they are on disk.
	if err := o.st.Sync(); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", dir, err)
	}
	to, err := migratedName(dir)
	if err != nil {
		return err
	}
	if err := os.Rename(dir, to); err != nil {
		return fmt.Errorf("outbox: migrate: rename %s: %w", dir, err)
	}
	syncDir(o.st.Dir())
	if err := o.setMarker(ctx, false); err != nil {
		return err
	}
	o.log.Info("outbox: moved the outbox of an earlier Ferry into the store", "records", n, "from", dir, "renamed_to", to)
	return nil
}

// setMarker sets or deletes keyMigrating, durably.
func (o *Outbox) setMarker(ctx context.Context, on bool) error {
	err := o.st.Update(ctx, true, func(tx *persistence.Txn) error {
		if on {
			tx.Set([]byte(keyMigrating), []byte{1})
		} else {
			tx.Delete([]byte(keyMigrating))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: migration marker in %s: %w", o.st.Dir(), err)
	}
	return nil
}

// migrationState reports whether a migration was interrupted and whether
// the store holds outbox records.
func (o *Outbox) migrationState() (resuming, existing bool, err error) {
	err = o.st.View(func(txn *badger.Txn) error {
		_, gerr := txn.Get([]byte(keyMigrating))
		if gerr != nil && !errors.Is(gerr, badger.ErrKeyNotFound) {
			return gerr
		}
		resuming = gerr == nil
		opts := badger.IteratorOptions{}
		for _, p := range []string{"o/", "d/", "m/seq/"} {
			opts.Prefix = []byte(p)
			it := txn.NewIterator(opts)
			it.Rewind()
			existing = existing || it.Valid()
			it.Close()
		}
		return nil
	})
	if err != nil {
		return false, false, fmt.Errorf("outbox: read %s: %w", o.st.Dir(), err)
	}
	return resuming, existing, nil
}

type record struct{ key, val []byte }

// copyLegacy copies every record of the legacy outbox in dir into the
// store and reports how many.
func (o *Outbox) copyLegacy(ctx context.Context, dir string) (int, error) {
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithNumVersionsToKeep(1))
	if err != nil {
		return 0, err
	}
	defer func() { _ = db.Close() }()
	n := 0
	var chunk []record
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		err := o.st.Update(ctx, true, func(tx *persistence.Txn) error {
			for _, r := range chunk {
				if bytes.HasPrefix(r.key, []byte("m/seq/")) {
					cur, ok, err := tx.Get(r.key)
					if err != nil {
						return err
					}
					if ok && len(cur) == 8 && binary.BigEndian.Uint64(cur) > binary.BigEndian.Uint64(r.val) {
						continue
					}
				}
				tx.Set(r.key, r.val)
			}
			return nil
		})
		n += len(chunk)
		chunk = nil
		return err
	}
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.KeyCopy(nil)
			v, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			if err := checkLegacy(k, v); err != nil {
				return err
			}
			if chunk = append(chunk, record{k, v}); len(chunk) == migrateChunk {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	})
	return n, err
}

// checkLegacy accepts only the keys and values a legacy outbox holds, so a
// directory that is something else is not poured into the store.
func checkLegacy(k, v []byte) error {
	switch {
	case bytes.HasPrefix(k, []byte("m/seq/")):
		if len(v) != 8 {
			return fmt.Errorf("key %q: %w: seq is %d bytes", k, ErrCorrupt, len(v))
		}
		return nil
	case bytes.HasPrefix(k, []byte("o/")), bytes.HasPrefix(k, []byte("d/")):
		if len(k) < 2+1+1+8 || k[len(k)-9] != '/' {
			return fmt.Errorf("key %q: not an outbox key", k)
		}
		var err error
		if k[0] == 'o' {
			_, err = decodeMessage(v)
		} else {
			_, err = decodeDead(v)
		}
		if err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
		return nil
	}
	return fmt.Errorf("key %q: not an outbox key", k)
}

// migratedName returns the first of dir.migrated, dir.migrated.1, ... that
// does not exist.
func migratedName(dir string) (string, error) {
	for i := 0; i < 1000; i++ {
		name := dir + ".migrated"
		if i > 0 {
			name = fmt.Sprintf("%s.%d", name, i)
		}
		if _, err := os.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
	}
	return "", fmt.Errorf("outbox: migrate: %s.migrated to .999 all exist; remove old ones", dir)
}

// syncDir fsyncs a directory so a rename in it is durable; best effort.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		_ = f.Close()
	}
}
