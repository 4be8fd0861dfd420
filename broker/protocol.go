package broker

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// protocolHook holds what Ferry adds to mochi's protocol handling: the cap
// on message expiry, the MQTT 3 policy for publishes the ACL denies, and the
// ACL re-check of a resumed session's queue. What mochi v2.7.9 got wrong
// (CONNACK properties, refusing switched-off features, $SYS publishes,
// shared groups, session expiry) is fixed in the fork (third_party/mochi).
type protocolHook struct {
	mqtt.HookBase
	b *Broker

	messageExpiry uint32 // seconds; 0 = no cap

	// queuedUnread counts queued messages dropped when a session resumed
	// because it may no longer read them.
	queuedUnread atomic.Uint64
}

func newProtocolHook(b *Broker, c config.Config) *protocolHook {
	return &protocolHook{b: b, messageExpiry: uint32(c.MQTT.MaxMessageExpiry / time.Second)}
}

func (h *protocolHook) ID() string { return "ferry-protocol" }

func (h *protocolHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect:
		return true
	case mqtt.OnPacketRead, mqtt.OnPacketSent:
		return h.b.auth != nil
	case mqtt.OnPublish:
		return h.messageExpiry > 0
	}
	return false
}

// OnPacketSent re-checks, once the CONNACK of a resumed session is written
// and before mochi resends the session's in-flight messages, that the
// client may still read each queued message: the rules may have changed
// since it was queued (a reload), or the session may have been taken over
// by another identity (allow_session_takeover). Those it may not read are
// dropped (the persistence hook then deletes them from the store) and
// counted.
func (h *protocolHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Connack || !pk.SessionPresent {
		return
	}
	for _, p := range cl.State.Inflight.GetAll(false) {
		if p.FixedHeader.Type != packets.Publish {
			continue // QoS 2 flows past PUBREC carry no message
		}
		// The fork gave an inherited PUBLISH its topic back (adoptInflight).
		if p.TopicName == "" || h.b.auth.MayRead(cl, p.TopicName) {
			continue
		}
		if cl.State.Inflight.Delete(p.PacketID) {
			atomic.AddInt64(&h.b.mochi.Info.Inflight, -1)
			h.queuedUnread.Add(1)
		}
	}
}

// OnConnect ties the client to its connection so the connection can name it
// in logs and send it a DISCONNECT.
func (h *protocolHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.client.Store(cl)
	}
	return nil
}

// OnPacketRead applies Ferry's policy to an MQTT 3 QoS 1/2 PUBLISH the
// ACL denies (dropDeniedV3). MQTT 3 has no topic aliases, so the topic is
// the PUBLISH's own. A publish to $SYS is left to mochi, which refuses it.
func (h *protocolHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion < 5 &&
		!isSys(pk.TopicName) && !h.b.auth.OnACLCheck(cl, pk.TopicName, true) {
		return h.dropDeniedV3(cl, pk), nil
	}
	return pk, nil
}

func isSys(topic string) bool {
	return len(topic) >= len(mqtt.SysPrefix) && strings.EqualFold(topic[:len(mqtt.SysPrefix)], mqtt.SysPrefix)
}

// dropDeniedV3 acknowledges and drops an MQTT 3 QoS 1/2 publish the ACL
// denies. MQTT 3.1.1 (3.3.5) lets a server either acknowledge positively or
// close the connection; mochi closes it, which makes a device reconnect and
// resend the same publish for ever. Ferry acknowledges, drops it (counted in
// ferry_acl_denied_total) and keeps the connection: mochi ignores a PUBLISH
// marked Ignore on read.
func (h *protocolHook) dropDeniedV3(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	ack := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		ack = packets.Pubrec
	}
	_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: ack}, PacketID: pk.PacketID})
	pk.Ignore = true
	return pk
}

// OnPublish caps a publisher's message expiry at mqtt.max_message_expiry.
// Messages without an expiry keep none: mochi's own maximum would also expire
// every retained message a day after it was set.
func (h *protocolHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if e := pk.Properties.MessageExpiryInterval; e > h.messageExpiry {
		pk.Properties.MessageExpiryInterval = h.messageExpiry
		pk.Expiry = pk.Created + int64(h.messageExpiry)
	}
	return pk, nil
}

// openHook lets every client in when no authentication is configured. It is
// never loaded beside real auth: mochi ORs auth hooks.
type openHook struct{ mqtt.HookBase }

func (*openHook) ID() string { return "ferry-open" }

func (*openHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (*openHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck allows everything but publishing to $SYS: those topics are the
// broker's.
func (*openHook) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	return !write || !strings.HasPrefix(topic, "$SYS")
}
