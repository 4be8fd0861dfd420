// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"github.com/mochi-mqtt/server/v2/packets"
)

// Route is where one PUBLISH goes: the subscriptions its topic matched, one
// per client, with one member of each shared group chosen and merged in.
// The engine walks the topic index once per publish, hands the result to
// OnRoute hooks before it acknowledges the message, and delivers along the
// same route afterwards. Upstream walked it in publishToSubscribers, after
// the acknowledgement, so a storage hook that must know the subscribers
// before the PUBACK walked it a second time, chose the shared members
// itself, and could keep a subscriber out of a delivery only through
// OnSelectSubscribers, which upstream calls only for topics with shared
// subscribers.
type Route struct {
	subs *Subscribers
	skip map[string]struct{}
	from *Client // the publisher, on its reader: deliveries are flushed at the end of its read buffer
}

// Subscriptions returns the subscriptions the message goes to by client id,
// shared groups' chosen members included. The map may be shared with the
// engine's subscriber cache: it must not be changed.
func (r *Route) Subscriptions() map[string]packets.Subscription { return r.subs.Subscriptions }

// Skip keeps the engine from delivering the message to client id: a hook
// that queues the message for that client itself, or drops it for a full
// queue, takes that delivery over.
func (r *Route) Skip(id string) {
	if r.skip == nil {
		r.skip = make(map[string]struct{}, 1)
	}
	r.skip[id] = struct{}{}
}

// Skipped says whether Skip was called for id.
func (r *Route) Skipped(id string) bool {
	_, ok := r.skip[id]
	return ok
}

// route walks the topic index for pk (a cached result when the topic was
// seen since the last subscription change) and chooses one member of each
// shared group among those allowed to read it.
func (s *Server) route(pk packets.Packet) *Route {
	subscribers := s.Topics.SubscribersReadOnly(pk.TopicName)
	if len(subscribers.Shared) > 0 {
		subscribers = subscribers.clone() // selecting changes it
		s.keepReadableShares(subscribers, pk.TopicName)
		subscribers = s.hooks.OnSelectSubscribers(subscribers, pk)
		if len(subscribers.SharedSelected) == 0 {
			subscribers.SelectShared()
		}
		subscribers.MergeSharedSelected()
	}
	return &Route{subs: subscribers}
}

// deliver sends pk along r (nil: a route of its own) to its inline
// subscriptions and to every client not skipped.
func (s *Server) deliver(pk packets.Packet, r *Route) {
	if pk.Ignore {
		return
	}
	if r == nil {
		r = s.route(pk)
	}

	for _, inlineSubscription := range r.subs.InlineSubscriptions {
		inlineSubscription.Handler(s.inlineClient, inlineSubscription.Subscription, pk)
	}

	var out packets.Packet // each delivery is prepared here in turn
	for id, sub := range r.subs.Subscriptions {
		if r.skip != nil && r.Skipped(id) {
			continue
		}
		if cl, ok := s.Clients.Get(id); ok {
			err := s.publishFrom(r.from, cl, sub, pk, &out)
			if err != nil {
				s.Log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", pk)
			}
		}
	}
}
