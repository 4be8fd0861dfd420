package persistence

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SessionOwners is who decides which identity owns a session (Ferry's auth
// hook). The hook stores each persistent session's owner with it and, at
// load, tells Restored the owner of each session it restores.
type SessionOwners interface {
	// Owner returns the identity owning cl's session; ok false: unknown.
	Owner(cl *mqtt.Client) (owner string, ok bool)
	// Restored is called for each session loaded at start, before any
	// client can connect. A session stored without an owner (by an older
	// Ferry, or with authentication off) is reported with the user name
	// its client connected with.
	Restored(clientID, owner string)
}

// SetSessionOwners makes the hook store session owners and report them at
// load. Call it before the server serves. Default: no owners are stored.
func (h *Hook) SetSessionOwners(o SessionOwners) { h.owners = o }

// SetReadCheck makes the hook ask may whether a client may still receive a
// message on a topic: a shared-group member that may not is never chosen
// for it, and a spilled message its session may no longer read is dropped
// when it would be fed to the client (say, after the ACL was reloaded, or
// when a session resumes). may is called with the hook's mutex held: it
// must not block or call into the hook. Default: everything is readable.
func (h *Hook) SetReadCheck(may func(cl *mqtt.Client, topic string) bool) { h.mayRead = may }

// unreadableLocked says whether cl may no longer receive pk, counting it
// in ACLDropped if so: the caller drops it.
func (h *Hook) unreadableLocked(cl *mqtt.Client, pk *packets.Packet) bool {
	if h.mayRead == nil || h.mayRead(cl, pk.TopicName) {
		return false
	}
	h.aclDropped.Add(1)
	return true
}

// ACLDropped is how many queued messages were dropped because their session
// could no longer read them (SetReadCheck).
func (h *Hook) ACLDropped() uint64 { return h.aclDropped.Load() }

// setOwner fills in rec's owner from h.owners.
func (h *Hook) setOwner(cl *mqtt.Client, rec *sessionRec) {
	if h.owners != nil {
		rec.Owner, rec.OwnerSet = h.owners.Owner(cl)
	}
}

// restoredOwner reports the owner of a session loaded from rec.
func (h *Hook) restoredOwner(id string, rec *sessionRec) {
	if h.owners == nil {
		return
	}
	owner := rec.Owner
	if !rec.OwnerSet {
		owner = string(rec.Username)
	}
	h.owners.Restored(id, owner)
}
