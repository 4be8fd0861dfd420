package bridge

import (
	"context"
	"time"
)

// Outbox is the durable, per-route, ordered store between Offer and the
// route workers. bridge/outbox implements it in the persistence store, whose
// group commit it shares with the sessions' records.
//
// All methods are safe for concurrent use. Writes go through one group
// commit: concurrent calls share a transaction and, depending on the sync
// mode, one fsync.
type Outbox interface {
	// Append durably appends msgs, each to the route named by its Route
	// field, and sets each one's Seq (and ID, when empty, to MessageID).
	// Within a route, seqs grow in call order and are never reused, also
	// across restarts. When Append returns nil the messages are as durable
	// as the outbox's sync mode promises. msgs' slices are not retained.
	Append(ctx context.Context, msgs []Message) error
	// AppendAsync queues the append; the returned Pending's Wait waits for
	// it and returns Append's result: the caller may go on meanwhile. msgs
	// must not be touched until Wait returned.
	AppendAsync(ctx context.Context, msgs []Message) (Pending, error)
	// Read returns up to limit messages of route with Seq > after, in seq
	// order.
	Read(route string, after uint64, limit int) ([]Message, error)
	// Delete removes the messages of route with the given seqs; missing
	// seqs are ignored.
	Delete(ctx context.Context, route string, seqs []uint64) error
	// DropOldest removes the oldest messages of route until at least bytes
	// bytes were freed, and reports how many messages it removed.
	DropOldest(ctx context.Context, route string, bytes int64) (int, error)
	// DeadLetter moves each message from the route's outbox to its
	// dead-letter store, keeping its seq, in one transaction.
	DeadLetter(ctx context.Context, route string, dead []DeadLetter) error
	// DeadLetters lists up to limit dead letters of route with Seq > after.
	DeadLetters(route string, after uint64, limit int) ([]DeadLetter, error)
	// DeleteDeadLetters removes the dead letters of route with the given
	// seqs (all of them when seqs is nil) and reports how many it removed.
	DeleteDeadLetters(ctx context.Context, route string, seqs []uint64) (int, error)
	// Replay moves the dead letters of route with the given seqs (all of
	// them when seqs is nil) back to the end of its outbox under new seqs,
	// keeping their IDs, and reports how many it moved.
	Replay(ctx context.Context, route string, seqs []uint64) (int, error)
	// Usage reports the route's undelivered messages and their bytes. It is
	// cheap (in-memory counters) and is called on the publish path.
	Usage(route string) Usage
	// Oldest returns the Created time of the route's oldest message, zero
	// when it has none.
	Oldest(route string) (time.Time, error)
}

// Usage is how much of an outbox a route uses.
type Usage struct {
	Messages int64
	Bytes    int64
}

// Pending is a write in progress. Wait waits for it and returns its
// result; it must be called once. Ready says, before Wait, whether Wait
// would return at once.
type Pending interface {
	Wait() error
	Ready() bool
}
