package broker

import (
	"cmp"
	"context"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Clients, sessions and subscriptions of the admin API. Everything is read
// through mochi's public API (Server.Clients, Client.State) and the
// persistence hook's read-only accessors.

// kickWait bounds how long a disconnect waits for the client's connection
// to be cleaned up before it discards the session.
const kickWait = 5 * time.Second

type clientJSON struct {
	ClientID        string  `json:"client_id"`
	Username        string  `json:"username"`
	Address         string  `json:"address"`
	Listener        string  `json:"listener"`
	ProtocolVersion byte    `json:"protocol_version"`
	Connected       bool    `json:"connected"`
	ConnectedSince  *string `json:"connected_since"`
	DisconnectedAt  *string `json:"disconnected_at"`
	Keepalive       uint16  `json:"keepalive"`
	CleanStart      bool    `json:"clean_start"`
	// SessionExpiry is in seconds; null: the session never expires.
	SessionExpiry *uint32 `json:"session_expiry"`
	Inflight      int     `json:"inflight"`
	Queued        int     `json:"queued"`
	BytesIn       uint64  `json:"bytes_in"`
	BytesOut      uint64  `json:"bytes_out"`
}

type subscriptionJSON struct {
	ClientID          string `json:"client_id,omitempty"`
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local"`
	RetainAsPublished bool   `json:"retain_as_published"`
	RetainHandling    byte   `json:"retain_handling"`
	Identifier        int    `json:"identifier"`
}

type clientDetailJSON struct {
	clientJSON
	Subscriptions []subscriptionJSON `json:"subscriptions"`
}

type sessionJSON struct {
	ClientID      string  `json:"client_id"`
	Connected     bool    `json:"connected"`
	Subscriptions int     `json:"subscriptions"`
	Queued        int     `json:"queued"`
	QueuedBytes   int64   `json:"queued_bytes"`
	ExpiresAt     *string `json:"expires_at"`
}

// clients returns the broker's clients (connected, and disconnected ones
// whose session is kept), without inline ones, sorted by id.
func (b *Broker) clients() []*mqtt.Client {
	all := b.mochi.Clients.GetAll()
	out := make([]*mqtt.Client, 0, len(all))
	for _, cl := range all {
		if !cl.Net.Inline {
			out = append(out, cl)
		}
	}
	slices.SortFunc(out, func(a, c *mqtt.Client) int { return cmp.Compare(a.ID, c.ID) })
	return out
}

// apiClientByID is the client named by the path's {id}, or a 404.
func (b *Broker) apiClientByID(r *http.Request) (*mqtt.Client, error) {
	id := r.PathValue("id")
	cl, ok := b.mochi.Clients.Get(id)
	if !ok || cl.Net.Inline {
		return nil, notFound("id", "no client or session with id %q", id)
	}
	return cl, nil
}

// sessionExpiry is the client's session expiry interval in seconds as
// mochi applies it; false when the session never expires.
func (b *Broker) sessionExpiry(cl *mqtt.Client) (uint32, bool) {
	expiry := b.mochi.Options.Capabilities.MaximumSessionExpiryInterval
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		expiry = min(expiry, cl.Properties.Props.SessionExpiryInterval)
	} else if cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean {
		expiry = 0
	}
	return expiry, expiry != math.MaxUint32
}

func (b *Broker) clientJSON(cl *mqtt.Client) clientJSON {
	out := clientJSON{
		ClientID:        cl.ID,
		Username:        string(cl.Properties.Username),
		Address:         cl.Net.Remote,
		Listener:        cl.Net.Listener,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Connected:       !cl.Closed(),
		Keepalive:       cl.State.Keepalive,
		CleanStart:      cl.Properties.Clean,
		Inflight:        cl.State.Inflight.Len(),
	}
	if e, ok := b.sessionExpiry(cl); ok {
		out.SessionExpiry = &e
	}
	if c, ok := cl.Net.Conn.(*conn); ok {
		out.BytesIn, out.BytesOut = c.bytesIn.Load(), c.bytesOut.Load()
		if ns := c.since.Load(); ns != 0 && out.Connected {
			out.ConnectedSince = rfc3339(time.Unix(0, ns))
		}
	}
	if t := cl.StopTime(); t > 0 {
		out.DisconnectedAt = rfc3339(time.Unix(t, 0))
	}
	if b.storage != nil {
		if q, ok := b.storage.Queue(cl.ID); ok {
			out.Queued = q.Messages
		}
	}
	return out
}

func subJSON(id string, s packets.Subscription) subscriptionJSON {
	return subscriptionJSON{ClientID: id, Filter: s.Filter, QoS: s.Qos, NoLocal: s.NoLocal,
		RetainAsPublished: s.RetainAsPublished, RetainHandling: s.RetainHandling, Identifier: s.Identifier}
}

// subscriptionsOf returns cl's subscriptions sorted by filter.
func subscriptionsOf(cl *mqtt.Client) []subscriptionJSON {
	subs := cl.State.Subscriptions.GetAll()
	out := make([]subscriptionJSON, 0, len(subs))
	for _, s := range subs {
		out = append(out, subJSON(cl.ID, s))
	}
	slices.SortFunc(out, func(a, c subscriptionJSON) int { return cmp.Compare(a.Filter, c.Filter) })
	return out
}

// apiClients lists clients; q matches a substring of the id or username
// (case-insensitive), connected=true|false keeps those that are (not)
// connected.
func (b *Broker) apiClients(w http.ResponseWriter, r *http.Request) error {
	p, err := pageOf(r, "clients")
	if err != nil {
		return err
	}
	connected, err := boolParam(r, "connected")
	if err != nil {
		return err
	}
	q := strings.ToLower(r.URL.Query().Get("q"))
	var match []*mqtt.Client
	for _, cl := range b.clients() {
		if connected != nil && *connected == cl.Closed() {
			continue
		}
		if q != "" && !strings.Contains(strings.ToLower(cl.ID), q) &&
			!strings.Contains(strings.ToLower(string(cl.Properties.Username)), q) {
			continue
		}
		match = append(match, cl)
	}
	pg := paginate(match, clientID, p)
	out := list[clientJSON]{Items: make([]clientJSON, 0, len(pg.Items)), NextCursor: pg.NextCursor}
	for _, cl := range pg.Items {
		out.Items = append(out.Items, b.clientJSON(cl))
	}
	return writeJSON(w, http.StatusOK, out)
}

func clientID(cl *mqtt.Client) string { return cl.ID }

func (b *Broker) apiClient(w http.ResponseWriter, r *http.Request) error {
	cl, err := b.apiClientByID(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, clientDetailJSON{clientJSON: b.clientJSON(cl), Subscriptions: subscriptionsOf(cl)})
}

// apiDisconnect kicks a client: MQTT 5 clients get DISCONNECT 0x98
// (administrative action), 3.x ones a closed connection; the will, if any,
// is published as for any server-side disconnect. With discard_session the
// session (subscriptions, queue, stored records) is deleted once the
// connection is cleaned up; without it a persistent session stays, and
// kicking a disconnected client changes nothing.
func (b *Broker) apiDisconnect(w http.ResponseWriter, r *http.Request) error {
	cl, err := b.apiClientByID(r)
	if err != nil {
		return err
	}
	var req struct {
		DiscardSession bool `json:"discard_session"`
	}
	if err := readBody(w, r, 4096, &req); err != nil {
		return err
	}
	if !cl.Closed() {
		_ = b.mochi.DisconnectClient(cl, packets.ErrAdministrativeAction)
		if c, ok := cl.Net.Conn.(*conn); ok {
			// mochi's handler stores or drops the session as the connection
			// ends: discarding before that would be undone by it.
			ctx, cancel := context.WithTimeout(r.Context(), kickWait)
			defer cancel()
			select {
			case <-c.handled:
			case <-ctx.Done():
				return &apiError{status: http.StatusServiceUnavailable, detail: "client " + cl.ID + " was told to disconnect but its connection has not ended yet; try again"}
			}
		}
	}
	if req.DiscardSession {
		b.discardSession(cl)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// discardSession deletes the session of the disconnected client cl, as
// its expiry would, unless a new connection has taken the id over.
func (b *Broker) discardSession(cl *mqtt.Client) {
	cur, ok := b.mochi.Clients.Get(cl.ID)
	if !ok || cur != cl {
		return
	}
	b.mochi.Clients.Delete(cl.ID)
	b.mochi.UnsubscribeClient(cl)
	cl.ClearInflights()
	if b.storage != nil {
		b.storage.OnClientExpired(cl)
	}
	b.log.Info("session discarded by an operator", "client_id", cl.ID)
}

// apiSessions lists sessions, offline persistent ones included, with
// what is queued for them.
func (b *Broker) apiSessions(w http.ResponseWriter, r *http.Request) error {
	p, err := pageOf(r, "sessions")
	if err != nil {
		return err
	}
	pg := paginate(b.clients(), clientID, p)
	out := list[sessionJSON]{Items: make([]sessionJSON, 0, len(pg.Items)), NextCursor: pg.NextCursor}
	for _, cl := range pg.Items {
		s := sessionJSON{ClientID: cl.ID, Connected: !cl.Closed(), Subscriptions: cl.State.Subscriptions.Len()}
		var restoredExpiry time.Time
		if b.storage != nil {
			if q, ok := b.storage.Queue(cl.ID); ok {
				s.Queued, s.QueuedBytes, restoredExpiry = q.Messages, q.Bytes, q.Expires
			}
		}
		if !s.Connected {
			switch e, ok := b.sessionExpiry(cl); {
			case !restoredExpiry.IsZero():
				s.ExpiresAt = rfc3339(restoredExpiry)
			case ok && cl.StopTime() > 0:
				s.ExpiresAt = rfc3339(time.Unix(cl.StopTime()+int64(e), 0))
			}
		}
		out.Items = append(out.Items, s)
	}
	return writeJSON(w, http.StatusOK, out)
}

// apiSubscriptions lists subscriptions of every session, or of one client
// (client_id), or with one filter (filter, compared as written).
func (b *Broker) apiSubscriptions(w http.ResponseWriter, r *http.Request) error {
	p, err := pageOf(r, "subscriptions")
	if err != nil {
		return err
	}
	q := r.URL.Query()
	filter := q.Get("filter")
	if _, ok := q["filter"]; ok && !validFilter(filter) {
		return badParam("filter", "%q is not a valid topic filter", filter)
	}
	id := q.Get("client_id")
	var items []subscriptionJSON
	for _, cl := range b.clients() {
		if id != "" && cl.ID != id {
			continue
		}
		for _, s := range subscriptionsOf(cl) {
			if filter == "" || s.Filter == filter {
				items = append(items, s)
			}
		}
	}
	// NUL sorts before every character of a client id: the order is by
	// client, then filter, and the key is unique.
	return writeJSON(w, http.StatusOK, paginate(items, func(s subscriptionJSON) string { return s.ClientID + "\x00" + s.Filter }, p))
}

// subscribeRequest is the body of POST /api/v1/clients/{id}/subscriptions.
type subscribeRequest struct {
	Filter            string `json:"filter"`
	QoS               *int   `json:"qos"`
	NoLocal           bool   `json:"no_local"`
	RetainAsPublished bool   `json:"retain_as_published"`
	Identifier        int    `json:"identifier"`
}

// apiSubscribe adds a subscription to a client's session, as if the client
// had subscribed (persisted for a persistent session), without a SUBACK to
// the client and without sending it the matching retained messages.
// Delivery to the client still passes its ACL read check.
func (b *Broker) apiSubscribe(w http.ResponseWriter, r *http.Request) error {
	cl, err := b.apiClientByID(r)
	if err != nil {
		return err
	}
	var req subscribeRequest
	if err := readBody(w, r, 64<<10, &req); err != nil {
		return err
	}
	if !validFilter(req.Filter) {
		return badParam("filter", "%q is not a valid topic filter", req.Filter)
	}
	if req.QoS == nil || *req.QoS < 0 || *req.QoS > 2 {
		return badParam("qos", "must be 0, 1 or 2")
	}
	if req.NoLocal && mqtt.IsSharedFilter(req.Filter) {
		return badParam("no_local", "not allowed on a shared subscription")
	}
	if req.Identifier < 0 || req.Identifier > 268435455 {
		return badParam("identifier", "must be 0 (none) to 268435455")
	}
	qos := min(byte(*req.QoS), b.mochi.Options.Capabilities.MaximumQos)
	sub := packets.Subscription{Filter: req.Filter, Qos: qos, NoLocal: req.NoLocal,
		RetainAsPublished: req.RetainAsPublished, Identifier: req.Identifier}
	if b.mochi.Topics.Subscribe(cl.ID, sub) {
		atomic.AddInt64(&b.mochi.Info.Subscriptions, 1)
	}
	cl.State.Subscriptions.Add(sub.Filter, sub)
	if b.storage != nil {
		b.storage.OnSubscribed(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe},
			Filters: packets.Subscriptions{sub}}, []byte{qos})
	}
	return writeJSON(w, http.StatusCreated, subJSON(cl.ID, sub))
}

// apiUnsubscribe removes the subscription ?filter= from a client's session.
func (b *Broker) apiUnsubscribe(w http.ResponseWriter, r *http.Request) error {
	cl, err := b.apiClientByID(r)
	if err != nil {
		return err
	}
	filter := r.URL.Query().Get("filter")
	if !validFilter(filter) {
		return badParam("filter", "%q is not a valid topic filter", filter)
	}
	sub, ok := cl.State.Subscriptions.Get(filter)
	if !ok {
		return notFound("filter", "client %s has no subscription %q", cl.ID, filter)
	}
	cl.State.Subscriptions.Delete(filter)
	if b.mochi.Topics.Unsubscribe(filter, cl.ID) {
		atomic.AddInt64(&b.mochi.Info.Subscriptions, -1)
	}
	if b.storage != nil {
		b.storage.OnUnsubscribed(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe},
			Filters: packets.Subscriptions{sub}})
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
