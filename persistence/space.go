package persistence

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// spaceCheckInterval is how often the store reads the free space of its
// filesystem (one statfs call).
const spaceCheckInterval = 250 * time.Millisecond

// spaceFresh is how old the free-space reading may be when a write is
// admitted: between two ticks of spaceCheckInterval alone, a fast
// publisher wrote 4 MiB past a 10 MiB limit on a loaded machine and ate
// the room Badger needs for its flushes and compactions.
const spaceFresh = 5 * time.Millisecond

// Why Badger crashed on a full disk (issue 12): it writes its write-ahead
// log (.mem), value log (.vlog) and every new table (table.CreateTable)
// through memory-mapped files that it first extends with ftruncate, which
// allocates nothing. The blocks are allocated when a page of the mapping
// is first written; on a full filesystem that fails and the kernel sends
// SIGBUS, which no Go code can turn into an error on Badger's goroutines.
// So space must be there before Badger writes: the store stops taking new
// messages while less than MinFreeSpace is free, which leaves room for
// Badger to flush every memtable and compact level 0 (the writes that
// keep going, sessions, packet ids and deletions, are small), and Open
// refuses a dir whose write-ahead logs cannot be flushed into the space
// that is left.

// minFreeSpace is Config.MinFreeSpace with its default; 0 means disabled.
func (c Config) minFreeSpace() int64 {
	switch {
	case c.MinFreeSpace < 0:
		return 0
	case c.MinFreeSpace > 0:
		return c.MinFreeSpace
	}
	// Flushing every memtable writes about one memtable each; a level 0
	// compaction rewrites up to NumLevelZeroTables tables (Badger's
	// default, 5) plus what overlaps them in level 1 before it deletes
	// its inputs.
	return int64(numMemtables+badgerOptions(c).NumLevelZeroTables+2) * c.memTableSize()
}

// freeSpace returns the bytes an unprivileged process may still write in
// dir's filesystem.
func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// criticalSpace is the free space below which every write is refused,
// not only new messages: what Badger needs to finish and flush the
// memtable it is writing, two memtables (or MinFreeSpace if smaller).
func (c Config) criticalSpace() int64 {
	return min(c.minFreeSpace(), 2*c.memTableSize())
}

// checkSpace reads the free space and switches the store into or out of
// its low-space and critical states, logging each switch once.
func (s *Store) checkSpace() {
	min := s.minFree
	if min == 0 {
		return
	}
	free, err := freeSpace(s.cfg.Dir)
	s.spaceCheckedAt.Store(time.Now().UnixNano())
	if err != nil {
		return // leave the state as it is: nothing better is known
	}
	s.freeBytes.Store(free)
	if crit := free < s.critical; crit != s.spaceCritical.Load() {
		s.spaceCritical.Store(crit)
		if crit {
			s.log.Error("storage: disk full: every write is refused until space is freed (sessions, acknowledgements and deletions too)",
				"dir", s.cfg.Dir, "free_bytes", free, "critical_bytes", s.critical)
		}
	}
	// Leaving the state takes a memtable more than entering it: Badger's
	// flushes and compactions free space right after the limit is hit,
	// and clients, /readyz and the log should not flap around it.
	low := free < min
	if s.spaceLow.Load() {
		low = free < min+s.cfg.memTableSize()
	}
	if low == s.spaceLow.Load() {
		return
	}
	s.spaceLow.Store(low)
	if low {
		s.log.Warn("storage: disk almost full: new QoS 1/2 messages that would be stored are refused (MQTT 5: PUBACK 0x97, MQTT 3: no PUBACK) until space is freed",
			"dir", s.cfg.Dir, "free_bytes", free, "min_free_space", min)
	} else {
		s.log.Info("storage: disk space is back: taking new messages again", "dir", s.cfg.Dir, "free_bytes", free, "min_free_space", min)
	}
}

// spaceLoop runs checkSpace until Close.
func (s *Store) spaceLoop() {
	defer s.wg.Done()
	t := time.NewTicker(spaceCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.spaceMu.Lock()
			s.checkSpace()
			s.spaceMu.Unlock()
		}
	}
}

// refreshSpace reads the free space again if the last reading is older
// than spaceFresh (one statfs), unless another goroutine is reading it.
func (s *Store) refreshSpace() {
	if s.minFree == 0 || time.Now().UnixNano()-s.spaceCheckedAt.Load() < int64(spaceFresh) {
		return
	}
	if s.spaceMu.TryLock() {
		s.checkSpace()
		s.spaceMu.Unlock()
	}
}

// Admit returns nil when the store takes new data, or an error wrapping
// ErrDiskFull (ErrClosed after Close) that says how much space is left.
// Callers about to store a new message (the hook's OnRoute, the bridge
// outbox's append) refuse it on error, so that the publisher keeps it
// (backpressure); each such error counts in Stats().DiskFullRefusals.
func (s *Store) Admit() error {
	if s.closed.Load() {
		return ErrClosed
	}
	s.refreshSpace()
	if !s.spaceLow.Load() {
		return nil
	}
	s.diskRefusals.Add(1)
	return s.spaceError()
}

func (s *Store) spaceError() error {
	return fmt.Errorf("%w: %d bytes free in %s, below storage.min_free_space (%d)", ErrDiskFull, s.freeBytes.Load(), s.cfg.Dir, s.minFree)
}

// checkOpenSpace refuses to open a store without the space Badger writes
// into at once: it flushes the write-ahead logs left by a crash into
// tables and creates a new log, through memory maps, so that on a full disk
// it would be killed by SIGBUS. The error says how much is needed. With
// the limit disabled (MinFreeSpace -1) nothing is checked.
func checkOpenSpace(cfg Config) error {
	if cfg.minFreeSpace() == 0 {
		return nil
	}
	mems, _ := filepath.Glob(filepath.Join(cfg.Dir, "*.mem"))
	need := min(cfg.memTableSize(), cfg.minFreeSpace())
	for _, m := range mems {
		if ls, err := scanLog(m, true); err == nil {
			need += ls.end // a table holds about what its log held
		}
	}
	free, err := freeSpace(cfg.Dir)
	if err != nil || free >= need {
		return nil
	}
	what := "a new write-ahead log"
	if len(mems) > 0 {
		what = "the write-ahead logs " + baseNames(mems) + " into tables, and a new log"
	}
	return fmt.Errorf("%w: %s: opening the store writes %s, about %d bytes, but only %d bytes are free: "+
		"free some space on that filesystem and start again; nothing was changed", ErrDiskFull, cfg.Dir, what, need, free)
}

func baseNames(paths []string) string {
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = filepath.Base(p)
	}
	return strings.Join(names, ", ")
}

// admitLocked refuses a publish that would store a message (a queue ref
// for a persistent session, or a persistent publisher's QoS 2 state) while
// the disk is almost full: MQTT 5 publishers get PUBACK/PUBREC 0x97 (quota
// exceeded), MQTT 3 publishers no acknowledgement, so they resend it later,
// as for a full bridge outbox. Messages that would not be stored pass, and
// so do those of inline clients: mochi gives them no acknowledgement to
// withhold and drops a refused one silently, so the broker's bridge ingress
// checks Admit itself before it publishes (its backend keeps the message).
func (h *Hook) admitLocked(cl *mqtt.Client, pk *packets.Packet, targets map[string]packets.Subscription, maxQos byte) error {
	if cl.Net.Inline {
		return nil
	}
	h.st.refreshSpace()
	if !h.st.spaceLow.Load() {
		return nil
	}
	stores := pk.FixedHeader.Qos == 2 && h.sessions[cl.ID] != nil
	for id, sub := range targets {
		if stores {
			break
		}
		stores = !(sub.NoLocal && id == cl.ID) && min(pk.FixedHeader.Qos, sub.Qos, maxQos) > 0 && h.sessions[id] != nil
	}
	if !stores || h.st.Admit() == nil {
		return nil
	}
	if cl.Properties.ProtocolVersion == 5 {
		return packets.ErrQuotaExceeded
	}
	return packets.ErrRejectPacket
}
