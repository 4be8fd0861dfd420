package cluster

import (
	"bytes"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Shared subscriptions span the cluster: each message goes to one member
// of each group ($share/<group>/<filter>) across all nodes. The node where
// it is published chooses the node, in turn among those with members of
// the group (itself included), and its engine picks the member there:
//   - when this node is chosen, its engine delivers to a local member as
//     on a single node;
//   - when another node is, this node's engine leaves the group out
//     (OnSelectSubscribers) and the copy for that node names the group;
//   - a node delivers a copy from another node to its members of the
//     groups the copy names, and to no other group.
// A copy for a node that has no plain subscriber of the topic (only
// chosen group members) says so, and that node delivers to the groups
// only.

// routeInfo is what a copy for a node carries besides the message.
type routeInfo struct {
	Shares  []string `json:"s,omitempty"`  // groups ($share/g/f) to deliver to here
	NoPlain bool     `json:"np,omitempty"` // deliver to those groups only
	// Queued are the persistent sessions connected here that the message
	// was queued for: their queue brings it, not this copy.
	Queued []string `json:"q,omitempty"`
	// Known is the publishing node's watermark in the sessions bucket:
	// it had applied every record up to this revision, so it queued the
	// message for every persistent session whose subscription was in
	// the bucket by then. A node skips those sessions here (their queue
	// brings the message); a session that subscribed later gets the copy.
	Known uint64 `json:"k,omitempty"`
}

// queuedFor is, for a message queued for persistent sessions, what the
// copies for other nodes name (routeInfo.Queued and Known).
type queuedFor struct {
	byNode map[string][]string // node -> sessions connected there
	known  uint64
}

// shareChoice is the nodes this node chose, in OnSelectSubscribers, for
// the groups it has local members of, kept until OnRoute sends the copies.
type shareChoice map[string][]string // node -> groups

// shared is the node's state for shared subscriptions.
type shared struct {
	n       *Node
	turn    sync.Map                     // group -> *atomic.Uint64, round robin
	pending sync.Map                     // publish id -> shareChoice
	queued  sync.Map                     // publish id -> *queuedFor
	relay   [2]atomic.Pointer[routeInfo] // what the copy being delivered by relay i names
}

// pick chooses one of nodes (sorted) for group, in turn.
func (s *shared) pick(group string, nodes []string) string {
	v, _ := s.turn.LoadOrStore(group, new(atomic.Uint64))
	i := v.(*atomic.Uint64).Add(1)
	return nodes[int(i%uint64(len(nodes)))]
}

// remoteShares returns, for each group matching topic that other nodes
// have members of, those nodes, sorted.
func (s *shared) remoteShares(topic string) map[string][]string {
	in := s.n.interest
	in.rmu.RLock()
	defer in.rmu.RUnlock()
	subs := in.remote.SubscribersReadOnly(topic)
	if len(subs.Shared) == 0 {
		return nil
	}
	out := make(map[string][]string, len(subs.Shared))
	for group, nodes := range subs.Shared {
		ns := make([]string, 0, len(nodes))
		for node := range nodes {
			ns = append(ns, node)
		}
		sort.Strings(ns)
		out[group] = ns
	}
	return out
}

// relayIndex says which relay client cl is, or -1.
func (n *Node) relayIndex(origin string) int {
	switch origin {
	case n.relay0.ID:
		return 0
	case n.relay1.ID:
		return 1
	}
	return -1
}

// OnSelectSubscribers leaves out of a message's route the groups another
// node serves: for a copy from another node, every group it does not
// name (and the plain subscribers when it says so); for a message
// published here, the groups it chooses another node for.
func (h *hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	n := h.n
	if i := n.relayIndex(pk.Origin); i >= 0 {
		info := n.shared.relay[i].Load()
		keep := map[string]bool{}
		if info != nil {
			for _, g := range info.Shares {
				keep[g] = true
			}
			if info.NoPlain {
				clear(subs.Subscriptions)
			}
		}
		for g := range subs.Shared {
			if !keep[g] {
				delete(subs.Shared, g)
			}
		}
		return subs
	}
	remote := n.shared.remoteShares(pk.TopicName)
	var choice shareChoice
	for g := range subs.Shared {
		nodes := remote[g]
		if len(nodes) == 0 {
			continue // members here only
		}
		all := append(append(make([]string, 0, len(nodes)+1), nodes...), n.cfg.NodeID)
		sort.Strings(all)
		if to := n.shared.pick(g, all); to != n.cfg.NodeID {
			delete(subs.Shared, g)
			if choice == nil {
				choice = shareChoice{}
			}
			choice[to] = append(choice[to], g)
		}
	}
	if choice != nil {
		n.shared.pending.Store(pk.PublishID, choice)
	}
	return subs
}

// shareTargets returns the groups each other node is to deliver pk to:
// those OnSelectSubscribers chose it for, and the groups with members on
// other nodes only.
func (n *Node) shareTargets(pk *packets.Packet) shareChoice {
	var out shareChoice
	if v, ok := n.shared.pending.LoadAndDelete(pk.PublishID); ok {
		out = v.(shareChoice)
	}
	remote := n.shared.remoteShares(pk.TopicName)
	if len(remote) == 0 {
		return out
	}
	local := n.srv.Topics.SubscribersReadOnly(pk.TopicName).Shared
	for g, nodes := range remote {
		if _, here := local[g]; here {
			continue // decided in OnSelectSubscribers
		}
		if out == nil {
			out = shareChoice{}
		}
		to := n.shared.pick(g, nodes)
		out[to] = append(out[to], g)
	}
	return out
}

// appendRouteInfo appends info to a frame: JSON, its length (2 bytes)
// and 'R'.
func appendRouteInfo(buf *bytes.Buffer, info routeInfo) {
	b, _ := json.Marshal(info)
	buf.Write(b)
	buf.WriteByte(byte(len(b) >> 8))
	buf.WriteByte(byte(len(b)))
	buf.WriteByte('R')
}

// splitRouteInfo takes the route info off a frame.
func splitRouteInfo(b []byte) ([]byte, routeInfo) {
	var info routeInfo
	n := len(b)
	if n < 3 || b[n-1] != 'R' {
		return b, info
	}
	l := int(b[n-3])<<8 | int(b[n-2])
	if l+3 > n-wireHeader || json.Unmarshal(b[n-3-l:n-3], &info) != nil {
		return b, routeInfo{}
	}
	return b[:n-3-l], info
}
