package mqttc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Packet types, the high nibble of the fixed header.
const (
	CONNECT     byte = 1
	CONNACK     byte = 2
	PUBLISH     byte = 3
	PUBACK      byte = 4
	PUBREC      byte = 5
	PUBREL      byte = 6
	PUBCOMP     byte = 7
	SUBSCRIBE   byte = 8
	SUBACK      byte = 9
	UNSUBSCRIBE byte = 10
	UNSUBACK    byte = 11
	PINGREQ     byte = 12
	PINGRESP    byte = 13
	DISCONNECT  byte = 14
	AUTH        byte = 15
)

// Protocol versions as carried in CONNECT.
const (
	V311 byte = 4
	V5   byte = 5
)

// MaxRemainingLength is the largest remaining length MQTT can express.
const MaxRemainingLength = 268435455

// Errors returned by the decoder. Every malformed input maps to one of these
// (wrapped with detail), never to a panic.
var (
	ErrMalformed     = errors.New("mqttc: malformed packet")
	ErrTooLarge      = errors.New("mqttc: packet larger than limit")
	ErrProtocol      = errors.New("mqttc: protocol error")
	ErrUnexpected    = errors.New("mqttc: unexpected packet")
	ErrConnRefused   = errors.New("mqttc: connection refused")
	ErrSubRejected   = errors.New("mqttc: subscription rejected")
	ErrServerDiscon  = errors.New("mqttc: server sent DISCONNECT")
	errShortVarint   = fmt.Errorf("%w: truncated variable byte integer", ErrMalformed)
	errLongVarint    = fmt.Errorf("%w: variable byte integer longer than 4 bytes", ErrMalformed)
	errShortBody     = fmt.Errorf("%w: truncated body", ErrMalformed)
	errTrailingBytes = fmt.Errorf("%w: trailing bytes", ErrMalformed)
)

// Connect is a CONNECT packet.
type Connect struct {
	Version   byte // V311 or V5
	ClientID  string
	Clean     bool
	KeepAlive uint16 // seconds, 0 disables
	Username  string // sent when non-empty
	Password  string // sent when non-empty
	// SessionExpiry (MQTT 5) keeps the session this many seconds after the
	// connection closes; 0 omits the property.
	SessionExpiry uint32
	// ReceiveMaximum (MQTT 5) bounds QoS>0 deliveries in flight to us; 0
	// omits the property (the protocol default is 65535).
	ReceiveMaximum uint16
}

// Properties are the MQTT 5 properties the generator reads or writes.
// Properties not listed are validated and skipped when decoding.
type Properties struct {
	ResponseTopic    []byte
	CorrelationData  []byte
	SessionExpiry    uint32
	ReceiveMaximum   uint16
	AssignedClientID []byte
	ReasonString     []byte
	TopicAlias       uint16
	// Present records which of the fields above were on the wire, by
	// property identifier.
	Present PropSet
}

// PropSet is a set of MQTT 5 property identifiers.
type PropSet uint64

// Has reports whether the property with identifier id is in the set.
func (s PropSet) Has(id byte) bool { return id < 64 && s&(1<<id) != 0 }

func (s *PropSet) add(id byte) { *s |= 1 << id }

// Publish is a PUBLISH packet. Topic and Payload alias the caller's memory.
type Publish struct {
	Topic    []byte
	QoS      byte
	Retain   bool
	Dup      bool
	PacketID uint16 // ignored at QoS 0
	Payload  []byte
	Props    Properties // MQTT 5 only; ResponseTopic and CorrelationData are encoded
}

// Subscription is one topic filter in a SUBSCRIBE.
type Subscription struct {
	Filter string
	QoS    byte
}

// Packet is a decoded packet. Byte slices alias the buffer it was decoded
// from.
type Packet struct {
	Type  byte
	Flags byte // low nibble of the fixed header
	// CONNACK
	SessionPresent bool
	// Reason is the CONNACK return code (3.1.1) or reason code (5), or the
	// reason code of an MQTT 5 ack or DISCONNECT (0 when omitted).
	Reason byte
	// PUBLISH, acks, SUBACK
	PacketID uint16
	QoS      byte
	Retain   bool
	Dup      bool
	Topic    []byte
	Payload  []byte
	// Granted holds SUBACK return/reason codes, one per filter.
	Granted []byte
	Props   Properties
}

// AppendVarint appends v as an MQTT variable byte integer.
func AppendVarint(b []byte, v int) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if v == 0 {
			return b
		}
	}
}

// varintLen is the encoded size of v.
func varintLen(v int) int {
	switch {
	case v < 128:
		return 1
	case v < 16384:
		return 2
	case v < 2097152:
		return 3
	default:
		return 4
	}
}

// ReadVarint decodes a variable byte integer from the start of b, returning
// the value and the bytes consumed.
func ReadVarint(b []byte) (int, int, error) {
	v, mul := 0, 1
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, errShortVarint
		}
		v += int(b[i]&0x7f) * mul
		if b[i]&0x80 == 0 {
			return v, i + 1, nil
		}
		mul <<= 7
	}
	return 0, 0, errLongVarint
}

func appendU16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }

func appendStr(b []byte, s string) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBin(b []byte, s []byte) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

// beginPacket reserves room for the fixed header; finishPacket fills it in
// once the body length is known, moving the body down if the length needs
// fewer than four bytes. The move is a memmove of the body, cheaper than
// encoding twice.
func beginPacket(b []byte, header byte) ([]byte, int) {
	start := len(b)
	return append(b, header, 0, 0, 0, 0), start
}

func finishPacket(b []byte, start int) []byte {
	bodyStart := start + 5
	n := len(b) - bodyStart
	vl := varintLen(n)
	if vl < 4 {
		copy(b[start+1+vl:], b[bodyStart:])
		b = b[:len(b)-(4-vl)]
	}
	// Appending to the empty slice at start+1 writes into b's array, in
	// the room reserved above.
	AppendVarint(b[start+1:start+1], n)
	return b
}

// AppendConnect appends c encoded as a CONNECT packet.
func AppendConnect(b []byte, c *Connect) []byte {
	b, start := beginPacket(b, CONNECT<<4)
	b = appendStr(b, "MQTT")
	b = append(b, c.Version)
	var flags byte
	if c.Clean {
		flags |= 0x02
	}
	if c.Username != "" {
		flags |= 0x80
	}
	if c.Password != "" {
		flags |= 0x40
	}
	b = append(b, flags)
	b = appendU16(b, c.KeepAlive)
	if c.Version == V5 {
		var props []byte
		if c.SessionExpiry > 0 {
			props = append(props, 0x11)
			props = binary.BigEndian.AppendUint32(props, c.SessionExpiry)
		}
		if c.ReceiveMaximum > 0 {
			props = append(props, 0x21)
			props = appendU16(props, c.ReceiveMaximum)
		}
		b = AppendVarint(b, len(props))
		b = append(b, props...)
	}
	b = appendStr(b, c.ClientID)
	if c.Username != "" {
		b = appendStr(b, c.Username)
	}
	if c.Password != "" {
		b = appendStr(b, c.Password)
	}
	return finishPacket(b, start)
}

// AppendPublish appends p encoded as a PUBLISH for protocol version v.
func AppendPublish(b []byte, p *Publish, v byte) []byte {
	h := PUBLISH<<4 | p.QoS<<1
	if p.Retain {
		h |= 0x01
	}
	if p.Dup {
		h |= 0x08
	}
	b, start := beginPacket(b, h)
	b = appendBin(b, p.Topic)
	if p.QoS > 0 {
		b = appendU16(b, p.PacketID)
	}
	if v == V5 {
		pl := 0
		if p.Props.ResponseTopic != nil {
			pl += 3 + len(p.Props.ResponseTopic)
		}
		if p.Props.CorrelationData != nil {
			pl += 3 + len(p.Props.CorrelationData)
		}
		b = AppendVarint(b, pl)
		if p.Props.ResponseTopic != nil {
			b = appendBin(append(b, 0x08), p.Props.ResponseTopic)
		}
		if p.Props.CorrelationData != nil {
			b = appendBin(append(b, 0x09), p.Props.CorrelationData)
		}
	}
	b = append(b, p.Payload...)
	return finishPacket(b, start)
}

// AppendAck appends a PUBACK, PUBREC, PUBREL or PUBCOMP for packet id. The
// MQTT 5 reason code is omitted, meaning success.
func AppendAck(b []byte, typ byte, id uint16) []byte {
	h := typ << 4
	if typ == PUBREL {
		h |= 0x02
	}
	return append(b, h, 2, byte(id>>8), byte(id))
}

// AppendSubscribe appends a SUBSCRIBE with packet id for version v.
func AppendSubscribe(b []byte, id uint16, subs []Subscription, v byte) []byte {
	b, start := beginPacket(b, SUBSCRIBE<<4|0x02)
	b = appendU16(b, id)
	if v == V5 {
		b = append(b, 0) // no properties
	}
	for _, s := range subs {
		b = appendStr(b, s.Filter)
		b = append(b, s.QoS&0x03)
	}
	return finishPacket(b, start)
}

// AppendPingreq appends a PINGREQ.
func AppendPingreq(b []byte) []byte { return append(b, PINGREQ<<4, 0) }

// AppendDisconnect appends a DISCONNECT (reason "normal" in MQTT 5).
func AppendDisconnect(b []byte) []byte { return append(b, DISCONNECT<<4, 0) }

// reader walks a packet body with bounds checks.
type reader struct {
	b   []byte
	off int
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) byte1() (byte, error) {
	if r.left() < 1 {
		return 0, errShortBody
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *reader) u16() (uint16, error) {
	if r.left() < 2 {
		return 0, errShortBody
	}
	v := binary.BigEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v, nil
}

func (r *reader) u32() (uint32, error) {
	if r.left() < 4 {
		return 0, errShortBody
	}
	v := binary.BigEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v, nil
}

func (r *reader) bin() ([]byte, error) {
	n, err := r.u16()
	if err != nil {
		return nil, err
	}
	if r.left() < int(n) {
		return nil, errShortBody
	}
	s := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

func (r *reader) varint() (int, error) {
	v, n, err := ReadVarint(r.b[r.off:])
	if err != nil {
		return 0, err
	}
	r.off += n
	return v, nil
}

// fixedFlags are the required low-nibble flags per packet type (PUBLISH is
// checked separately).
var fixedFlags = [16]byte{PUBREL: 0x02, SUBSCRIBE: 0x02, UNSUBSCRIBE: 0x02}

// Decode decodes one packet given its fixed-header byte and body (the
// remaining-length bytes) for protocol version v. It decodes what a server
// sends to a client, plus PUBLISH and the acks in both directions.
func Decode(header byte, body []byte, v byte) (Packet, error) {
	p := Packet{Type: header >> 4, Flags: header & 0x0f}
	if p.Type != PUBLISH && p.Flags != fixedFlags[p.Type] {
		return p, fmt.Errorf("%w: type %d with flags %#x", ErrMalformed, p.Type, p.Flags)
	}
	r := &reader{b: body}
	var err error
	switch p.Type {
	case CONNACK:
		err = decodeConnack(r, &p, v)
	case PUBLISH:
		err = decodePublish(r, &p, v)
	case PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK:
		err = decodeAck(r, &p, v)
	case SUBACK:
		err = decodeSuback(r, &p, v)
	case PINGREQ, PINGRESP:
	case DISCONNECT:
		if v == V5 && r.left() > 0 {
			if p.Reason, err = r.byte1(); err == nil && r.left() > 0 {
				err = decodeProps(r, &p.Props)
			}
		}
	default:
		return p, fmt.Errorf("%w: packet type %d", ErrUnexpected, p.Type)
	}
	if err != nil {
		return p, err
	}
	if r.left() != 0 && p.Type != SUBACK && p.Type != UNSUBACK {
		return p, errTrailingBytes
	}
	return p, nil
}

func decodeConnack(r *reader, p *Packet, v byte) error {
	f, err := r.byte1()
	if err != nil {
		return err
	}
	if f&^0x01 != 0 {
		return fmt.Errorf("%w: connack flags %#x", ErrMalformed, f)
	}
	p.SessionPresent = f == 1
	if p.Reason, err = r.byte1(); err != nil {
		return err
	}
	if v == V5 {
		return decodeProps(r, &p.Props)
	}
	return nil
}

func decodePublish(r *reader, p *Packet, v byte) error {
	p.QoS = (p.Flags >> 1) & 0x03
	p.Retain = p.Flags&0x01 != 0
	p.Dup = p.Flags&0x08 != 0
	if p.QoS == 3 {
		return fmt.Errorf("%w: publish qos 3", ErrMalformed)
	}
	var err error
	if p.Topic, err = r.bin(); err != nil {
		return err
	}
	if p.QoS > 0 {
		if p.PacketID, err = r.u16(); err != nil {
			return err
		}
		if p.PacketID == 0 {
			return fmt.Errorf("%w: publish packet id 0", ErrProtocol)
		}
	}
	if v == V5 {
		if err = decodeProps(r, &p.Props); err != nil {
			return err
		}
	}
	p.Payload = r.b[r.off:len(r.b):len(r.b)]
	r.off = len(r.b)
	return nil
}

func decodeAck(r *reader, p *Packet, v byte) error {
	var err error
	if p.PacketID, err = r.u16(); err != nil {
		return err
	}
	if v == V5 && p.Type == UNSUBACK {
		if err = decodeProps(r, &p.Props); err != nil {
			return err
		}
		p.Granted = r.b[r.off:len(r.b):len(r.b)]
		r.off = len(r.b)
		return nil
	}
	if v == V5 && r.left() > 0 {
		if p.Reason, err = r.byte1(); err != nil {
			return err
		}
		if r.left() > 0 {
			return decodeProps(r, &p.Props)
		}
	}
	return nil
}

func decodeSuback(r *reader, p *Packet, v byte) error {
	var err error
	if p.PacketID, err = r.u16(); err != nil {
		return err
	}
	if v == V5 {
		if err = decodeProps(r, &p.Props); err != nil {
			return err
		}
	}
	if r.left() == 0 {
		return fmt.Errorf("%w: suback without return codes", ErrMalformed)
	}
	p.Granted = r.b[r.off:len(r.b):len(r.b)]
	r.off = len(r.b)
	return nil
}

// Property value types.
const (
	ptByte = iota + 1
	ptU16
	ptU32
	ptVarint
	ptString
	ptBinary
	ptPair
)

// propTypes maps each MQTT 5 property identifier to its value type; zero
// means the identifier is not defined by the spec.
var propTypes = [43]byte{
	0x01: ptByte, 0x02: ptU32, 0x03: ptString, 0x08: ptString, 0x09: ptBinary,
	0x0B: ptVarint, 0x11: ptU32, 0x12: ptString, 0x13: ptU16, 0x15: ptString,
	0x16: ptBinary, 0x17: ptByte, 0x18: ptU32, 0x19: ptByte, 0x1A: ptString,
	0x1C: ptString, 0x1F: ptString, 0x21: ptU16, 0x22: ptU16, 0x23: ptU16,
	0x24: ptByte, 0x25: ptByte, 0x26: ptPair, 0x27: ptU32, 0x28: ptByte,
	0x29: ptByte, 0x2A: ptByte,
}

func decodeProps(r *reader, props *Properties) error {
	n, err := r.varint()
	if err != nil {
		return err
	}
	if n > r.left() {
		return fmt.Errorf("%w: properties length %d exceeds body", ErrMalformed, n)
	}
	pr := &reader{b: r.b[r.off : r.off+n : r.off+n]}
	r.off += n
	for pr.left() > 0 {
		id, err := pr.varint()
		if err != nil {
			return err
		}
		if id >= len(propTypes) || propTypes[id] == 0 {
			return fmt.Errorf("%w: unknown property %#x", ErrMalformed, id)
		}
		var (
			u32 uint32
			bin []byte
		)
		switch propTypes[id] {
		case ptByte:
			var c byte
			c, err = pr.byte1()
			u32 = uint32(c)
		case ptU16:
			var u uint16
			u, err = pr.u16()
			u32 = uint32(u)
		case ptU32:
			u32, err = pr.u32()
		case ptVarint:
			var vi int
			vi, err = pr.varint()
			u32 = uint32(vi)
		case ptString, ptBinary:
			bin, err = pr.bin()
		case ptPair:
			if _, err = pr.bin(); err == nil {
				_, err = pr.bin()
			}
		}
		if err != nil {
			return err
		}
		switch id {
		case 0x08:
			props.ResponseTopic = bin
		case 0x09:
			props.CorrelationData = bin
		case 0x11:
			props.SessionExpiry = u32
		case 0x12:
			props.AssignedClientID = bin
		case 0x1F:
			props.ReasonString = bin
		case 0x21:
			props.ReceiveMaximum = uint16(u32)
		case 0x23:
			props.TopicAlias = uint16(u32)
		}
		props.Present.add(byte(id))
	}
	return nil
}
