// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// TestInterestFirstAndLast: the interest function hears of a filter when
// its first subscriber comes and its last goes, once each, and of each
// shared group of a filter on its own.
func TestInterestFirstAndLast(t *testing.T) {
	x := NewTopicsIndex()
	var got []string
	x.SetInterest(func(filter string, added bool) {
		if added {
			got = append(got, "+"+filter)
		} else {
			got = append(got, "-"+filter)
		}
	})
	steps := []struct {
		sub    bool
		client string
		filter string
	}{
		{true, "a", "x/+"},
		{true, "b", "x/+"},          // second subscriber: nothing
		{true, "a", "x/+"},          // resubscribe: nothing
		{true, "a", "$share/g/x/+"}, // a group is an interest of its own
		{true, "b", "$share/g/x/+"},
		{true, "b", "$share/h/x/+"},
		{false, "a", "x/+"},
		{false, "a", "x/+"}, // not subscribed any more: nothing
		{false, "c", "x/+"}, // never subscribed: nothing
		{false, "b", "x/+"},
		{false, "a", "$share/g/x/+"},
		{false, "b", "$share/g/x/+"},
		{false, "b", "$share/h/x/+"},
		{false, "b", "nothing/here"},
	}
	for _, s := range steps {
		if s.sub {
			x.Subscribe(s.client, packets.Subscription{Filter: s.filter})
		} else {
			x.Unsubscribe(s.filter, s.client)
		}
	}
	require.Equal(t, []string{"+x/+", "+$share/g/x/+", "+$share/h/x/+", "-x/+", "-$share/g/x/+", "-$share/h/x/+"}, got)
}

// TestRelayDeliversWithoutRetaining: a retained message a relay client
// injects reaches a Retain-As-Published subscriber with its retain flag,
// but is not retained here.
func TestRelayDeliversWithoutRetaining(t *testing.T) {
	s := newServer()
	_ = s.Serve()
	defer s.Close()

	relay := s.NewClient(nil, LocalListener, "relay", true)
	relay.Net.Relay = true

	receiver, r, w := newTestClient()
	receiver.ID = "receiver"
	receiver.Properties.ProtocolVersion = 5
	s.Clients.Add(receiver)
	s.Topics.Subscribe(receiver.ID, packets.Subscription{Filter: "a/b/c", RetainAsPublished: true})

	got := make(chan []byte)
	go func() {
		buf, _ := io.ReadAll(r)
		got <- buf
	}()
	pk := *packets.TPacketData[packets.Publish].Get(packets.TPublishRetain).Packet
	_, before := s.Topics.Retained.Get(pk.TopicName)
	require.False(t, before)
	require.NoError(t, s.InjectPacket(relay, pk))
	time.Sleep(10 * time.Millisecond)
	_ = w.Close()
	buf := <-got
	require.NotEmpty(t, buf)
	require.Equal(t, byte(packets.Publish<<4|1), buf[0]&0xf1, "delivered with the retain flag")
	_, after := s.Topics.Retained.Get(pk.TopicName)
	require.False(t, after, "a relayed message is not retained")
	require.True(t, strings.Contains(string(buf), pk.TopicName))
}
