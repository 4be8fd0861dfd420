// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bufio"
	"io"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// TestResendAfterQuiet: an MQTT 3 client whose flows have not moved for
// two sweeps gets its unacknowledged QoS 1 messages again, with DUP set;
// an acknowledgement or a delivery in between starts the count again, and
// an MQTT 5 client is never resent to on a live connection. Upstream
// resent only when a session resumed (Ferry had a hook that tracked every
// packet sent to do it).
func TestResendAfterQuiet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version byte
		resent  bool
	}{{"mqtt 3.1.1", 4, true}, {"mqtt 5", 5, false}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer()
			cl, r, _ := newTestClient()
			defer cl.Stop(errClientStop)
			cl.ops.info = s.Info
			cl.Properties.ProtocolVersion = tc.version
			s.Clients.Add(cl)
			_, err := s.publishToClient(cl, packets.Subscription{Filter: "a/b", Qos: 1},
				packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "a/b", Payload: []byte("x")})
			require.NoError(t, err)
			br := bufio.NewReader(r)
			readPublish := func() byte {
				fh, err := br.ReadByte()
				require.NoError(t, err)
				n, _, err := packets.DecodeLength(br)
				require.NoError(t, err)
				_, err = io.CopyN(io.Discard, br, int64(n))
				require.NoError(t, err)
				return fh
			}
			require.Equal(t, byte(packets.Publish<<4|1<<1), readPublish(), "first delivery, no DUP")
			require.Eventually(t, func() bool { return cl.State.flows.Load() == 1 }, 5*time.Second, time.Millisecond) // counted once written

			s.resendQuiet() // the delivery moved the flows
			s.resendQuiet() // quiet once
			cl.State.flows.Add(1)
			s.resendQuiet() // moved again: an acknowledgement of another message
			s.resendQuiet()
			require.Zero(t, s.Info.ResentAfterQuiet)
			done := make(chan struct{})
			go func() { s.resendQuiet(); close(done) }() // quiet twice
			if tc.resent {
				require.Equal(t, byte(packets.Publish<<4|1<<3|1<<1), readPublish(), "resent with DUP")
				<-done
				require.Equal(t, int64(1), s.Info.ResentAfterQuiet)
				return
			}
			<-done
			require.Zero(t, s.Info.ResentAfterQuiet)
			_ = r.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, err = br.ReadByte()
			require.Error(t, err, "nothing resent to an MQTT 5 client")
		})
	}
}
