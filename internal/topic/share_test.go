package topic

import (
	"maps"
	"slices"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestDropUnreadableShares(t *testing.T) {
	readers := map[string]bool{"ops": true, "ops2": true}
	tests := []struct {
		name        string
		groups      map[string][]string // group -> members
		want        map[string][]string
		wantEmptied int
	}{
		{"readers stay, others go", map[string][]string{"g": {"ops", "alice"}}, map[string][]string{"g": {"ops"}}, 0},
		{"group without a reader is dropped", map[string][]string{"g": {"ops"}, "h": {"alice", "bob"}},
			map[string][]string{"g": {"ops"}}, 1},
		{"every group dropped", map[string][]string{"g": {"alice"}, "h": {"bob"}}, map[string][]string{}, 2},
		{"all readers", map[string][]string{"g": {"ops", "ops2"}}, map[string][]string{"g": {"ops", "ops2"}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shared := map[string]map[string]packets.Subscription{}
			for g, members := range tc.groups {
				shared[g] = map[string]packets.Subscription{}
				for _, id := range members {
					shared[g][id] = packets.Subscription{Filter: "$share/" + g + "/#"}
				}
			}
			if n := DropUnreadableShares(shared, func(id string) bool { return readers[id] }); n != tc.wantEmptied {
				t.Errorf("emptied %d groups, want %d", n, tc.wantEmptied)
			}
			got := map[string][]string{}
			for g, members := range shared {
				got[g] = slices.Sorted(maps.Keys(members))
			}
			if !maps.EqualFunc(got, tc.want, slices.Equal) {
				t.Errorf("left %v, want %v", got, tc.want)
			}
		})
	}
}
