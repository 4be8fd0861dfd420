package limits

import "strings"

// violation is the limit a topic name or filter breaks.
type violation uint8

const (
	topicOK       violation = iota
	topicTooLong            // more bytes than MaxTopicLength
	topicTooDeep            // more levels than MaxTopicLevels
	topicWildcard           // '+' or '#' in a topic name (PUBLISH)
)

func (v violation) String() string {
	switch v {
	case topicTooLong:
		return "topic too long"
	case topicTooDeep:
		return "topic too deep"
	case topicWildcard:
		return "wildcard in topic name"
	}
	return "ok"
}

// sharePrefix starts a shared subscription filter, "$share/group/filter".
// mochi compares it without regard to case, and so do we.
const sharePrefix = "$share/"

// checkTopic checks a topic name (isName: from a PUBLISH) or a topic filter
// (from a SUBSCRIBE) against the limits. It runs on every PUBLISH, so it
// must not allocate: len, strings.ContainsAny with ASCII and strings.Count
// do not.
func checkTopic(topic string, maxLen, maxLevels int, isName bool) violation {
	if len(topic) > maxLen {
		return topicTooLong
	}
	if isName && (strings.IndexByte(topic, '+') >= 0 || strings.IndexByte(topic, '#') >= 0) {
		return topicWildcard
	}
	if !isName {
		topic = stripShare(topic)
	}
	// n bytes hold at most n+1 levels, so short topics skip the count.
	if len(topic) >= maxLevels && strings.Count(topic, "/")+1 > maxLevels {
		return topicTooDeep
	}
	return topicOK
}

// stripShare returns the filter of a shared subscription without its
// "$share/group/" prefix, so that the group does not count as levels.
func stripShare(filter string) string {
	if len(filter) < len(sharePrefix) || !strings.EqualFold(filter[:len(sharePrefix)], sharePrefix) {
		return filter
	}
	rest := filter[len(sharePrefix):]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i+1:]
	}
	return rest
}
