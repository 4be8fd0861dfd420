package auth

import "strings"

// Match reports whether the MQTT topic name matches the topic filter, using
// the matching rules of MQTT 3.1.1 §4.7 and MQTT 5 §4.7.
//
// The filter may contain the wildcards "+" (exactly one level) and "#" (this
// level and every level below, including none: "a/#" matches "a"). The topic
// must not contain wildcards; a topic that does never matches. A filter whose
// first level is a wildcard does not match a topic that starts with "$"
// (§4.7.2), so "#" does not match "$SYS/x" but "$SYS/#" does. Empty levels
// are levels like any other: "a/+/c" matches "a//c".
//
// Match does not allocate; it runs for every message delivered to a client.
func Match(filter, topic string) bool {
	if filter == "" || topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	if topic[0] == '$' && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := cutLevel(filter)
		tl, trest, tmore := cutLevel(topic)
		switch {
		case fl == "#":
			// "#" must be the last level of a valid filter; a malformed one
			// matches nothing rather than everything.
			return !fmore
		case fl == "+":
		case fl != tl:
			return false
		}
		if !fmore || !tmore {
			if fmore == tmore {
				return true
			}
			// The topic ended but the filter goes on: only a trailing "#"
			// still matches ("a/#" matches "a").
			return !tmore && frest == "#"
		}
		filter, topic = frest, trest
	}
}

// MatchFilter reports whether every topic matched by the subscription filter
// sub is also matched by the ACL filter acl: a subscription to "a/#" is
// covered by an ACL "a/#" but not by "a/+", and "a/+" is covered by "a/#".
// A filter whose first level is a wildcard never covers a subscription whose
// first level starts with "$".
func MatchFilter(acl, sub string) bool {
	if acl == "" || sub == "" {
		return false
	}
	if sub[0] == '$' && (acl[0] == '+' || acl[0] == '#') {
		return false
	}
	for {
		al, arest, amore := cutLevel(acl)
		sl, srest, smore := cutLevel(sub)
		switch {
		case al == "#":
			return !amore
		case sl == "#":
			// Only "#" covers "#"; handled above.
			return false
		case al == "+":
		case al != sl || sl == "+":
			return false
		}
		if !amore || !smore {
			if amore == smore {
				return true
			}
			return !smore && arest == "#"
		}
		acl, sub = arest, srest
	}
}

// overlaps reports whether at least one topic name is matched by both
// filters a and b.
func overlaps(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	// Both filters start with a wildcard: they share every topic not
	// starting with "$". One wildcard against a "$" literal: nothing shared.
	aw, bw := a[0] == '+' || a[0] == '#', b[0] == '+' || b[0] == '#'
	if (aw && !bw && b[0] == '$') || (bw && !aw && a[0] == '$') {
		return false
	}
	for {
		al, arest, amore := cutLevel(a)
		bl, brest, bmore := cutLevel(b)
		switch {
		case al == "#" || bl == "#":
			return true
		case al == "+" || bl == "+":
		case al != bl:
			return false
		}
		if !amore || !bmore {
			switch {
			case amore == bmore:
				return true
			case amore:
				return arest == "#"
			default:
				return brest == "#"
			}
		}
		a, b = arest, brest
	}
}

// cutLevel splits s at its first "/": the first level, the rest, and whether
// there was a rest (so that "a/" yields "a", "", true).
func cutLevel(s string) (level, rest string, more bool) {
	i := strings.IndexByte(s, '/')
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// validFilter reports whether f is a well-formed MQTT topic filter: not
// empty, "#" only as a whole last level, "+" only as a whole level.
func validFilter(f string) bool {
	if f == "" {
		return false
	}
	for {
		l, rest, more := cutLevel(f)
		if strings.ContainsAny(l, "+#") && l != "+" && l != "#" {
			return false
		}
		if l == "#" && more {
			return false
		}
		if !more {
			return true
		}
		f = rest
	}
}

// stripShare returns the topic filter of a shared subscription
// ("$share/group/filter" becomes "filter"); other filters are returned as they
// are. ok is false for a malformed shared subscription.
func stripShare(f string) (filter string, ok bool) {
	rest, found := strings.CutPrefix(f, "$share/")
	if !found {
		return f, true
	}
	_, filter, more := cutLevel(rest)
	return filter, more && filter != ""
}
