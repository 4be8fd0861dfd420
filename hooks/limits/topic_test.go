package limits

import (
	"strings"
	"testing"
)

func TestCheckTopic(t *testing.T) {
	tests := []struct {
		topic         string
		maxLen, depth int
		isName        bool
		want          violation
	}{
		{"a/b/c", 5, 3, true, topicOK},
		{"a/b/c", 4, 3, true, topicTooLong},
		{"a/b/c", 5, 2, true, topicTooDeep},
		{"a/b/c/", 6, 3, true, topicTooDeep}, // trailing empty level counts
		{"/", 1, 1, true, topicTooDeep},
		{"/", 1, 2, true, topicOK},
		{"a/+/c", 5, 3, true, topicWildcard},
		{"a/+/c", 5, 3, false, topicOK},
		{"#", 1, 1, true, topicWildcard},
		{"#", 1, 1, false, topicOK},
		{"a+b", 3, 1, true, topicWildcard}, // mochi refuses it too, silently
		{"$share/g/a/b", 12, 2, false, topicOK},
		{"$SHARE/g/a/b", 12, 2, false, topicOK},
		{"$share/g/a/b/c", 14, 2, false, topicTooDeep},
		{"$share/g/a/b", 12, 2, true, topicTooDeep}, // a topic name is never shared
		{"$share/g", 8, 1, false, topicOK},
		{"$share/", 7, 1, false, topicOK},
		{"", 1, 1, true, topicOK},
		{strings.Repeat("a/", 200) + "a", 1000, 201, false, topicOK},
		{strings.Repeat("a/", 200) + "a", 1000, 200, false, topicTooDeep},
		{"é/ü", 5, 2, true, topicOK}, // bytes, not runes
		{"é/ü", 4, 2, true, topicTooLong},
	}
	for _, tt := range tests {
		if got := checkTopic(tt.topic, tt.maxLen, tt.depth, tt.isName); got != tt.want {
			t.Errorf("checkTopic(%.30q, len %d, levels %d, name %v) = %v, want %v",
				tt.topic, tt.maxLen, tt.depth, tt.isName, got, tt.want)
		}
	}
}

// refCheckTopic is checkTopic written the obvious, allocating way.
func refCheckTopic(topic string, maxLen, maxLevels int, isName bool) violation {
	if len(topic) > maxLen {
		return topicTooLong
	}
	if isName && (strings.Contains(topic, "+") || strings.Contains(topic, "#")) {
		return topicWildcard
	}
	levels := strings.Split(topic, "/")
	if !isName && len(levels) >= 2 && strings.ToLower(levels[0]) == "$share" {
		if len(levels) > 2 {
			levels = levels[2:]
		} else {
			levels = levels[1:]
		}
	}
	if len(levels) > maxLevels {
		return topicTooDeep
	}
	return topicOK
}

func FuzzCheckTopic(f *testing.F) {
	for _, seed := range []string{
		"", "/", "a/b/c", "a/+/c", "sensors/#", "$share/g/a/b", "$SHARE/g", "$share/",
		"$SYS/broker/uptime", strings.Repeat("/", 300), "é/ü/\xff", "a\x00b",
	} {
		f.Add(seed, uint16(8), uint8(3), true)
		f.Add(seed, uint16(65535), uint8(128), false)
	}
	f.Fuzz(func(t *testing.T, topic string, maxLen uint16, maxLevels uint8, isName bool) {
		ml, lv := int(maxLen)+1, int(maxLevels)+1 // Validate requires >= 1
		got := checkTopic(topic, ml, lv, isName)
		if want := refCheckTopic(topic, ml, lv, isName); got != want {
			t.Fatalf("checkTopic(%q, %d, %d, %v) = %v, reference says %v", topic, ml, lv, isName, got, want)
		}
	})
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("a", maxLoggedTopic-1) + "é" // é straddles the cut
	tests := []struct{ in, want string }{
		{"short", "short"},
		{strings.Repeat("a", maxLoggedTopic), strings.Repeat("a", maxLoggedTopic)},
		{strings.Repeat("a", maxLoggedTopic+1), strings.Repeat("a", maxLoggedTopic) + "…"},
		{long + "b", strings.Repeat("a", maxLoggedTopic-1) + "…"},
	}
	for _, tt := range tests {
		if got := truncate(tt.in); got != tt.want {
			t.Errorf("truncate(%d bytes) = %d bytes %.10q…, want %d bytes", len(tt.in), len(got), got, len(tt.want))
		}
	}
}
