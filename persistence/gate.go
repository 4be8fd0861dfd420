package persistence

import (
	mqtt "github.com/mochi-mqtt/server/v2"
)

// establishing marks a persistent session between OnSessionEstablish and
// OnSessionEstablished: the engine is moving its in-flight messages from
// the old client to cl, sending CONNACK and resending them. The drain stays
// off meanwhile (the resend goes first), and the CONNACK's OnPacketSent
// reconciles the hook's entries with what cl inherited.
//
// Publishes to the session need no holding back: the engine moves the
// session's flows to the new connection and sends a late delivery to the
// old one there (Inflight.moveTo), and resends only the flows it inherited
// (a message delivered to the new connection meanwhile goes out once,
// through its queue).
type establishing struct {
	cl *mqtt.Client
}

// markEstablishingLocked marks cl's session as being established,
// replacing the mark of a connection that is taking over the same id.
func (h *Hook) markEstablishingLocked(cl *mqtt.Client) {
	h.establishing[cl.ID] = &establishing{cl: cl}
}

// endEstablishingLocked removes the mark set for cl, if it is still cl's.
func (h *Hook) endEstablishingLocked(cl *mqtt.Client) {
	if e := h.establishing[cl.ID]; e != nil && e.cl == cl {
		delete(h.establishing, cl.ID)
	}
}
