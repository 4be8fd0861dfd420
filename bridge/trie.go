package bridge

import "strings"

// trie matches MQTT topics against the topic filters of every egress route.
// A match walks one node per topic level (plus the '+' and '#' branches),
// so its cost grows with the topic's depth, not with the number of routes;
// a topic whose first level no filter names costs a map lookup or two.
// The trie is built once in New and only read afterwards: no locking.
type trie struct {
	root node
}

type node struct {
	children map[string]*node
	plus     *node
	routes   []*route // filters ending here
	hash     []*route // filters ending in '#' here ("a/#" matches "a" too)
}

// add inserts filter for r. The filter must be valid.
func (t *trie) add(filter string, r *route) {
	n := &t.root
	for {
		level, rest, more := strings.Cut(filter, "/")
		switch level {
		case "#":
			n.hash = appendOnce(n.hash, r)
			return
		case "+":
			if n.plus == nil {
				n.plus = &node{}
			}
			n = n.plus
		default:
			if n.children == nil {
				n.children = map[string]*node{}
			}
			c := n.children[level]
			if c == nil {
				c = &node{}
				n.children[level] = c
			}
			n = c
		}
		if !more {
			n.routes = appendOnce(n.routes, r)
			return
		}
		filter = rest
	}
}

func appendOnce(rs []*route, r *route) []*route {
	for _, x := range rs {
		if x == r {
			return rs
		}
	}
	return append(rs, r)
}

// match appends to dst every route whose filters match topic, each once,
// and returns it. It does not allocate unless dst must grow or the topic
// has more wildcard branches than the fixed stack holds. Per MQTT, filters
// starting with a wildcard do not match topics starting with '$'.
//
// The walk is iterative (an explicit stack) rather than recursive so that
// dst, and the caller's array behind it, stays on the caller's stack.
func (t *trie) match(topic string, dst []*route) []*route {
	if t.root.children == nil && t.root.plus == nil && t.root.hash == nil {
		return dst
	}
	type frame struct {
		n      *node
		topic  string
		noWild bool
	}
	var arr [16]frame
	stack := append(arr[:0], frame{&t.root, topic, strings.HasPrefix(topic, "$")})
	for len(stack) > 0 {
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		level, rest, more := strings.Cut(f.topic, "/")
		// Only the first level of a '$' topic is exempt from wildcards.
		if !f.noWild {
			for _, r := range f.n.hash {
				dst = addRoute(dst, r)
			}
		}
		for i, c := range [2]*node{f.n.children[level], f.n.plus} {
			if c == nil || (i == 1 && f.noWild) {
				continue
			}
			if more {
				stack = append(stack, frame{c, rest, false})
				continue
			}
			for _, r := range c.routes {
				dst = addRoute(dst, r)
			}
			// "a/#" matches "a" as well.
			for _, r := range c.hash {
				dst = addRoute(dst, r)
			}
		}
	}
	return dst
}

func addRoute(dst []*route, r *route) []*route {
	for _, x := range dst {
		if x == r {
			return dst
		}
	}
	return append(dst, r)
}

// validFilter reports whether f is a valid MQTT topic filter.
func validFilter(f string) bool {
	if f == "" || strings.ContainsRune(f, 0) {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if l == "#" && i != len(levels)-1 {
			return false
		}
		if l != "#" && l != "+" && strings.ContainsAny(l, "#+") {
			return false
		}
	}
	return true
}

// validTopic reports whether t is a valid MQTT topic name (no wildcards).
func validTopic(t string) bool {
	return t != "" && !strings.ContainsAny(t, "#+\x00")
}
