package cluster

import (
	"slices"
	"testing"
	"time"
)

// TestMembershipRelative: a node is out when its heartbeat lags the newest
// one stored by more than nodeTTL, whatever the clock says, so a bucket
// storing no heartbeats for a while (a leader election) drops no node.
func TestMembershipRelative(t *testing.T) {
	t0 := time.Now().Add(-time.Hour) // long ago: by the clock every beat is stale
	tests := []struct {
		name  string
		seen  map[string]time.Duration // offset from t0
		alive []string
	}{
		{"all current", map[string]time.Duration{"a": 0, "b": -time.Second, "c": -2 * time.Second}, []string{"a", "b", "c"}},
		{"one stopped", map[string]time.Duration{"a": 0, "b": -time.Second, "c": -6 * time.Second}, []string{"a", "b"}},
		{"at the limit", map[string]time.Duration{"a": 0, "b": -nodeTTL}, []string{"a", "b"}},
		{"only one", map[string]time.Duration{"a": 0}, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]Member{}
			for id, off := range tt.seen {
				m[id] = Member{ID: id, Seen: t0.Add(off)}
			}
			n := &Node{}
			n.members.Store(&m)
			var got []string
			for _, v := range n.Members() {
				got = append(got, v.ID)
			}
			if len(got) != len(tt.alive) {
				t.Fatalf("members %v, want %v", got, tt.alive)
			}
			for i := range got {
				if got[i] != tt.alive[i] {
					t.Fatalf("members %v, want %v", got, tt.alive)
				}
				if !n.isMember(got[i]) {
					t.Fatalf("isMember(%s) false", got[i])
				}
			}
			for id := range tt.seen {
				if !slices.Contains(tt.alive, id) && n.isMember(id) {
					t.Fatalf("isMember(%s) true", id)
				}
			}
		})
	}
}

// TestSubsChanged: a session's subscriptions count as changed when one is
// added or its options change (a QoS 0 subscription made QoS 1 was not
// queued for before), not when one is removed.
func TestSubsChanged(t *testing.T) {
	a := subRec{Filter: "a/#", Qos: 1}
	b := subRec{Filter: "b", Qos: 1}
	tests := []struct {
		name       string
		prev, next []subRec
		want       bool
	}{
		{"same", []subRec{a, b}, []subRec{a, b}, false},
		{"removed", []subRec{a, b}, []subRec{a}, false},
		{"added", []subRec{a}, []subRec{a, b}, true},
		{"qos changed", []subRec{{Filter: "a/#", Qos: 0}}, []subRec{a}, true},
		{"from none", nil, []subRec{a}, true},
	}
	for _, tt := range tests {
		if got := subsChanged(tt.prev, tt.next); got != tt.want {
			t.Errorf("%s: subsChanged = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestCanJudge: a node takes others for dead only once it has run for
// nodeTTL, stores its own heartbeats, and has stored them without a
// failure for nodeTTL (after an election of the bucket's leader every
// survivor's heartbeat lags the first one stored again).
func TestCanJudge(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name                  string
		started, beat, failed time.Duration // before now; failed 0: never
		want                  bool
	}{
		{"healthy", time.Minute, 500 * time.Millisecond, 0, true},
		{"just started", 2 * time.Second, 500 * time.Millisecond, 0, false},
		{"own heartbeats not stored", time.Minute, 4 * time.Second, 0, false},
		{"stored again after a failure", time.Minute, 500 * time.Millisecond, 2 * time.Second, false},
		{"failure long ago", time.Minute, 500 * time.Millisecond, nodeTTL + time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{started: now.Add(-tt.started)}
			n.lastBeat.Store(now.Add(-tt.beat).UnixNano())
			if tt.failed > 0 {
				n.beatFailed.Store(now.Add(-tt.failed).UnixNano())
			}
			if got := n.canJudge(now); got != tt.want {
				t.Fatalf("canJudge = %v, want %v", got, tt.want)
			}
		})
	}
}
