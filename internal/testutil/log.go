package testutil

import (
	"bytes"
	"log/slog"
	"sync"
)

// Log keeps in memory what is written to it (a log/slog text log, a child
// process's output) for a test to read while it is still being written; safe
// for concurrent use.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// NewLog returns an empty Log and a logger writing to it at level.
func NewLog(level slog.Level) (*Log, *slog.Logger) {
	l := &Log{}
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}

// Write appends p.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything logged so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
