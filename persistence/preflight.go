package persistence

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/dgraph-io/ristretto/v2/z"
)

// Damage is one thing wrong in a data dir.
type Damage struct {
	File    string // base name of the damaged file; "" for the store as a whole
	Problem string
}

func (d Damage) String() string {
	if d.File == "" {
		return d.Problem
	}
	return d.File + ": " + d.Problem
}

// Report is what Inspect found in a data dir.
type Report struct {
	Dir string
	// Empty: the dir holds no store yet (missing, or nothing written).
	Empty bool
	// Tables and Keys count the tables the MANIFEST lists and the entries
	// (all versions) read from them; Logs the .mem and .vlog files.
	Tables, Logs int
	Keys         uint64
	// Commit is the newest commit number found; Recorded the one the
	// state file holds as fsynced (0 without a state file).
	Commit, Recorded uint64
	// Notes are findings that are not damage, e.g. a crash's unfinished
	// write, which was never acknowledged.
	Notes  []string
	Damage []Damage
}

func (r *Report) damage(file, format string, args ...any) {
	r.Damage = append(r.Damage, Damage{File: file, Problem: fmt.Sprintf(format, args...)})
}

func (r *Report) note(file, format string, args ...any) {
	r.Notes = append(r.Notes, file+": "+fmt.Sprintf(format, args...))
}

// Err is nil when nothing is damaged. Otherwise it wraps ErrUnreadable,
// names the dir and every problem, and says what to do.
func (r *Report) Err() error {
	if len(r.Damage) == 0 {
		return nil
	}
	problems := make([]string, len(r.Damage))
	for i, d := range r.Damage {
		problems[i] = d.String()
	}
	return fmt.Errorf("%w: %s: %s. Ferry refused to start and changed nothing in the dir: "+
		"restore it from a backup, or copy what is readable into a new dir with `ferry store salvage %s NEWDIR` "+
		"and set storage.dir to NEWDIR (`ferry store verify %s` repeats this report)",
		ErrUnreadable, r.Dir, strings.Join(problems, "; "), r.Dir, r.Dir)
}

// Inspect reads the store in dir without changing any file and reports
// what is damaged: a missing or cut-short MANIFEST, tables that are
// missing or fail their checksums, write-ahead logs (.mem) and value logs
// (.vlog) with damage that Badger would silently cut off, values pointing
// outside their value log, and transactions recorded as fsynced that are
// no longer there. The dir must not be in use by a running Ferry. An
// error means the dir itself could not be read.
func Inspect(dir string) (*Report, error) {
	return inspect(badgerOptions(Config{Dir: dir}.WithDefaults()))
}

// inspect is Inspect with the options Open uses.
func inspect(opts badger.Options) (*Report, error) {
	dir := opts.Dir
	r := &Report{Dir: dir}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		r.Empty = true
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	if err := checkUnlocked(dir); err != nil {
		return nil, err
	}
	tables := map[uint64]int64{} // id → size
	var logs []string
	hasManifest := false
	withData := 0
	for _, e := range ents {
		name := e.Name()
		fi, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", filepath.Join(dir, name), err)
		}
		switch {
		case name == badger.ManifestFilename:
			hasManifest = true
		case strings.HasSuffix(name, ".sst"):
			if id, ok := table.ParseFileID(name); ok {
				tables[id] = fi.Size()
				if fi.Size() > 0 {
					withData++
				}
			}
		case strings.HasSuffix(name, ".mem"), strings.HasSuffix(name, ".vlog"):
			logs = append(logs, name)
			if fi.Size() > logHeaderSize {
				withData++
			}
		}
	}
	slices.Sort(logs)
	recorded, err := readState(dir)
	hasState := err == nil
	switch {
	case err == nil:
		r.Recorded = recorded
	case errors.Is(err, errNoState):
	default:
		hasState = true
		r.damage(stateFileName, "%v", err)
	}
	if !hasManifest {
		if withData > 0 || hasState {
			r.damage(badger.ManifestFilename, "missing, but the dir holds %d table and log files with data%s: Badger would start an empty store and delete the tables",
				withData, map[bool]string{true: " and Ferry's " + stateFileName, false: ""}[hasState])
		} else {
			r.Empty = true
		}
		return r, nil
	}
	mf, complete, err := replayManifest(opts)
	if err != nil {
		r.damage(badger.ManifestFilename, "unreadable: %v", err)
		return r, nil
	}
	var ptrs []valuePtr
	ids := make([]uint64, 0, len(mf.Tables))
	for id := range mf.Tables {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		name := table.NewFilename(id, dir)
		if _, ok := tables[id]; !ok {
			r.damage(filepath.Base(name), "listed in the MANIFEST but missing")
			continue
		}
		r.Tables++
		keys, commit, tp, err := inspectTable(name, mf.Tables[id].Compression, opts.BlockSize)
		r.Keys += keys
		r.Commit = max(r.Commit, commit)
		ptrs = append(ptrs, tp...)
		if err != nil {
			r.damage(filepath.Base(name), "%v", err)
		}
	}
	var orphans []string
	for id, size := range tables {
		if _, ok := mf.Tables[id]; !ok && size > 0 {
			orphans = append(orphans, table.IDToFilename(id))
		}
	}
	slices.Sort(orphans)
	if complete != "" && len(orphans) > 0 {
		r.damage(badger.ManifestFilename, "%s, and %d table files it does not list hold data (%s): it has been cut short, and Badger would delete them",
			complete, len(orphans), strings.Join(orphans, ", "))
	} else {
		if complete != "" {
			r.note(badger.ManifestFilename, "%s (an unfinished write): Badger drops it", complete)
		}
		for _, o := range orphans {
			r.note(o, "not listed in the MANIFEST (a table being written at a crash): Badger deletes it")
		}
	}
	for _, name := range logs {
		r.Logs++
		ls, err := scanLog(filepath.Join(dir, name), strings.HasSuffix(name, ".mem"))
		if err != nil {
			return nil, err
		}
		if ls.damage != "" {
			r.damage(name, "%s", ls.damage)
		}
		if ls.note != "" {
			r.note(name, "%s", ls.note)
		}
		r.Commit = max(r.Commit, ls.commit)
		ptrs = append(ptrs, ls.vptrs...)
	}
	checkValuePtrs(r, ptrs)
	if r.Recorded > r.Commit {
		r.damage("", "transactions up to commit %d were written to disk (%s says so) but the newest one readable is %d: "+
			"acknowledged data is missing (a damaged or deleted write-ahead log .mem, table .sst, or MANIFEST)", r.Recorded, stateFileName, r.Commit)
	}
	return r, nil
}

// checkUnlocked returns ErrLocked if a process holds Badger's lock on dir
// (a running Ferry, whose files change while they are read). Badger flocks
// the directory itself; this takes that lock for a moment and writes
// nothing.
func checkUnlocked(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return nil // os.ReadDir reports it
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s (is a ferry running with storage.dir %s? stop it first)", ErrLocked, dir, dir)
		}
		return nil
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// replayManifest reads the MANIFEST as Badger will. complete is "" if the
// whole file was read, or says where the readable part ends.
func replayManifest(opts badger.Options) (badger.Manifest, string, error) {
	name := filepath.Join(opts.Dir, badger.ManifestFilename)
	f, err := os.Open(name)
	if err != nil {
		return badger.Manifest{}, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return badger.Manifest{}, "", err
	}
	mf, end, err := replayManifestSafe(f, opts)
	if err != nil {
		return mf, "", err
	}
	if end < fi.Size() {
		return mf, fmt.Sprintf("its last %d of %d bytes are not a complete record", fi.Size()-end, fi.Size()), nil
	}
	return mf, "", nil
}

func replayManifestSafe(f *os.File, opts badger.Options) (mf badger.Manifest, end int64, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("badger panicked reading it: %v", p)
		}
	}()
	return badger.ReplayManifestFile(f, opts.ExternalMagicVersion, opts)
}

// inspectTable reads a whole table without Badger's DB: its footer, the
// checksum of every block, and every entry, from which it takes the
// newest commit number and the value pointers. Badger panics on some
// damaged tables (a nil block in VerifyChecksum's error path); that is
// turned into an error here.
func inspectTable(name string, compression options.CompressionType, blockSize int) (keys, commit uint64, ptrs []valuePtr, err error) {
	if err := checkTable(name); err != nil {
		return 0, 0, nil, err
	}
	mf, err := z.OpenMmapFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, 0, nil, err
	}
	defer func() { _ = mf.Close(-1) }()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("unreadable (badger: %v)", p)
		}
	}()
	t, err := table.OpenTable(mf, table.Options{ChkMode: options.NoVerification, Compression: compression, BlockSize: blockSize})
	if err != nil {
		return 0, 0, nil, fmt.Errorf("unreadable: %w", err)
	}
	if err := t.VerifyChecksum(); err != nil {
		return 0, 0, nil, fmt.Errorf("checksum: %w", err)
	}
	it := t.NewIterator(0) // a second reference: its Close never deletes the file
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		keys++
		v := it.Value()
		if v.Meta&metaValuePointer != 0 {
			if p, ok := decodeValuePtr(v.Value); ok {
				ptrs = append(ptrs, p)
			}
			continue
		}
		if k := it.Key(); len(v.Value) == 8 && v.Meta&1 == 0 && bytes.Equal(y.ParseKey(k), []byte(keyCommit)) {
			commit = max(commit, binary.BigEndian.Uint64(v.Value))
		}
	}
	if want := uint64(t.KeyCount()); keys != want {
		return keys, commit, ptrs, fmt.Errorf("only %d of its %d entries are readable", keys, want)
	}
	return keys, commit, ptrs, nil
}

// checkValuePtrs checks that every value pointer lands on a readable
// record of an existing .vlog file.
func checkValuePtrs(r *Report, ptrs []valuePtr) {
	byFile := map[uint32][]valuePtr{}
	for _, p := range ptrs {
		byFile[p.fid] = append(byFile[p.fid], p)
	}
	for fid, ps := range byFile {
		name := fmt.Sprintf("%06d.vlog", fid)
		f, err := os.Open(filepath.Join(r.Dir, name))
		if err != nil {
			r.damage(name, "%d values are kept in it, but it cannot be opened: %v", len(ps), err)
			continue
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			r.damage(name, "%v", err)
			continue
		}
		bad := 0
		var first error
		for _, p := range ps {
			if _, err := readValueAt(f, fi.Size(), p); err != nil {
				bad++
				if first == nil {
					first = err
				}
			}
		}
		_ = f.Close()
		if bad > 0 {
			r.damage(name, "%d of the %d values kept in it are unreadable (first: %v)", bad, len(ps), first)
		}
	}
}

// checkTable rejects a table whose footer lengths point outside the file.
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
