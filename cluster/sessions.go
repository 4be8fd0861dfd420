package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sessions live in JetStream: each client id has a record in the sessions
// bucket, and each persistent session a queue, the subject
// ferry.q.<session key> of the FERRY_QUEUE stream.
//
//   - Ownership: a node serves a client id only once it has written the
//     record with itself as the node, by compare-and-set on the revision
//     it read. Whoever wins the write serves; the loser refuses the
//     connection. A node that sees (in its watch of the bucket) another
//     node take a session it serves disconnects that client with 0x8E.
//   - Queue: the node where a QoS 1/2 message is published appends it to
//     the queue of every persistent session whose subscription matches,
//     before the publisher's PUBACK, whichever node (if any) the session
//     is connected to. The session's node feeds the queue to its client
//     through the engine's StoredQueue, reading the stream in order, and
//     purges what the client acknowledged. So a session resumed on any
//     node finds every message not yet acknowledged, in order.
const (
	sessionsBucket = "ferry_sessions"
	queueStream    = "FERRY_QUEUE"
	queuePrefix    = "ferry.q."
	// wakePrefix + key is published by the node that appended to a queue
	// once the append is stored: the session's node then reads it.
	wakePrefix = "ferry.w."
)

// claimWait bounds how long a connecting client waits for the node that
// served its session to let go of it; a node that does not answer (dead,
// frozen) is not waited for beyond it.
const claimWait = 3 * time.Second

// sessionRec is a session's record in the bucket.
type sessionRec struct {
	ID         string   `json:"id"`
	Node       string   `json:"node"`
	Conn       string   `json:"conn"` // the serving connection's nonce
	Connected  bool     `json:"connected"`
	Persistent bool     `json:"persistent"`
	Expiry     uint32   `json:"expiry"`         // seconds the session outlives its connection
	Left       int64    `json:"left,omitempty"` // unix seconds the connection ended
	Version    byte     `json:"v"`
	Username   []byte   `json:"user,omitempty"`
	Subs       []subRec `json:"subs,omitempty"`
	// Will is the will while it may still be published: while connected,
	// and after an unexpected end until WillAt (its delay) if it was
	// delayed. A node that finds the session's node dead publishes it.
	Will   *willRec `json:"will,omitempty"`
	WillAt int64    `json:"will_at,omitempty"` // unix seconds
	// Rel lists the packet ids of QoS 2 deliveries the client received
	// (PUBREC) but has not completed (PUBCOMP): a resumed session sends
	// their PUBREL again, never the message.
	Rel []uint16 `json:"rel,omitempty"`
}

type subRec struct {
	Filter string `json:"f"`
	Qos    byte   `json:"q"`
	NL     bool   `json:"nl,omitempty"`
	RAP    bool   `json:"rap,omitempty"`
	RH     byte   `json:"rh,omitempty"`
	ID     int    `json:"id,omitempty"`
}

type willRec struct {
	Topic   string                 `json:"t"`
	Payload []byte                 `json:"p,omitempty"`
	Qos     byte                   `json:"q"`
	Retain  bool                   `json:"r,omitempty"`
	Delay   uint32                 `json:"d,omitempty"`
	User    []packets.UserProperty `json:"u,omitempty"`
}

// sessionKey is the bucket key and queue token of client id.
func sessionKey(id string) string {
	if len(id) <= 256 {
		return "c" + base64.RawURLEncoding.EncodeToString([]byte(id))
	}
	h := sha256.Sum256([]byte(id))
	return "h" + hex.EncodeToString(h[:])
}

// ownedSession is a session this node serves.
type ownedSession struct {
	key  string
	cl   *mqtt.Client
	conn string // the connection's nonce in the record

	mu  sync.Mutex // serialises writes of rec
	rev uint64
	rec sessionRec

	// The queue feed (StoredQueue), under qmu.
	qmu      sync.Mutex
	cursor   uint64            // next stream sequence to read from
	inflight map[uint16]uint64 // packet id -> sequence, filed and not acknowledged
	// order holds the sequences filed, oldest first, up to the oldest
	// still in flight; settled, those after it that are done. The purge
	// point is found without going over every message in flight (the
	// engine keeps thousands in flight, and each acknowledgement looked
	// at all of them).
	order   []uint64
	settled map[uint64]struct{}
	batch   []uint64 // sequences of the batch being filed, in order
	filed   int      // how many of batch are filed
	purged  uint64   // everything below was purged
	wake    []*nats.Subscription
	// expect is set when the queue's subject carried a message the feed
	// may not find stored yet: finding nothing, it asks again shortly,
	// in case the wake sent once it is stored never comes.
	expect atomic.Bool
	// storedUpTo is the highest sequence a wake said was stored in the
	// queue (under qmu). A read that finds nothing from a cursor at or
	// below it missed a stored message (a new stream leader still
	// applying what was committed): the feed asks again shortly, for up
	// to missWait, rather than wait for a wake that already came.
	storedUpTo uint64
	missSince  time.Time
	// confirmed: the stream's leader has said once, since the session
	// was established here, that the queue held nothing more. Until then
	// an empty direct read is not believed (wakes sent before the
	// barrier were not received); after, only when a wake says more is
	// stored.
	confirmed bool
	// drainedAt is, when the last read reached the end of the queue, the
	// sequence after it (0: it did not): asked again from there with no
	// wake beyond it, the feed answers without a request.
	drainedAt uint64
}

// missWait bounds how long a feed asks again for a message a wake said
// was stored but a read did not find (dropped from a full queue, say).
const missWait = 10 * time.Second

// sessions is the node's part of the session store.
type sessions struct {
	n      *Node
	kv     jetstream.KeyValue
	stream jetstream.Stream

	mu    sync.Mutex
	owned map[string]*ownedSession // by client id

	imu     sync.RWMutex
	index   *mqtt.TopicsIndex   // persistent sessions' subscriptions, cluster-wide; "client" = client id
	indexed map[string][]string // client id -> filters in index
	records map[string]sessionRec
	revs    map[string]uint64 // client id -> revision of records[id]
	// subsRev is, per client id, the revision from which the record's
	// subscriptions are as they are now (the first seen, for records
	// loaded at start); applied is the last revision applied.
	subsRev map[string]uint64
	applied uint64
	// staleSelf holds this node's records found at start (client id ->
	// connection nonce): left from before a restart, swept as a dead
	// node's.
	staleSelf map[string]string

	purgeKick chan struct{}
	purgeMu   sync.Mutex
	toPurge   map[string]uint64 // key -> purge below this sequence
}

func newSessions(n *Node) *sessions {
	return &sessions{n: n, owned: map[string]*ownedSession{}, index: mqtt.NewTopicsIndex(),
		indexed: map[string][]string{}, records: map[string]sessionRec{}, revs: map[string]uint64{}, subsRev: map[string]uint64{}, staleSelf: map[string]string{},
		purgeKick: make(chan struct{}, 1), toPurge: map[string]uint64{}}
}

// start loads the bucket (the cluster-wide index of persistent sessions)
// and follows it.
func (ss *sessions) start(ctx context.Context) error {
	w, err := ss.kv.WatchAll(ss.n.ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", sessionsBucket, err)
	}
	for initial := true; initial; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("cluster: watch %s ended", sessionsBucket)
			}
			if e == nil {
				initial = false
				continue
			}
			ss.apply(e)
		case <-ctx.Done():
			_ = w.Stop()
			return fmt.Errorf("cluster: load %s: %w", sessionsBucket, ctx.Err())
		}
	}
	ss.imu.Lock()
	for id, rec := range ss.records {
		if rec.Node == ss.n.cfg.NodeID {
			ss.staleSelf[id] = rec.Conn
		}
	}
	ss.imu.Unlock()
	ss.n.wg.Add(3)
	go func() {
		defer ss.n.wg.Done()
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					ss.apply(e)
				}
			case <-ss.n.ctx.Done():
				return
			}
		}
	}()
	go ss.purger()
	go ss.sweeper()
	return nil
}

// apply takes one record update: the index of persistent subscriptions,
// and a session this node serves that another node has taken.
func (ss *sessions) apply(e jetstream.KeyValueEntry) {
	var rec sessionRec
	put := e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &rec) == nil && rec.ID != ""
	if !put {
		ss.imu.Lock()
		for id := range ss.records {
			if sessionKey(id) == e.Key() {
				ss.unindexLocked(id)
				delete(ss.records, id)
				delete(ss.revs, id)
				delete(ss.subsRev, id)
				break
			}
		}
		ss.applied = max(ss.applied, e.Revision())
		ss.imu.Unlock()
		return
	}
	ss.imu.Lock()
	ss.unindexLocked(rec.ID)
	if prev, had := ss.records[rec.ID]; !had || !prev.Persistent || subsChanged(prev.Subs, rec.Subs) {
		ss.subsRev[rec.ID] = e.Revision()
	}
	ss.records[rec.ID] = rec
	ss.revs[rec.ID] = e.Revision()
	ss.applied = max(ss.applied, e.Revision())
	if rec.Persistent {
		fs := make([]string, 0, len(rec.Subs))
		for _, s := range rec.Subs {
			if mqtt.IsSharedFilter(s.Filter) {
				continue
			}
			ss.index.Subscribe(rec.ID, packets.Subscription{Filter: s.Filter, Qos: s.Qos, NoLocal: s.NL,
				RetainAsPublished: s.RAP, Identifier: s.ID})
			fs = append(fs, s.Filter)
		}
		ss.indexed[rec.ID] = fs
	}
	ss.imu.Unlock()

	ss.mu.Lock()
	o := ss.owned[rec.ID]
	// Another node took the session; or, while this node was away
	// (frozen, cut off), another marked the connection it still serves
	// as gone (the sweeper): either way it is no longer this node's.
	lost := o != nil && (rec.Node != ss.n.cfg.NodeID ||
		!rec.Connected && rec.Conn == o.conn && !o.cl.Closed())
	if lost {
		delete(ss.owned, rec.ID)
	}
	ss.mu.Unlock()
	if lost {
		ss.n.log.Info("cluster: session no longer served here", "client", rec.ID, "node", rec.Node, "connected", rec.Connected)
		ss.stopFeed(o)
		go ss.n.srv.ForgetSession(rec.ID)
	}
}

// subsChanged says whether next has a subscription (filter and options)
// that prev has not.
func subsChanged(prev, next []subRec) bool {
	for _, s := range next {
		if !slices.Contains(prev, s) {
			return true
		}
	}
	return false
}

// knownBefore says whether id's subscriptions are as they were at
// revision known, so a node that had applied the bucket up to it queued
// for id what they match.
func (ss *sessions) knownBefore(id string, known uint64) bool {
	ss.imu.RLock()
	defer ss.imu.RUnlock()
	r, ok := ss.subsRev[id]
	return ok && r <= known
}

func (ss *sessions) unindexLocked(id string) {
	for _, f := range ss.indexed[id] {
		ss.index.Unsubscribe(f, id)
	}
	delete(ss.indexed, id)
}

// connectedAt returns the node session id is connected to, or "".
func (ss *sessions) connectedAt(id string) string {
	ss.imu.RLock()
	defer ss.imu.RUnlock()
	if rec, ok := ss.records[id]; ok && rec.Connected {
		return rec.Node
	}
	return ""
}

// persistentFor returns the persistent sessions, cluster-wide, with a
// subscription matching topic. The map is shared: do not change it.
func (ss *sessions) persistentFor(topic string) map[string]packets.Subscription {
	m, _ := ss.persistentForAt(topic)
	return m
}

// persistentForAt is persistentFor with the revision the index is at.
func (ss *sessions) persistentForAt(topic string) (map[string]packets.Subscription, uint64) {
	ss.imu.RLock()
	defer ss.imu.RUnlock()
	return ss.index.SubscribersReadOnly(topic).Subscriptions, ss.applied
}

func persistentSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func expiryOf(cl *mqtt.Client) uint32 {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval
	}
	if cl.Properties.Clean {
		return 0
	}
	return math.MaxUint32
}

func nonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// errClaim is why a connection was refused: its session could not be
// claimed.
var errClaim = errors.New("cluster: session not claimed")

// claim makes cl's session this node's, by compare-and-set on its record,
// and returns the record it replaced (nil: none). A session another node
// serves is taken from it: once the record names this node, that node
// disconnects its client (it watches the bucket) and is asked to confirm.
func (ss *sessions) claim(cl *mqtt.Client, clean bool) (*ownedSession, *sessionRec, error) {
	key := sessionKey(cl.ID)
	rec := sessionRec{ID: cl.ID, Node: ss.n.cfg.NodeID, Conn: nonce(), Connected: true, Persistent: persistentSession(cl),
		Expiry: expiryOf(cl), Version: cl.Properties.ProtocolVersion, Username: cl.Properties.Username}
	if w := cl.Properties.Will; w.Flag != 0 {
		rec.Will = &willRec{Topic: w.TopicName, Payload: w.Payload, Qos: w.Qos, Retain: w.Retain, Delay: w.WillDelayInterval, User: w.User}
	}
	ctx, cancel := context.WithTimeout(ss.n.ctx, claimWait+claimRetry)
	defer cancel()
	var (
		prev    *sessionRec // the record this claim replaces
		lastErr error
		backoff = 50 * time.Millisecond
	)
	for races := 0; races < 5; {
		if lastErr != nil {
			// NATS answered with an error that passes: a stream leader
			// being elected after a node died, a request timing out.
			// The client would only connect again; wait here instead.
			select {
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("%w: %v", errClaim, lastErr)
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
		var cur *sessionRec
		var rev uint64
		// Each request gets a share of the wait: one sent to a replica
		// that froze goes unanswered, and the next is routed elsewhere.
		opCtx, opCancel := context.WithTimeout(ctx, claimOp)
		e, err := ss.kv.Get(opCtx, key)
		opCancel()
		switch {
		case err == nil:
			var p sessionRec
			if json.Unmarshal(e.Value(), &p) == nil {
				cur = &p
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			lastErr = fmt.Errorf("read: %w", err)
			continue
		}
		if cur != nil && cur.Conn == rec.Conn {
			// An earlier write whose answer was lost was stored after all.
			return ss.own(ctx, cl, rec, rev, prev), prev, nil
		}
		prev = cur
		if cur != nil && !clean && cur.Persistent {
			rec.Subs, rec.Rel = cur.Subs, cur.Rel
		}
		b, _ := json.Marshal(rec)
		opCtx, opCancel = context.WithTimeout(ctx, claimOp)
		if rev == 0 {
			rev, err = ss.kv.Create(opCtx, key, b)
		} else {
			rev, err = ss.kv.Update(opCtx, key, b, rev)
		}
		opCancel()
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
				races++
				lastErr = nil
				continue // another node wrote meanwhile: read again
			}
			lastErr = fmt.Errorf("write: %w", err)
			continue
		}
		return ss.own(ctx, cl, rec, rev, prev), prev, nil
	}
	return nil, nil, fmt.Errorf("%w: the record kept changing", errClaim)
}

// claimRetry bounds how long a claim retries NATS errors that pass (a
// stream leader elected after a node died takes a few seconds) before the
// client is refused with server unavailable.
const claimRetry = 7 * time.Second

// claimOp bounds one request of a claim.
const claimOp = 2 * time.Second

// own records the claimed session as this node's and asks the node that
// served it, if another and still a member, to let go of it.
func (ss *sessions) own(ctx context.Context, cl *mqtt.Client, rec sessionRec, rev uint64, prev *sessionRec) *ownedSession {
	o := &ownedSession{key: sessionKey(cl.ID), cl: cl, conn: rec.Conn, rev: rev, rec: rec, inflight: map[uint16]uint64{}, settled: map[uint64]struct{}{}}
	ss.mu.Lock()
	old := ss.owned[cl.ID]
	ss.owned[cl.ID] = o
	ss.mu.Unlock()
	if old != nil {
		ss.stopFeed(old)
	}
	if prev != nil && prev.Node != ss.n.cfg.NodeID && prev.Connected && ss.n.isMember(prev.Node) {
		ss.askRelease(ctx, prev.Node, cl.ID)
	}
	return o
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// askRelease asks node to let go of client id and waits for its answer,
// at most claimWait: it then no longer serves the client, and has stopped
// feeding its queue. A node that does not answer is dead or frozen; it
// lets go of the session when it sees the record (or fails to write it).
func (ss *sessions) askRelease(ctx context.Context, node, id string) {
	ctx, cancel := context.WithTimeout(ctx, claimWait)
	defer cancel()
	_, err := ss.n.nc.RequestWithContext(ctx, controlPrefix+node+".release", []byte(id))
	if err != nil {
		ss.n.log.Info("cluster: previous node did not confirm the takeover", "client", id, "node", node, "err", err)
	}
}

const controlPrefix = "ferry.ctl."

// serveRelease answers other nodes' release requests.
func (ss *sessions) serveRelease() error {
	sub, err := ss.n.nc.Subscribe(controlPrefix+ss.n.cfg.NodeID+".release", func(m *nats.Msg) {
		id := string(m.Data)
		ss.mu.Lock()
		o := ss.owned[id]
		if o != nil {
			delete(ss.owned, id)
		}
		ss.mu.Unlock()
		if o != nil {
			ss.stopFeed(o)
		}
		go func() {
			ss.n.srv.ForgetSession(id)
			_ = m.Respond([]byte("ok"))
		}()
	})
	if err != nil {
		return fmt.Errorf("cluster: subscribe release: %w", err)
	}
	ss.n.stop = append(ss.n.stop, func() { _ = sub.Unsubscribe() })
	return nil
}

// ownedBy returns the session cl serves here, or nil.
func (ss *sessions) ownedBy(cl *mqtt.Client) *ownedSession {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if o := ss.owned[cl.ID]; o != nil && o.cl == cl {
		return o
	}
	return nil
}

// update changes o's record with f and writes it by compare-and-set. A
// failed compare-and-set means another node took the session: this one
// lets go of it.
func (ss *sessions) update(o *ownedSession, f func(*sessionRec)) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	rec := o.rec
	rec.Subs = append([]subRec(nil), o.rec.Subs...)
	f(&rec)
	b, _ := json.Marshal(rec)
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	rev, err := ss.kv.Update(ctx, o.key, b, o.rev)
	if err != nil {
		if isWrongSequence(err) {
			ss.n.log.Info("cluster: session record changed by another node; letting it go", "client", rec.ID)
			ss.mu.Lock()
			if ss.owned[rec.ID] == o {
				delete(ss.owned, rec.ID)
			}
			ss.mu.Unlock()
			ss.stopFeed(o)
			go ss.n.srv.ForgetSession(rec.ID)
		}
		return err
	}
	o.rev, o.rec = rev, rec
	return nil
}

// remove deletes o's record (a session that ended), if still o's.
func (ss *sessions) remove(o *ownedSession) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	if err := ss.kv.Delete(ctx, o.key, jetstream.LastRevision(o.rev)); err != nil && !isWrongSequence(err) {
		ss.n.log.Warn("cluster: session record not deleted", "client", o.rec.ID, "err", err)
	}
}

// purgeQueue drops everything queued for key.
func (ss *sessions) purgeQueue(key string) {
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	if err := ss.stream.Purge(ctx, jetstream.WithPurgeSubject(queuePrefix+key)); err != nil {
		ss.n.log.Warn("cluster: queue not purged", "key", key, "err", err)
	}
}

// sessionHook is the session store as the MQTT server's hook.
type sessionHook struct {
	mqtt.HookBase
	ss *sessions
}

func (h *sessionHook) ID() string { return "ferry-cluster-sessions" }

func (h *sessionHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed,
		mqtt.OnUnsubscribed, mqtt.OnRoute, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.OnPacketRead:
		return true
	}
	return false
}

// OnSessionEstablish claims the session (see sessions.claim) and, when it
// was kept by another node or by an earlier run of this one, restores its
// subscriptions here so the connection inherits them. A session that
// cannot be claimed (NATS away) ends the connection: two nodes never
// serve one client id.
func (h *sessionHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	ss := h.ss
	clean := pk.Connect.Clean
	o, prev, err := ss.claim(cl, clean)
	if err != nil {
		ss.n.log.Warn("cluster: connection refused", "client", cl.ID, "err", err)
		cl.RefuseSession(packets.ErrServerUnavailable)
		return
	}
	if clean {
		ss.purgeQueue(o.key)
		return
	}
	if prev == nil || !prev.Persistent {
		return
	}
	if local, ok := ss.n.srv.Clients.Get(cl.ID); ok && prev.Node == ss.n.cfg.NodeID && local.Closed() {
		return // this node kept it: the engine has it
	}
	subs := make([]storage.Subscription, 0, len(prev.Subs))
	for _, s := range prev.Subs {
		subs = append(subs, storage.Subscription{Filter: s.Filter, Qos: s.Qos, NoLocal: s.NL, RetainAsPublished: s.RAP,
			RetainHandling: s.RH, Identifier: s.ID})
	}
	var inflight []storage.Message
	for _, id := range prev.Rel {
		inflight = append(inflight, storage.Message{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1},
			PacketID: id, Created: time.Now().Unix()})
	}
	ss.n.srv.RestoreSession(storage.Client{ID: cl.ID, ProtocolVersion: prev.Version, Username: prev.Username,
		Properties: storage.ClientProperties{SessionExpiryInterval: prev.Expiry, SessionExpiryIntervalFlag: prev.Version == 5}},
		subs, inflight)
}

// OnSessionEstablished starts feeding the queue: core NATS tells the node
// of every message appended to it.
func (h *sessionHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	ss := h.ss
	o := ss.ownedBy(cl)
	if o == nil || !o.rec.Persistent {
		return
	}
	var subs []*nats.Subscription
	if sub, err := ss.n.nc.Subscribe(queuePrefix+o.key, func(*nats.Msg) {
		o.expect.Store(true)
		ss.n.srv.FeedStored(cl)
	}); err == nil {
		subs = append(subs, sub)
	}
	if sub, err := ss.n.nc.Subscribe(wakePrefix+o.key, func(m *nats.Msg) {
		if seq, err := strconv.ParseUint(string(m.Data), 10, 64); err == nil {
			o.qmu.Lock()
			o.storedUpTo = max(o.storedUpTo, seq)
			o.qmu.Unlock()
		}
		ss.n.srv.FeedStored(cl)
	}); err == nil {
		subs = append(subs, sub)
	}
	o.qmu.Lock()
	o.wake = subs
	o.qmu.Unlock()
	// The first read waits until every other node has seen these
	// subscriptions: a wake published before would be lost (ci8: a
	// session that had just moved never got the next message). Not in
	// n.wg: a connection may come while the node closes; the barrier ends
	// with the node's context, and the engine starts no feed once it is
	// closed.
	go func() {
		ss.n.barrier()
		ss.n.srv.FeedStored(cl)
	}()
}

func (ss *sessions) stopFeed(o *ownedSession) {
	o.qmu.Lock()
	defer o.qmu.Unlock()
	for _, s := range o.wake {
		_ = s.Unsubscribe()
	}
	o.wake = nil
}

// OnDisconnect records the connection's end: a persistent session stays
// (not connected, with the time it left), another is deleted.
func (h *sessionHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	ss := h.ss
	o := ss.ownedBy(cl)
	if o == nil {
		return // taken over, or never claimed
	}
	ss.stopFeed(o)
	if expire || !o.rec.Persistent {
		ss.mu.Lock()
		delete(ss.owned, cl.ID)
		ss.mu.Unlock()
		ss.remove(o)
		return
	}
	// The flag atomically: the engine clears it from other goroutines
	// (ForgetSession, a takeover); the will's other fields stay as set at
	// connect.
	flag := atomic.LoadUint32(&cl.Properties.Will.Flag)
	w := &cl.Properties.Will
	_ = ss.update(o, func(r *sessionRec) {
		r.Connected = false
		r.Left = time.Now().Unix()
		r.Will, r.WillAt = nil, 0
		if flag != 0 && w.WillDelayInterval > 0 {
			// Waiting for its delay here; published by another node if
			// this one dies first.
			r.Will = &willRec{Topic: w.TopicName, Payload: w.Payload, Qos: w.Qos, Retain: w.Retain, User: w.User}
			r.WillAt = r.Left + int64(w.WillDelayInterval)
		}
	})
}

// OnWillSent clears a delayed will this node published from the record
// (a will sent at the connection's end is cleared by OnDisconnect).
func (h *sessionHook) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if cl == nil || !cl.Closed() {
		return
	}
	ss := h.ss
	ss.mu.Lock()
	o := ss.owned[cl.ID]
	ss.mu.Unlock()
	if o == nil || o.cl != cl || o.rec.Will == nil || o.rec.Connected {
		return
	}
	_ = ss.update(o, func(r *sessionRec) { r.Will, r.WillAt = nil, 0 })
}

// OnClientExpired deletes a session that expired here, and its queue.
func (h *sessionHook) OnClientExpired(cl *mqtt.Client) {
	ss := h.ss
	ss.mu.Lock()
	o := ss.owned[cl.ID]
	if o != nil {
		delete(ss.owned, cl.ID)
	}
	ss.mu.Unlock()
	if o == nil {
		return
	}
	ss.remove(o)
	ss.purgeQueue(o.key)
}

// OnSubscribed and OnUnsubscribed keep the record's subscriptions.
func (h *sessionHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	o := h.ss.ownedBy(cl)
	if o == nil || !o.rec.Persistent {
		return
	}
	_ = h.ss.update(o, func(r *sessionRec) {
		for i, f := range pk.Filters {
			if i < len(codes) && codes[i] >= 0x80 {
				continue
			}
			s := subRec{Filter: f.Filter, Qos: f.Qos, NL: f.NoLocal, RAP: f.RetainAsPublished, RH: f.RetainHandling, ID: f.Identifier}
			if i < len(codes) {
				s.Qos = codes[i]
			}
			r.Subs = upsertSub(r.Subs, s)
		}
	})
}

func (h *sessionHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	o := h.ss.ownedBy(cl)
	if o == nil || !o.rec.Persistent || cl.Closed() {
		return // a session dropped here, not an UNSUBSCRIBE
	}
	_ = h.ss.update(o, func(r *sessionRec) {
		for _, f := range pk.Filters {
			r.Subs = deleteSub(r.Subs, f.Filter)
		}
	})
}

func upsertSub(subs []subRec, s subRec) []subRec {
	for i := range subs {
		if subs[i].Filter == s.Filter {
			subs[i] = s
			return subs
		}
	}
	subs = append(subs, s)
	sort.Slice(subs, func(i, j int) bool { return subs[i].Filter < subs[j].Filter })
	return subs
}

func deleteSub(subs []subRec, filter string) []subRec {
	for i := range subs {
		if subs[i].Filter == filter {
			return append(subs[:i], subs[i+1:]...)
		}
	}
	return subs
}

// OnRoute queues a QoS 1/2 message for every persistent session whose
// subscription matches, cluster-wide, before the publisher's
// acknowledgement, and keeps the engine from delivering it to those
// sessions here: their node feeds it from the queue. A message relayed
// from another node was queued there.
func (h *sessionHook) OnRoute(cl *mqtt.Client, pk packets.Packet, r *mqtt.Route) error {
	ss := h.ss
	if pk.FixedHeader.Qos == 0 || len(pk.TopicName) >= len(mqtt.SysPrefix) && pk.TopicName[:len(mqtt.SysPrefix)] == mqtt.SysPrefix {
		return nil
	}
	targets, known := ss.persistentForAt(pk.TopicName)
	if len(targets) == 0 {
		return nil
	}
	if cl.Net.Relay {
		// Skipped here are the sessions the publishing node queued the
		// message for; one it did not know yet gets it live.
		if i := ss.n.relayIndex(cl.ID); i >= 0 && r != nil {
			if info := ss.n.shared.relay[i].Load(); info != nil {
				for _, id := range info.Queued {
					r.Skip(id)
				}
				if info.Known > 0 {
					for id, sub := range targets {
						if min(pk.FixedHeader.Qos, sub.Qos) > 0 && ss.knownBefore(id, info.Known) {
							r.Skip(id)
						}
					}
				}
			}
		}
		return nil
	}
	var buf *bytes.Buffer
	var errs []error
	var queued map[string][]string // node -> sessions connected there that got it queued
	for id, sub := range targets {
		qos := min(pk.FixedHeader.Qos, sub.Qos)
		if qos == 0 {
			continue // delivered live, at QoS 0
		}
		if r != nil {
			r.Skip(id)
		}
		if sub.NoLocal && id == cl.ID {
			continue
		}
		out := pk
		out.FixedHeader.Qos = qos
		out.FixedHeader.Retain = pk.FixedHeader.Retain && sub.RetainAsPublished
		if sub.Identifier > 0 {
			out.Properties.SubscriptionIdentifier = []int{sub.Identifier}
		}
		if buf == nil {
			buf = bufPool.Get().(*bytes.Buffer)
			defer bufPool.Put(buf)
		}
		buf.Reset()
		if err := encodeQueued(buf, &out); err != nil {
			return fmt.Errorf("cluster: encode: %w", err)
		}
		f, err := ss.n.js.PublishMsgAsync(&nats.Msg{Subject: queuePrefix + sessionKey(id), Data: bytes.Clone(buf.Bytes())}, ss.n.storeOpts...)
		if err != nil {
			errs = append(errs, fmt.Errorf("queue for %q: %w", id, err))
			continue
		}
		ss.n.queued.Add(1)
		ss.n.hook.hold(cl, futureWaiter{f})
		// A session connected elsewhere is named in that node's copy: its
		// subscriptions may have changed since this node's index (Known).
		node := ss.connectedAt(id)
		if node == "" || node == ss.n.cfg.NodeID {
			continue
		}
		if queued == nil {
			queued = map[string][]string{}
		}
		queued[node] = append(queued[node], id)
	}
	if queued != nil || buf != nil {
		ss.n.shared.queued.Store(pk.PublishID, &queuedFor{byNode: queued, known: known})
	}
	return ss.n.hook.failed(cl, errs)
}

// encodeQueued is encodeMessage keeping the subscription identifiers,
// which a queued message is delivered with.
func encodeQueued(buf *bytes.Buffer, pk *packets.Packet) error {
	ids := pk.Properties.SubscriptionIdentifier
	if err := encodeMessage(buf, pk); err != nil {
		return err
	}
	if len(ids) == 0 {
		return nil
	}
	// encodeMessage drops them (a routed message has none): append them
	// after the frame, which decodeQueued reads back.
	b, _ := json.Marshal(ids)
	buf.Write(b)
	var l [2]byte
	l[0], l[1] = byte(len(b)>>8), byte(len(b))
	buf.Write(l[:])
	buf.WriteByte('S')
	return nil
}

// decodeQueued reverses encodeQueued.
func decodeQueued(b []byte) (packets.Packet, error) {
	var ids []int
	if n := len(b); n > 3 && b[n-1] == 'S' {
		l := int(b[n-3])<<8 | int(b[n-2])
		if l+3 <= n-wireHeader && json.Unmarshal(b[n-3-l:n-3], &ids) == nil {
			b = b[:n-3-l]
		}
	}
	pk, err := decodeMessage(b)
	if err != nil {
		return pk, err
	}
	pk.Properties.SubscriptionIdentifier = ids
	return pk, nil
}

// NextStored reads up to n messages of cl's queue from the stream, from
// where the feed is.
func (h *sessionHook) NextStored(cl *mqtt.Client, n int) ([]packets.Packet, error) {
	ss := h.ss
	o := ss.ownedBy(cl)
	if o == nil {
		return nil, nil
	}
	// Read without o.qmu: the acknowledgements of what is in flight take
	// it, and a client's reads (with its acknowledgements) waited for
	// each read of its queue. The engine runs one batch at a time per
	// client, so nothing else moves the cursor meanwhile.
	o.qmu.Lock()
	o.batch, o.filed = o.batch[:0], 0
	from := max(o.cursor, 1)
	if o.drainedAt == from && o.storedUpTo < from && !o.expect.Load() {
		o.qmu.Unlock()
		return nil, nil
	}
	o.drainedAt = 0
	mustConfirm := !o.confirmed || o.storedUpTo >= from
	o.qmu.Unlock()
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	var (
		out     []packets.Packet
		seqs    []uint64
		dropped bool
		readErr error
		// confirmedNow: the leader found nothing; reachedEnd: a read
		// found the end of the queue.
		confirmedNow, reachedEnd bool
	)
	now := time.Now().Unix()
	next := from
	for asked := 0; len(out) < n; {
		msgs, end, err := ss.n.readQueue(ctx, queuePrefix+o.key, next, n-len(out))
		if err == nil && end && len(msgs) == 0 && len(out) == 0 && mustConfirm && asked < 4 {
			// Any replica answers a direct read, and one that has not
			// applied the last writes yet finds nothing where a message
			// is stored whose wake has come already (or came before the
			// barrier, and was lost). Then only the leader's answer lets
			// the feed go idle.
			asked++
			msgs, end, err = ss.leaderRead(ctx, queuePrefix+o.key, next)
			if err == nil && len(msgs) == 0 {
				confirmedNow = true
			}
		}
		for _, m := range msgs {
			next = m.seq + 1
			pk, err := decodeQueued(m.data)
			if err != nil {
				ss.n.malformed.Add(1)
				ss.n.log.Warn("cluster: dropping a malformed message from a session's queue", "key", o.key, "seq", m.seq, "err", err)
				dropped = true
				continue
			}
			if pk.Expiry > 0 && pk.Expiry < now {
				dropped = true
				continue
			}
			pk.FixedHeader.Dup = false
			out = append(out, pk)
			seqs = append(seqs, m.seq)
		}
		if err != nil {
			readErr = err
			break
		}
		if end {
			reachedEnd = true
			break
		}
	}
	o.qmu.Lock()
	defer o.qmu.Unlock()
	o.confirmed = o.confirmed || confirmedNow
	if reachedEnd && readErr == nil && (o.confirmed || !mustConfirm) {
		o.drainedAt = next
	}
	if readErr != nil && len(out) == 0 {
		if next > from {
			o.cursor = next // past dropped messages
		}
		ss.n.log.Debug("cluster: queue not read; asking again", "key", o.key, "err", readErr)
		return nil, mqtt.ErrFeedLater
	}
	o.cursor = next
	if dropped {
		ss.markDone(o) // the dropped ones are purged with the acknowledged
	}
	if len(out) == 0 {
		if o.expect.Swap(false) {
			return nil, mqtt.ErrFeedLater // told of a message not stored yet
		}
		if o.storedUpTo >= max(o.cursor, 1) {
			if o.missSince.IsZero() {
				o.missSince = time.Now()
			}
			if time.Since(o.missSince) < missWait {
				return nil, mqtt.ErrFeedLater // told it is stored, not found yet
			}
			ss.n.log.Warn("cluster: a queued message reported stored was not found", "key", o.key, "seq", o.storedUpTo, "from", o.cursor)
			o.storedUpTo = 0
		}
		o.missSince = time.Time{}
		return nil, nil
	}
	o.missSince = time.Time{}
	o.batch = append(o.batch, seqs...)
	// The cursor moves past what is filed only (QueuedStored).
	o.cursor = o.batch[0]
	return out, nil
}

// leaderRead reads the first message of subject from sequence from on
// from the stream's leader, which has every message stored.
func (ss *sessions) leaderRead(ctx context.Context, subject string, from uint64) ([]queued, bool, error) {
	m, err := ss.stream.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subject))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, true, nil
	case err != nil:
		return nil, false, fmt.Errorf("cluster: read %s: %w", subject, err)
	}
	return []queued{{seq: m.Sequence, data: m.Data}}, false, nil
}

// FiledStored maps the packet id the engine gave a message to its
// sequence, for the acknowledgement.
func (h *sessionHook) FiledStored(cl *mqtt.Client, pk packets.Packet) mqtt.AckWaiter {
	o := h.ss.ownedBy(cl)
	if o == nil {
		return nil
	}
	o.qmu.Lock()
	defer o.qmu.Unlock()
	if o.filed < len(o.batch) {
		o.inflight[pk.PacketID] = o.batch[o.filed]
		o.order = append(o.order, o.batch[o.filed])
		o.filed++
	}
	return nil
}

// QueuedStored moves the feed past the filed messages.
func (h *sessionHook) QueuedStored(cl *mqtt.Client) {
	o := h.ss.ownedBy(cl)
	if o == nil {
		return
	}
	o.qmu.Lock()
	defer o.qmu.Unlock()
	if o.filed > 0 {
		o.cursor = o.batch[o.filed-1] + 1
	}
	if o.filed < len(o.batch) {
		o.cursor = o.batch[o.filed]
	}
	o.batch, o.filed = o.batch[:0], 0
}

// OnQosComplete and OnQosDropped end a queued message's delivery: it is
// purged from the queue once nothing older is in flight.
func (h *sessionHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.done(cl, pk) }
func (h *sessionHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet)  { h.done(cl, pk) }

func (h *sessionHook) done(cl *mqtt.Client, pk packets.Packet) {
	o := h.ss.ownedBy(cl)
	if o == nil {
		return
	}
	o.qmu.Lock()
	if seq, ok := o.inflight[pk.PacketID]; ok {
		o.settle(pk.PacketID, seq)
		h.ss.markDone(o)
	}
	o.qmu.Unlock()
	if hasRel(o, pk.PacketID) {
		_ = h.ss.update(o, func(r *sessionRec) { r.Rel = deleteRel(r.Rel, pk.PacketID) })
	}
}

// ReadsPacket: OnPacketRead wants PUBRECs only.
func (h *sessionHook) ReadsPacket(t byte) bool { return t == packets.Pubrec }

// OnPacketRead takes a PUBREC for a queued QoS 2 message: the message
// leaves the queue and its packet id goes into the record's Rel, written
// before the PUBREL is, so a session resumed elsewhere sends PUBREL again
// and not the message.
func (h *sessionHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Pubrec || pk.ReasonCode >= 0x80 {
		return pk, nil
	}
	o := h.ss.ownedBy(cl)
	if o == nil {
		return pk, nil
	}
	o.qmu.Lock()
	seq, ok := o.inflight[pk.PacketID]
	o.qmu.Unlock()
	if !ok {
		return pk, nil
	}
	if err := h.ss.update(o, func(r *sessionRec) { r.Rel = append(deleteRel(r.Rel, pk.PacketID), pk.PacketID) }); err != nil {
		// Not recorded: the PUBREL is not sent (the connection ends),
		// so the client sends PUBREC again to whoever serves it next.
		return pk, fmt.Errorf("cluster: record PUBREC: %w", err)
	}
	o.qmu.Lock()
	if _, still := o.inflight[pk.PacketID]; still {
		o.settle(pk.PacketID, seq)
		h.ss.markDone(o)
	}
	o.qmu.Unlock()
	return pk, nil
}

func hasRel(o *ownedSession, id uint16) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range o.rec.Rel {
		if r == id {
			return true
		}
	}
	return false
}

func deleteRel(rel []uint16, id uint16) []uint16 {
	out := rel[:0:0]
	for _, r := range rel {
		if r != id {
			out = append(out, r)
		}
	}
	return out
}

// settle ends the delivery of the queued message seq, filed under packet
// id pid; under o.qmu.
func (o *ownedSession) settle(pid uint16, seq uint64) {
	delete(o.inflight, pid)
	o.settled[seq] = struct{}{}
	for len(o.order) > 0 {
		if _, ok := o.settled[o.order[0]]; !ok {
			break
		}
		delete(o.settled, o.order[0])
		o.order = o.order[1:]
	}
}

// markDone schedules the purge of o's queue below its oldest message still
// in flight or not yet read; under o.qmu.
func (ss *sessions) markDone(o *ownedSession) {
	lowest := o.cursor
	if len(o.order) > 0 {
		lowest = min(lowest, o.order[0])
	}
	if len(o.batch) > o.filed {
		lowest = min(lowest, o.batch[o.filed])
	}
	if lowest <= o.purged {
		return
	}
	o.purged = lowest
	ss.purgeMu.Lock()
	ss.toPurge[o.key] = lowest
	ss.purgeMu.Unlock()
	select {
	case ss.purgeKick <- struct{}{}:
	default:
	}
}

// purger purges acknowledged messages, one request per session per round.
func (ss *sessions) purger() {
	defer ss.n.wg.Done()
	for {
		select {
		case <-ss.n.ctx.Done():
			return
		case <-ss.purgeKick:
		}
		ss.purgeMu.Lock()
		work := ss.toPurge
		ss.toPurge = map[string]uint64{}
		ss.purgeMu.Unlock()
		for key, below := range work {
			ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
			err := ss.stream.Purge(ctx, jetstream.WithPurgeSubject(queuePrefix+key), jetstream.WithPurgeSequence(below))
			cancel()
			if err != nil && ss.n.ctx.Err() == nil {
				ss.n.log.Warn("cluster: acknowledged messages not purged; a resumed session may get them again", "key", key, "err", err)
			}
		}
	}
}
