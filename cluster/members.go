package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// beat writes this node's heartbeat: its id, start time and connection
// count. The bucket's TTL removes it when the node stops writing.
func (n *Node) beat(ctx context.Context) error {
	m := Member{ID: n.cfg.NodeID, Connections: atomic.LoadInt64(&n.srv.Info.ClientsConnected), Started: n.started}
	b, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := n.nodesKV.Put(ctx, n.cfg.NodeID, b); err != nil {
		msg := err.Error()
		n.beatError.Store(&msg)
		n.beatFailed.Store(time.Now().UnixNano())
		return err
	}
	n.lastBeat.Store(time.Now().UnixNano())
	return nil
}

// watchMembers follows the nodes bucket. Expired heartbeats leave no
// delete marker, so a member is current while its last heartbeat is
// younger than nodeTTL (Members).
func (n *Node) watchMembers(ctx context.Context) error {
	w, err := n.nodesKV.WatchAll(n.ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", nodesBucket, err)
	}
	apply := func(e jetstream.KeyValueEntry) {
		cur := *n.members.Load()
		next := make(map[string]Member, len(cur)+1)
		for k, v := range cur {
			next[k] = v
		}
		if e.Operation() != jetstream.KeyValuePut {
			delete(next, e.Key())
		} else {
			var m Member
			if json.Unmarshal(e.Value(), &m) != nil || m.ID != e.Key() {
				return
			}
			m.Seen = e.Created()
			next[m.ID] = m
		}
		n.members.Store(&next)
	}
	// The initial values end with a nil entry: the membership is known
	// before Start returns.
	for initial := true; initial; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("cluster: watch %s ended", nodesBucket)
			}
			if e == nil {
				initial = false
				continue
			}
			apply(e)
		case <-ctx.Done():
			_ = w.Stop()
			return fmt.Errorf("cluster: watch %s: %w", nodesBucket, ctx.Err())
		}
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					apply(e)
				}
			case <-n.ctx.Done():
				return
			}
		}
	}()
	return nil
}

func (n *Node) heartbeats() {
	defer n.wg.Done()
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if err := n.beat(n.ctx); err != nil && n.ctx.Err() == nil {
				n.log.Warn("cluster heartbeat not stored", "err", err)
			}
		}
	}
}

// Members returns the nodes whose heartbeat is current, by id.
func (n *Node) Members() []Member {
	m := *n.members.Load()
	ref := latestBeat(m)
	out := make([]Member, 0, len(m))
	for _, v := range m {
		if current(v, ref) {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// isMember says whether node's heartbeat is current.
func (n *Node) isMember(node string) bool {
	m := *n.members.Load()
	v, ok := m[node]
	return ok && current(v, latestBeat(m))
}

// latestBeat is the time of the newest heartbeat stored, this node's
// included. A node is judged by how far its heartbeat lags the newest one,
// not the clock: while the bucket stores no heartbeat at all (its stream
// electing a leader after a node died, or NATS away from this node) no
// node falls out of the membership. Judged by the clock, the survivors of
// a node killed with its embedded NATS took each other for dead during
// the election and dropped each other's sessions.
func latestBeat(m map[string]Member) time.Time {
	var ref time.Time
	for _, v := range m {
		if v.Seen.After(ref) {
			ref = v.Seen
		}
	}
	return ref
}

// current says whether v's heartbeat is at most nodeTTL older than ref.
func current(v Member, ref time.Time) bool { return ref.Sub(v.Seen) <= nodeTTL }

// barrierWait bounds how long barrier waits for one node's answer: a node
// frozen or cut off is not waited for longer.
const barrierWait = time.Second

// barrier returns once every other member has answered a request sent
// after the subscriptions this node made before the call: NATS sends a
// subscription to the other servers on the routes that then carry the
// request, so a node that answered publishes nothing the subscriptions
// miss. A node that does not answer within barrierWait is not waited
// for.
func (n *Node) barrier() {
	var wg sync.WaitGroup
	for _, m := range n.Members() {
		if m.ID == n.cfg.NodeID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(n.ctx, barrierWait)
			defer cancel()
			if _, err := n.nc.RequestWithContext(ctx, controlPrefix+m.ID+".ping", nil); err != nil && n.ctx.Err() == nil {
				n.log.Debug("cluster: node did not answer a ping", "node", m.ID, "err", err)
			}
		}()
	}
	wg.Wait()
}

// servePing answers other nodes' barrier requests.
func (n *Node) servePing() error {
	sub, err := n.nc.Subscribe(controlPrefix+n.cfg.NodeID+".ping", func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		return fmt.Errorf("cluster: subscribe ping: %w", err)
	}
	n.stop = append(n.stop, func() { _ = sub.Unsubscribe() })
	return nil
}
