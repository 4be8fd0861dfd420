package outbox

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/persistence"
)

// Record encoding, version 1, written and read with the store's record
// codec (persistence.Encoder and Decoder: version byte, kind byte, varints,
// length-prefixed strings), so there is one binary decoder to harden:
//
//	message:     1 kindMessage flags created id topic client user nprops (k v)* payload
//	dead letter: 1 kindDead    reason attempts failed <message from flags on>
//
// flags: bits 0-1 QoS, bit 2 retain. created/failed: Unix nanoseconds (0 =
// zero time). Route and seq are in the key, not the value. The kinds are
// the outbox's own: its keys (o/, d/) never hold the store's records.
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

func appendMessage(e *persistence.Encoder, m *bridge.Message) {
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	e.Byte(flags)
	e.Varint(unixNano(m.Created))
	e.Str(m.ID)
	e.Str(m.Topic)
	e.Str(m.ClientID)
	e.Str(m.Username)
	e.Uvarint(uint64(len(m.UserProperties)))
	for _, p := range m.UserProperties {
		e.Str(p.Key)
		e.Str(p.Value)
	}
	e.Bytes(m.Payload)
}

// encodeMessage returns m's version 1 record.
func encodeMessage(m *bridge.Message) []byte {
	e := persistence.NewEncoder(make([]byte, 0, 32+m.Size()+4*len(m.UserProperties)))
	e.Header(version1, kindMessage)
	appendMessage(&e, m)
	return e.Record()
}

// encodeDead returns d's version 1 record.
func encodeDead(d *bridge.DeadLetter) []byte {
	e := persistence.NewEncoder(make([]byte, 0, 48+len(d.Reason)+d.Size()+4*len(d.UserProperties)))
	e.Header(version1, kindDead)
	e.Str(d.Reason)
	e.Uvarint(uint64(max(d.Attempts, 0)))
	e.Varint(unixNano(d.Failed))
	appendMessage(&e, &d.Message)
	return e.Record()
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

func readMessage(d *persistence.Decoder, m *bridge.Message) {
	flags := d.Byte()
	if flags&^7 != 0 || flags&3 == 3 {
		d.Fail(fmt.Errorf("flags %#x", flags))
	}
	m.QoS, m.Retain = flags&3, flags&4 != 0
	m.Created = fromUnixNano(d.Varint())
	m.ID = d.Str()
	m.Topic = d.Str()
	m.ClientID = d.Str()
	m.Username = d.Str()
	n := d.Uvarint()
	// Each property takes at least two bytes.
	if n > maxProps || n > uint64(d.Remaining())/2 {
		d.Fail(fmt.Errorf("property count %d", n))
	}
	if d.Err() == nil && n > 0 {
		m.UserProperties = make([]bridge.Property, n)
		for i := range m.UserProperties {
			m.UserProperties[i] = bridge.Property{Key: d.Str(), Value: d.Str()}
		}
	}
	m.Payload = d.Bytes()
}

func corrupt(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// decodeMessage decodes a message record; the payload is copied.
func decodeMessage(b []byte) (bridge.Message, error) {
	d := persistence.NewDecoder(b)
	var m bridge.Message
	d.Header(version1, kindMessage)
	readMessage(&d, &m)
	return m, corrupt(d.End())
}

// decodeDead decodes a dead-letter record; the payload is copied.
func decodeDead(b []byte) (bridge.DeadLetter, error) {
	d := persistence.NewDecoder(b)
	var dl bridge.DeadLetter
	d.Header(version1, kindDead)
	dl.Reason = d.Str()
	att := d.Uvarint()
	if att > 1<<31 {
		d.Fail(fmt.Errorf("attempts %d", att))
	}
	dl.Attempts = int(att)
	dl.Failed = fromUnixNano(d.Varint())
	readMessage(&d, &dl.Message)
	return dl, corrupt(d.End())
}
