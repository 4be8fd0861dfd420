package persistence

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// SessionQueue is what is queued for one persistent session.
type SessionQueue struct {
	// Messages and Bytes count the PUBLISH messages queued (in flight,
	// in memory or spilled to the store) and their topic and payload bytes.
	Messages int
	Bytes    int64
	// Expires is when a session restored at start that has not
	// reconnected since expires, counted from its stored disconnect time;
	// zero for the others, whose expiry mochi counts.
	Expires time.Time
}

// Queue reports the queue of client id's persistent session; false when
// the hook holds no persistent session for id. It takes the hook's lock
// briefly and is meant for operators (the admin API), not the data path.
func (h *Hook) Queue(id string) (SessionQueue, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.sessions[id]
	if ss == nil {
		return SessionQueue{}, false
	}
	q := SessionQueue{Messages: ss.count, Bytes: ss.bytes}
	if r := h.restored[id]; r != nil {
		q.Expires = time.Unix(r.deadline, 0)
	}
	return q, true
}

// Size is the size in bytes of the files in the store's directory (Badger's
// tables and value log, the state file), read now: Badger's own figure is
// refreshed only once a minute.
func (s *Store) Size() (int64, error) {
	var n int64
	err := filepath.WalkDir(s.cfg.Dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // a file Badger removed meanwhile
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("storage: size of %s: %w", s.cfg.Dir, err)
	}
	return n, nil
}
