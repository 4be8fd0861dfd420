package persistence

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/dgraph-io/ristretto/v2/z"
)

// SalvageReport says what Salvage copied.
type SalvageReport struct {
	// Entries is how many entries (all versions, deletions included) were
	// copied; Lost how many were seen but could not be read (a value
	// outside its value log).
	Entries, Lost uint64
	// Skipped names the files, or parts of files, that could not be read.
	Skipped []string
	// Keys is how many keys the new store holds.
	Keys int
}

// Salvage copies whatever can be read from the store in src into a new
// store in dst, which must not exist or be empty; src is only read. It
// reads every table file (those the MANIFEST lists; all of them if the
// MANIFEST is missing or cut short), each up to its first unreadable
// block, and every write-ahead log up to its first damaged record, and
// keeps each entry's version, so the newest readable version of each key
// wins and deletions stay deleted. Values in value logs are copied where
// the pointer to them is readable. Tables the MANIFEST no longer listed
// can hold versions older than a deletion that was then compacted away:
// such keys come back (a message delivered again, never one lost). The new
// store is then opened and closed once as Ferry opens it.
func Salvage(src, dst string, logger *slog.Logger) (*SalvageReport, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if ents, err := os.ReadDir(dst); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("persistence: salvage: %s is not empty: choose a new dir", dst)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("persistence: salvage: %w", err)
	}
	if abs1, abs2 := absPath(src), absPath(dst); abs1 == abs2 {
		return nil, fmt.Errorf("persistence: salvage: source and destination are both %s", abs1)
	}
	srcOpts := badgerOptions(Config{Dir: src}.WithDefaults())
	dstOpts := badgerOptions(Config{Dir: dst}.WithDefaults()).WithLogger(badgerLogger{logger})
	db, err := badger.OpenManaged(dstOpts)
	if err != nil {
		return nil, fmt.Errorf("persistence: salvage: create %s: %w", dst, err)
	}
	sv := &salvager{src: src, wb: db.NewManagedWriteBatch(), rep: &SalvageReport{}, vlogs: map[uint32]*os.File{}}
	err = sv.run(srcOpts)
	if err == nil {
		err = sv.wb.Flush()
	} else {
		sv.wb.Cancel()
	}
	for _, f := range sv.vlogs {
		_ = f.Close()
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return sv.rep, fmt.Errorf("persistence: salvage %s into %s: %w", src, dst, err)
	}
	st, err := Open(Config{Dir: dst}, logger)
	if err != nil {
		return sv.rep, fmt.Errorf("persistence: salvage: the new store does not open: %w", err)
	}
	err = st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			sv.rep.Keys++
		}
		return nil
	})
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	return sv.rep, err
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return filepath.Clean(a)
	}
	return p
}

type salvager struct {
	src   string
	wb    *badger.WriteBatch
	rep   *SalvageReport
	vlogs map[uint32]*os.File
}

func (sv *salvager) skip(format string, args ...any) {
	sv.rep.Skipped = append(sv.rep.Skipped, fmt.Sprintf(format, args...))
}

func (sv *salvager) run(opts badger.Options) error {
	ents, err := os.ReadDir(sv.src)
	if err != nil {
		return err
	}
	onDisk := map[uint64]bool{}
	var logs []string
	for _, e := range ents {
		if id, ok := table.ParseFileID(e.Name()); ok && strings.HasSuffix(e.Name(), ".sst") {
			onDisk[id] = true
		} else if strings.HasSuffix(e.Name(), ".mem") {
			logs = append(logs, e.Name())
		}
	}
	slices.Sort(logs)
	mf, complete, err := replayManifest(opts)
	useAll := err != nil || complete != ""
	if useAll {
		sv.skip("MANIFEST unreadable or cut short: every table file read")
	}
	for id := range onDisk {
		tm, listed := mf.Tables[id]
		if !listed && !useAll {
			continue
		}
		// Only the MANIFEST says how a table is compressed: for one it
		// does not list, try what this Ferry writes first.
		tries := []options.CompressionType{tm.Compression}
		if !listed {
			tries = []options.CompressionType{opts.Compression, options.None, options.ZSTD}
		}
		name := table.NewFilename(id, sv.src)
		for i, c := range tries {
			last := i == len(tries)-1
			ok, err := sv.table(name, c, last)
			if err != nil {
				return err
			}
			if ok {
				break
			}
		}
	}
	for _, name := range logs {
		if err := sv.wal(filepath.Join(sv.src, name)); err != nil {
			return err
		}
	}
	return nil
}

// table copies a table's entries up to its first unreadable block. With
// compression c its first block does not even decode: ok is false, and
// nothing was copied; the failure is reported only if last.
func (sv *salvager) table(name string, c options.CompressionType, last bool) (ok bool, err error) {
	base := filepath.Base(name)
	mf, err := z.OpenMmapFile(name, os.O_RDONLY, 0)
	if err != nil {
		sv.skip("%s: %v", base, err)
		return true, nil
	}
	defer func() { _ = mf.Close(-1) }()
	var n uint64
	defer func() {
		if p := recover(); p != nil {
			ok, err = n > 0, nil
			if ok || last {
				sv.skip("%s: unreadable after %d entries (%s)", base, n, firstLine(fmt.Sprint(p)))
			}
		}
	}()
	if err := checkTable(name); err != nil {
		sv.skip("%s: %v", base, err)
		return true, nil
	}
	t, err := table.OpenTable(mf, table.Options{Compression: c, BlockSize: 4 << 10})
	if err != nil {
		if last {
			sv.skip("%s: %v", base, err)
		}
		return false, nil
	}
	it := t.NewIterator(0) // a second reference: its Close never deletes the file
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		v := it.Value()
		if err := sv.add(it.Key(), v.Meta, v.UserMeta, v.ExpiresAt, v.Value); err != nil {
			return true, err
		}
		n++
	}
	if want := uint64(t.KeyCount()); n != want {
		if n == 0 && !last {
			return false, nil
		}
		sv.skip("%s: %d of %d entries readable", base, n, want)
	}
	return true, nil
}

// firstLine keeps Badger's panic messages (which dump whole indexes) short.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// wal copies the complete transactions of a write-ahead log up to its
// first damaged record.
func (sv *salvager) wal(name string) error {
	f, err := os.Open(name)
	if err != nil {
		sv.skip("%s: %v", filepath.Base(name), err)
		return nil
	}
	defer f.Close()
	var txn []logEntry
	var addErr error
	ls, err := walkLog(f, true, func(e logEntry) {
		if addErr != nil || e.meta&metaFinTxn != 0 {
			if e.meta&metaFinTxn != 0 {
				for _, x := range txn {
					if addErr == nil {
						addErr = sv.add(x.key, x.meta&^metaTxn, x.userMeta, x.expiresAt, x.value)
					}
				}
				txn = txn[:0]
			}
			return
		}
		e.key, e.value = bytes.Clone(e.key), bytes.Clone(e.value)
		txn = append(txn, e)
	})
	if err != nil {
		return err
	}
	if addErr != nil {
		return addErr
	}
	if ls.damage != "" {
		sv.skip("%s: %s", filepath.Base(name), ls.damage)
	}
	return nil
}

// add writes one entry at its version; a value pointer is resolved in
// the source's value log.
func (sv *salvager) add(key []byte, meta, userMeta byte, expiresAt uint64, value []byte) error {
	if len(key) <= 8 || bytes.HasPrefix(key, []byte("!badger!")) {
		return nil
	}
	ts, user := y.ParseTs(key), y.ParseKey(key)
	if meta&1 != 0 { // bitDelete
		sv.rep.Entries++
		return sv.wb.DeleteAt(bytes.Clone(user), ts)
	}
	if meta&metaValuePointer != 0 {
		p, ok := decodeValuePtr(value)
		var v []byte
		var err error
		if ok {
			v, err = sv.value(p)
		}
		if !ok || err != nil {
			sv.rep.Lost++
			return nil
		}
		value = v
	}
	e := badger.NewEntry(bytes.Clone(user), bytes.Clone(value)).WithMeta(userMeta)
	e.ExpiresAt = expiresAt
	sv.rep.Entries++
	return sv.wb.SetEntryAt(e, ts)
}

// value reads the value a pointer points at.
func (sv *salvager) value(p valuePtr) ([]byte, error) {
	f, ok := sv.vlogs[p.fid]
	if !ok {
		var err error
		if f, err = os.Open(filepath.Join(sv.src, fmt.Sprintf("%06d.vlog", p.fid))); err != nil {
			return nil, err
		}
		sv.vlogs[p.fid] = f
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	v, err := readValueAt(f, fi.Size(), p)
	return bytes.Clone(v), err
}
