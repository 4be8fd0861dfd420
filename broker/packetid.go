package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// MQTT gives each direction its own packet identifiers: the client numbers
// its PUBLISH/SUBSCRIBE/UNSUBSCRIBE, the server its PUBLISH. mochi v2.7.9
// keeps both in one in-flight map per client, so a client packet that
// reuses an identifier of the server's unacknowledged PUBLISH is refused
// (SUBSCRIBE: 0x91) or deletes the server's message, which is then lost
// (PUBLISH). idMaps gives such a client packet a free identifier inside the
// broker and translates the broker's answer back, so mochi never sees the
// two directions collide. Nothing is allocated until a collision happens.
type idMaps struct {
	byClient sync.Map // client id -> *idMap
}

type idMap struct {
	mu  sync.Mutex
	in  map[uint16]uint16 // client's id -> broker's id
	out map[uint16]uint16 // broker's id -> client's id
}

// outbound reports whether id is held by a message the server sent and the
// client has not finished acknowledging.
func outbound(cl *mqtt.Client, id uint16) bool {
	pk, ok := cl.State.Inflight.Get(id)
	return ok && (pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel)
}

// inbound rewrites the identifier of a client PUBLISH (QoS 1/2), PUBREL,
// SUBSCRIBE or UNSUBSCRIBE when it must not reach mochi as it is.
func (m *idMaps) inbound(cl *mqtt.Client, pk *packets.Packet) {
	id := pk.PacketID
	if id == 0 {
		return
	}
	v, mapped := m.byClient.Load(cl.ID)
	if !mapped && !outbound(cl, id) {
		return // the common case: no collision, nothing remembered
	}
	if !mapped {
		v, _ = m.byClient.LoadOrStore(cl.ID, &idMap{in: map[uint16]uint16{}, out: map[uint16]uint16{}})
	}
	im := v.(*idMap)
	im.mu.Lock()
	defer im.mu.Unlock()
	if b, ok := im.in[id]; ok {
		pk.PacketID = b // a PUBREL, or a resent PUBLISH, of a flow already mapped
		return
	}
	if pk.FixedHeader.Type == packets.Pubrel || !outbound(cl, id) {
		return
	}
	// Take a free identifier from the top of the range: mochi numbers its
	// own upwards from 1.
	for b := uint16(65535); b > 0; b-- {
		if _, used := im.out[b]; used {
			continue
		}
		if _, held := cl.State.Inflight.Get(b); held {
			continue
		}
		im.in[id], im.out[b] = b, id
		pk.PacketID = b
		return
	}
}

// answer rewrites the identifier of the broker's PUBACK/PUBREC/PUBCOMP/
// SUBACK/UNSUBACK back to the client's, and ends the mapping when the flow
// ends.
func (m *idMaps) answer(cl *mqtt.Client, pk *packets.Packet) {
	v, ok := m.byClient.Load(cl.ID)
	if !ok {
		return
	}
	im := v.(*idMap)
	im.mu.Lock()
	defer im.mu.Unlock()
	id, ok := im.out[pk.PacketID]
	if !ok {
		return
	}
	b := pk.PacketID
	pk.PacketID = id
	// A QoS 2 flow goes on after a successful PUBREC: PUBREL comes next.
	if pk.FixedHeader.Type == packets.Pubrec && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		return
	}
	delete(im.out, b)
	delete(im.in, id)
}

// forget drops a client's mappings when its session ends.
func (m *idMaps) forget(clientID string) { m.byClient.Delete(clientID) }
