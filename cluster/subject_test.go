package cluster

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// topicOf reverses appendTopic: the topic a subject's tokens stand for.
func topicOf(t testing.TB, tokens string) string {
	t.Helper()
	levels := strings.Split(tokens, ".")
	for i, tok := range levels {
		if tok == "%" {
			levels[i] = ""
			continue
		}
		var sb strings.Builder
		for j := 0; j < len(tok); j++ {
			if tok[j] != '%' {
				sb.WriteByte(tok[j])
				continue
			}
			if j+2 >= len(tok) || strings.IndexByte(hexDigits, tok[j+1]) < 0 || strings.IndexByte(hexDigits, tok[j+2]) < 0 {
				t.Fatalf("token %q: bad escape at %d", tok, j)
			}
			sb.WriteByte(byte(strings.IndexByte(hexDigits, tok[j+1])<<4 | strings.IndexByte(hexDigits, tok[j+2])))
			j += 2
		}
		levels[i] = sb.String()
	}
	return strings.Join(levels, "/")
}

// validTokens checks what NATS requires of a literal subject's tokens.
func validTokens(t testing.TB, subject string) {
	t.Helper()
	for _, tok := range strings.Split(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			t.Fatalf("subject %q has invalid token %q", subject, tok)
		}
	}
}

func TestTopicSubject(t *testing.T) {
	for _, tc := range []struct{ topic, want string }{
		{"a/b/c", "a.b.c"},
		{"sensors/temp", "sensors.temp"},
		{"a.b/c", "a%2Eb.c"},
		{"/a", "%.a"},
		{"a//b", "a.%.b"},
		{"a/", "a.%"},
		{"*/>", "%2A.%3E"},
		{"100%/x y", "100%25.x%20y"},
		{"%", "%25"},
		{"tab\there", "tab%09here"},
		{"ünïcode/日本", "ünïcode.日本"},
		{"$SYS/x", "$SYS.x"},
	} {
		got := string(appendTopic(nil, tc.topic))
		if got != tc.want {
			t.Errorf("appendTopic(%q) = %q, want %q", tc.topic, got, tc.want)
		}
		validTokens(t, got)
		if back := topicOf(t, got); back != tc.topic {
			t.Errorf("topic %q -> %q -> %q", tc.topic, got, back)
		}
	}
}

func TestFilterSubjects(t *testing.T) {
	for _, tc := range []struct {
		filter string
		want   []string
	}{
		{"a/b", []string{"p.a.b"}},
		{"a/+/c", []string{"p.a.*.c"}},
		{"+", []string{"p.*"}},
		{"#", []string{"p.>"}},
		{"a/#", []string{"p.a", "p.a.>"}},
		{"+/#", []string{"p.*", "p.*.>"}},
		{"a.b/*/#", []string{"p.a%2Eb.%2A", "p.a%2Eb.%2A.>"}},
		{"/+", []string{"p.%.*"}},
	} {
		got := filterSubjects("p.", tc.filter)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("filterSubjects(%q) = %q, want %q", tc.filter, got, tc.want)
		}
	}
}

// FuzzTopicSubject: every valid topic maps to a valid subject that maps
// back to it, so two topics never share a subject.
func FuzzTopicSubject(f *testing.F) {
	for _, s := range []string{"a/b", "/", "a..b", "%2E", "x/*/>", " "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if topic == "" || !utf8.ValidString(topic) || strings.ContainsAny(topic, "+#\x00") {
			return
		}
		sub := string(appendTopic(nil, topic))
		validTokens(t, sub)
		if back := topicOf(t, sub); back != topic {
			t.Fatalf("topic %q -> %q -> %q", topic, sub, back)
		}
	})
}
