package broker

import (
	"strings"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// protocolHook holds what Ferry adds to the engine's protocol handling: the
// cap on message expiry, and tying a client to its connection. What mochi
// v2.7.9 got wrong (CONNACK properties, refusing switched-off features,
// $SYS publishes, shared groups, session expiry, the ACL re-check of a
// resumed session's queue) is fixed in the fork (third_party/mochi); the
// MQTT 3 policy for publishes the ACL denies is its
// Compatibilities.AcknowledgeDeniedPublish.
type protocolHook struct {
	mqtt.HookBase
	b *Broker

	messageExpiry uint32 // seconds; 0 = no cap
}

func newProtocolHook(b *Broker, c config.Config) *protocolHook {
	return &protocolHook{b: b, messageExpiry: uint32(c.MQTT.MaxMessageExpiry / time.Second)}
}

func (h *protocolHook) ID() string { return "ferry-protocol" }

func (h *protocolHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect:
		return true
	case mqtt.OnPublish:
		return h.messageExpiry > 0
	}
	return false
}

// OnConnect ties the client to its connection so the connection can name it
// in logs and send it a DISCONNECT.
func (h *protocolHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.client.Store(cl)
	}
	return nil
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
