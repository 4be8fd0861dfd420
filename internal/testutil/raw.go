package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Raw is a byte-level MQTT client for tests that must see or send exactly
// what is on the wire: malformed packets, reason codes, properties on acks.
type Raw struct {
	t       testing.TB
	Conn    net.Conn
	r       *bufio.Reader
	Version byte
}

// DialRaw connects to addr; the connection is closed when the test ends.
func DialRaw(t testing.TB, addr string, version byte) *Raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &Raw{t: t, Conn: c, r: bufio.NewReader(c), Version: version}
}

// Encode returns pk's bytes for protocol version v.
func Encode(t testing.TB, pk packets.Packet, v byte) []byte {
	t.Helper()
	b, err := EncodePacket(pk, v)
	if err != nil {
		t.Fatalf("raw: %v", err)
	}
	return b
}

// EncodePacket returns pk's bytes for protocol version v (3, 4 or 5).
func EncodePacket(pk packets.Packet, v byte) ([]byte, error) {
	pk.ProtocolVersion = v
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		if len(pk.Connect.ProtocolName) == 0 {
			pk.Connect.ProtocolName = []byte("MQTT")
			if v == 3 {
				pk.Connect.ProtocolName = []byte("MQIsdp")
			}
		}
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Auth:
		err = pk.AuthEncode(&buf)
	default:
		return nil, fmt.Errorf("cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", packets.PacketNames[pk.FixedHeader.Type], err)
	}
	return buf.Bytes(), nil
}

// ReadPacket reads and decodes one packet sent by a server to a client of
// protocol version v.
func ReadPacket(r *bufio.Reader, v byte) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = v
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Pingresp:
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Auth:
		err = pk.AuthDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d from a server", pk.FixedHeader.Type)
	}
	return pk, err
}

// Send writes pk.
func (r *Raw) Send(pk packets.Packet) {
	r.t.Helper()
	r.SendBytes(Encode(r.t, pk, r.Version))
}

// SendBytes writes b as it is.
func (r *Raw) SendBytes(b []byte) {
	r.t.Helper()
	if _, err := r.Conn.Write(b); err != nil {
		r.t.Fatalf("raw: write: %v", err)
	}
}

// Connect sends CONNECT with clean start and keepalive 60 and expects a
// successful CONNACK, which it returns.
func (r *Raw) Connect(clientID string, props packets.Properties) packets.Packet {
	r.t.Helper()
	r.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:     packets.ConnectParams{ClientIdentifier: clientID, Clean: true, Keepalive: 60},
		Properties:  props,
	})
	ack := r.Expect(packets.Connack)
	if ack.ReasonCode != 0 {
		r.t.Fatalf("raw: CONNACK reason 0x%02x", ack.ReasonCode)
	}
	return ack
}

// Read returns the next packet, or an error (io.EOF, a reset, a timeout).
func (r *Raw) Read(timeout time.Duration) (packets.Packet, error) {
	_ = r.Conn.SetReadDeadline(time.Now().Add(timeout))
	return ReadPacket(r.r, r.Version)
}

// Expect reads the next packet and fails the test unless it has type typ.
func (r *Raw) Expect(typ byte) packets.Packet {
	r.t.Helper()
	pk, err := r.Read(5 * time.Second)
	if err != nil {
		r.t.Fatalf("raw: waiting for %s: %v", packets.PacketNames[typ], err)
	}
	if pk.FixedHeader.Type != typ {
		r.t.Fatalf("raw: got %s (reason 0x%02x), want %s", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode, packets.PacketNames[typ])
	}
	return pk
}

// ExpectEach reads one packet of each type in types, in any order (a
// delivery to the publisher's own subscription and the PUBACK of its
// publish, say), and returns them by type.
func (r *Raw) ExpectEach(types ...byte) map[byte]packets.Packet {
	r.t.Helper()
	got := make(map[byte]packets.Packet, len(types))
	for range types {
		pk, err := r.Read(5 * time.Second)
		if err != nil {
			r.t.Fatalf("raw: waiting for %d packets: %v", len(types), err)
		}
		got[pk.FixedHeader.Type] = pk
	}
	for _, typ := range types {
		if _, ok := got[typ]; !ok {
			r.t.Fatalf("raw: no %s among the %d packets read", packets.PacketNames[typ], len(types))
		}
	}
	return got
}

// ExpectClosed reads until the connection ends and fails if it stays open.
func (r *Raw) ExpectClosed(timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := r.Read(time.Until(deadline)); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break
			}
			return
		}
	}
	r.t.Fatalf("raw: connection still open after %s", timeout)
}
