package persistence

import (
	"fmt"
	"math"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionDeadline is the unix time after which a session disconnected at
// rec.DisconnectedAt expires, as mochi's clearExpiredClients computes it.
func (h *Hook) sessionDeadline(rec *sessionRec) int64 {
	expiry := h.srv.Options.Capabilities.MaximumSessionExpiryInterval
	if rec.ProtocolVersion == 5 && rec.ExpiryFlag {
		expiry = min(expiry, rec.ExpiryInterval)
	}
	return rec.DisconnectedAt + int64(expiry)
}

// StoredClients returns the persistent sessions that have not expired,
// counting from their stored disconnect time; expired ones are deleted with
// all their keys. A session that was connected when the broker stopped
// counts as disconnected now.
func (h *Hook) StoredClients() ([]storage.Client, error) {
	now := h.now().Unix()
	var out []storage.Client
	b := h.st.newBatch()
	h.mu.Lock()
	defer func() {
		h.mu.Unlock()
		h.write(b, true)
	}()
	err := h.st.scan(prefixSession, func(key, val []byte) error {
		id := string(key[len(prefixSession):])
		rec, err := decodeSession(val)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		if rec.DisconnectedAt == 0 {
			rec.DisconnectedAt = now
			b.set(sessionKey(id), rec.appendTo)
		}
		deadline := h.sessionDeadline(&rec)
		if deadline < now {
			h.log.Info("session expired while the broker was down", "client_id", id)
			h.dropSessionLocked(id, &session{}, b)
			return nil
		}
		h.sessions[id] = newSession()
		h.restoredOwner(id, &rec)
		r := &restoredSession{deadline: deadline, rec: rec}
		if rec.WillFlag {
			r.willAt = min(rec.DisconnectedAt+int64(rec.WillDelay), deadline)
		}
		h.restored[id] = r
		var willFlag uint32
		if rec.WillFlag {
			willFlag = 1
		}
		out = append(out, storage.Client{
			ID:              id,
			T:               storage.ClientKey,
			Listener:        rec.Listener,
			Username:        rec.Username,
			ProtocolVersion: rec.ProtocolVersion,
			Clean:           rec.Clean,
			Properties: storage.ClientProperties{
				AuthenticationData:        rec.AuthData,
				User:                      rec.User,
				AuthenticationMethod:      rec.AuthMethod,
				SessionExpiryInterval:     rec.ExpiryInterval,
				SessionExpiryIntervalFlag: rec.ExpiryFlag,
				MaximumPacketSize:         rec.MaximumPacketSize,
				ReceiveMaximum:            rec.ReceiveMaximum,
				TopicAliasMaximum:         rec.TopicAliasMaximum,
				RequestProblemInfo:        rec.RequestProblemInfo,
				RequestProblemInfoFlag:    rec.RequestProblemInfoFlag,
				RequestResponseInfo:       rec.RequestResponseInfo,
			},
			Will: storage.ClientWill{
				Payload:           rec.WillPayload,
				User:              rec.WillUser,
				TopicName:         rec.WillTopic,
				Flag:              willFlag,
				WillDelayInterval: rec.WillDelay,
				Qos:               rec.WillQos,
				Retain:            rec.WillRetain,
			},
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load sessions: %w", err)
	}
	return out, nil
}

// StoredSubscriptions returns the subscriptions of the sessions
// StoredClients returned and deletes any other (orphaned) ones.
func (h *Hook) StoredSubscriptions() ([]storage.Subscription, error) {
	var out []storage.Subscription
	b := h.st.newBatch()
	h.mu.Lock()
	defer func() {
		h.mu.Unlock()
		h.write(b, false)
	}()
	err := h.st.scan(prefixSub, func(key, val []byte) error {
		id, filter, err := splitClientKey(key, prefixSub)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		rec, err := decodeSub(val)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		if h.sessions[id] == nil {
			b.delete(append([]byte(nil), key...))
			return nil
		}
		out = append(out, storage.Subscription{
			T:                 storage.SubscriptionKey,
			Client:            id,
			Filter:            string(filter),
			Identifier:        rec.Identifier,
			RetainHandling:    rec.RetainHandling,
			Qos:               rec.Qos,
			RetainAsPublished: rec.RetainAsPublished,
			NoLocal:           rec.NoLocal,
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load subscriptions: %w", err)
	}
	return out, nil
}

// StoredInflightMessages puts the queued and in-flight messages of the
// restored sessions straight into mochi's clients, with their absolute
// expiry and publisher protocol version (which mochi's loadInflight would
// drop), and returns none. Per session it loads every QoS 2 state and the
// front of the queue: messages up to the memory window, and further up to
// the last QoS 2 message that has a packet id (the client may hold its
// state). The rest stays in the store (the session's backlog, spill.go)
// and is fed to the client, in order, when it resumes. Expired messages,
// refs of unknown sessions and bodies no ref uses are deleted.
func (h *Hook) StoredInflightMessages() ([]storage.Message, error) {
	now := h.now().Unix()
	maxExpiry := h.srv.Options.Capabilities.MaximumMessageExpiryInterval
	window := h.window()
	b := h.st.newBatch()
	h.mu.Lock()
	defer func() {
		h.mu.Unlock()
		h.write(b, false)
	}()

	// Refs first, in key order: per client, in queue order.
	type loaded struct {
		seq  uint64
		rec  refRec
		pk   *packets.Packet // nil while spilled: a restart with many queued messages must not build them all
		size uint32
		// expires is the body's spillItem.expires.
		expires uint32
		spill   bool
	}
	perClient := map[string][]loaded{}
	need := map[uint64]*msgRec{} // bodies to load into mochi
	used := map[uint64]bool{}    // bodies referenced
	err := h.st.scan(prefixQueue, func(key, val []byte) error {
		id, seq, err := parseQueueKey(key)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		rec, err := decodeRef(val)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		if h.sessions[id] == nil {
			b.delete(append([]byte(nil), key...))
			return nil
		}
		perClient[id] = append(perClient[id], loaded{seq: seq, rec: rec})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load queues: %w", err)
	}
	for _, list := range perClient {
		// What goes into mochi is the front of the queue: mochi resends it
		// before the engine feeds the rest, so a message kept in memory
		// past a spilled older one would overtake it. The front is the
		// window, stretched to the last QoS 2 message that has a packet id
		// (the client may hold its QoS 2 state, so it must be resent
		// under that id). A QoS 1 message past the window loses its id and
		// gets a new one when fed: a connected session's window is larger
		// than an offline one's, and FiledStored stores the id of each
		// message the engine feeds.
		keep := -1
		for i := range list {
			if r := &list[i].rec; r.State == refPublish && r.Qos == 2 && r.PacketID != 0 {
				keep = i
			}
		}
		inMemory := 0
		for i := range list {
			l := &list[i]
			if l.rec.State != refPublish {
				continue
			}
			used[l.rec.MsgID] = true
			if i > keep && inMemory >= window {
				l.spill = true
				continue
			}
			inMemory++
			need[l.rec.MsgID] = nil
		}
	}

	type bodyInfo struct {
		size    uint32
		expired bool
		expires uint32
	}
	bodies := make(map[uint64]bodyInfo, len(used))
	err = h.st.scan(prefixMessage, func(key, val []byte) error {
		id, err := parseMessageKey(key)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		if !used[id] {
			b.delete(append([]byte(nil), key...))
			return nil
		}
		rec, err := decodeMessage(val)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		exp := expiresAt(rec.Created, rec.Expiry, maxExpiry)
		info := bodyInfo{size: uint32(len(rec.Topic) + len(rec.Payload)), expired: expiredBy(exp, now), expires: exp}
		bodies[id] = info
		if _, ok := need[id]; ok && !info.expired {
			need[id] = &rec
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load messages: %w", err)
	}
	used = nil

	var out []storage.Message
	for id, list := range perClient {
		_, ok := h.srv.Clients.Get(id)
		ss := h.sessions[id]
		if !ok || ss == nil {
			for _, l := range list {
				b.delete(queueKey(id, l.seq))
			}
			continue
		}
		// Build the packets; drop refs without a live body.
		kept := list[:0]
		for _, l := range list {
			switch l.rec.State {
			case refPublish:
				info, ok := bodies[l.rec.MsgID]
				if !ok || info.expired {
					if !ok {
						h.log.Warn("queued message without its body, skipped", "client_id", id, "seq", l.seq)
					}
					b.delete(queueKey(id, l.seq))
					continue
				}
				l.size, l.expires = info.size, info.expires
				if !l.spill {
					body := need[l.rec.MsgID]
					pk := body.packet()
					l.pk = &pk
					l.pk.FixedHeader.Qos = l.rec.Qos
					l.pk.FixedHeader.Retain = l.rec.Retain
					l.pk.Properties.SubscriptionIdentifier = l.rec.SubIDs
				}
			case refPubrel:
				l.pk = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, Created: now}
			case refPubrec:
				l.pk = &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, Created: now}
			}
			if l.pk != nil {
				l.pk.PacketID = l.rec.PacketID
			}
			kept = append(kept, l)
		}
		list = kept
		// Keep stored packet ids (the client may hold QoS 2 state for them);
		// give queued messages that never got one, or clash, a free id.
		usedIDs := make(map[uint16]bool, min(len(list), window+64))
		var free uint16
		for i := range list {
			l := &list[i]
			if l.spill || l.rec.State == refPubrec {
				continue // spilled: no id yet; a client's flow: the id is the client's
			}
			if l.pk.PacketID != 0 && !usedIDs[l.pk.PacketID] {
				usedIDs[l.pk.PacketID] = true
				l.pk.FixedHeader.Dup = l.pk.FixedHeader.Type == packets.Publish
				continue
			}
			l.pk.PacketID = 0
		}
		for i := range list {
			l := &list[i]
			if l.rec.State == refPublish {
				h.refs[l.rec.MsgID]++
				ss.account(1, l.size)
			}
			if l.spill {
				ss.backlog.insert(spillItem{seq: l.seq, msgID: l.rec.MsgID, size: l.size, expires: l.expires})
				h.noteExpiryLocked(id, ss, l.expires)
				continue
			}
			if l.rec.State == refPubrec {
				ss.inbound[l.pk.PacketID] = &entry{seq: l.seq, state: refPubrec, created: l.pk.Created}
				out = append(out, storedMessage(id, l.pk))
				continue
			}
			if l.pk.PacketID == 0 {
				for free < math.MaxUint16 && (free == 0 || usedIDs[free]) {
					free++
				}
				if usedIDs[free] || free == 0 || l.rec.State != refPublish {
					h.log.Warn("no packet id free for a queued message, dropped", "client_id", id, "seq", l.seq)
					b.delete(queueKey(id, l.seq))
					if l.rec.State == refPublish {
						h.refs[l.rec.MsgID]--
						ss.account(-1, l.size)
					}
					continue
				}
				usedIDs[free] = true
				l.pk.PacketID = free
				l.rec.PacketID = free
				b.set(queueKey(id, l.seq), l.rec.appendTo)
			}
			ss.entries[l.pk.PacketID] = &entry{seq: l.seq, msgID: l.rec.MsgID, state: l.rec.State, created: l.pk.Created, size: l.size}
			out = append(out, storedMessage(id, l.pk))
		}
		perClient[id] = nil
	}
	for id := range bodies {
		switch n := h.refs[id]; {
		case n <= 0:
			delete(h.refs, id)
			b.delete(messageKey(id))
		case n == 1:
			delete(h.refs, id) // as releaseBodyLocked counts
		}
	}
	return out, nil
}

// storedMessage is pk, in flight for client id, as the engine's
// loadInflight takes it: with its absolute expiry, its publisher's
// protocol version, and whether it was ever sent (DUP).
func storedMessage(id string, pk *packets.Packet) storage.Message {
	return storage.Message{
		Client:          id,
		Origin:          pk.Origin,
		TopicName:       pk.TopicName,
		Payload:         pk.Payload,
		FixedHeader:     pk.FixedHeader,
		PacketID:        pk.PacketID,
		Created:         pk.Created,
		Expiry:          pk.Expiry,
		ProtocolVersion: pk.ProtocolVersion,
		Unsent:          pk.FixedHeader.Type == packets.Publish && !pk.FixedHeader.Dup,
		Properties: storage.MessageProperties{
			PayloadFormat:          pk.Properties.PayloadFormat,
			PayloadFormatFlag:      pk.Properties.PayloadFormatFlag,
			MessageExpiryInterval:  pk.Properties.MessageExpiryInterval,
			ContentType:            pk.Properties.ContentType,
			ResponseTopic:          pk.Properties.ResponseTopic,
			CorrelationData:        pk.Properties.CorrelationData,
			SubscriptionIdentifier: pk.Properties.SubscriptionIdentifier,
			User:                   pk.Properties.User,
		},
	}
}

// StoredRetainedMessages returns the unexpired retained messages, with
// their absolute expiry, and deletes expired ones.
func (h *Hook) StoredRetainedMessages() ([]storage.Message, error) {
	now := h.now().Unix()
	maxExpiry := h.srv.Options.Capabilities.MaximumMessageExpiryInterval
	b := h.st.newBatch()
	defer h.write(b, false)
	var out []storage.Message
	err := h.st.scan(prefixRetained, func(key, val []byte) error {
		rec, err := decodeMessage(val)
		if err != nil {
			return h.st.unreadable(key, err)
		}
		if (rec.Expiry > 0 && rec.Expiry < now) || (maxExpiry > 0 && now-rec.Created > maxExpiry) {
			b.delete(append([]byte(nil), key...))
			return nil
		}
		pk := rec.packet()
		out = append(out, storedMessage("", &pk))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load retained: %w", err)
	}
	// mochi calls this last of the Stored* methods, loads what it returns,
	// then starts its listeners (before OnStarted).
	h.loaded.Store(true)
	return out, nil
}
