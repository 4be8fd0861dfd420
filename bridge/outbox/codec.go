package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/bridge"
)

// Record encoding, version 1. Every value starts with the version byte and
// a kind byte; integers are varints, strings and bytes are uvarint-length
// prefixed:
//
//	message:     1 kindMessage flags created id topic client user nprops (k v)* payload
//	dead letter: 1 kindDead    reason attempts failed <message from flags on>
//
// flags: bits 0-1 QoS, bit 2 retain. created/failed: Unix nanoseconds (0 =
// zero time). Route and seq are in the key, not the value.
const (
	version1    = 1
	kindMessage = 1
	kindDead    = 2
	// maxProps bounds the property count a decoder accepts, so a corrupt
	// count cannot make it allocate without bound.
	maxProps = 1 << 16
)

// ErrCorrupt is returned (wrapped, naming the key) for a value that does
// not decode.
var ErrCorrupt = errors.New("outbox: corrupt record")

func appendMessage(b []byte, m *bridge.Message) []byte {
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	b = append(b, flags)
	b = binary.AppendVarint(b, unixNano(m.Created))
	b = appendString(b, m.ID)
	b = appendString(b, m.Topic)
	b = appendString(b, m.ClientID)
	b = appendString(b, m.Username)
	b = binary.AppendUvarint(b, uint64(len(m.UserProperties)))
	for _, p := range m.UserProperties {
		b = appendString(b, p.Key)
		b = appendString(b, p.Value)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Payload)))
	return append(b, m.Payload...)
}

// encodeMessage returns m's version 1 record.
func encodeMessage(m *bridge.Message) []byte {
	b := make([]byte, 0, 32+m.Size()+4*len(m.UserProperties))
	b = append(b, version1, kindMessage)
	return appendMessage(b, m)
}

// encodeDead returns d's version 1 record.
func encodeDead(d *bridge.DeadLetter) []byte {
	b := make([]byte, 0, 48+len(d.Reason)+d.Size()+4*len(d.UserProperties))
	b = append(b, version1, kindDead)
	b = appendString(b, d.Reason)
	b = binary.AppendUvarint(b, uint64(max(d.Attempts, 0)))
	b = binary.AppendVarint(b, unixNano(d.Failed))
	return appendMessage(b, &d.Message)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// decoder reads a record; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or invalid %s", ErrCorrupt, what)
	}
}

func (d *decoder) byte(what string) byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what)
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string(what string) string { return string(d.bytes(what)) }

func (d *decoder) message(m *bridge.Message) {
	flags := d.byte("flags")
	if flags&^7 != 0 || flags&3 == 3 {
		d.fail("flags")
	}
	m.QoS, m.Retain = flags&3, flags&4 != 0
	m.Created = fromUnixNano(d.varint("created"))
	m.ID = d.string("id")
	m.Topic = d.string("topic")
	m.ClientID = d.string("client id")
	m.Username = d.string("username")
	n := d.uvarint("property count")
	if n > maxProps || n > uint64(len(d.b)) {
		d.fail("property count")
	}
	if d.err == nil && n > 0 {
		m.UserProperties = make([]bridge.Property, n)
		for i := range m.UserProperties {
			m.UserProperties[i] = bridge.Property{Key: d.string("property key"), Value: d.string("property value")}
		}
	}
	if p := d.bytes("payload"); p != nil {
		m.Payload = append([]byte(nil), p...)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b))
	}
}

func (d *decoder) header(kind byte) {
	if v := d.byte("version"); d.err == nil && v != version1 {
		d.err = fmt.Errorf("%w: unknown record version %d", ErrCorrupt, v)
		return
	}
	if k := d.byte("kind"); d.err == nil && k != kind {
		d.err = fmt.Errorf("%w: record kind %d, want %d", ErrCorrupt, k, kind)
	}
}

// decodeMessage decodes a message record; the payload is copied.
func decodeMessage(b []byte) (bridge.Message, error) {
	d := decoder{b: b}
	var m bridge.Message
	d.header(kindMessage)
	d.message(&m)
	return m, d.err
}

// decodeDead decodes a dead-letter record; the payload is copied.
func decodeDead(b []byte) (bridge.DeadLetter, error) {
	d := decoder{b: b}
	var dl bridge.DeadLetter
	d.header(kindDead)
	dl.Reason = d.string("reason")
	att := d.uvarint("attempts")
	if att > 1<<31 {
		d.fail("attempts")
	}
	dl.Attempts = int(att)
	dl.Failed = fromUnixNano(d.varint("failed"))
	d.message(&dl.Message)
	return dl, d.err
}
