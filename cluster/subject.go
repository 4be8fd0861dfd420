package cluster

import (
	"strings"
)

// MQTT topics become NATS subjects level by level: topic a/b/c is the
// tokens a.b.c. A NATS token cannot be empty nor hold '.', '*', '>' (as a
// whole token) or white space, all of which an MQTT level may, so a level
// is escaped: each such byte, and '%' itself, as %XX (upper-case hex), and
// an empty level as the token "%" (which no escaped level can be). A
// filter's '+' level becomes '*' and a last '#' level '>'; a topic level
// "*" is "%2A", so it never reads as a wildcard. See docs/cluster.md.

// needsEscape reports whether byte c cannot stand for itself in a token.
func needsEscape(c byte) bool {
	return c <= ' ' || c == '.' || c == '*' || c == '>' || c == '%' || c == 0x7f
}

const hexDigits = "0123456789ABCDEF"

// appendLevel appends level as one NATS token.
func appendLevel(b []byte, level string) []byte {
	if level == "" {
		return append(b, '%')
	}
	for i := 0; i < len(level); i++ {
		c := level[i]
		if needsEscape(c) {
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&0xf])
			continue
		}
		b = append(b, c)
	}
	return b
}

// appendTopic appends topic's levels, dot separated.
func appendTopic(b []byte, topic string) []byte {
	for {
		i := strings.IndexByte(topic, '/')
		if i < 0 {
			return appendLevel(b, topic)
		}
		b = append(appendLevel(b, topic[:i]), '.')
		topic = topic[i+1:]
	}
}

// filterSubjects returns the NATS subjects, under prefix (which ends in
// '.'), that together match what MQTT filter matches. A filter ending in
// "/#" needs two: MQTT's '#' also matches its parent level, NATS's '>' does
// not.
func filterSubjects(prefix, filter string) []string {
	b := []byte(prefix)
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if i > 0 {
			b = append(b, '.')
		}
		switch {
		case l == "+":
			b = append(b, '*')
		case l == "#" && i == len(levels)-1:
			if i == 0 {
				return []string{string(append(b, '>'))}
			}
			parent := string(b[:len(b)-1])
			return []string{parent, string(append(b, '>'))}
		default:
			b = appendLevel(b, l)
		}
	}
	return []string{string(b)}
}
