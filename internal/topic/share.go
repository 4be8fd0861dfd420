// Package topic holds MQTT topic rules that more than one of Ferry's hooks
// must apply the same way.
package topic

import "github.com/mochi-mqtt/server/v2/packets"

// DropUnreadableShares removes from shared (mochi's Subscribers.Shared) the
// members for which may(client id) is false, and the groups left without a
// member, whose count it returns: a message no member may read is dropped
// for that group rather than handed to one that may not read it (mochi
// picks a member first and checks the ACL after, so that member's share
// was lost).
func DropUnreadableShares(shared map[string]map[string]packets.Subscription, may func(clientID string) bool) (emptied int) {
	for group, members := range shared {
		for id := range members {
			if !may(id) {
				delete(members, id)
			}
		}
		if len(members) == 0 {
			delete(shared, group)
			emptied++
		}
	}
	return emptied
}
