package topic

import (
	"slices"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestDropDollarWildcardShares(t *testing.T) {
	groups := []string{"$share/g/#", "$share/g/+/x", "$share/h/$SYS/#", "$share/h/a/#", "$share/h/$foo/+"}
	tests := []struct {
		topic string
		want  []string
	}{
		{"a/b", groups}, // not a '$' topic: nothing removed
		{"$SYS/broker/uptime", []string{"$share/h/$SYS/#", "$share/h/$foo/+", "$share/h/a/#"}},
		{"$foo/x", []string{"$share/h/$SYS/#", "$share/h/$foo/+", "$share/h/a/#"}},
	}
	for _, tc := range tests {
		t.Run(tc.topic, func(t *testing.T) {
			shared := map[string]map[string]packets.Subscription{}
			for _, g := range groups {
				shared[g] = map[string]packets.Subscription{"c": {Filter: g}}
			}
			DropDollarWildcardShares(tc.topic, shared)
			var got []string
			for g := range shared {
				got = append(got, g)
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Fatalf("left %v, want %v", got, want)
			}
		})
	}
}

func TestSharedFilter(t *testing.T) {
	for full, want := range map[string]string{
		"$share/g/a/b": "a/b",
		"$share/g/#":   "#",
		"$share/g":     "",
		"a/b":          "",
		"$SYS/#":       "",
	} {
		if got := sharedFilter(full); got != want {
			t.Errorf("sharedFilter(%q) = %q, want %q", full, got, want)
		}
	}
}
