package cluster

import (
	"context"
	"encoding/json"
	"math"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go/jetstream"
)

// sweepEvery is how often a node looks for sessions whose node died,
// wills due, and sessions expired.
const sweepEvery = time.Second

// The sweeper does, on every node, what a dead node can no longer do for
// its sessions; each change is a compare-and-set, so exactly one node
// does it:
//   - a session connected to a node whose heartbeat stopped (or to this
//     node before it restarted) is marked disconnected, its will due after
//     its delay; a session that ended with its connection is deleted and
//     its will published at once;
//   - a will due for a session not connected, whose node is dead (or which
//     this node no longer has), is published;
//   - a persistent session disconnected for longer than its expiry is
//     deleted with its queue.
func (ss *sessions) sweeper() {
	defer ss.n.wg.Done()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ss.n.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if !ss.n.canJudge(now) {
			continue
		}
		ss.sweep(now)
		ss.n.interest.sweepDead(now)
	}
}

// canJudge says whether this node may take another node for dead now:
//   - it has run for nodeTTL, so it has seen a heartbeat of every live
//     node;
//   - its own heartbeats are being stored: one that cannot store them
//     cannot tell a dead node from its own trouble reaching NATS;
//   - they have been stored without a failure for nodeTTL. After the
//     bucket stored nothing for a while (its leader died or froze), the
//     first node to store a heartbeat again saw every other one lagging
//     and took them for dead (ci8: a subscriber that had just moved to a
//     live node was disconnected); the others store theirs within a few
//     heartbeats once the bucket has a leader.
func (n *Node) canJudge(now time.Time) bool {
	last, failed := time.Unix(0, n.lastBeat.Load()), time.Unix(0, n.beatFailed.Load())
	return now.Sub(n.started) >= nodeTTL &&
		now.Sub(last) <= 2*heartbeatEvery+time.Second &&
		now.Sub(failed) > nodeTTL
}

type sweepItem struct {
	rec sessionRec
	rev uint64
}

func (ss *sessions) sweep(now time.Time) {
	ss.imu.RLock()
	var work []sweepItem
	for id, rec := range ss.records {
		work = append(work, sweepItem{rec: rec, rev: ss.revs[id]})
	}
	ss.imu.RUnlock()
	self := ss.n.cfg.NodeID
	for _, it := range work {
		rec := it.rec
		gone := rec.Node != self && !ss.n.isMember(rec.Node)
		if rec.Node == self {
			// This node's own records are swept only if they are left from
			// before it restarted (and not claimed again since).
			ss.imu.RLock()
			conn, stale := ss.staleSelf[rec.ID]
			ss.imu.RUnlock()
			gone = stale && conn == rec.Conn
		}
		switch {
		case rec.Connected && gone:
			ss.nodeLost(rec, it.rev, now)
		case !rec.Connected && rec.Will != nil && gone && rec.WillAt <= now.Unix():
			next := rec
			next.Will, next.WillAt = nil, 0
			if ss.cas(rec.ID, it.rev, &next) {
				ss.n.publishWill(rec.Will)
			}
		case !rec.Connected && rec.Persistent && rec.Will == nil && gone && expired(rec, now):
			if ss.delete(rec.ID, it.rev) {
				ss.purgeQueue(sessionKey(rec.ID))
			}
		}
	}
}

func expired(rec sessionRec, now time.Time) bool {
	return rec.Expiry != math.MaxUint32 && rec.Left+int64(rec.Expiry) < now.Unix()
}

// nodeLost ends a session whose node died while it was connected.
func (ss *sessions) nodeLost(rec sessionRec, rev uint64, now time.Time) {
	will := rec.Will
	if !rec.Persistent {
		if ss.delete(rec.ID, rev) && will != nil {
			ss.n.publishWill(will) // the session ended: no delay [MQTT-3.1.3-9]
		}
		return
	}
	next := rec
	next.Connected = false
	next.Left = now.Unix()
	next.Will, next.WillAt = nil, 0
	if will != nil && will.Delay > 0 {
		next.Will, next.WillAt = will, next.Left+int64(will.Delay)
	}
	if ss.cas(rec.ID, rev, &next) {
		ss.n.log.Info("cluster: session's node is gone; session kept disconnected", "client", rec.ID, "node", rec.Node)
		if will != nil && will.Delay == 0 {
			// Written first: a node that dies now leaves the will unsent
			// rather than sent twice.
			ss.n.publishWill(will)
		}
	}
}

func (ss *sessions) cas(id string, rev uint64, rec *sessionRec) bool {
	b, _ := json.Marshal(rec)
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	_, err := ss.kv.Update(ctx, sessionKey(id), b, rev)
	return err == nil
}

func (ss *sessions) delete(id string, rev uint64) bool {
	ctx, cancel := context.WithTimeout(ss.n.ctx, 5*time.Second)
	defer cancel()
	return ss.kv.Delete(ctx, sessionKey(id), jetstream.LastRevision(rev)) == nil
}

// publishWill publishes a will as any message published on this node:
// to every node, retained in the bucket, queued for persistent sessions.
func (n *Node) publishWill(w *willRec) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: w.Qos, Retain: w.Retain},
		TopicName:   w.Topic,
		Payload:     w.Payload,
		Properties:  packets.Properties{User: w.User},
		Created:     time.Now().Unix(),
	}
	if w.Qos > 0 {
		pk.PacketID = 1 // required at QoS > 0, refused at 0; the inline client is never acknowledged
	}
	if err := n.srv.InjectPacket(n.willClient, pk); err != nil {
		n.log.Warn("cluster: will not published", "topic", w.Topic, "err", err)
	}
}

// engineWill is the engine's will publisher (mqtt.Server.SetWillPublisher).
func (n *Node) engineWill(_ *mqtt.Client, pk packets.Packet) {
	pk.Connect = packets.ConnectParams{}
	pk.Expiry = 0 // it held the will's delay
	pk.PacketID = 0
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1
	}
	if err := n.srv.InjectPacket(n.willClient, pk); err != nil {
		n.log.Warn("cluster: will not published", "topic", pk.TopicName, "err", err)
	}
}
