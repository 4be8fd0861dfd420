package persistence

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/table"
)

// checkTables reads the footer of every table file the MANIFEST in dir
// refers to and rejects one whose lengths point outside the file. Badger
// opens tables on background goroutines and panics on such a footer, which
// would kill the process with a stack trace instead of an error naming the
// file. Checksums are verified by Badger itself (OnTableRead).
//
// Table files the MANIFEST does not list are skipped: a crash while Badger
// writes a table (a memtable flush, a compaction) leaves one, often empty,
// and Badger deletes it when it opens. Without a readable MANIFEST nothing
// is checked: Badger reports that itself.
func checkTables(opts badger.Options) error {
	f, err := os.Open(filepath.Join(opts.Dir, badger.ManifestFilename))
	if err != nil {
		return nil
	}
	mf, _, err := badger.ReplayManifestFile(f, opts.ExternalMagicVersion, opts)
	_ = f.Close()
	if err != nil {
		return nil
	}
	for id := range mf.Tables {
		name := table.NewFilename(id, opts.Dir)
		if err := checkTable(name); err != nil {
			return fmt.Errorf("table %s: %w", filepath.Base(name), err)
		}
	}
	return nil
}

func checkTable(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	u32At := func(off int64) (int64, error) {
		if off < 0 || off+4 > size {
			return 0, fmt.Errorf("footer offset %d outside the file (%d bytes)", off, size)
		}
		var b [4]byte
		if _, err := f.ReadAt(b[:], off); err != nil && err != io.EOF {
			return 0, err
		}
		return int64(binary.BigEndian.Uint32(b[:])), nil
	}
	pos := size - 4
	checksumLen, err := u32At(pos)
	if err != nil {
		return err
	}
	pos -= checksumLen + 4
	indexLen, err := u32At(pos)
	if err != nil {
		return fmt.Errorf("checksum length %d: %w", checksumLen, err)
	}
	if indexLen > pos {
		return fmt.Errorf("index length %d exceeds the %d bytes before it", indexLen, pos)
	}
	return nil
}
