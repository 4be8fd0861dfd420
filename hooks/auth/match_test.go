package auth

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"allowed", "allowed", true},
		{"allowed", "allowed/secret", false},
		{"allowed/secret", "allowed", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/+", "a/", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a", true},
		{"#", "/", true},
		{"#", "$SYS/x", false},
		{"#", "$SYS", false},
		{"+/x", "$SYS/x", false},
		{"+", "$x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/#", "$SYS", true},
		{"$SYS/+", "$SYS/x", true},
		{"a/$SYS", "a/$SYS", true},
		{"+/$x", "a/$x", true},
		{"a/+/c", "a//c", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"sport/tennis/#", "sport/tennis", true},
		{"sport/tennis/#", "sport/tennis/player1", true},
		{"sport/tennis/#", "sport/tennisplayer1", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"/", "/", true},
		{"a//b", "a//b", true},
		{"a//b", "a/b", false},
		{"+/+/+", "a/b/c", true},
		{"+/+/+", "a/b", false},
		{"a/b", "a/b/", false},
		{"a/b/", "a/b/", true},
		{"", "a", false},
		{"a", "", false},
		{"a/#/b", "a/x/b", false}, // malformed filter matches nothing
		{"a/+", "a/+", false},     // a topic may not contain wildcards
		{"a/#", "a/#", false},     // neither
		{"A", "a", false},         // case-sensitive
		{"ü/+", "ü/ß", true},      // UTF-8 levels
		{"a/b#", "a/b#", false},   // wildcard inside a level is no topic
		{"devices/alice/#", "devices/alice", true},
	}
	for _, tt := range tests {
		if got := Match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		acl, sub string
		want     bool
	}{
		{"a/#", "a/#", true},
		{"a/+", "a/#", false},
		{"a/#", "a/+", true},
		{"a/#", "a", true},
		{"a/#", "a/b/+/d", true},
		{"a/+", "a/+", true},
		{"a/+", "a/b", true},
		{"a/b", "a/+", false},
		{"a/+", "a/+/c", false},
		{"a/+/#", "a/b", true},
		{"#", "#", true},
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/x", false},
		{"$SYS/#", "$SYS/+", true},
		{"$SYS/#", "#", false},
		{"+", "+", true},
		{"+", "#", false},
		{"a", "a", true},
		{"a", "a/b", false},
		{"a/b", "a", false},
		{"", "a", false},
		{"a", "", false},
	}
	for _, tt := range tests {
		if got := MatchFilter(tt.acl, tt.sub); got != tt.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", tt.acl, tt.sub, got, tt.want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a/+", "a/#", true},
		{"a/+", "a/b/c", false},
		{"a/+", "+/b", true},
		{"a/#", "a", true},
		{"a", "a/#", true},
		{"a/b", "a/c", false},
		{"#", "$SYS/#", false},
		{"$SYS/#", "+/x", false},
		{"+/x", "#", true},
		{"a/+/c", "a/b/+", true},
		{"a/+", "a/+/+", false},
		{"x", "y", false},
	}
	for _, tt := range tests {
		if got := overlaps(tt.a, tt.b); got != tt.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := overlaps(tt.b, tt.a); got != tt.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v (symmetry)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestValidFilterAndShare(t *testing.T) {
	valid := []string{"a", "#", "+", "a/+/#", "/", "a//b", "$SYS/#", "+/+"}
	invalid := []string{"", "a#", "a/#/b", "a+", "a/b+/c", "##"}
	for _, f := range valid {
		if !validFilter(f) {
			t.Errorf("validFilter(%q) = false, want true", f)
		}
	}
	for _, f := range invalid {
		if validFilter(f) {
			t.Errorf("validFilter(%q) = true, want false", f)
		}
	}
	shares := []struct {
		in, out string
		ok      bool
	}{
		{"$share/g/a/b", "a/b", true},
		{"$share/g/#", "#", true},
		{"$share/g", "", false},
		{"$share/g/", "", false},
		{"a/b", "a/b", true},
	}
	for _, s := range shares {
		out, ok := stripShare(s.in)
		if out != s.out || ok != s.ok {
			t.Errorf("stripShare(%q) = %q, %v; want %q, %v", s.in, out, ok, s.out, s.ok)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Match("devices/+/telemetry/#", "devices/alice/telemetry/temp/1")
	}
}
