package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/outbox"
	"github.com/ferrymq/ferry/broker/connectors"
	"github.com/ferrymq/ferry/hooks/auth"
	"github.com/ferrymq/ferry/persistence"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// openBridge opens the outbox in the store st, sharing its group commit
// and fsyncs (and moving an outbox of an earlier Ferry, in
// <storage.dir>/outbox, into it), and builds the routes. They start after
// mochi serves: ingress routes publish into it.
func (b *Broker) openBridge(st *persistence.Store) error {
	if len(b.cfg.Bridges) == 0 {
		return nil
	}
	ob, err := outbox.New(st, b.log.With("component", "outbox"))
	if err != nil {
		return fmt.Errorf("broker: bridge outbox: %w", err)
	}
	br, err := bridge.New(b.cfg.Bridges, bridge.Deps{
		Outbox:     ob,
		Publisher:  b.publisher,
		Logger:     b.log.With("component", "bridge"),
		Registerer: b.registry,
		Factories:  connectors.Factories(),
	})
	if err != nil {
		_ = ob.Close()
		return fmt.Errorf("broker: bridge: %w", err)
	}
	b.outbox, b.bridge = ob, br
	return nil
}

// bridgePublisher publishes ingress messages into the broker as the
// configured bridge identity, whose ACL rules (user and client id
// bridge_identity) apply when authorization is configured.
type bridgePublisher struct {
	b  *Broker
	cl *mqtt.Client
	id *auth.Identity
}

// errDenied marks a publish the ACL refuses: retrying cannot help.
var errDenied = errors.New("not authorized")

func (p *bridgePublisher) Publish(_ context.Context, m bridge.Message) error {
	if p.b.auth != nil && !p.b.auth.AllowedFor(p.id, m.Topic, true) {
		return bridge.Permanent(fmt.Errorf("publish %s as %s: %w", m.Topic, p.cl.ID, errDenied))
	}
	// Disk almost full: a QoS 1/2 message may have to be stored, and mochi
	// would drop a refused inline publish without a word. Not delivered:
	// the backend keeps it and the ingress retries.
	if st := p.b.store.Load(); st != nil && m.QoS > 0 {
		if err := st.Admit(); err != nil {
			return fmt.Errorf("publish %s: %w", m.Topic, err)
		}
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		PacketID:    uint16(m.QoS), // mochi wants one for validity; an inline publish is never acknowledged
	}
	for _, prop := range m.UserProperties {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: prop.Key, Val: prop.Value})
	}
	if err := p.b.mochi.InjectPacket(p.cl, pk); err != nil {
		return fmt.Errorf("publish %s: %w", m.Topic, err)
	}
	return nil
}

// tapHook hands every client publish that matches a route to the bridge,
// before mochi acknowledges it: an at-least-once route's message is in the
// outbox when the PUBACK goes out.
type tapHook struct {
	mqtt.HookBase
	br *bridge.Bridge
}

func (h *tapHook) ID() string { return "ferry-bridge-tap" }

func (h *tapHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish offers the message. A full outbox with when_full: block, or a
// disk below storage.min_free_space, refuses it: MQTT 5 gets PUBACK 0x97
// (quota exceeded); MQTT 3 gets no PUBACK, so the client resends it later.
// Messages the bridge itself published (ingress) are not offered again:
// no loops.
func (h *tapHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	m := bridge.Message{
		Topic:    pk.TopicName,
		Payload:  pk.Payload,
		QoS:      pk.FixedHeader.Qos,
		Retain:   pk.FixedHeader.Retain,
		ClientID: cl.ID,
		Username: string(cl.Properties.Username),
	}
	for _, u := range pk.Properties.User {
		m.UserProperties = append(m.UserProperties, bridge.Property{Key: u.Key, Value: u.Val})
	}
	var err error
	if pk.FixedHeader.Qos == 1 && !cl.Net.Inline {
		var p bridge.Pending
		if p, err = h.br.OfferAsync(m); err == nil && !cl.HoldAck(p) {
			err = p.Wait()
		}
	} else {
		err = h.br.Offer(m)
	}
	switch {
	case err == nil:
		return pk, nil
	case errors.Is(err, bridge.ErrOutboxFull), errors.Is(err, persistence.ErrDiskFull):
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, packets.ErrQuotaExceeded
		}
		return pk, packets.ErrRejectPacket
	default:
		// Storage failed: not acknowledged, the client will resend.
		h.Log.Error("bridge offer failed; publish not acknowledged", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, packets.ErrImplementationSpecificError
		}
		return pk, packets.ErrRejectPacket
	}
}
