package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
)

// stateFileName is Ferry's own file in the data dir, beside Badger's. It
// records the highest commit number known to be fsynced, so that a store
// whose write-ahead log or tables lost fsynced transactions (a damaged or
// deleted .mem or .sst, a truncated MANIFEST) is refused at start instead
// of opening with part of its data (Badger drops a damaged log's tail
// silently). Its presence also marks the dir as holding Ferry data.
//
// Every transaction of the writer sets keyCommit to the next commit
// number. After an fsync of the store, the writer hands the number it had
// reached to stateLoop, which writes it here and fsyncs this file, at most
// every stateInterval (10 ms). The file thus lags the store by about that
// and one fsync: it never claims more than is on disk, so a crash never
// makes a sound store look damaged, and the last ~10 ms of commits before
// a damage are not covered.
const stateFileName = "FERRY-STATE"

// The file holds two slots of stateSlotSize bytes, written alternately so
// that a torn write leaves the other intact: magic, generation, commit
// number (u64 BE each) and a CRC-32C of those 24 bytes.
const (
	stateMagic    = 0x4645525259535431 // "FERRYST1"
	stateSlotSize = 32
)

// errNoState means the dir has no state file (a new dir, or one written
// by a Ferry before this file existed).
var errNoState = errors.New("no state file")

type stateFile struct {
	f   *os.File
	gen uint64
}

// readState returns the commit number recorded in dir's state file.
func readState(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, errNoState
	}
	if err != nil {
		return 0, err
	}
	_, commit, ok := decodeState(b)
	if !ok {
		return 0, fmt.Errorf("neither of its two records is readable (%d bytes); deleting it starts without the check of acknowledged data it allows", len(b))
	}
	return commit, nil
}

// decodeState returns the valid slot with the highest generation.
func decodeState(b []byte) (gen, commit uint64, ok bool) {
	for off := 0; off+stateSlotSize <= len(b) && off < 2*stateSlotSize; off += stateSlotSize {
		s := b[off : off+stateSlotSize]
		if binary.BigEndian.Uint64(s) != stateMagic || crc32.Checksum(s[:24], castagnoli) != binary.BigEndian.Uint32(s[24:]) {
			continue
		}
		if g := binary.BigEndian.Uint64(s[8:]); !ok || g > gen {
			gen, commit, ok = g, binary.BigEndian.Uint64(s[16:]), true
		}
	}
	return gen, commit, ok
}

// openState opens (or creates) dir's state file for writing.
func openState(dir string) (*stateFile, error) {
	name := filepath.Join(dir, stateFileName)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	b := make([]byte, 2*stateSlotSize)
	n, _ := f.ReadAt(b, 0)
	gen, _, _ := decodeState(b[:n])
	if n == 0 {
		// A new file: make its directory entry durable, or a power cut
		// could leave a store without the file that guards it.
		if d, err := os.Open(dir); err == nil {
			err = d.Sync()
			_ = d.Close()
			if err != nil {
				_ = f.Close()
				return nil, fmt.Errorf("fsync %s: %w", dir, err)
			}
		}
	}
	return &stateFile{f: f, gen: gen}, nil
}

// record writes commit into the older slot and fsyncs the file.
func (s *stateFile) record(commit uint64) error {
	s.gen++
	var b [stateSlotSize]byte
	binary.BigEndian.PutUint64(b[0:], stateMagic)
	binary.BigEndian.PutUint64(b[8:], s.gen)
	binary.BigEndian.PutUint64(b[16:], commit)
	binary.BigEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	if _, err := s.f.WriteAt(b[:], int64(s.gen%2)*stateSlotSize); err != nil {
		return fmt.Errorf("write %s: %w", stateFileName, err)
	}
	// Crash before this Sync: the file keeps the previous number (or, if
	// the write tore, the other slot does): it only ever lags the store.
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", stateFileName, err)
	}
	return nil
}

func (s *stateFile) close() error { return s.f.Close() }
