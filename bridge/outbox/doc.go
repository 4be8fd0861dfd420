// Package outbox is the bridge's durable outbox (bridge.Outbox) on its own
// Badger database, opened in a directory the caller owns
// (<data-dir>/outbox). It will move into the persistence store, sharing its
// group commit, once that store exposes an outbox; the keys and the record
// encoding are chosen to move unchanged.
//
// # Layout
//
// o/<route>/<seq> holds an undelivered message, d/<route>/<seq> a dead
// letter, m/seq/<route> the route's last assigned seq (so a message id,
// "<route>-<seq>", is never reused, even after the outbox was emptied).
// Seqs are big-endian u64, so key order is delivery order. Values are a
// versioned binary encoding (codec.go); a value that does not decode is
// reported with ErrCorrupt and its key, never skipped.
//
// # Writes and durability
//
// One writer goroutine owns all writes. Callers hand it requests; it takes
// every request waiting (up to MaxWriterBatch) into one Badger transaction,
// commits, and then, by Config.Sync:
//
//   - "always" (default): one db.Sync for the whole batch before any caller
//     returns, so an Append that returned survives power loss;
//   - "batch": callers return after the commit; db.Sync at most every
//     SyncInterval (power loss can lose that window);
//   - "none": no db.Sync until Close (unsafe; logged at Open).
//
// In every mode a committed write survives a process crash (kill -9): it
// is in the operating system's page cache. Deletes never wait for a fsync:
// losing one means a redelivery, which the message id lets the backend
// discard. A batch is one atomic commit unless Badger finds it too big,
// when it is split; no invariant depends on two records landing together.
//
// Concurrency: every method is safe for concurrent use. Reads (Read,
// DeadLetters, Oldest) see committed writes. Usage is served from
// in-memory counters loaded from disk on a route's first use.
package outbox
