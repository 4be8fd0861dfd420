package persistence

import (
	"errors"
	"fmt"
	"time"
)

// Sync modes for Config.Sync.
const (
	// SyncAlways fsyncs every batch before any caller waiting on it is
	// released: a QoS 1/2 PUBLISH is acknowledged only once its records are
	// on disk.
	SyncAlways = "always"
	// SyncBatch commits every batch at once and fsyncs at most every
	// SyncInterval: a crash of the machine (not only of the process) can lose
	// up to SyncInterval of acknowledged writes.
	SyncBatch = "batch"
	// SyncNone never fsyncs explicitly; the operating system decides when
	// data reaches the disk. A process crash loses nothing committed, a
	// power loss can lose anything not yet written back by the OS.
	SyncNone = "none"
)

// Defaults and limits of Config.
const (
	// DefaultSync is the sync mode used when Config.Sync is empty.
	DefaultSync = SyncBatch
	// DefaultSyncInterval is the fsync period of SyncBatch.
	DefaultSyncInterval = 100 * time.Millisecond
	// DefaultGCInterval is the period of Badger value-log garbage collection.
	DefaultGCInterval = 5 * time.Minute
	// DefaultGCDiscardRatio is the share of stale data in a value-log file
	// above which garbage collection rewrites it.
	DefaultGCDiscardRatio = 0.5
	// MinSyncInterval and MaxSyncInterval bound Config.SyncInterval.
	MinSyncInterval = time.Millisecond
	MaxSyncInterval = time.Minute
	// MinGCInterval bounds Config.GCInterval from below.
	MinGCInterval = time.Second
	// DefaultMemTableSize is the size of each of Badger's in-memory write
	// buffers (memtables) when Config.MemTableSize is 0: 8 MiB.
	DefaultMemTableSize = 8 << 20
	// MinMemTableSize and MaxMemTableSize bound Config.MemTableSize.
	MinMemTableSize = 1 << 20
	MaxMemTableSize = 1 << 30
)

// Config configures the store. The zero value of every field but Dir means
// its default.
type Config struct {
	// Dir is the Badger data directory. Required. One Ferry at a time may
	// use it: Open takes a lock on it.
	Dir string `yaml:"dir"`
	// Sync is one of "always", "batch" (default) or "none"; see SyncAlways,
	// SyncBatch and SyncNone for what each risks.
	Sync string `yaml:"sync"`
	// SyncInterval is the longest time between two fsyncs in "batch" mode.
	// Default 100ms.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// GCInterval is the period of value-log garbage collection. Default 5m.
	GCInterval time.Duration `yaml:"gc_interval"`
	// GCDiscardRatio is in (0, 1); default 0.5.
	GCDiscardRatio float64 `yaml:"gc_discard_ratio"`
	// MemTableSize is the size in bytes of Badger's memtable, the buffer
	// every write goes to before Badger flushes it to a table on disk; up
	// to three exist while flushes lag behind writes. Each costs about 1.3
	// times this much RAM when full, plus as much again of mapped
	// write-ahead log. Larger memtables absorb longer write bursts before
	// writers wait for a flush; smaller ones save little below the default
	// and write more slowly. Values larger than an eighth of it are kept in
	// the value log instead. Default 8 MiB (DefaultMemTableSize), from 1 MiB
	// to 1 GiB.
	MemTableSize int64 `yaml:"memtable_size"`
	// MinFreeSpace is the free space, in bytes, below which the store
	// refuses new messages (Store.Admit): publishers get MQTT 5 PUBACK
	// 0x97 or, with MQTT 3, no PUBACK, and resend later; /readyz reports
	// it. It must leave room for Badger to flush and compact, which it
	// cannot do on a full disk without crashing (see space.go). Default
	// (0): (3 + 5 + 2) memtables, 80 MiB with the default memtable_size;
	// -1 disables the limit.
	MinFreeSpace int64 `yaml:"min_free_space"`
}

// WithDefaults returns a copy of c with every zero field set to its default,
// except MemTableSize: Open reads zero there as DefaultMemTableSize.
func (c Config) WithDefaults() Config {
	if c.Sync == "" {
		c.Sync = DefaultSync
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.GCInterval == 0 {
		c.GCInterval = DefaultGCInterval
	}
	if c.GCDiscardRatio == 0 {
		c.GCDiscardRatio = DefaultGCDiscardRatio
	}
	return c
}

// Validate reports every problem of c, joined. Each message starts with the
// field's yaml key, e.g. `sync: must be one of always, batch, none, got "x"`,
// so a caller can prefix the path of this struct ("storage."). Zero fields
// are valid: they mean the default.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: must not be empty"))
	}
	switch c.Sync {
	case SyncAlways, SyncBatch, SyncNone:
	default:
		errs = append(errs, fmt.Errorf("sync: must be one of always, batch, none, got %q", c.Sync))
	}
	if c.SyncInterval < MinSyncInterval || c.SyncInterval > MaxSyncInterval {
		errs = append(errs, fmt.Errorf("sync_interval: %s is outside the allowed range %s to %s", c.SyncInterval, MinSyncInterval, MaxSyncInterval))
	}
	if c.GCInterval < MinGCInterval {
		errs = append(errs, fmt.Errorf("gc_interval: %s is less than allowed %s", c.GCInterval, MinGCInterval))
	}
	if !(c.GCDiscardRatio > 0 && c.GCDiscardRatio < 1) {
		errs = append(errs, fmt.Errorf("gc_discard_ratio: %v must be greater than 0 and less than 1", c.GCDiscardRatio))
	}
	if c.MinFreeSpace < -1 {
		errs = append(errs, fmt.Errorf("min_free_space: %d must be -1 (no limit), 0 (the default) or a number of bytes", c.MinFreeSpace))
	}
	if m := c.memTableSize(); m < MinMemTableSize || m > MaxMemTableSize {
		errs = append(errs, fmt.Errorf("memtable_size: %d is outside the allowed range %d to %d (the value is in bytes)", c.MemTableSize, MinMemTableSize, MaxMemTableSize))
	}
	return errors.Join(errs...)
}

// memTableSize is MemTableSize or, if it is zero, its default.
func (c Config) memTableSize() int64 {
	if c.MemTableSize == 0 {
		return DefaultMemTableSize
	}
	return c.MemTableSize
}
