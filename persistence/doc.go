// Package persistence is Ferry's durable store on Badger and the mochi
// storage hook that uses it. It keeps, across a crash (kill -9) and restart
// on the same data directory: persistent sessions (clean start false or
// session expiry > 0) with their subscriptions and options, every QoS 1/2
// message queued or in flight for them, the QoS 2 state of both directions,
// and retained messages, with message and session expiry counted from the
// original times.
//
// # Use
//
//	st, err := persistence.Open(cfg, logger) // locks cfg.Dir
//	srv := mqtt.New(opts)
//	srv.AddHook(authHook, nil)
//	srv.AddHook(persistence.NewHook(st, srv), nil) // before Serve
//	srv.Serve()                                    // loads the store
//	...
//	srv.Close() // then
//	st.Close()  // commits what is queued, fsyncs, unlocks
//
// # Layout
//
// Keys (see keys.go) are c/<client> (session), s/<client><filter>
// (subscription), q/<client><seq> (the session's queue, in order), p/<id>
// (a message body, shared by the queue refs of every session it goes to),
// r/<topic> (retained), m/schema, and the bridge outbox's o/, d/ and m/seq/
// (written by bridge/outbox through Update). Client ids inside s/ and q/ keys are
// length-prefixed so one client is one key prefix. Values are a versioned
// binary encoding (codec.go): the first byte is the record version, the
// second the record kind; anything else is refused with ErrUnreadable
// naming the key and the directory, never skipped or wiped. m/schema holds
// the layout version; a newer one is refused with ErrNewerSchema.
//
// Sequences (q/ seq, p/ id) come from one counter that Open sets above every
// id on disk, so the queue order of a session is the order in which
// OnRoute saw the messages: per publisher, the publish order.
//
// # Writes and durability
//
// One writer goroutine owns all writes. Callers hand it batches; it takes
// every batch waiting (up to 1024) into one Badger transaction, commits, and
// in "always" mode calls db.Sync once for all of them before releasing the
// callers (group commit). In "batch" mode it releases callers after the
// commit and fsyncs at most every sync_interval; in "none" it never fsyncs
// until Close. Badger's own SyncWrites is off: it fsyncs every commit
// separately. A commit of one writer batch is atomic unless Badger finds it
// too big, when it is split; no invariant depends on two records landing
// together (a ref without its body is skipped at load, a body without refs
// is deleted at load).
//
// What is written when, and whether the caller waits (W) or not (A):
//
//   - OnSessionEstablish (before CONNACK), W: the session record, or the
//     deletion of every key of the client id if the new session starts clean
//     or is not persistent.
//   - OnSubscribed / OnUnsubscribed (before SUBACK/UNSUBACK), W.
//   - OnRetainMessage (before the PUBACK), W.
//   - OnRoute (before the PUBACK/PUBREC), W: see below; for QoS 1 the
//     wait is the PUBACK's, not the reader's (mqtt.Client.HoldAck,
//     pending.go): the engine holds that PUBACK until the write is done,
//     and reads the publisher's next packet meanwhile. From the end of
//     the load (StoredRetainedMessages), not from OnStarted: mochi's
//     listeners serve before it calls OnStarted.
//   - OnQosPublish, A: the packet id mochi chose, on the ref written by
//     OnRoute. For QoS 2 to a connected client the engine holds that
//     PUBLISH in the subscriber's queue until the write is done
//     (mqtt.Client.HoldDelivery); the delivering goroutine goes on.
//   - OnPacketRead, W, for QoS 2 only: a subscriber's PUBREC (the flow now
//     waits for PUBCOMP) before mochi sends PUBREL, and the deletion of a
//     publisher's PUBREC state on its PUBREL before mochi sends PUBCOMP.
//   - OnQosComplete, OnQosDropped, OnPublished, OnWillSent,
//     OnClientExpired, OnRetainedExpired, A: deletions. Losing one in a crash
//     means a repeated QoS 1 delivery or a repeated PUBREL, never a loss and
//     never a repeated QoS 2 delivery.
//   - OnDisconnect, W: the disconnect time (session expiry counts from it),
//     or the deletion of all keys of a session that ends.
//   - FiledStored (spill.go), A (for QoS 2 the engine writes the packet
//     once it is done): the packet id the engine gave a spilled message it
//     fed into the client. Drops of the
//     oldest message (drop-oldest) and entries forgotten when a resumed
//     session's CONNACK is written (OnPacketSent), A: deletions, as above.
//
// # Acknowledged means durable
//
// The engine walks the topic index once per publish, before it writes the
// PUBACK (or PUBREC), and hands the result, shared-group members chosen, to
// OnRoute; it creates the subscribers' in-flight entries (OnQosPublish)
// only after the acknowledgement. So OnRoute writes the message body once
// plus a q/ ref for every persistent session on the route that gets it at
// QoS > 0, and has the engine hold the acknowledgement until the group
// commit. A QoS 2 message from a persistent publisher gets its PUBREC state
// in the same batch. OnQosPublish then only maps mochi's packet id onto the
// stored ref; the engine's Packet.PublishID, which every subscriber's copy
// keeps, says which pending message a copy belongs to. Refs that mochi did
// not deliver after all (ACL, full in-flight window, packet ids exhausted,
// a hook ignoring the message) are deleted in OnPublished, so a restart
// never delivers what mochi dropped. A full outbound queue drops nothing of
// a persistent session: the engine keeps the delivery in flight. If the write fails the publish is refused
// (MQTT 5: reason 0x83; MQTT 3: no ack). Messages mochi publishes itself
// (wills, retained messages sent on subscribe) are stored by OnQosPublish,
// without that guarantee.
//
// # Resuming a session
//
// From OnSessionEstablish to OnSessionEstablished of a persistent session
// (clean start false), the engine moves the old client's in-flight
// messages to the new one, sends CONNACK and resends them, while
// publishers go on delivering to whichever of the two clients its index
// returns. The engine keeps that safe (third_party/mochi/FORK.md): a late
// delivery to the old client goes to the new one, and the resend covers
// only what was inherited, so a message delivered to the new client
// meanwhile goes out once, after the resend, through its queue. The hook
// only forgets, once the CONNACK is written, entries the engine no longer
// holds, and has the engine feed the session's backlog once it is
// established.
//
// # Queue bounds and spill (spill.go)
//
// A session keeps at most its memory window (QueueLimits.MemoryWindow,
// capped at half of mochi's MaximumInflight) of queued messages in mochi.
// OnRoute decides, per persistent target and under h.mu, whether the
// message is (a) dropped because the session's queue is at its bound
// (count or bytes, with the policy: drop-newest, drop-oldest, or
// block-publisher, which first waits for a connected session), (b)
// spilled: its ref is written without packet id and mochi never sees it,
// because the window is full, older messages are still spilled or the
// client stopped reading (SetStalled), or (c) left to mochi as before. For
// (a) and (b) it skips the subscriber on the engine's route (Route.Skip).
//
// Spilled refs enter the session's backlog (in seq order) once their write
// returns. The engine feeds the backlog into the connected client in
// order as acknowledgements free its window (mqtt.StoredQueue, in the
// engine's storedfeed.go): the hook hands it the next messages read back
// from the store (NextStored), records the packet id the engine gives each
// (FiledStored), and takes back what a batch did not file (QueuedStored).
// While a backlog, a pending spilled write or a batch exists, every new
// message for the session is spilled too, so a live message never
// overtakes an older spilled one. The engine feeds nothing into a
// connection that has ended, and ends a connection only once its batch has
// ended, so a session taken over never gets half a batch.
//
// # Owners and the ACL (owner.go)
//
// With SetSessionOwners, each session record carries the identity owning
// the session (record version 2; version 1 records load without one), and
// StoredClients reports each restored session's owner, so that ownership
// survives a restart. The engine offers a shared-group message only to
// members allowed to read it (its OnACLCheck). With SetReadCheck,
// NextStored drops (and counts, ACLDropped) a spilled message its session
// may no longer read.
//
// # Loading
//
// StoredInflightMessages loads per session its QoS 2 states and the front
// of its queue: messages up to the memory window, further only up to the
// last QoS 2 message with a packet id (kept for the client's QoS 2 state);
// the rest becomes the session's backlog (only seq, body id and size in
// memory), so nothing loaded overtakes an older spilled message.
// StoredClients returns unexpired sessions, expiry counted from the stored
// disconnect time; expired ones are deleted with all their keys. Because
// mochi restarts that clock at load, the hook expires restored sessions
// itself (once a second) until they reconnect. StoredInflightMessages and
// StoredRetainedMessages return storage.Messages with their absolute
// expiry and publisher protocol version, and say which in-flight PUBLISH
// was never sent (DUP 0); the engine loads them. Wills of restored sessions (a will delay running at the stop, or
// a client connected at a crash) are published when due through a
// throwaway inline client. The engine resends a session's in-flight
// messages in the order their flows began, which is the queue order the
// hook restores them in; once the CONNACK of a resumed session is written
// (OnPacketSent), the hook forgets entries the engine no longer holds
// (reconcileLocked).
//
// # Concurrency and lifetime
//
// Hook methods run on mochi's client goroutines, the engine's feed
// goroutines (the StoredQueue methods) and the hook's own once-a-second
// goroutine (started by OnStarted, stopped by Stop). One mutex guards the
// hook's maps and is never held across a store commit, a network write or
// a call into mochi that runs hooks (FeedStored runs none); FiledStored
// hands a write to the store's queue under it (writeLocked), so that it is
// committed before the deletion an acknowledgement causes. The Store is safe for concurrent use.
// Close takes no context: it only commits what is queued (at most 4096
// requests) and fsyncs. Close the mochi server first (its Close waits for
// the client goroutines, so their disconnect times are stored), then the
// Store.
//
// # Damage and disk space (preflight.go, logscan.go, state.go, space.go)
//
// Open first reads the whole directory without changing a file (Inspect):
// the MANIFEST, every table it lists (footer, block checksums, entries),
// every write-ahead and value log (a damaged record followed by more data,
// a file cut inside a record), the values tables point at, and the commit
// number: every writer transaction sets keyCommit, and after each fsync
// stateLoop records the number reached in FERRY-STATE, so a store whose
// newest readable commit is older lost fsynced transactions. Any damage
// refuses the start with ErrUnreadable naming every problem; a crash's
// leftovers (a torn last record, a table being written) are only logged.
// Salvage copies what is readable into a new directory.
//
// A goroutine reads the filesystem's free space every 250 ms. Below
// MinFreeSpace, Admit fails with ErrDiskFull: OnRoute refuses messages it
// would store (MQTT 5: 0x97, MQTT 3: no ack) and the bridge outbox refuses
// appends; below criticalSpace every write is refused, because Badger
// writes through memory maps and a full disk kills it with SIGBUS. Open
// refuses when the space to flush the logs left by a crash is missing.
//
// # Not covered
//
// $SYS values are not stored. mochi can give two concurrent publishes to
// one subscriber the same packet id and then lose the first; the store keeps
// it, so it is delivered after a restart (an acknowledged message mochi
// lost, not a message mochi dropped on purpose). Messages mochi publishes
// itself (wills, retained on subscribe) that it drops on a full outbound
// queue are not deleted from the store. Deletions other than the QoS 2 ones
// above are not waited for before the acknowledgement that causes them.
package persistence
