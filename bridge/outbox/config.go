package outbox

import (
	"time"

	"github.com/ferrymq/ferry/persistence"
)

// SyncMode says when the outbox's store fsyncs (persistence.SyncAlways,
// SyncBatch, SyncNone).
type SyncMode string

// Sync modes. Every mode survives a process crash (kill -9): a committed
// write is in the operating system's page cache. They differ on power loss.
const (
	// SyncAlways fsyncs each group-commit batch before any Append in it
	// returns: an acknowledged publish survives power loss (default for
	// Open).
	SyncAlways SyncMode = "always"
	// SyncBatch returns after the commit and fsyncs at most every
	// SyncInterval: power loss can lose that much acknowledged data.
	SyncBatch SyncMode = "batch"
	// SyncNone never fsyncs before Close. Unsafe: power loss can lose
	// everything since the last Close. Open logs a warning.
	SyncNone SyncMode = "none"
)

// DefaultSyncInterval is the fsync period in SyncBatch mode of the store
// Open opens. The outbox of a broker uses the store's settings (storage.*).
const DefaultSyncInterval = 50 * time.Millisecond

// Config configures Open, which opens a store of the outbox's own. Zero
// fields take the defaults: SyncAlways, DefaultSyncInterval and the store's
// (persistence.DefaultGCInterval).
type Config struct {
	// Dir is the store's data directory, owned by this outbox.
	Dir          string        `yaml:"dir"`
	Sync         SyncMode      `yaml:"sync"`
	SyncInterval time.Duration `yaml:"sync_interval"`
	GCInterval   time.Duration `yaml:"gc_interval"`
}

// WithDefaults returns a copy of c with zero fields set to the outbox's
// defaults; the store's own (persistence.Config) fill the rest.
func (c Config) WithDefaults() Config {
	if c.Sync == "" {
		c.Sync = SyncAlways
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	return c
}

// store returns the store's configuration.
func (c Config) store() persistence.Config {
	return persistence.Config{Dir: c.Dir, Sync: string(c.Sync), SyncInterval: c.SyncInterval, GCInterval: c.GCInterval}
}

// Validate reports every problem of c, joined: the store's (see
// persistence.Config.Validate).
func (c Config) Validate() error { return c.store().Validate() }
