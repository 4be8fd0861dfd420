package broker

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/topic"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// protocolHook makes mochi keep the promises Ferry's CONNACK makes. mochi
// v2.7.9 does not advertise Topic Alias Maximum, Maximum Packet Size or the
// feature flags, and silently ignores retained messages, QoS above the
// maximum and wildcard, shared or identified subscriptions when they are
// switched off. This hook advertises each as configured and refuses what is
// off with the reason code MQTT 5 section 3.2.2.3 prescribes.
type protocolHook struct {
	mqtt.HookBase
	b *Broker

	maxQoS        byte
	retain        bool
	wildcard      bool
	shared        bool
	subID         bool
	aliasMax      uint16
	packetMax     uint32
	messageExpiry uint32 // seconds; 0 = no cap

	// aliases remembers, per client id, the topic behind each outbound
	// topic alias the broker has sent, to resend queued messages whole.
	aliases sync.Map // string -> *aliasBook

	// sharedUnread counts shared-subscription messages dropped for a group
	// because no member may read them; queuedUnread, queued messages
	// dropped when a session resumed because it may no longer read them.
	sharedUnread, queuedUnread atomic.Uint64
}

type aliasBook struct {
	mu     sync.Mutex
	topics map[uint16]string
}

func newProtocolHook(b *Broker, c config.Config) *protocolHook {
	return &protocolHook{
		b:             b,
		maxQoS:        byte(*c.MQTT.MaxQoS),
		retain:        *c.MQTT.RetainAvailable,
		wildcard:      *c.MQTT.WildcardSubscriptions,
		shared:        *c.MQTT.SharedSubscriptions,
		subID:         *c.MQTT.SubscriptionIdentifiers,
		aliasMax:      uint16(*c.MQTT.TopicAliasMaximum),
		packetMax:     uint32(*c.Limits.MaxPacketSize),
		messageExpiry: uint32(c.MQTT.MaxMessageExpiry / time.Second),
	}
}

func (h *protocolHook) ID() string { return "ferry-protocol" }

func (h *protocolHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnPacketEncode,
		mqtt.OnClientExpired, mqtt.OnDisconnect, mqtt.OnSelectSubscribers:
		return true
	case mqtt.OnPacketSent:
		return h.b.auth != nil
	case mqtt.OnPublish:
		return h.messageExpiry > 0
	}
	return false
}

// OnSelectSubscribers keeps messages on '$' topics from shared
// subscriptions whose filter starts with a wildcard, which mochi matches
// ("$share/g/#" would get every $SYS update): topic.DropDollarWildcardShares.
// It also leaves in each shared group only the members allowed to read the
// message: mochi picks one member and checks the ACL after, so the share of
// a member that may not read was lost. A group where no member may is
// dropped for this message and counted.
func (h *protocolHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	topic.DropDollarWildcardShares(pk.TopicName, subs.Shared)
	if a := h.b.auth; a != nil && len(subs.Shared) > 0 {
		n := topic.DropUnreadableShares(subs.Shared, func(id string) bool {
			cl, ok := h.b.mochi.Clients.Get(id)
			return !ok || a.MayRead(cl, pk.TopicName) // no client: not a member mochi delivers to
		})
		h.sharedUnread.Add(uint64(n))
	}
	return subs
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
		t := p.TopicName
		if t == "" && p.Properties.TopicAliasFlag {
			t = h.aliasTopic(cl.ID, p.Properties.TopicAlias)
		}
		if t == "" || h.b.auth.MayRead(cl, t) {
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

// endsWithConnection says whether cl's session ends when its network
// connection does, the condition under which mochi's handler cleans it up.
func endsWithConnection(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// OnClientExpired removes an expired session's subscriptions: mochi only
// forgets the client, and its subscriptions would go on matching (a new
// client with the same id would receive them without subscribing).
func (h *protocolHook) OnClientExpired(cl *mqtt.Client) {
	h.b.mochi.UnsubscribeClient(cl)
	cl.ClearInflights()
	h.aliases.Delete(cl.ID)
}

// OnDisconnect forgets the alias book of a session that ends here.
func (h *protocolHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		h.aliases.Delete(cl.ID)
	}
}

// OnPacketEncode adds to a successful MQTT 5 CONNACK what the server offers,
// and resends queued messages with their topic rather than an alias.
func (h *protocolHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.Properties.TopicAliasFlag {
			return h.aliasedPublish(cl, pk)
		}
		return pk
	}
	if pk.FixedHeader.Type != packets.Connack || cl.Properties.ProtocolVersion != 5 || pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		return pk
	}
	p := &pk.Properties
	p.TopicAliasMaximum = h.aliasMax
	p.MaximumPacketSize = h.packetMax
	p.RetainAvailable, p.RetainAvailableFlag = flag(h.retain), true
	p.WildcardSubAvailable, p.WildcardSubAvailableFlag = flag(h.wildcard), true
	p.SharedSubAvailable, p.SharedSubAvailableFlag = flag(h.shared), true
	p.SubIDAvailable, p.SubIDAvailableFlag = flag(h.subID), true
	if h.maxQoS < 2 {
		p.MaximumQos, p.MaximumQosFlag = h.maxQoS, true
	}
	return pk
}

// aliasedPublish records which topic each outbound alias stands for and
// gives a resent message its topic back. mochi stores a QoS 1/2 message for
// resending after replacing its topic with an alias; aliases live only as
// long as a connection, so a message resent after the client reconnects
// would arrive with an alias the new connection never set up. Sending the
// topic without an alias is always valid.
func (h *protocolHook) aliasedPublish(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	v, _ := h.aliases.Load(cl.ID)
	book, _ := v.(*aliasBook)
	if book == nil {
		v, _ = h.aliases.LoadOrStore(cl.ID, &aliasBook{topics: map[uint16]string{}})
		book = v.(*aliasBook)
	}
	book.mu.Lock()
	defer book.mu.Unlock()
	if pk.TopicName != "" {
		book.topics[pk.Properties.TopicAlias] = pk.TopicName
		return pk
	}
	if pk.FixedHeader.Dup {
		if t, ok := book.topics[pk.Properties.TopicAlias]; ok {
			pk.TopicName = t
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
		}
	}
	return pk
}

// aliasTopic returns the topic behind outbound alias a of client id, "" if
// unknown.
func (h *protocolHook) aliasTopic(id string, a uint16) string {
	v, ok := h.aliases.Load(id)
	if !ok {
		return ""
	}
	book := v.(*aliasBook)
	book.mu.Lock()
	defer book.mu.Unlock()
	return book.topics[a]
}

func flag(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// OnPacketRead refuses a PUBLISH or SUBSCRIBE that uses what CONNACK said is
// unavailable: MQTT 5 gets DISCONNECT with the reason, MQTT 3 a closed
// connection (3.1.1 has no DISCONNECT from the server).
func (h *protocolHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	var code packets.Code
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if a := pk.Properties.TopicAlias; pk.Properties.TopicAliasFlag && a > 0 && a <= h.aliasMax {
			resolveAlias(cl, &pk)
		}
		if isSys(pk.TopicName) {
			return h.refuseSysPublish(cl, pk)
		}
		if pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion < 5 && h.b.auth != nil &&
			!h.b.auth.OnACLCheck(cl, pk.TopicName, true) {
			return h.dropDeniedV3(cl, pk), nil
		}
		switch {
		case pk.FixedHeader.Retain && !h.retain:
			code = packets.ErrRetainNotSupported
		case pk.FixedHeader.Qos > h.maxQoS:
			code = packets.ErrQosNotSupported
		default:
			return pk, nil
		}
	case packets.Subscribe:
		if c, bad := h.subscribeViolation(pk); bad {
			code = c
		} else {
			return pk, nil
		}
	default:
		return pk, nil
	}
	h.b.log.Warn("closing connection: feature not available", "client_id", cl.ID,
		"remote", cl.Net.Remote, "reason", code.Reason)
	if cl.Properties.ProtocolVersion == 5 {
		_ = h.b.mochi.DisconnectClient(cl, code)
	} else {
		cl.Stop(code)
	}
	return pk, packets.ErrRejectPacket
}

// resolveAlias applies the client's topic alias to pk for the checks
// below, which run before mochi's. A PUBLISH with a topic sets the alias,
// as the receiver must [MQTT-3.3.2-12], even if it is then refused; one
// without a topic takes the alias's. mochi resolves it again and answers an
// unknown alias with DISCONNECT 0x94 [MQTT-3.3.2-8].
func resolveAlias(cl *mqtt.Client, pk *packets.Packet) {
	if topic, ok := cl.State.TopicAliases.Inbound.Resolve(pk.Properties.TopicAlias, pk.TopicName); ok {
		pk.TopicName = topic
	}
}

func isSys(topic string) bool {
	return len(topic) >= 4 && strings.EqualFold(topic[:4], "$SYS")
}

// refuseSysPublish answers a client's PUBLISH to $SYS, which mochi drops
// without a word, leaving a QoS 1/2 publisher waiting for ever: MQTT 5 gets
// PUBACK/PUBREC 0x87 (not authorized), MQTT 3 at QoS 1/2 a closed connection
// (3.1.1 allows no negative acknowledgement). mochi then ignores the packet.
func (h *protocolHook) refuseSysPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.b.sysPublishDenied.Add(1)
	if pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if cl.Properties.ProtocolVersion < 5 {
		h.b.log.Warn("closing connection: QoS 1/2 publish to $SYS", "client_id", cl.ID, "remote", cl.Net.Remote)
		cl.Stop(packets.ErrNotAuthorized)
		return pk, packets.ErrRejectPacket
	}
	ack := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		ack = packets.Pubrec
	}
	_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: ack}, PacketID: pk.PacketID,
		ReasonCode: packets.ErrNotAuthorized.Code, Properties: packets.Properties{ReasonString: "clients may not publish to $SYS"}})
	return pk, nil
}

// deniedTopic is what a denied MQTT 3 publish is renamed to: mochi ignores
// client publishes to $SYS without a word.
const deniedTopic = "$SYS/ferry/denied"

// dropDeniedV3 acknowledges and drops an MQTT 3 QoS 1/2 publish the ACL
// denies. MQTT 3.1.1 (3.3.5) lets a server either acknowledge positively or
// close the connection; mochi closes it, which makes a device reconnect and
// resend the same publish for ever. Ferry acknowledges, drops it (counted in
// ferry_acl_denied_total) and keeps the connection.
func (h *protocolHook) dropDeniedV3(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	ack := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		ack = packets.Pubrec
	}
	_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: ack}, PacketID: pk.PacketID})
	pk.TopicName = deniedTopic
	pk.FixedHeader.Retain = false
	return pk
}

func (h *protocolHook) subscribeViolation(pk packets.Packet) (packets.Code, bool) {
	if !h.subID && len(pk.Properties.SubscriptionIdentifier) > 0 {
		return packets.ErrSubscriptionIdentifiersNotSupported, true
	}
	for _, f := range pk.Filters {
		if !h.shared && mqtt.IsSharedFilter(f.Filter) {
			return packets.ErrSharedSubscriptionsNotSupported, true
		}
		if !h.wildcard && strings.ContainsAny(f.Filter, "+#") {
			return packets.ErrWildcardSubscriptionsNotSupported, true
		}
	}
	return packets.Code{}, false
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
