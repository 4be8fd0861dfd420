package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

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
	if c := ackDeferrer(cl, pk); c != nil {
		var p bridge.Pending
		if p, err = h.br.OfferAsync(m); err == nil {
			c.DeferAck(pk.PacketID, p)
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

// mountBridgeAPI adds the dead-letter endpoints to the admin API:
//
//	GET  /api/v1/bridges/{route}/deadletters?after=SEQ&limit=N
//	POST /api/v1/bridges/{route}/deadletters/replay   body: {"seqs": [..]} (none: all)
func (b *Broker) mountBridgeAPI() {
	if b.admin == nil {
		return
	}
	b.admin.Handle("GET /api/v1/bridges/{route}/deadletters", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		br := b.bridge
		if br == nil {
			http.Error(w, "no bridges configured", http.StatusNotFound)
			return
		}
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || limit <= 0 {
			limit = 100
		}
		dls, err := br.DeadLetters(r.PathValue("route"), after, limit)
		if err != nil {
			http.Error(w, err.Error(), httpStatus(err))
			return
		}
		out := make([]deadLetterJSON, 0, len(dls))
		for _, d := range dls {
			out = append(out, deadLetterJSON{Seq: d.Seq, ID: d.ID, Topic: d.Topic, ClientID: d.ClientID,
				Created: d.Created.UTC().Format("2006-01-02T15:04:05.000Z"), Reason: d.Reason, Payload: d.Payload})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}))
	b.admin.Handle("POST /api/v1/bridges/{route}/deadletters/replay", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		br := b.bridge
		if br == nil {
			http.Error(w, "no bridges configured", http.StatusNotFound)
			return
		}
		var req struct {
			Seqs []uint64 `json:"seqs"`
		}
		if r.ContentLength != 0 {
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		n, err := br.Replay(r.Context(), r.PathValue("route"), req.Seqs)
		if err != nil {
			http.Error(w, err.Error(), httpStatus(err))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int{"replayed": n})
	}))
}

// publishRequest is the body of POST /api/v1/publish.
type publishRequest struct {
	Topic string `json:"topic"`
	// Payload is the message as text; PayloadBase64 as base64 for binary
	// payloads. At most one.
	Payload        *string           `json:"payload"`
	PayloadBase64  []byte            `json:"payload_base64"`
	QoS            byte              `json:"qos"`
	Retain         bool              `json:"retain"`
	UserProperties map[string]string `json:"user_properties"`
}

// mountPublishAPI lets services without MQTT send to devices:
//
//	POST /api/v1/publish  {"topic": "devices/d1/commands", "payload": "reboot", "qos": 1}
//
// The message is published as the bridge identity (bridge_identity); the
// admin token guards the endpoint like the rest of the API.
func (b *Broker) mountPublishAPI() {
	if b.admin == nil {
		return
	}
	b.admin.Handle("POST /api/v1/publish", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req publishRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, int64(*b.cfg.Limits.MaxPacketSize)+4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var payload []byte
		switch {
		case req.Payload != nil && req.PayloadBase64 != nil:
			http.Error(w, "body: payload and payload_base64 are exclusive", http.StatusBadRequest)
			return
		case req.Payload != nil:
			payload = []byte(*req.Payload)
		default:
			payload = req.PayloadBase64
		}
		if req.QoS > 2 {
			http.Error(w, "body: qos must be 0, 1 or 2", http.StatusBadRequest)
			return
		}
		if req.Topic == "" || !mqtt.IsValidFilter(req.Topic, true) {
			http.Error(w, fmt.Sprintf("body: topic %q is not a valid topic name", req.Topic), http.StatusBadRequest)
			return
		}
		m := bridge.Message{Topic: req.Topic, Payload: payload, QoS: req.QoS, Retain: req.Retain}
		for k, v := range req.UserProperties {
			m.UserProperties = append(m.UserProperties, bridge.Property{Key: k, Value: v})
		}
		if err := b.publisher.Publish(r.Context(), m); err != nil {
			code := http.StatusServiceUnavailable
			if errors.Is(err, errDenied) {
				code = http.StatusForbidden
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"published":true}` + "\n"))
	}))
}

type deadLetterJSON struct {
	Seq      uint64 `json:"seq"`
	ID       string `json:"id"`
	Topic    string `json:"topic"`
	ClientID string `json:"client_id"`
	Created  string `json:"created"`
	Reason   string `json:"reason"`
	Payload  []byte `json:"payload"`
}

func httpStatus(err error) int {
	if errors.Is(err, bridge.ErrUnknownRoute) {
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}
