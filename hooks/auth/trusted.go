package auth

// Identity is a principal inside the broker that did not log in over MQTT,
// such as the bridge's ingress publisher: the ACL still applies to it.
type Identity struct {
	id identity
}

// NewIdentity returns the identity of a broker-internal publisher with the
// given user name and client id; ACL rules for that user and client id (and
// patterns with %u/%c) apply to it.
func NewIdentity(username, clientID string) *Identity {
	return &Identity{id: identity{username: username, clientID: clientID, method: "internal"}}
}

// AllowedFor reports whether the ACL lets id publish (write) or read topic.
// Publishing to $SYS is never allowed. With no ACL configured everything
// else is allowed. Denials are counted like a client's.
func (h *Hook) AllowedFor(id *Identity, topic string, write bool) bool {
	if write && isSysTopic(topic) {
		h.stats.aclPublish.Add(1)
		return false
	}
	if !h.enabled || h.allowed(&id.id, topic, write) {
		return true
	}
	if write {
		h.stats.aclPublish.Add(1)
	} else {
		h.stats.aclRead.Add(1)
	}
	return false
}
