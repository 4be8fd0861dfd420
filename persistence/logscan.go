package persistence

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"strconv"

	"github.com/dgraph-io/badger/v4/y"
)

// Badger's log format (value.go, memtable.go, structs.go of badger v4.9.6),
// read here without Badger: Badger's own reader stops at the first bad
// record and truncates the file there, silently dropping every record
// after it.
const (
	// logHeaderSize is the key-registry id and IV at the start of every
	// .mem and .vlog file.
	logHeaderSize = 20
	// maxEntryHeader is the longest varint-encoded entry header.
	maxEntryHeader = 22
	// maxLogKey is the longest key Badger accepts in a log entry.
	maxLogKey = 1 << 16
	// Entry meta bits.
	metaValuePointer byte = 1 << 1
	metaTxn          byte = 1 << 6
	metaFinTxn       byte = 1 << 7
)

// finTxnKey ends a transaction in a write-ahead log.
var finTxnKey = []byte("!badger!txn")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// logScan is what scanLog found in one .mem or .vlog file.
type logScan struct {
	size    int64
	end     int64 // after the last complete record (.vlog) or transaction (.mem)
	entries int   // complete records
	// damage, when not empty, says why the file is damaged: a record that
	// cannot be read is followed by more data, or the file ends inside a
	// record. A crash (kill -9) leaves at most one half-written record at
	// the end, followed by zeros, and never a shortened file.
	damage string
	// note describes a crash's leftovers after end, which Badger drops
	// (they were never acknowledged).
	note string
	// commit is the highest commit number (keyCommit) in a complete
	// transaction of a .mem file.
	commit uint64
	// vptrs are the value pointers in complete transactions of a .mem file.
	vptrs []valuePtr
}

// valuePtr is Badger's pointer to a value kept in a .vlog file.
type valuePtr struct{ fid, length, offset uint32 }

// decodeValuePtr reads Badger's in-memory layout of valuePointer (three
// native-endian uint32: Fid, Len, Offset).
func decodeValuePtr(b []byte) (valuePtr, bool) {
	if len(b) < 12 {
		return valuePtr{}, false
	}
	return valuePtr{
		fid:    binary.NativeEndian.Uint32(b[0:]),
		length: binary.NativeEndian.Uint32(b[4:]),
		offset: binary.NativeEndian.Uint32(b[8:]),
	}, true
}

// logEntry is one record of a log file; key and value are only valid
// until the next read.
type logEntry struct {
	meta, userMeta byte
	expiresAt      uint64
	key, value     []byte
	size           int64 // header, key, value and checksum
}

// errBadEntry means a record's header, lengths or checksum are wrong.
var errBadEntry = errors.New("bad record")

// logReader reads records of a Badger log file.
type logReader struct {
	r    *bufio.Reader
	hdr  [maxEntryHeader]byte
	buf  []byte
	crc  [4]byte
	size int64
}

// next reads the record at off. io.EOF: the file ends exactly at off;
// io.ErrUnexpectedEOF: it ends inside the record; errBadEntry: the record
// is garbage or zeros (claimed says how far it claims to extend, 0 if its
// header is garbage too).
func (lr *logReader) next(off int64) (e logEntry, claimed int64, err error) {
	n := 0
	readByte := func() (byte, error) {
		c, err := lr.r.ReadByte()
		if err == nil {
			lr.hdr[n] = c
			n++
		}
		return c, err
	}
	uvarint := func() (uint64, error) {
		var x uint64
		for s := uint(0); s < 64; s += 7 {
			if n >= maxEntryHeader {
				return 0, errBadEntry
			}
			c, err := readByte()
			if err != nil {
				return 0, err
			}
			if c < 0x80 {
				return x | uint64(c)<<s, nil
			}
			x |= uint64(c&0x7f) << s
		}
		return 0, errBadEntry
	}
	eof := func(err error) error {
		if err == io.EOF && n > 0 {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if e.meta, err = readByte(); err != nil {
		return e, 0, eof(err)
	}
	if e.userMeta, err = readByte(); err != nil {
		return e, 0, eof(err)
	}
	klen, err := uvarint()
	if err != nil {
		return e, 0, eof(err)
	}
	vlen, err := uvarint()
	if err != nil {
		return e, 0, eof(err)
	}
	if e.expiresAt, err = uvarint(); err != nil {
		return e, 0, eof(err)
	}
	if klen == 0 || klen > maxLogKey || vlen > uint64(lr.size) {
		return e, 0, errBadEntry
	}
	claimed = int64(n) + int64(klen) + int64(vlen) + 4
	if off+claimed > lr.size {
		return e, claimed, io.ErrUnexpectedEOF
	}
	if need := int(klen + vlen); cap(lr.buf) < need {
		lr.buf = make([]byte, need)
	}
	kv := lr.buf[:klen+vlen]
	if _, err := io.ReadFull(lr.r, kv); err != nil {
		return e, claimed, io.ErrUnexpectedEOF
	}
	if _, err := io.ReadFull(lr.r, lr.crc[:]); err != nil {
		return e, claimed, io.ErrUnexpectedEOF
	}
	sum := crc32.Update(crc32.Checksum(lr.hdr[:n], castagnoli), castagnoli, kv)
	if sum != binary.BigEndian.Uint32(lr.crc[:]) {
		return e, claimed, errBadEntry
	}
	e.key, e.value, e.size = kv[:klen], kv[klen:], claimed
	return e, claimed, nil
}

// scanLog reads a .mem (wal true) or .vlog file record by record, as
// Badger replays it, and tells a crash's torn tail from damage.
func scanLog(name string, wal bool) (logScan, error) {
	f, err := os.Open(name)
	if err != nil {
		return logScan{}, err
	}
	defer f.Close()
	return walkLog(f, wal, nil)
}

// walkLog is scanLog on an open file; fn, if not nil, is called with every
// record read before the end (key and value valid during the call only).
func walkLog(f *os.File, wal bool, fn func(logEntry)) (logScan, error) {
	name := f.Name()
	fi, err := f.Stat()
	if err != nil {
		return logScan{}, err
	}
	ls := logScan{size: fi.Size(), end: logHeaderSize}
	if ls.size == 0 {
		ls.end = 0
		return ls, nil // created, never sized: a .vlog Badger initialises, a .mem Open removes (removeEmptyWALs)
	}
	if ls.size < logHeaderSize {
		ls.damage = fmt.Sprintf("only %d bytes, shorter than the %d-byte file header: truncated", ls.size, logHeaderSize)
		return ls, nil
	}
	if _, err := f.Seek(logHeaderSize, io.SeekStart); err != nil {
		return ls, err
	}
	lr := &logReader{r: bufio.NewReaderSize(f, 1<<20), size: ls.size}
	off := int64(logHeaderSize)
	var txnTs uint64 // of the open transaction, 0 if none
	var txnCommit uint64
	var txnPtrs []valuePtr
	for {
		e, claimed, err := lr.next(off)
		if err == io.EOF {
			return ls, nil
		}
		if err == io.ErrUnexpectedEOF {
			ls.damage = fmt.Sprintf("ends inside the record at offset %d (file size %d): truncated", off, ls.size)
			return ls, nil
		}
		if err != nil && !errors.Is(err, errBadEntry) {
			return ls, fmt.Errorf("read %s at offset %d: %w", name, off, err)
		}
		if err == nil && wal {
			ts := y.ParseTs(e.key)
			switch {
			case e.meta&metaTxn != 0:
				if txnTs != 0 && ts != txnTs {
					err = errBadEntry // a transaction interrupted by another
					break
				}
				txnTs = ts
				if c, ok := commitValue(e); ok {
					txnCommit = max(txnCommit, c)
				}
				if e.meta&metaValuePointer != 0 {
					if p, ok := decodeValuePtr(e.value); ok {
						txnPtrs = append(txnPtrs, p)
					}
				}
			case e.meta&metaFinTxn != 0:
				fin, perr := strconv.ParseUint(string(e.value), 10, 64)
				if perr != nil || fin != txnTs || !bytes.Equal(y.ParseKey(e.key), finTxnKey) {
					err = errBadEntry
					break
				}
				txnTs = 0
				ls.commit = max(ls.commit, txnCommit)
				ls.vptrs = append(ls.vptrs, txnPtrs...)
				txnCommit, txnPtrs = 0, txnPtrs[:0]
				ls.end = off + e.size
			default:
				if txnTs != 0 {
					err = errBadEntry
					break
				}
				if c, ok := commitValue(e); ok {
					ls.commit = max(ls.commit, c)
				}
				ls.end = off + e.size
			}
		} else if err == nil {
			ls.end = off + e.size
		}
		if err == nil {
			ls.entries++
			off += e.size
			if fn != nil {
				fn(e)
			}
			continue
		}
		// A bad record: the end of what Badger replays. It is a crash's
		// torn tail only if nothing but zeros follows the furthest point
		// that record claims to reach.
		// How far a torn last record may reach.
		tornLimit := min(off+max(claimed, maxEntryHeader), ls.size)
		if _, err := f.Seek(tornLimit, io.SeekStart); err != nil {
			return ls, err
		}
		data, err := nonZeroAfter(f, tornLimit)
		if err != nil {
			return ls, fmt.Errorf("read %s: %w", name, err)
		}
		if data >= 0 {
			ls.damage = fmt.Sprintf("unreadable record at offset %d followed by more data (at offset %d); Badger would drop everything from offset %d on", off, data, ls.end)
		} else if tail, err := nonZeroIn(f, ls.end, tornLimit); err != nil {
			return ls, fmt.Errorf("read %s: %w", name, err)
		} else if tail {
			ls.note = fmt.Sprintf("the bytes from offset %d to %d are an unfinished write (a crash): never acknowledged, dropped", ls.end, tornLimit)
		}
		return ls, nil
	}
}

// nonZeroIn reports whether [from, to) of f holds a non-zero byte.
func nonZeroIn(f *os.File, from, to int64) (bool, error) {
	at, err := nonZeroAfter(io.NewSectionReader(f, from, to-from), from)
	return at >= 0, err
}

// nonZeroAfter returns the offset of the first non-zero byte read from r
// (which is at offset base), or -1 if there is none.
func nonZeroAfter(r io.Reader, base int64) (int64, error) {
	buf := make([]byte, 1<<20)
	off := base
	for {
		n, err := r.Read(buf)
		for i, c := range buf[:n] {
			if c != 0 {
				return off + int64(i), nil
			}
		}
		off += int64(n)
		if err == io.EOF {
			return -1, nil
		}
		if err != nil {
			return -1, err
		}
	}
}

// commitValue returns the commit number an entry of keyCommit holds.
func commitValue(e logEntry) (uint64, bool) {
	if len(e.key) < 8 || !bytes.Equal(e.key[:len(e.key)-8], []byte(keyCommit)) || e.meta&metaValuePointer != 0 || len(e.value) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(e.value), true
}

// readValueAt returns the value a pointer points at in the .vlog file f
// (of size size), after checking its record.
func readValueAt(f *os.File, size int64, p valuePtr) ([]byte, error) {
	if int64(p.offset)+int64(p.length) > size || p.length < 5 || p.length > math.MaxInt32 {
		return nil, fmt.Errorf("value at offset %d, %d bytes, beyond the file's %d bytes", p.offset, p.length, size)
	}
	lr := &logReader{r: bufio.NewReader(io.NewSectionReader(f, int64(p.offset), int64(p.length))), size: size}
	e, _, err := lr.next(int64(p.offset))
	if err != nil || e.size != int64(p.length) {
		return nil, fmt.Errorf("value at offset %d, %d bytes, is unreadable", p.offset, p.length)
	}
	return e.value, nil
}
