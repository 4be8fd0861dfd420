// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// invalidFilters are topic filters MQTT forbids (4.7.1, 4.8.2).
var invalidFilters = []string{
	"a+", "+a", "a/b+", "a/+b/c", "a#", "#/a", "a/#/b", "a/b#", "##", "++",
	"$share//a", "$share/g", "$share/g/", "$share/+/a", "$share/#/a", "$share/g+/a", "$share/g/a+", "$share/g/#/a",
	"",
}

// validFilters are filters that must stay accepted.
var validFilters = []string{
	"a", "a/b", "+", "#", "a/+", "+/a", "a/#", "+/+/#", "/", "//", "a//b", "$SYS/#", "$share/g/a", "$share/g/#", "$share/g/+/a",
}

func TestIsValidFilterStrict(t *testing.T) {
	for _, f := range invalidFilters {
		require.False(t, IsValidFilter(f, false), "%q accepted", f)
	}
	for _, f := range validFilters {
		require.True(t, IsValidFilter(f, false), "%q refused", f)
	}
}

// TestServerSubackRefusesInvalidFilters: each invalid filter of a SUBSCRIBE
// gets its own SUBACK code, 0x8F Topic Filter Invalid for MQTT 5 and 0x80
// Failure for 3.1.1, and the valid ones beside it are granted.
func TestServerSubackRefusesInvalidFilters(t *testing.T) {
	filters := append([]string{"ok/+"}, invalidFilters[:len(invalidFilters)-1]...) // an empty filter is decoded as none
	for _, tc := range []struct {
		version byte
		refused byte
	}{{5, packets.ErrTopicFilterInvalid.Code}, {4, packets.ErrUnspecifiedError.Code}} {
		subs := make(packets.Subscriptions, len(filters))
		for i, f := range filters {
			subs[i] = packets.Subscription{Filter: f, Qos: 1}
		}
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 9,
			ProtocolVersion: tc.version, Filters: subs}
		var raw bytes.Buffer
		require.NoError(t, sub.SubscribeEncode(&raw))
		disconnect := []byte{packets.Disconnect << 4, 0}

		s := newServer()
		got, _ := exchange(t, s, connectFor(tc.version), raw.Bytes(), disconnect)
		_ = s.Close()
		pks := readWire(t, got)
		require.Len(t, pks, 2, "want CONNACK and SUBACK, got %x", got)
		require.Equal(t, packets.Suback, pks[1].typ)
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, ProtocolVersion: tc.version}
		require.NoError(t, ack.SubackDecode(pks[1].body))
		require.Len(t, ack.ReasonCodes, len(filters))
		require.Equal(t, byte(1), ack.ReasonCodes[0], "valid filter %q", filters[0])
		for i, f := range filters[1:] {
			require.Equal(t, tc.refused, ack.ReasonCodes[i+1], "v%d filter %q: code 0x%02x", tc.version, f, ack.ReasonCodes[i+1])
		}
	}
}
