package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/mochi-mqtt/server/v2/packets"
)

// recordVersion is the first byte of every value. A decoder refuses any other
// version rather than guessing, so a later format can migrate explicitly.
const recordVersion byte = 1

// sessionVersion is the version of session records (c/), which are written
// as version 2: version 1 plus the session's owner. Version 1 records
// (written before sessions had owners) are still read, without an owner.
const sessionVersion byte = 2

// Record kinds, the second byte of every value. A value decoded as the wrong
// kind is corruption (or a bug), never silently accepted.
const (
	kindSession byte = 1 // c/
	kindSub     byte = 2 // s/
	kindMessage byte = 3 // p/ and r/
	kindRef     byte = 4 // q/
)

// Ref states: what a q/ record stands for in the MQTT flow.
const (
	refPublish byte = 1 // outbound PUBLISH queued or awaiting PUBACK/PUBREC
	refPubrel  byte = 2 // outbound QoS 2 after PUBREC: awaiting PUBCOMP
	refPubrec  byte = 3 // inbound QoS 2 after PUBREC sent: awaiting PUBREL
)

var (
	errTruncated  = errors.New("truncated record")
	errTrailing   = errors.New("trailing bytes after record")
	errBadVersion = errors.New("unknown record version")
)

// sessionRec is a persistent session (c/<client>).
type sessionRec struct {
	ProtocolVersion byte
	Clean           bool
	ExpiryFlag      bool
	ExpiryInterval  uint32
	DisconnectedAt  int64 // unix seconds; 0 while connected
	Username        []byte
	Listener        string

	AuthMethod             string
	AuthData               []byte
	RequestProblemInfo     byte
	RequestProblemInfoFlag bool
	RequestResponseInfo    byte
	ReceiveMaximum         uint16
	TopicAliasMaximum      uint16
	MaximumPacketSize      uint32
	User                   []packets.UserProperty

	WillFlag    bool
	WillRetain  bool
	WillQos     byte
	WillDelay   uint32
	WillTopic   string
	WillPayload []byte
	WillUser    []packets.UserProperty

	// OwnerSet says Owner is known (version 2, with authentication on):
	// the identity that owns the session, "" for an anonymous one.
	OwnerSet bool
	Owner    string
}

// subRec is one subscription (s/<client><filter>).
type subRec struct {
	Qos               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	Identifier        int
}

// msgRec is a message body: shared by the queue refs of every session it is
// queued for (p/<id>), or a retained message (r/<topic>).
type msgRec struct {
	Qos             byte
	Retain          bool
	ProtocolVersion byte
	Created         int64 // unix seconds, as set by the broker on receipt
	Expiry          int64 // absolute unix seconds; 0 = never
	Topic           string
	Origin          string
	Payload         []byte

	PayloadFormat         byte
	PayloadFormatFlag     bool
	MessageExpiryInterval uint32
	ContentType           string
	ResponseTopic         string
	CorrelationData       []byte
	User                  []packets.UserProperty
}

// refRec is one entry of a session's ordered queue (q/<client><seq>).
type refRec struct {
	State    byte
	Qos      byte
	Retain   bool
	PacketID uint16 // 0 until mochi assigned one
	MsgID    uint64 // p/ key; 0 for refPubrel and refPubrec
	SubIDs   []int
}

// enc appends the wire forms. It never fails; sizes are bounded by MQTT.
type enc struct{ b []byte }

func (e *enc) u8(v byte)        { e.b = append(e.b, v) }
func (e *enc) uv(v uint64)      { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) sv(v int64)       { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) bytes(v []byte)   { e.uv(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) str(v string)     { e.uv(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) header(kind byte) { e.b = append(e.b, recordVersion, kind) }
func (e *enc) flags(bits ...bool) {
	var f byte
	for i, b := range bits {
		if b {
			f |= 1 << i
		}
	}
	e.u8(f)
}
func (e *enc) users(v []packets.UserProperty) {
	e.uv(uint64(len(v)))
	for _, u := range v {
		e.str(u.Key)
		e.str(u.Val)
	}
}

// dec reads what enc wrote. The first error sticks and later reads return
// zero values, so decoders check d.err once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *dec) u8() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errTruncated)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) sv() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) u16() uint16 {
	v := d.uv()
	if v > math.MaxUint16 {
		d.fail(fmt.Errorf("value %d overflows 16 bits", v))
	}
	return uint16(v)
}

func (d *dec) u32() uint32 {
	v := d.uv()
	if v > math.MaxUint32 {
		d.fail(fmt.Errorf("value %d overflows 32 bits", v))
	}
	return uint32(v)
}

func (d *dec) raw() []byte {
	n := d.uv()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// bytes returns a copy, or nil for an empty field, so records never alias
// Badger's buffers (which are reused after the transaction).
func (d *dec) bytes() []byte {
	v := d.raw()
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}

func (d *dec) str() string { return string(d.raw()) }

func (d *dec) flags() [8]bool {
	f := d.u8()
	var out [8]bool
	for i := range out {
		out[i] = f&(1<<i) != 0
	}
	return out
}

func (d *dec) users() []packets.UserProperty {
	n := d.uv()
	if d.err != nil || n == 0 {
		return nil
	}
	// Each property takes at least two bytes, which bounds n before allocating.
	if n > uint64(len(d.b))/2 {
		d.fail(errTruncated)
		return nil
	}
	out := make([]packets.UserProperty, n)
	for i := range out {
		out[i].Key = d.str()
		out[i].Val = d.str()
	}
	return out
}

func (d *dec) header(kind byte) {
	if len(d.b) < 2 {
		d.fail(errTruncated)
		return
	}
	if d.b[0] != recordVersion {
		d.fail(fmt.Errorf("%w %d (this Ferry reads version %d)", errBadVersion, d.b[0], recordVersion))
		return
	}
	if d.b[1] != kind {
		d.fail(fmt.Errorf("record kind %d, want %d", d.b[1], kind))
		return
	}
	d.b = d.b[2:]
}

// versionedHeader is header for a kind written in more than one version:
// it accepts recordVersion to newest and returns the version found.
func (d *dec) versionedHeader(kind, newest byte) byte {
	if len(d.b) < 2 {
		d.fail(errTruncated)
		return 0
	}
	v := d.b[0]
	if v < recordVersion || v > newest {
		d.fail(fmt.Errorf("%w %d (this Ferry reads versions %d to %d)", errBadVersion, v, recordVersion, newest))
		return 0
	}
	if d.b[1] != kind {
		d.fail(fmt.Errorf("record kind %d, want %d", d.b[1], kind))
		return 0
	}
	d.b = d.b[2:]
	return v
}

func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(errTrailing)
	}
	return d.err
}

func (r *sessionRec) appendTo(b []byte) []byte {
	e := enc{b}
	e.b = append(e.b, sessionVersion, kindSession)
	e.u8(r.ProtocolVersion)
	e.flags(r.Clean, r.ExpiryFlag, r.RequestProblemInfoFlag, r.WillFlag, r.WillRetain)
	e.uv(uint64(r.ExpiryInterval))
	e.sv(r.DisconnectedAt)
	e.bytes(r.Username)
	e.str(r.Listener)
	e.str(r.AuthMethod)
	e.bytes(r.AuthData)
	e.u8(r.RequestProblemInfo)
	e.u8(r.RequestResponseInfo)
	e.uv(uint64(r.ReceiveMaximum))
	e.uv(uint64(r.TopicAliasMaximum))
	e.uv(uint64(r.MaximumPacketSize))
	e.users(r.User)
	e.u8(r.WillQos)
	e.uv(uint64(r.WillDelay))
	e.str(r.WillTopic)
	e.bytes(r.WillPayload)
	e.users(r.WillUser)
	e.flags(r.OwnerSet)
	if r.OwnerSet {
		e.str(r.Owner)
	}
	return e.b
}

func decodeSession(b []byte) (sessionRec, error) {
	d := dec{b: b}
	var r sessionRec
	version := d.versionedHeader(kindSession, sessionVersion)
	r.ProtocolVersion = d.u8()
	f := d.flags()
	r.Clean, r.ExpiryFlag, r.RequestProblemInfoFlag, r.WillFlag, r.WillRetain = f[0], f[1], f[2], f[3], f[4]
	r.ExpiryInterval = d.u32()
	r.DisconnectedAt = d.sv()
	r.Username = d.bytes()
	r.Listener = d.str()
	r.AuthMethod = d.str()
	r.AuthData = d.bytes()
	r.RequestProblemInfo = d.u8()
	r.RequestResponseInfo = d.u8()
	r.ReceiveMaximum = d.u16()
	r.TopicAliasMaximum = d.u16()
	r.MaximumPacketSize = d.u32()
	r.User = d.users()
	r.WillQos = d.u8()
	r.WillDelay = d.u32()
	r.WillTopic = d.str()
	r.WillPayload = d.bytes()
	r.WillUser = d.users()
	if version >= 2 {
		r.OwnerSet = d.flags()[0]
		if r.OwnerSet {
			r.Owner = d.str()
		}
	}
	if r.WillQos > 2 {
		d.fail(fmt.Errorf("will qos %d", r.WillQos))
	}
	return r, d.end()
}

func (r *subRec) appendTo(b []byte) []byte {
	e := enc{b}
	e.header(kindSub)
	e.u8(r.Qos)
	e.flags(r.NoLocal, r.RetainAsPublished)
	e.u8(r.RetainHandling)
	e.uv(uint64(r.Identifier))
	return e.b
}

func decodeSub(b []byte) (subRec, error) {
	d := dec{b: b}
	var r subRec
	d.header(kindSub)
	r.Qos = d.u8()
	f := d.flags()
	r.NoLocal, r.RetainAsPublished = f[0], f[1]
	r.RetainHandling = d.u8()
	id := d.uv()
	if id > math.MaxInt32 {
		d.fail(fmt.Errorf("subscription identifier %d", id))
	}
	r.Identifier = int(id)
	if r.Qos > 2 {
		d.fail(fmt.Errorf("subscription qos %d", r.Qos))
	}
	return r, d.end()
}

func (r *msgRec) appendTo(b []byte) []byte {
	e := enc{b}
	e.header(kindMessage)
	e.u8(r.Qos)
	e.flags(r.Retain, r.PayloadFormatFlag)
	e.u8(r.ProtocolVersion)
	e.sv(r.Created)
	e.sv(r.Expiry)
	e.str(r.Topic)
	e.str(r.Origin)
	e.bytes(r.Payload)
	e.u8(r.PayloadFormat)
	e.uv(uint64(r.MessageExpiryInterval))
	e.str(r.ContentType)
	e.str(r.ResponseTopic)
	e.bytes(r.CorrelationData)
	e.users(r.User)
	return e.b
}

func decodeMessage(b []byte) (msgRec, error) {
	d := dec{b: b}
	var r msgRec
	d.header(kindMessage)
	r.Qos = d.u8()
	f := d.flags()
	r.Retain, r.PayloadFormatFlag = f[0], f[1]
	r.ProtocolVersion = d.u8()
	r.Created = d.sv()
	r.Expiry = d.sv()
	r.Topic = d.str()
	r.Origin = d.str()
	r.Payload = d.bytes()
	r.PayloadFormat = d.u8()
	r.MessageExpiryInterval = d.u32()
	r.ContentType = d.str()
	r.ResponseTopic = d.str()
	r.CorrelationData = d.bytes()
	r.User = d.users()
	if r.Qos > 2 {
		d.fail(fmt.Errorf("message qos %d", r.Qos))
	}
	return r, d.end()
}

func (r *refRec) appendTo(b []byte) []byte {
	e := enc{b}
	e.header(kindRef)
	e.u8(r.State)
	e.u8(r.Qos)
	e.flags(r.Retain)
	e.uv(uint64(r.PacketID))
	e.uv(r.MsgID)
	e.uv(uint64(len(r.SubIDs)))
	for _, id := range r.SubIDs {
		e.uv(uint64(id))
	}
	return e.b
}

func decodeRef(b []byte) (refRec, error) {
	d := dec{b: b}
	var r refRec
	d.header(kindRef)
	r.State = d.u8()
	r.Qos = d.u8()
	r.Retain = d.flags()[0]
	r.PacketID = d.u16()
	r.MsgID = d.uv()
	n := d.uv()
	if d.err == nil && n > uint64(len(d.b)) { // each id takes at least one byte
		d.fail(errTruncated)
	}
	if d.err == nil && n > 0 {
		r.SubIDs = make([]int, n)
		for i := range r.SubIDs {
			id := d.uv()
			if id > math.MaxInt32 {
				d.fail(fmt.Errorf("subscription identifier %d", id))
			}
			r.SubIDs[i] = int(id)
		}
	}
	switch {
	case r.State < refPublish || r.State > refPubrec:
		d.fail(fmt.Errorf("queue state %d", r.State))
	case r.Qos > 2:
		d.fail(fmt.Errorf("queue qos %d", r.Qos))
	case r.State == refPublish && r.MsgID == 0:
		d.fail(errors.New("queued publish without a message id"))
	}
	return r, d.end()
}

// packet rebuilds the PUBLISH mochi keeps for a message body.
func (r *msgRec) packet() packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Qos:    r.Qos,
			Retain: r.Retain,
		},
		ProtocolVersion: r.ProtocolVersion,
		TopicName:       r.Topic,
		Payload:         r.Payload,
		Origin:          r.Origin,
		Created:         r.Created,
		Expiry:          r.Expiry,
		Properties: packets.Properties{
			PayloadFormat:         r.PayloadFormat,
			PayloadFormatFlag:     r.PayloadFormatFlag,
			MessageExpiryInterval: r.MessageExpiryInterval,
			ContentType:           r.ContentType,
			ResponseTopic:         r.ResponseTopic,
			CorrelationData:       r.CorrelationData,
			User:                  r.User,
		},
	}
}

// fromPacket fills r from a PUBLISH, without copying: r is encoded at once.
func (r *msgRec) fromPacket(pk *packets.Packet) {
	*r = msgRec{
		Qos:                   pk.FixedHeader.Qos,
		Retain:                pk.FixedHeader.Retain,
		ProtocolVersion:       pk.ProtocolVersion,
		Created:               pk.Created,
		Expiry:                pk.Expiry,
		Topic:                 pk.TopicName,
		Origin:                pk.Origin,
		Payload:               pk.Payload,
		PayloadFormat:         pk.Properties.PayloadFormat,
		PayloadFormatFlag:     pk.Properties.PayloadFormatFlag,
		MessageExpiryInterval: pk.Properties.MessageExpiryInterval,
		ContentType:           pk.Properties.ContentType,
		ResponseTopic:         pk.Properties.ResponseTopic,
		CorrelationData:       pk.Properties.CorrelationData,
		User:                  pk.Properties.User,
	}
}
