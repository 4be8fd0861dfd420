// Package topic holds MQTT topic rules that mochi v2.7.9 does not apply
// and that more than one of Ferry's hooks must apply the same way.
package topic

import (
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"
)

// DropDollarWildcardShares removes from shared (mochi's Subscribers.Shared:
// shared subscriptions by their full "$share/group/filter") the groups
// whose filter starts with a wildcard, when topic starts with '$'.
//
// A filter starting with '#' or '+' must not match a topic starting with
// '$' [MQTT-4.7.2-1]. mochi keeps that rule for ordinary subscriptions but
// not for shared ones: without this, "$share/g/#" receives every $SYS
// update and every message on a '$' topic.
func DropDollarWildcardShares(topic string, shared map[string]map[string]packets.Subscription) {
	if !strings.HasPrefix(topic, "$") {
		return
	}
	for full := range shared {
		if f := sharedFilter(full); f != "" && (f[0] == '#' || f[0] == '+') {
			delete(shared, full)
		}
	}
}

// sharedFilter returns the topic filter of the shared subscription filter
// full ("$share/group/filter"), or "" if full is not one.
func sharedFilter(full string) string {
	rest, ok := strings.CutPrefix(full, "$share/")
	if !ok {
		return ""
	}
	_, f, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return f
}
