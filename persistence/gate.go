package persistence

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// maxEstablishWait bounds how long the establishment gate holds a publish,
// or an establishing session waits for publishes already on their way to it.
// Both normally take an fsync or two; the bound only matters if a client
// goroutine is stuck (a publisher whose socket does not drain).
const maxEstablishWait = 5 * time.Second

// establishing is a persistent session between OnSessionEstablish and
// OnSessionEstablished: mochi is moving its in-flight messages from the old
// client to cl (inheritClientSession), sending CONNACK and resending them.
//
// mochi delivers to whatever client Clients.Get returns, with no lock
// against that move. Without the gate, a message published to the session
// meanwhile
//   - lands in the old client after mochi copied its in-flight messages:
//     mochi forgets it, and when its packet id is reused the ref is
//     overwritten: an acknowledged message lost;
//   - goes to cl before the resend: sent twice in one connection, so a QoS 2
//     subscriber that completed the first (PUBREC, PUBREL, PUBCOMP) takes
//     the second for a new message, and a QoS 1 one gets it before the
//     older messages being resent.
//
// So OnSessionEstablish closes the gate for the client id and waits for the
// publishes that already have a ref for it to reach it; OnRoute holds
// publishes that would store a ref for it until OnSessionEstablished opens
// the gate, or cl closes (mochi gave up on the connection before resending).
type establishing struct {
	cl   *mqtt.Client
	done chan struct{}
}

// open says whether the gate no longer holds publishes.
func (e *establishing) open() bool {
	select {
	case <-e.done:
		return true
	default:
		return e.cl.Closed()
	}
}

// closeGateLocked closes the gate for cl's session, replacing (and opening)
// the gate of a connection that is taking over the same id concurrently.
func (h *Hook) closeGateLocked(cl *mqtt.Client) {
	if old := h.establishing[cl.ID]; old != nil {
		close(old.done)
	}
	h.establishing[cl.ID] = &establishing{cl: cl, done: make(chan struct{})}
}

// openGateLocked opens the gate closed for cl, if it is still cl's.
func (h *Hook) openGateLocked(cl *mqtt.Client) {
	if e := h.establishing[cl.ID]; e != nil && e.cl == cl {
		close(e.done)
		delete(h.establishing, cl.ID)
	}
}

// gateLocked returns the closed gate of session id, if any.
func (h *Hook) gateLocked(id string) *establishing {
	e := h.establishing[id]
	if e == nil || e.open() {
		return nil
	}
	return e
}

// waitGate waits, without h.mu, until e opens or maxEstablishWait passes
// since start; it reports false in the latter case.
func (h *Hook) waitGate(e *establishing, start time.Time) bool {
	h.gateWaiting.Add(1)
	defer h.gateWaiting.Add(-1)
	tick := time.NewTicker(10 * time.Millisecond) // to notice e.cl closing
	defer tick.Stop()
	for !e.open() {
		if time.Since(start) > maxEstablishWait {
			return false
		}
		select {
		case <-e.done:
		case <-tick.C:
		}
	}
	return true
}

// inboundLocked says whether a publish that passed the gate still has an
// unclaimed ref for session id: mochi has yet to put it in the session's
// in-flight messages (or to decide not to).
func (h *Hook) inboundLocked(id string) bool {
	for _, list := range h.pending {
		for _, p := range list {
			if r := p.refs[id]; r != nil && !r.claimed && !(r.spilled && r.done) {
				return true
			}
		}
	}
	return false
}

// notifyLocked wakes the sessions waiting in awaitInboundLocked.
func (h *Hook) notifyLocked() {
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
}

// awaitInboundLocked waits, releasing h.mu meanwhile, until no publish has
// an unclaimed ref for id, or maxEstablishWait passes.
func (h *Hook) awaitInboundLocked(id string) {
	deadline := time.NewTimer(maxEstablishWait)
	defer deadline.Stop()
	for h.inboundLocked(id) {
		if h.changed == nil {
			h.changed = make(chan struct{})
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
			h.mu.Lock()
		case <-deadline.C:
			h.mu.Lock()
			h.log.Warn("session established while a publish to it was still in progress", "client_id", id)
			return
		}
	}
}
