package auth

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Sessions belong to the identity that created them. The hook keeps each
// client id's identity for as long as its session lives, not only while it
// is connected: an offline persistent session's messages are checked
// against its owner's rules, and a CONNECT of another identity under that
// client id is refused (unless Config.AllowSessionTakeover) before mochi
// would disconnect the owner's connection or hand over the session.

// restoredMethod marks the identity of a session loaded from storage that
// has not reconnected: only the user name is known.
const restoredMethod = "restored"

// SetSessions gives the hook mochi's client lookup (Server.Clients.Get),
// so that the owner of a session is checked only while mochi still holds
// the session: storage expiry and clean-up paths that bypass mochi's hooks
// would otherwise leave a client id claimed. Without it, the hook trusts
// its own record of sessions. Call it before the server serves.
func (h *Hook) SetSessions(get func(clientID string) (*mqtt.Client, bool)) { h.sessions = get }

// Owner returns the identity (user name; "" for an anonymous client) that
// owns the session of cl's client id, to store with the session. ok is
// false when the hook knows no owner: auth is off or the client was not
// authenticated by this hook.
func (h *Hook) Owner(cl *mqtt.Client) (owner string, ok bool) {
	if !h.enabled {
		return "", false
	}
	v, ok := h.clients.Load(cl.ID)
	if !ok {
		return "", false
	}
	return v.(*identity).username, true
}

// Restored records the owner of a session loaded from storage, before any
// client connects: until the owner reconnects, the session's queued
// messages are checked against the owner's rules (rules that use JWT
// claims do not match: claims are not stored), and no other identity may
// take it over.
func (h *Hook) Restored(clientID, owner string) {
	if !h.enabled {
		return
	}
	h.clients.Store(clientID, &identity{username: owner, clientID: clientID, method: restoredMethod})
}

// MayRead reports whether cl may receive a message on topic, as OnACLCheck
// would answer for a delivery, without counting a denial: the broker asks
// it to choose among shared-group members and to re-check queued messages,
// and counts what it drops itself.
func (h *Hook) MayRead(cl *mqtt.Client, topic string) bool {
	if cl.Net.Inline || !h.enabled {
		return true
	}
	id := h.identityOf(cl, false)
	return id != nil && h.allowed(id, topic, false)
}

// identityOf returns the identity that ACL checks for cl use, nil if none.
// It is the identity of cl's session: the one cl authenticated with, or,
// for a session restored from storage, its stored owner. A connection being
// replaced under the same client id may publish nothing more (write), but a
// message delivered to it belongs to its session, which the new connection
// inherits: a read is checked against the identity now holding the id, the
// session's owner. Denying it would drop a message the session is owed (a
// publish fanned out to an offline session while it reconnects).
func (h *Hook) identityOf(cl *mqtt.Client, write bool) *identity {
	v, ok := h.clients.Load(cl.ID)
	if !ok {
		return nil
	}
	id := v.(*identity)
	if id.cl != nil && id.cl != cl && (write || endsWithConnection(cl)) {
		return nil
	}
	return id
}

// sessionOwner returns the identity owning the live session of clientID,
// nil when there is none: no session, or only a connection whose session
// ends with it and which has closed.
func (h *Hook) sessionOwner(clientID string) *identity {
	v, known := h.clients.Load(clientID)
	if h.sessions == nil {
		if !known {
			return nil
		}
		return v.(*identity)
	}
	cl, ok := h.sessions(clientID)
	if !ok || cl.Net.Inline || (cl.Closed() && endsWithConnection(cl)) {
		return nil
	}
	if known {
		return v.(*identity)
	}
	// A session the hook did not see created (stored before sessions had
	// owners): the user name it connected with owns it.
	return &identity{username: string(cl.Properties.Username), clientID: clientID, method: restoredMethod}
}

// endsWithConnection says whether cl's session ends when its network
// connection does.
func endsWithConnection(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// refuseTakeover answers a CONNECT under a client id whose session another
// identity owns: CONNACK 0x87 not authorized (MQTT 3: 0x05), then the
// connection closes, so mochi neither disconnects the owner's connection
// nor hands over the session, and its own CONNACK is never written.
func (h *Hook) refuseTakeover(cl *mqtt.Client) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: packets.ErrNotAuthorized.Code,
		Properties: packets.Properties{ReasonString: "client id in use by another identity's session"}}
	if cl.Properties.ProtocolVersion < 5 {
		ack.ReasonCode, ack.Properties = packets.Err3NotAuthorized.Code, packets.Properties{}
	}
	if err := cl.WritePacket(ack); err != nil {
		h.log.Debug("auth: send connack", "client_id", cl.ID, "err", err)
	}
	cl.Stop(packets.ErrNotAuthorized)
}

// OnClientExpired forgets the identity of an expired session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) {
	if v, ok := h.clients.Load(cl.ID); ok {
		if id := v.(*identity); id.cl == cl || id.cl == nil {
			h.clients.CompareAndDelete(cl.ID, v)
		}
	}
}
