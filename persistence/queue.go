package persistence

import (
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// pendingMsg is a QoS 1/2 PUBLISH between OnRoute, which stored it for the
// persistent sessions it will reach, and OnPublished, after mochi's fan-out.
type pendingMsg struct {
	id      uint64 // the engine's Packet.PublishID
	expires uint32 // as spillItem.expires
	msgID   uint64
	refs    map[string]*pendingRef // by subscriber client id
	// held: a QoS 2 message the engine delivers only once its records are
	// committed, after the publisher's reader has moved on (dropPending
	// must leave it).
	held bool
}

type pendingRef struct {
	seq     uint64
	claimed bool
	pid     uint16
	ss      *session
	size    uint32
	spilled bool // queued in the store only (spill.go)
	done    bool // spilled: moved into ss.backlog, or refused
}

// matches says whether pk (an OnQosPublish copy or the publisher's packet)
// is this message.
func (p *pendingMsg) matches(pk *packets.Packet) bool { return pk.PublishID == p.id }

// findPendingLocked returns the pending message of origin that pk is.
func (h *Hook) findPendingLocked(origin string, pk *packets.Packet) (*pendingMsg, int) {
	for i, p := range h.pending[origin] {
		if p.matches(pk) {
			return p, i
		}
	}
	return nil, -1
}

// OnRoute stores a QoS 1/2 message, once, with one queue ref for each
// persistent session on its route, and has the engine hold the PUBACK or
// PUBREC until the store has it (fsync in "always" mode). The engine
// creates the subscribers' in-flight entries only after the
// acknowledgement, so OnQosPublish later maps them onto these refs. A QoS 2
// message from a persistent publisher also gets its PUBREC state stored in
// the same batch. Subscribers the message is spilled for, or dropped for
// (a full queue), are skipped on the route: the engine feeds the first
// from the store (NextStored), nobody gets the second.
//
// If the store fails the message is refused: MQTT 5 publishers get reason
// 0x83 (implementation specific error), MQTT 3 publishers no acknowledgement.
func (h *Hook) OnRoute(cl *mqtt.Client, pk packets.Packet, r *mqtt.Route) error {
	// Not h.started: mochi's listeners serve before OnStarted, and a
	// message acknowledged then must be stored too.
	if pk.FixedHeader.Qos == 0 || !h.loaded.Load() {
		return nil
	}
	if !cl.Net.Inline {
		h.dropPending(cl.ID) // left by a publish mochi abandoned before OnPublished
	}
	// Nothing to store while no session is persistent (the publisher's own
	// QoS 2 state included).
	h.mu.Lock()
	none := len(h.sessions) == 0
	h.mu.Unlock()
	if none {
		return nil
	}
	targets := r.Subscriptions()
	maxQos := h.srv.Options.Capabilities.MaximumQos
	var blocked blockWait
	for {
		h.mu.Lock()
		if h.limits.Policy == PolicyBlockPublisher && h.fullLocked(cl.ID, &pk, targets, maxQos) && blocked.more(h) {
			h.mu.Unlock()
			// The deliveries of the messages read before this one go out
			// now, not after the wait.
			cl.FlushDeferred()
			blocked.sleep()
			continue
		}
		break // with h.mu held
	}
	if err := h.admitLocked(cl, &pk, targets, maxQos); err != nil {
		h.mu.Unlock()
		return err
	}

	b := h.st.newBatch()
	pm := &pendingMsg{id: pk.PublishID,
		expires: expiresAt(pk.Created, pk.Expiry, h.srv.Options.Capabilities.MaximumMessageExpiryInterval)}
	size := messageSize(&pk)
	window, liveWindow := h.window(), h.liveWindow()
	spills := false
	for id, sub := range targets {
		if sub.NoLocal && id == cl.ID {
			continue
		}
		qos := min(pk.FixedHeader.Qos, sub.Qos, maxQos)
		ss := h.sessions[id]
		if qos == 0 || ss == nil {
			continue
		}
		var spill bool
		subCl, _ := h.srv.Clients.Get(id)
		if !h.overflowLocked(id, ss, subCl, size, b) {
			r.Skip(id)
			continue
		}
		w := window
		if subCl != nil && !offline(subCl) {
			w = liveWindow
		}
		spill = ss.spillingLocked() || len(ss.entries) >= w || h.stalledClient(subCl)
		if pm.refs == nil {
			pm.refs = make(map[string]*pendingRef, len(targets))
			pm.msgID = h.st.nextSeq()
		}
		ref := &pendingRef{seq: h.st.nextSeq(), ss: ss, size: size, spilled: spill}
		pm.refs[id] = ref
		ss.account(1, size)
		// The ref is complete here (retain flag and subscription ids as
		// mochi will send them), so that OnQosPublish need not write it
		// again for QoS 1: only a packet id would be added, which a QoS 1
		// resend after a restart may do without (load gives it a new one).
		rec := refRec{State: refPublish, Qos: qos, MsgID: pm.msgID}
		var version byte = 4
		if subCl != nil {
			version = subCl.Properties.ProtocolVersion
		}
		_, rec.Retain, rec.SubIDs = outFields(&pk, sub, version, maxQos)
		if spill {
			ss.pendingSpill++
			r.Skip(id)
			spills = true
		}
		b.create(b.queueKey(id, ref.seq), rec.appendTo)
	}
	if pm.refs != nil {
		h.setRefsLocked(pm.msgID, len(pm.refs))
		h.pending[cl.ID] = append(h.pending[cl.ID], pm)
		var body msgRec
		body.fromPacket(&pk)
		b.create(b.messageKey(pm.msgID), body.appendTo)
	}
	if ss := h.sessions[cl.ID]; ss != nil && pk.FixedHeader.Qos == 2 && !cl.Net.Inline {
		// The PUBREC mochi is about to send: after a restart the publisher's
		// PUBREL must find it, or a resent PUBLISH would be delivered twice.
		h.removeInboundLocked(cl.ID, ss, pk.PacketID, b)
		e := &entry{seq: h.st.nextSeq(), state: refPubrec, created: pk.Created}
		ss.inbound[pk.PacketID] = e
		rec := refRec{State: refPubrec, Qos: 2, PacketID: pk.PacketID}
		b.create(b.queueKey(cl.ID, e.seq), rec.appendTo)
	}
	h.mu.Unlock()
	if len(b.ops) == 0 {
		h.st.putBatch(b)
		return nil
	}
	// A publisher need not wait here: the engine holds its PUBACK or PUBREC
	// until the commit (pending.go), and a QoS 2 message's delivery too
	// (exactly once: nobody sees it before it is stored). A spilled
	// message's bookkeeping must follow the commit: then it runs in the
	// wait.
	if !cl.Net.Inline {
		var settle func(ok bool)
		if spills {
			settle = func(ok bool) {
				var b *batch
				if ok {
					b = h.st.newBatch()
				}
				h.mu.Lock()
				h.settleSpilledLocked(pm, ok, b)
				h.mu.Unlock()
				if ok {
					h.write(b, false)
				}
			}
		}
		if pk.FixedHeader.Qos == 2 && pm.refs != nil {
			h.mu.Lock()
			pm.held = true
			h.mu.Unlock()
		}
		if err := h.commitDeferred(cl, pk, pm, b, settle); err != nil {
			return h.refuse(cl, pk, pm, err)
		}
		return nil
	}
	if err := h.st.apply(b); err != nil {
		return h.refuse(cl, pk, pm, err)
	}
	if spills {
		b := h.st.newBatch()
		h.mu.Lock()
		h.settleSpilledLocked(pm, true, b)
		h.mu.Unlock()
		h.write(b, false)
	}
	return nil
}

// OnQosPublish maps mochi's packet id for a subscriber onto the ref stored
// by OnRoute and records the id; a PUBLISH that OnRoute did not store
// (a retained message sent on subscribe, a will) is stored now. Resends of
// known packets (DUP set, or resends > 0: the engine resends a message
// never sent before without DUP) write nothing.
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish {
		return // PUBACK is transient, PUBREC was stored by OnRoute, PUBREL is a resend
	}
	h.mu.Lock()
	ss := h.sessions[cl.ID]
	if ss == nil || takenOver(cl) {
		h.mu.Unlock()
		return
	}
	b := h.st.newBatch()
	if e := ss.entries[pk.PacketID]; e != nil && (pk.FixedHeader.Dup || resends > 0) {
		h.mu.Unlock()
		h.st.putBatch(b)
		return
	}
	var seq, msgID uint64
	size := messageSize(&pk)
	claimed := false
	if p, _ := h.findPendingLocked(pk.Origin, &pk); p != nil && p.refs[cl.ID] != nil && !p.refs[cl.ID].claimed && !p.refs[cl.ID].spilled {
		ref := p.refs[cl.ID]
		ref.claimed, ref.pid = true, pk.PacketID
		seq, msgID, size = ref.seq, p.msgID, ref.size
		claimed = true
		if ref.ss != ss { // the session was replaced meanwhile
			ss.account(1, size)
		}
	} else if pk.TopicName == "" {
		// mochi blanked the topic for an outbound topic alias of this
		// connection; stored like that it could not be resent after a restart.
		h.removeEntryLocked(cl.ID, ss, pk.PacketID, b)
		h.mu.Unlock()
		h.write(b, false)
		h.log.Warn("message sent with a topic alias not stored", "client_id", cl.ID)
		return
	} else {
		seq, msgID = h.st.nextSeq(), h.st.nextSeq() // one ref: not in h.refs
		ss.account(1, size)
		var body msgRec
		body.fromPacket(&pk)
		b.set(b.messageKey(msgID), body.appendTo)
	}
	// mochi replaced whatever it had under this id; so do we.
	h.removeEntryLocked(cl.ID, ss, pk.PacketID, b)
	ss.entries[pk.PacketID] = &entry{seq: seq, msgID: msgID, state: refPublish, created: pk.Created, size: size}
	rec := refRec{
		State:    refPublish,
		Qos:      pk.FixedHeader.Qos,
		Retain:   pk.FixedHeader.Retain,
		PacketID: pk.PacketID,
		MsgID:    msgID,
		SubIDs:   pk.Properties.SubscriptionIdentifier,
	}
	// A QoS 1 ref that OnRoute stored is complete but for the packet id:
	// not worth a write per delivery (a third of the store's work for a
	// persistent subscriber). After a crash the message is resent under a
	// new id; for QoS 1 that is at most a duplicate.
	if !claimed || pk.FixedHeader.Qos == 2 {
		b.set(b.queueKey(cl.ID, seq), rec.appendTo)
	}
	h.mu.Unlock()
	// The packet id only matters for a QoS 2 message the client may receive
	// now: with it, a resend after a crash is recognised as one. The engine
	// holds the PUBLISH until it is stored, without blocking the publisher
	// that delivers it, so deliveries share commits.
	if pk.FixedHeader.Qos != 2 || cl.Closed() {
		h.write(b, false)
		return
	}
	p, err := h.st.writeAsync(b)
	if err == nil && p != nil && !cl.HoldDelivery(pk.PacketID, p) {
		err = p.Wait()
	}
	h.logWriteError(err)
}

// OnPublished deletes the refs of subscribers mochi did not deliver to after
// all (ACL, full in-flight window, packet ids exhausted, a hook ignoring the
// message): without this they would be delivered after a restart.
func (h *Hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Qos == 0 {
		return
	}
	h.mu.Lock()
	p, i := h.findPendingLocked(cl.ID, &pk)
	if p == nil {
		h.mu.Unlock()
		return
	}
	h.removePendingLocked(cl.ID, i)
	b := h.st.newBatch()
	h.releaseUnclaimedLocked(p, b)
	h.mu.Unlock()
	h.write(b, false)
}

func (h *Hook) removePendingLocked(origin string, i int) {
	list := slices.Delete(h.pending[origin], i, i+1)
	if len(list) == 0 {
		delete(h.pending, origin)
	} else {
		h.pending[origin] = list
	}
}

func (h *Hook) releaseUnclaimedLocked(p *pendingMsg, b *batch) {
	for id, ref := range p.refs {
		if !ref.claimed && !ref.spilled {
			ref.claimed = true // released: not twice
			ref.ss.account(-1, ref.size)
			b.delete(b.queueKey(id, ref.seq))
			h.releaseBodyLocked(p.msgID, b)
		}
	}
}

// dropPending releases every pending message of origin.
func (h *Hook) dropPending(origin string) {
	h.mu.Lock()
	list := h.pending[origin]
	if len(list) == 0 {
		h.mu.Unlock()
		return
	}
	var keep []*pendingMsg
	b := h.st.newBatch()
	for _, p := range list {
		if p.held {
			keep = append(keep, p)
			continue
		}
		h.releaseUnclaimedLocked(p, b)
	}
	if len(keep) == len(list) {
		h.mu.Unlock()
		h.st.putBatch(b)
		return
	}
	if len(keep) == 0 {
		delete(h.pending, origin)
	} else {
		h.pending[origin] = keep
	}
	h.mu.Unlock()
	h.write(b, false)
}

func (h *Hook) dropPendingMsg(origin string, pm *pendingMsg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i := slices.Index(h.pending[origin], pm); i >= 0 {
		h.removePendingLocked(origin, i)
	}
	for _, ref := range pm.refs {
		if !ref.spilled && !ref.claimed {
			ref.claimed = true
			ref.ss.account(-1, ref.size)
		}
	}
	h.settleSpilledLocked(pm, false, nil)
	if pm.refs != nil {
		delete(h.refs, pm.msgID)
	}
}

// OnQosComplete deletes the record of a finished QoS flow (PUBACK, PUBCOMP
// from a subscriber; PUBREL from a publisher).
func (h *Hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.forget(cl, pk) }

// OnQosDropped deletes the record of an expired or abandoned QoS flow.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.forget(cl, pk) }

// forget deletes the record of the flow pk ends. A client's PUBREL ends
// the client's own QoS 2 flow (OnPacketRead deleted its record already
// when it was read); anything else ends one of the server's.
func (h *Hook) forget(cl *mqtt.Client, pk packets.Packet) {
	pid := pk.PacketID
	h.mu.Lock()
	none := h.sessions[cl.ID] == nil
	h.mu.Unlock()
	if none || takenOver(cl) {
		// Not persistent: nothing stored (the common case, kept cheap). Taken
		// over: mochi clears the old client after copying its flows to the
		// new one.
		return
	}
	b := h.st.newBatch()
	h.mu.Lock()
	if pk.FixedHeader.Type == packets.Pubrel {
		if ss := h.sessions[cl.ID]; ss != nil {
			h.removeInboundLocked(cl.ID, ss, pid, b)
		}
		h.mu.Unlock()
		h.write(b, false)
		return
	}
	// mochi removes the packet from Inflight before it calls the hooks: if
	// the id is in flight again, a new message took it meanwhile and its
	// OnQosPublish (or FiledStored) already replaced this entry.
	if _, reused := cl.State.Inflight.Get(pid); !reused {
		if ss := h.sessions[cl.ID]; ss != nil {
			h.removeEntryLocked(cl.ID, ss, pid, b)
		}
	}
	h.mu.Unlock()
	h.write(b, false)
}

// ReadsPacket tells the engine that OnPacketRead looks at PUBREC and
// PUBREL only (mqtt.PacketReadFilter): every other packet skips the call.
func (h *Hook) ReadsPacket(t byte) bool { return t == packets.Pubrec || t == packets.Pubrel }

// OnPacketRead moves QoS 2 state before mochi answers, so that after a
// crash neither side of an exactly-once flow is repeated or lost:
//
//   - a subscriber's PUBREC: the flow now waits for PUBCOMP and the body is
//     no longer needed. Stored before mochi sends PUBREL: otherwise a client
//     that completed the flow could get the PUBLISH again after a restart
//     and take it for a new message.
//   - a publisher's PUBREL: its PUBREC state is deleted before mochi sends
//     PUBCOMP: otherwise, restored, it would make mochi refuse the next
//     message that reuses the packet id.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Pubrec, packets.Pubrel:
	default:
		return pk, nil
	}
	b := h.st.newBatch()
	h.mu.Lock()
	if ss := h.sessions[cl.ID]; ss != nil {
		e := ss.entries[pk.PacketID]
		if pk.FixedHeader.Type == packets.Pubrel {
			e = ss.inbound[pk.PacketID]
		}
		switch {
		case e == nil:
		case pk.FixedHeader.Type == packets.Pubrec && e.state == refPublish && pk.ReasonCode < packets.ErrUnspecifiedError.Code:
			h.releaseBodyLocked(e.msgID, b)
			ss.account(-1, e.size)
			e.state, e.msgID = refPubrel, 0
			rec := refRec{State: refPubrel, Qos: 2, PacketID: pk.PacketID}
			b.set(b.queueKey(cl.ID, e.seq), rec.appendTo)
		case pk.FixedHeader.Type == packets.Pubrel && e.state == refPubrec:
			h.removeInboundLocked(cl.ID, ss, pk.PacketID, b)
		}
	}
	h.mu.Unlock()
	// The engine holds the answer (PUBREL, PUBCOMP) until the commit, and
	// goes on reading meanwhile: a window of flows shares one fsync.
	if err := h.commitDeferred(cl, pk, nil, b, nil); err != nil {
		h.logWriteError(err)
		return pk, err
	}
	return pk, nil
}
