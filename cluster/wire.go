package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mochi-mqtt/server/v2/packets"
)

// A message crosses NATS as one frame: a version byte, the publisher's
// protocol version, its Created and Expiry times (unix seconds), then the
// PUBLISH as MQTT 5 encodes it, so every property travels with it.
const wireVersion = 1

// wireHeader is the frame's length before the PUBLISH.
const wireHeader = 2 + 8 + 8

var errWire = errors.New("cluster: malformed message frame")

// encodeMessage appends pk's frame to buf.
func encodeMessage(buf *bytes.Buffer, pk *packets.Packet) error {
	var h [wireHeader]byte
	h[0] = wireVersion
	h[1] = pk.ProtocolVersion
	binary.BigEndian.PutUint64(h[2:], uint64(pk.Created))
	binary.BigEndian.PutUint64(h[10:], uint64(pk.Expiry))
	buf.Write(h[:])
	out := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain},
		TopicName:       pk.TopicName,
		Payload:         pk.Payload,
		Properties:      pk.Properties,
		PacketID:        1, // required by the encoding at QoS > 0; never used
		ProtocolVersion: 5,
	}
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.Properties.SubscriptionIdentifier = nil
	return out.PublishEncode(buf)
}

// decodeMessage reads a frame. The packet's payload aliases b.
func decodeMessage(b []byte) (packets.Packet, error) {
	var pk packets.Packet
	if len(b) < wireHeader+2 || b[0] != wireVersion {
		return pk, errWire
	}
	pk.ProtocolVersion = 5
	created := int64(binary.BigEndian.Uint64(b[2:]))
	expiry := int64(binary.BigEndian.Uint64(b[10:]))
	version := b[1]
	b = b[wireHeader:]
	if err := pk.FixedHeader.Decode(b[0]); err != nil || pk.FixedHeader.Type != packets.Publish {
		return pk, fmt.Errorf("%w: header: %v", errWire, err)
	}
	r := bytes.NewReader(b[1:])
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, fmt.Errorf("%w: length: %v", errWire, err)
	}
	rest := b[1+len(b[1:])-r.Len():]
	if n != len(rest) {
		return pk, fmt.Errorf("%w: length %d, %d bytes", errWire, n, len(rest))
	}
	pk.FixedHeader.Remaining = n
	if err := pk.PublishDecode(rest); err != nil {
		return pk, fmt.Errorf("%w: %v", errWire, err)
	}
	pk.ProtocolVersion = version
	pk.Created, pk.Expiry = created, expiry
	return pk, nil
}
