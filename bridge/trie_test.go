package bridge

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// naiveMatch is the MQTT matching rule, written plainly, as the model the
// trie is checked against.
func naiveMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

func buildTrie(filters []string) (*trie, []*route) {
	t := &trie{}
	rs := make([]*route, len(filters))
	for i, f := range filters {
		rs[i] = &route{name: fmt.Sprint(i)}
		t.add(f, rs[i])
	}
	return t, rs
}

func names(rs []*route) []string {
	var n []string
	for _, r := range rs {
		n = append(n, r.name)
	}
	slices.Sort(n)
	return n
}

func TestTrieMatch(t *testing.T) {
	filters := []string{"a/b", "a/+", "a/#", "#", "+/b", "a/b/c", "+", "$SYS/#", "x/+/z", "a//b"}
	for _, tc := range []struct {
		topic string
	}{
		{"a/b"}, {"a"}, {"a/c"}, {"a/b/c"}, {"b"}, {"$SYS/x"}, {"$SYS"}, {"x/y/z"}, {"x/y"}, {"a//b"}, {"/b"}, {""},
	} {
		t.Run(tc.topic, func(t *testing.T) {
			tr, rs := buildTrie(filters)
			var want []string
			for i, f := range filters {
				if naiveMatch(f, tc.topic) {
					want = append(want, rs[i].name)
				}
			}
			slices.Sort(want)
			got := names(tr.match(tc.topic, nil))
			if !slices.Equal(got, want) {
				t.Fatalf("match(%q) = %v, want %v", tc.topic, got, want)
			}
		})
	}
}

func TestTrieRouteOnce(t *testing.T) {
	tr := &trie{}
	r := &route{name: "r"}
	tr.add("a/+", r)
	tr.add("a/#", r)
	tr.add("#", r)
	if got := tr.match("a/b", nil); len(got) != 1 {
		t.Fatalf("route matched %d times", len(got))
	}
}

// FuzzRouteMatch checks the trie against the plain matching rule.
func FuzzRouteMatch(f *testing.F) {
	f.Add("a/+/c", "a/b/c")
	f.Add("#", "$SYS/x")
	f.Add("a/#", "a")
	f.Add("+/+", "/")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if !validFilter(filter) || !validTopic(topic) {
			return
		}
		tr, _ := buildTrie([]string{filter})
		got := len(tr.match(topic, nil)) == 1
		if got != naiveMatch(filter, topic) {
			t.Fatalf("filter %q topic %q: trie %v, rule %v", filter, topic, got, !got)
		}
	})
}

func BenchmarkRouteMatch(b *testing.B) {
	many := make([]string, 1000)
	for i := range many {
		many[i] = fmt.Sprintf("devices/%d/+/telemetry", i)
	}
	for _, tc := range []struct {
		name    string
		filters []string
		topic   string
		want    int
	}{
		{"no-routes", nil, "devices/d1/telemetry", 0},
		{"1-route/no-match", []string{"devices/+/telemetry"}, "other/d1/telemetry", 0},
		{"1-route/match", []string{"devices/+/telemetry"}, "devices/d1/telemetry", 1},
		{"1000-routes/no-match", many, "other/d1/x/telemetry", 0},
		{"1000-routes/match", many, "devices/500/x/telemetry", 1},
		{"1000-routes/deep-no-match", many, "devices/500/x/telemetry/a/b/c/d", 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr, _ := buildTrie(tc.filters)
			var buf [8]*route
			b.ReportAllocs()
			for b.Loop() {
				if n := len(tr.match(tc.topic, buf[:0])); n != tc.want {
					b.Fatalf("matched %d, want %d", n, tc.want)
				}
			}
		})
	}
}
