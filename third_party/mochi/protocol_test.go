// SPDX-License-Identifier: MIT

package mqtt

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// Tests of the protocol features the fork enforces that upstream did not:
// $share wildcards and '$' topics, shared members that may not read, the
// expiry of a session, CONNACK properties, refusing what CONNACK says is
// unavailable, and publishes to $SYS.

// TestSharedWildcardsDoNotMatchDollarTopics: a shared subscription whose
// filter starts with a wildcard must not match a topic starting with '$'
// [MQTT-4.7.2-1], as ordinary subscriptions already did not.
func TestSharedWildcardsDoNotMatchDollarTopics(t *testing.T) {
	x := NewTopicsIndex()
	for _, f := range []string{"$share/all/#", "$share/plus/+/x", "$share/sys/$SYS/#", "$share/plussys/$SYS/+", "$share/foo/$foo/#"} {
		x.Subscribe("c", packets.Subscription{Filter: f})
	}
	for _, tc := range []struct {
		topic string
		want  []string
	}{
		{"a/x", []string{"$share/all/#", "$share/plus/+/x"}},
		{"$SYS/x", []string{"$share/sys/$SYS/#", "$share/plussys/$SYS/+"}},
		{"$foo/x", []string{"$share/foo/$foo/#"}},
		{"$bar/x", nil},
	} {
		t.Run(tc.topic, func(t *testing.T) {
			for _, subs := range []*Subscribers{x.Subscribers(tc.topic), x.SubscribersReadOnly(tc.topic)} {
				var got []string
				for f := range subs.Shared {
					got = append(got, f)
				}
				require.ElementsMatch(t, tc.want, got)
			}
		})
	}
}

// readACL allows everything but reading topics under prefix for the
// clients in blind.
type readACL struct {
	HookBase
	prefix string
	blind  map[string]bool
}

func (h *readACL) ID() string { return "read-acl" }
func (h *readACL) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck
}
func (h *readACL) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *readACL) OnACLCheck(cl *Client, topic string, write bool) bool {
	return write || !h.blind[cl.ID] || !strings.HasPrefix(topic, h.prefix)
}

// TestSharedGroupChoosesAmongReaders: a shared group's message goes to a
// member allowed to read it; upstream chose one first and then checked, so
// a member that may not read swallowed its share. A group where no member
// may read drops the message, counted in Info.SharedNoReader.
func TestSharedGroupChoosesAmongReaders(t *testing.T) {
	const n = 30
	s := newLifecycleServer()
	require.NoError(t, s.AddHook(&readACL{prefix: "t/", blind: map[string]bool{"blind": true}}, nil))
	addr := serveTCP(t, s)
	reader, _ := connect(t, addr, 5, "reader", true, 0)
	reader.subscribe(1, "$share/g/t/#", "barrier/reader")
	blind, _ := connect(t, addr, 5, "blind", true, 0)
	blind.subscribe(1, "$share/g/t/#", "$share/h/t/#", "barrier/blind")

	for i := range n {
		require.NoError(t, s.Publish("t/x", []byte(fmt.Sprint(i)), false, 0))
	}
	require.NoError(t, s.Publish("barrier/reader", nil, false, 0))
	require.NoError(t, s.Publish("barrier/blind", nil, false, 0))

	for i := range n {
		pk := reader.expect(packets.Publish)
		require.Equal(t, fmt.Sprint(i), string(pk.Payload), "reader's message %d", i)
	}
	require.Equal(t, "barrier/reader", reader.expect(packets.Publish).TopicName)
	require.Equal(t, "barrier/blind", blind.expect(packets.Publish).TopicName, "blind received a message it may not read")
	require.Equal(t, int64(n), atomic.LoadInt64(&s.Info.SharedNoReader), "group h, once per message")
}

// TestExpiredSessionForgetsSubscriptions: the expiry of a session removes
// its subscriptions and its in-flight messages; upstream only forgot the
// client, so a new client with the same id received messages on filters it
// never subscribed to.
func TestExpiredSessionForgetsSubscriptions(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 5, "ex", false, 60)
	p.subscribe(1, "ex/t")
	_ = p.conn.Close()
	waitOffline(t, s, "ex")
	require.NoError(t, s.Publish("ex/t", []byte("queued"), false, 1))
	require.Equal(t, int64(1), atomic.LoadInt64(&s.Info.Inflight))

	s.clearExpiredClients(time.Now().Unix() + 3600)
	_, ok := s.Clients.Get("ex")
	require.False(t, ok)
	require.NotContains(t, s.Topics.Subscribers("ex/t").Subscriptions, "ex")
	require.Equal(t, int64(0), atomic.LoadInt64(&s.Info.Subscriptions))
	require.Equal(t, int64(0), atomic.LoadInt64(&s.Info.Inflight))

	p, ack := connect(t, addr, 5, "ex", true, 0)
	require.False(t, ack.SessionPresent)
	p.subscribe(1, "ex/barrier")
	require.NoError(t, s.Publish("ex/t", []byte("not subscribed"), false, 0))
	require.NoError(t, s.Publish("ex/barrier", nil, false, 0))
	require.Equal(t, "ex/barrier", p.expect(packets.Publish).TopicName)
}

// featuresOff switches off what Capabilities can switch off.
func featuresOff(c *Capabilities) {
	c.MaximumQos = 1
	c.RetainAvailable = 0
	c.WildcardSubAvailable = 0
	c.SharedSubAvailable = 0
	c.SubIDAvailable = 0
	c.TopicAliasMaximum = 2
	c.MaximumPacketSize = 1000
}

func serverWith(t *testing.T, caps func(*Capabilities)) (*Server, string) {
	t.Helper()
	c := NewDefaultServerCapabilities()
	if caps != nil {
		caps(c)
	}
	s := New(&Options{Logger: logger, InlineClient: true, Capabilities: c})
	return s, startTCPServer(t, s)
}

// TestConnackAdvertisesCapabilities: an MQTT 5 CONNACK carries the topic
// alias maximum, maximum packet size, maximum QoS and feature flags of the
// server's Capabilities; upstream sent only the maximum QoS.
func TestConnackAdvertisesCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name string
		caps func(*Capabilities)
		want packets.Properties
	}{
		{"defaults", nil, packets.Properties{TopicAliasMaximum: 65535,
			RetainAvailable: 1, RetainAvailableFlag: true, WildcardSubAvailable: 1, WildcardSubAvailableFlag: true,
			SharedSubAvailable: 1, SharedSubAvailableFlag: true, SubIDAvailable: 1, SubIDAvailableFlag: true}},
		{"off", featuresOff, packets.Properties{TopicAliasMaximum: 2, MaximumPacketSize: 1000, MaximumQos: 1, MaximumQosFlag: true,
			RetainAvailableFlag: true, WildcardSubAvailableFlag: true, SharedSubAvailableFlag: true, SubIDAvailableFlag: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := serverWith(t, tc.caps)
			_, ack := connect(t, addr, 5, "c", true, 0)
			p := ack.Properties
			got := packets.Properties{TopicAliasMaximum: p.TopicAliasMaximum, MaximumPacketSize: p.MaximumPacketSize,
				MaximumQos: p.MaximumQos, MaximumQosFlag: p.MaximumQosFlag,
				RetainAvailable: p.RetainAvailable, RetainAvailableFlag: p.RetainAvailableFlag,
				WildcardSubAvailable: p.WildcardSubAvailable, WildcardSubAvailableFlag: p.WildcardSubAvailableFlag,
				SharedSubAvailable: p.SharedSubAvailable, SharedSubAvailableFlag: p.SharedSubAvailableFlag,
				SubIDAvailable: p.SubIDAvailable, SubIDAvailableFlag: p.SubIDAvailableFlag}
			require.Equal(t, tc.want, got)
		})
	}
}

// TestUnavailableFeaturesRefused: a PUBLISH or SUBSCRIBE using what the
// CONNACK said is unavailable ends the connection, with DISCONNECT and the
// reason code 3.2.2.3 prescribes for MQTT 5; upstream silently ignored a
// retain flag, lowered the QoS and granted the subscription.
func TestUnavailableFeaturesRefused(t *testing.T) {
	_, addr := serverWith(t, featuresOff)
	sub := func(f string, props packets.Properties) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: f}}, Properties: props}
	}
	pub := func(topic string, qos byte, retain bool, props packets.Properties) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
			PacketID: uint16(qos), TopicName: topic, Payload: []byte("x"), Properties: props}
	}
	alias := packets.Properties{TopicAlias: 1, TopicAliasFlag: true}
	for _, tc := range []struct {
		name       string
		aliasFirst bool // set alias 1 first, with a PUBLISH that succeeds
		pk         packets.Packet
		want       packets.Code
		v3         bool // also for MQTT 3.1.1
	}{
		{"retained publish", false, pub("r", 0, true, packets.Properties{}), packets.ErrRetainNotSupported, true},
		{"retained publish by alias", true, pub("", 0, true, alias), packets.ErrRetainNotSupported, false},
		{"QoS above maximum", false, pub("q", 2, false, packets.Properties{}), packets.ErrQosNotSupported, true},
		{"wildcard subscription", false, sub("a/+", packets.Properties{}), packets.ErrWildcardSubscriptionsNotSupported, true},
		{"shared subscription", false, sub("$share/g/a", packets.Properties{}), packets.ErrSharedSubscriptionsNotSupported, true},
		{"subscription identifier", false, sub("a", packets.Properties{SubscriptionIdentifier: []int{5}}), packets.ErrSubscriptionIdentifiersNotSupported, false},
	} {
		for _, v := range []byte{5, 4} {
			if v == 4 && !tc.v3 {
				continue
			}
			t.Run(fmt.Sprintf("%s v%d", tc.name, v), func(t *testing.T) {
				p, _ := connect(t, addr, v, "", true, 0)
				if tc.aliasFirst {
					p.send(pub("a", 1, false, alias))
					p.expect(packets.Puback)
				}
				p.send(tc.pk)
				got := p.expectClosed()
				if v < 5 {
					require.Empty(t, got, "MQTT 3.1.1 has no DISCONNECT from the server")
					return
				}
				require.Len(t, got, 1)
				require.Equal(t, packets.PacketNames[packets.Disconnect], packets.PacketNames[got[0].FixedHeader.Type])
				require.Equal(t, tc.want.Code, got[0].ReasonCode)
			})
		}
	}
	t.Run("within limits", func(t *testing.T) {
		p, _ := connect(t, addr, 5, "", true, 0)
		p.subscribe(1, "plain/topic")
		p.send(pub("plain/topic", 1, false, packets.Properties{}))
		require.Equal(t, "plain/topic", p.expectEach(packets.Puback, packets.Publish)[packets.Publish].TopicName)
	})
}

// TestPublishToSysAnswered: a client's PUBLISH to $SYS is refused with an
// answer: MQTT 5 at QoS 1/2 PUBACK/PUBREC 0x87, MQTT 3 at QoS 1/2 a closed
// connection; QoS 0 is dropped. Upstream dropped each without a word,
// leaving a QoS 1/2 publisher waiting for ever.
func TestPublishToSysAnswered(t *testing.T) {
	s, addr := serverWith(t, nil)
	pub := func(topic string, qos byte) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: 7,
			TopicName: topic, Payload: []byte("x")}
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	watcher, _ := connect(t, addr, 5, "watcher", true, 0)
	watcher.subscribe(1, "$SYS/fake/#", "barrier")

	var refused int64
	for _, v := range []byte{5, 4} {
		for _, qos := range []byte{0, 1, 2} {
			t.Run(fmt.Sprintf("v%d QoS %d", v, qos), func(t *testing.T) {
				p, _ := connect(t, addr, v, "", true, 0)
				p.send(pub("$SYS/fake/x", qos))
				refused++
				switch {
				case qos == 0:
					p.send(ping)
					p.expect(packets.Pingresp)
				case v < 5:
					require.Empty(t, p.expectClosed())
				default:
					ack := p.expect([]byte{0, packets.Puback, packets.Pubrec}[qos])
					require.Equal(t, uint16(7), ack.PacketID)
					require.Equal(t, packets.ErrNotAuthorized.Code, ack.ReasonCode)
					require.NotEmpty(t, ack.Properties.ReasonString)
					p.send(ping)
					p.expect(packets.Pingresp)
				}
				require.Equal(t, refused, atomic.LoadInt64(&s.Info.SysPublishRefused))
			})
		}
	}
	require.NoError(t, s.Publish("barrier", nil, false, 0))
	require.Equal(t, "barrier", watcher.expect(packets.Publish).TopicName, "a client's $SYS publish was delivered")
}

// ignoreHook marks every PUBLISH on topic Ignore in OnPacketRead, as a hook
// that answered it itself does.
type ignoreHook struct {
	HookBase
	topic string
}

func (h *ignoreHook) ID() string           { return "ignore" }
func (h *ignoreHook) Provides(b byte) bool { return b == OnPacketRead }
func (h *ignoreHook) OnPacketRead(_ *Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.TopicName == h.topic {
		pk.Ignore = true
	}
	return pk, nil
}

// TestPublishIgnoredOnRead: a PUBLISH an OnPacketRead hook marked Ignore is
// neither acknowledged nor delivered (the hook answered it); upstream
// processed it as any other, and a hook had to rename it to a $SYS topic to
// have it dropped, which is now refused.
func TestPublishIgnoredOnRead(t *testing.T) {
	s := newLifecycleServer()
	require.NoError(t, s.AddHook(&ignoreHook{topic: "ignored"}, nil))
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 4, "ig", true, 0)
	p.subscribe(1, "ignored", "barrier")
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3, TopicName: "ignored", Payload: []byte("x")})
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 4, TopicName: "barrier", Payload: []byte("x")})
	for _, pk := range p.expectEach(packets.Puback, packets.Publish) {
		require.NotEqual(t, "ignored", pk.TopicName)
		require.NotEqual(t, uint16(3), pk.PacketID)
	}
}
