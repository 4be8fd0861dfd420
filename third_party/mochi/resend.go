// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// resendLoop resends, every half Options.ResendAfter, what quiet MQTT 3
// connections have left unacknowledged, until the server closes. It has a
// goroutine of its own: a resend waits for the client's writer.
func (s *Server) resendLoop() {
	t := time.NewTicker(s.Options.ResendAfter / 2)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.resendQuiet()
		}
	}
}

// resendQuiet resends, with DUP set, the unacknowledged QoS 1/2 messages
// and PUBRELs of each connected MQTT 3 client whose flows have not moved
// for two sweeps: a PUBLISH or PUBACK lost on a half-broken path would
// otherwise wait for the next reconnect. MQTT 5 forbids resending on a
// live connection (MQTT-4.4.0-1): its clients are left alone.
func (s *Server) resendQuiet() {
	for _, cl := range s.Clients.GetAll() {
		if cl.Properties.ProtocolVersion >= 5 || cl.Net.Inline || cl.Net.Conn == nil || cl.Closed() {
			continue
		}
		st := &cl.State
		if n := st.flows.Load(); n != st.quietSeen {
			st.quietSeen, st.quietSweeps = n, 0
			continue
		}
		if st.quietSweeps++; st.quietSweeps < 2 {
			continue
		}
		st.quietSweeps = 0
		for _, pk := range st.Inflight.GetAll(false) {
			switch {
			case pk.FixedHeader.Type == packets.Publish && pk.Expiry >= 0:
				pk.FixedHeader.Dup = true // [MQTT-3.3.1-1]
			case pk.FixedHeader.Type == packets.Pubrel:
			default:
				continue // inbound QoS 2 states, and messages waiting for send quota
			}
			if cl.WritePacket(pk) != nil {
				break
			}
			atomic.AddInt64(&s.Info.ResentAfterQuiet, 1)
		}
	}
}
