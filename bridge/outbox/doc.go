// Package outbox is the bridge's durable outbox (bridge.Outbox), kept in
// Ferry's persistence store: New(store) shares the store's one writer,
// group commit and fsyncs with the sessions and queues the store keeps, so
// one fsync covers a batch of outbox appends and session-queue writes
// alike. Open opens a store of the outbox's own, for tools and tests.
//
// # Layout
//
// o/<route>/<seq> holds an undelivered message, d/<route>/<seq> a dead
// letter, m/seq/<route> the route's highest assigned seq (so a message id,
// "<route>-<seq>", is never reused, even after the outbox was emptied).
// Seqs are big-endian u64, so key order is delivery order. Values are a
// versioned binary encoding (codec.go) written with the store's record
// encoder; a value that does not decode is reported with ErrCorrupt and its
// key, never skipped. Earlier Ferry versions kept the same keys in their
// own Badger database in <storage.dir>/outbox (LegacyDir); New moves such
// an outbox into the store (migrate.go).
//
// # Writes and durability
//
// Every write is a stage function that the store's writer runs inside the
// group commit it joins (persistence.Store.Update): serially, so a route's
// seqs are assigned in commit order and a write reads a state no other
// write changes under it. What a call waits for follows the store's sync
// mode (storage.sync):
//
//   - Append, DropOldest, DeadLetter, Replay, DeleteDeadLetters: the commit
//     and, in "always", the fsync covering it (one per batch), so an Append
//     that returned survives power loss; in "batch" the store fsyncs at most
//     every sync_interval; in "none" only at Close.
//   - Delete: the commit only. Losing a deletion means a redelivery, which
//     the message id lets the backend discard.
//
// In every mode a committed write survives a process crash (kill -9). A
// call's records land in one atomic commit unless Badger finds the batch
// too big, when it is split; no invariant depends on two records landing
// together (m/seq is written before the deletions that need it).
//
// # Concurrency
//
// Every method is safe for concurrent use. Reads (Read, DeadLetters,
// Oldest) see committed writes. Usage is served from in-memory counters,
// loaded from disk on a route's first use and changed by the writer in
// commit order. Close waits for the writes in flight; close the outbox
// before its store.
package outbox
