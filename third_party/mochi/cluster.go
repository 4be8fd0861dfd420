// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// RestoreSession makes a session that another server of a cluster kept
// for client c.ID this server's: a disconnected client with c's
// properties, subs and inflight, which the connection being established
// inherits. It is called from OnSessionEstablish, which holds the id's
// lock; a session this server still had for the id is replaced. Unlike
// the stored sessions loaded at start, no hook hears of it (OnDisconnect
// is not called: the session was not connected here).
func (s *Server) RestoreSession(c storage.Client, subs []storage.Subscription, inflight []storage.Message) {
	if old, ok := s.Clients.Get(c.ID); ok {
		s.dropSession(old)
	}
	cl := s.NewClient(nil, c.Listener, c.ID, false)
	cl.Properties.Username = c.Username
	cl.Properties.Clean = c.Clean
	cl.Properties.ProtocolVersion = c.ProtocolVersion
	cl.Properties.Props = packets.Properties{
		SessionExpiryInterval:     c.Properties.SessionExpiryInterval,
		SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag,
	}
	cl.Stop(packets.ErrSessionTakenOver)
	s.Clients.Add(cl)
	for i := range subs {
		subs[i].Client = c.ID
	}
	s.loadSubscriptions(subs)
	for i := range inflight {
		inflight[i].Client = c.ID
	}
	s.loadInflight(inflight)
}

// ForgetSession drops this server's copy of client id's session, which
// another server of a cluster has taken over. A connected client is
// disconnected (MQTT 5: DISCONNECT 0x8E, session taken over) without its
// will, which belongs to the session that goes on elsewhere, and its
// handler is waited for (at most takeoverWait); then the session's
// subscriptions and in-flight messages are dropped. No hook hears of the
// session's end, but OnDisconnect hears of the connection's.
func (s *Server) ForgetSession(id string) {
	cl, ok := s.Clients.Get(id)
	if !ok {
		return
	}
	if h := cl.State.handled; h != nil {
		select {
		case <-h:
		default:
			atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
			_ = s.DisconnectClient(cl, packets.ErrSessionTakenOver)
			cl.Stop(packets.ErrSessionTakenOver)
			select {
			case <-h:
			case <-time.After(takeoverWait):
			}
		}
	}
	unlock := s.sessions.lock(id)
	defer unlock()
	s.loop.willDelayed.Delete(id) // the session goes on: its will waits no more here [MQTT-3.1.3-9]
	if cur, ok := s.Clients.Get(id); ok && cur == cl {
		s.dropSession(cl)
	}
}

// dropSession removes cl's session, under its id's lock, without hooks.
func (s *Server) dropSession(cl *Client) {
	cl.ClearInflights()
	s.UnsubscribeClient(cl)
	s.Clients.deleteIf(cl.ID, cl)
}

// SetWillPublisher makes f publish the wills of clients (at once or after
// their delay) instead of the engine, which delivered them to its own
// subscribers only, without the OnRoute hooks. A cluster publishes them
// as any message, to every node. Set it before Serve. cl is nil for a
// delayed will whose session is gone.
func (s *Server) SetWillPublisher(f func(cl *Client, pk packets.Packet)) { s.willPublisher = f }

// publishWill retains and delivers a will, or hands it to the will
// publisher.
func (s *Server) publishWill(cl *Client, pk packets.Packet) {
	if s.willPublisher != nil {
		s.willPublisher(cl, pk)
		return
	}
	if pk.FixedHeader.Retain {
		s.retainMessage(cl, pk)
	}
	s.publishToSubscribers(pk)
}

// RefuseSession, called from OnSessionEstablish, refuses cl's connection:
// it gets a CONNACK with code (for MQTT 3 the nearest 3.1.1 return code,
// or none) and is closed, and no session is set up or taken over. A
// cluster refuses a client whose session it could not claim (server
// unavailable: the client tries again, perhaps elsewhere). Upstream
// offered no way to refuse a session once authenticated.
func (cl *Client) RefuseSession(code packets.Code) {
	cl.State.refused = &code
}
