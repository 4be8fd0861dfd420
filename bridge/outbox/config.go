package outbox

import (
	"errors"
	"fmt"
	"time"
)

// SyncMode says when the outbox fsyncs.
type SyncMode string

// Sync modes. Every mode survives a process crash (kill -9): a committed
// write is in the operating system's page cache. They differ on power loss.
const (
	// SyncAlways fsyncs each group-commit batch before any Append in it
	// returns: an acknowledged publish survives power loss (default).
	SyncAlways SyncMode = "always"
	// SyncBatch returns after the commit and fsyncs at most every
	// SyncInterval: power loss can lose that much acknowledged data.
	SyncBatch SyncMode = "batch"
	// SyncNone never fsyncs before Close. Unsafe: power loss can lose
	// everything since the last Close. Open logs a warning.
	SyncNone SyncMode = "none"
)

// Defaults.
const (
	// DefaultSyncInterval is the fsync period in SyncBatch mode.
	DefaultSyncInterval = 50 * time.Millisecond
	// DefaultGCInterval is how often the value log is garbage-collected.
	DefaultGCInterval = 5 * time.Minute
	// MaxWriterBatch is the most requests one group commit takes.
	MaxWriterBatch = 1024
)

// Config configures an Outbox. Zero fields take the defaults.
type Config struct {
	// Dir is the Badger directory, owned by this outbox (<data-dir>/outbox).
	Dir          string        `yaml:"dir"`
	Sync         SyncMode      `yaml:"sync"`
	SyncInterval time.Duration `yaml:"sync_interval"`
	GCInterval   time.Duration `yaml:"gc_interval"`
}

// WithDefaults returns a copy of c with zero fields set to the defaults.
func (c Config) WithDefaults() Config {
	if c.Sync == "" {
		c.Sync = SyncAlways
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.GCInterval == 0 {
		c.GCInterval = DefaultGCInterval
	}
	return c
}

// Validate reports every problem of c (after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: must not be empty"))
	}
	switch c.Sync {
	case SyncAlways, SyncBatch, SyncNone:
	default:
		errs = append(errs, fmt.Errorf("sync: %q is not always, batch or none", c.Sync))
	}
	if c.SyncInterval < time.Millisecond {
		errs = append(errs, fmt.Errorf("sync_interval: %s is less than allowed 1ms", c.SyncInterval))
	}
	if c.GCInterval < time.Second {
		errs = append(errs, fmt.Errorf("gc_interval: %s is less than allowed 1s", c.GCInterval))
	}
	return errors.Join(errs...)
}
