package persistence

import "errors"

var (
	// ErrClosed is returned by writes and Ready after Close.
	ErrClosed = errors.New("persistence: store is closed")
	// ErrLocked is returned by Open when another process holds the data
	// directory's lock (usually another Ferry on the same storage.dir).
	ErrLocked = errors.New("persistence: data dir is locked by another process")
	// ErrUnreadable is returned by Open and by loading when the data
	// directory or a record in it cannot be read: corruption, permissions,
	// or a directory that is not a Ferry store. It is never repaired
	// silently.
	ErrUnreadable = errors.New("persistence: data dir is corrupt or unreadable")
	// ErrNewerSchema is returned by Open when the data directory was written
	// by a newer Ferry whose format this one does not know.
	ErrNewerSchema = errors.New("persistence: data dir has a newer schema version")
	// ErrDiskFull is returned by Admit and Ready while the data dir's
	// filesystem has less than Config.MinFreeSpace free, and by Open when
	// there is not enough space to open the store.
	ErrDiskFull = errors.New("persistence: disk almost full")
)
