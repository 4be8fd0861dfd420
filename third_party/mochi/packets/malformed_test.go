// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package packets

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// decodeWire decodes one whole packet from raw the way a server reading a
// connection of the given protocol version does: fixed header, remaining
// length, the type's decoder, then the type's validation.
func decodeWire(version byte, raw []byte) (Packet, error) {
	var pk Packet
	if len(raw) == 0 {
		return pk, ErrMalformedPacket
	}
	if err := pk.FixedHeader.Decode(raw[0]); err != nil {
		return pk, err
	}
	r := bytes.NewReader(raw[1:])
	n, _, err := DecodeLength(r)
	if err != nil {
		return pk, err
	}
	if n != r.Len() {
		return pk, fmt.Errorf("remaining length %d, %d bytes follow", n, r.Len())
	}
	body := raw[len(raw)-n:]
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = version
	if pk.FixedHeader.Type == Connect {
		pk.ProtocolVersion = 0 // the CONNECT names it
	}
	if err := decodeBody(&pk, body); err != nil {
		return pk, err
	}
	var code Code
	switch pk.FixedHeader.Type {
	case Connect:
		code = pk.ConnectValidate()
	case Publish:
		code = pk.PublishValidate(math.MaxUint16)
	case Subscribe:
		code = pk.SubscribeValidate()
	case Unsubscribe:
		code = pk.UnsubscribeValidate()
	case Auth:
		code = pk.AuthValidate()
	default:
		return pk, nil
	}
	if code != CodeSuccess {
		return pk, code
	}
	return pk, nil
}

// decodeBody runs the decoder of pk's type over body.
func decodeBody(pk *Packet, body []byte) error {
	switch pk.FixedHeader.Type {
	case Connect:
		return pk.ConnectDecode(body)
	case Connack:
		return pk.ConnackDecode(body)
	case Publish:
		return pk.PublishDecode(body)
	case Puback:
		return pk.PubackDecode(body)
	case Pubrec:
		return pk.PubrecDecode(body)
	case Pubrel:
		return pk.PubrelDecode(body)
	case Pubcomp:
		return pk.PubcompDecode(body)
	case Subscribe:
		return pk.SubscribeDecode(body)
	case Suback:
		return pk.SubackDecode(body)
	case Unsubscribe:
		return pk.UnsubscribeDecode(body)
	case Unsuback:
		return pk.UnsubackDecode(body)
	case Disconnect:
		return pk.DisconnectDecode(body)
	case Auth:
		return pk.AuthDecode(body)
	}
	return nil
}

// TestMalformedPackets: every packet of the catalogue is refused, never
// panics, and carries the reason code the spec prescribes.
func TestMalformedPackets(t *testing.T) {
	for _, tc := range TMalformedPackets {
		t.Run(tc.Desc, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { _, err = decodeWire(tc.Version, tc.Raw) })
			require.Error(t, err)
			code, ok := ReasonCode(err)
			require.True(t, ok, "no reason code in %v", err)
			require.Equal(t, tc.Code, code.Code, "reason code 0x%02x (%v), want 0x%02x", code.Code, err, tc.Code)
		})
	}
}

// TestWellFormedPacketsPass: the checks added for the catalogue refuse
// nothing the spec allows.
func TestWellFormedPacketsPass(t *testing.T) {
	for _, tc := range []struct {
		desc    string
		version byte
		raw     []byte
	}{
		{"PUBLISH v5: two user properties and two subscription identifiers in a server PUBLISH", 5,
			frame(Publish<<4, []byte{0, 1, 'a'}, props(0x26, 0, 1, 'k', 0, 1, 'v', 0x26, 0, 1, 'k', 0, 1, 'w'), []byte("x"))},
		{"SUBSCRIBE v5: Retain Handling 2, Retain As Published, No Local", 5,
			frame(Subscribe<<4|2, []byte{0, 1}, props(0x0b, 7), []byte{0, 1, 'a', 0x2e})},
		{"SUBSCRIBE v5: a shared subscription without No Local", 5,
			frame(Subscribe<<4|2, []byte{0, 1}, props(), []byte{0, 10}, []byte("$share/g/a"), []byte{0x01})},
		{"DISCONNECT v5: reason code alone", 5, frame(Disconnect<<4, []byte{0x04})},
		{"PUBACK v5: reason code alone", 5, frame(Puback<<4, []byte{0, 1, 0x10})},
		{"AUTH v5: empty means success", 5, []byte{Auth << 4, 0}},
		{"CONNECT v5: user properties twice", 5,
			frame(Connect<<4, connectHead(5, 0x02), props(0x26, 0, 1, 'k', 0, 1, 'v', 0x26, 0, 1, 'k', 0, 1, 'v'), noClientID)},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := decodeWire(tc.version, tc.raw)
			require.NoError(t, err)
		})
	}
}

func TestDecodeLengthLimit(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want int
		err  error
	}{
		{[]byte{0x7f}, 127, nil},
		{[]byte{0xff, 0xff, 0xff, 0x7f}, 268435455, nil},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x00}, 0, ErrMalformedVariableByteInteger},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x00}, 0, ErrMalformedVariableByteInteger},
		{bytes.Repeat([]byte{0x80}, 100), 0, ErrMalformedVariableByteInteger},
	} {
		r := bytes.NewReader(tc.in)
		n, _, err := DecodeLength(r)
		require.ErrorIs(t, err, tc.err, "%x", tc.in)
		require.Equal(t, tc.want, n, "%x", tc.in)
		if tc.err != nil {
			require.LessOrEqual(t, len(tc.in)-r.Len(), 5, "read on past the fifth byte of %x", tc.in)
		}
	}
}

func TestDecodeErrorIsBounded(t *testing.T) {
	body := append([]byte{0, 1}, bytes.Repeat([]byte{0xff}, 4096)...)
	pk := Packet{FixedHeader: FixedHeader{Type: Subscribe, Remaining: len(body)}, ProtocolVersion: 4}
	err := pk.SubscribeDecode(body)
	var de *DecodeError
	require.True(t, errors.As(err, &de))
	require.Equal(t, Subscribe, de.Type)
	require.Len(t, de.Head, DecodeErrorHead)
	require.Equal(t, len(body), de.Len)
	require.Equal(t, 2*DecodeErrorHead+3, len(de.HexHead()))
	require.Less(t, len(err.Error()), 200)
}

// fuzzDecode fuzzes the decoder of packet type typ: seeded with the
// catalogue's packets of that type and mochi's own valid ones, for MQTT 3.1.1
// and 5. A decoder never panics, an error always carries a reason code, and
// what decodes encodes again.
func fuzzDecode(f *testing.F, typ byte) {
	for _, tc := range TMalformedPackets {
		if tc.Raw[0]>>4 == typ {
			f.Add(tc.Version, tc.Raw[0], bodyOf(tc.Raw))
		}
	}
	for _, tc := range TPacketData[typ] {
		if len(tc.RawBytes) > 1 {
			v := byte(4)
			if tc.Packet != nil && tc.Packet.ProtocolVersion == 5 {
				v = 5
			}
			f.Add(v, tc.RawBytes[0], bodyOf(tc.RawBytes))
		}
	}
	f.Fuzz(func(t *testing.T, version, first byte, body []byte) {
		version = 4 + version%2
		pk := Packet{ProtocolVersion: version}
		if typ == Connect {
			pk.ProtocolVersion = 0
		}
		if pk.FixedHeader.Decode(typ<<4|first&0x0f) != nil {
			return
		}
		pk.FixedHeader.Remaining = len(body)
		err := decodeBody(&pk, body)
		if err != nil {
			if _, ok := ReasonCode(err); !ok {
				t.Fatalf("error without a reason code: %v", err)
			}
			return
		}
		pk.Mods.AllowResponseInfo = true
		var buf bytes.Buffer
		switch typ {
		case Publish:
			if pk.FixedHeader.Qos > 0 && pk.PacketID == 0 {
				return // refused by PublishValidate
			}
			_ = pk.PublishEncode(&buf)
		case Subscribe:
			_ = pk.SubscribeEncode(&buf)
		case Unsubscribe:
			_ = pk.UnsubscribeEncode(&buf)
		case Connect:
			_ = pk.ConnectEncode(&buf)
		}
	})
}

// bodyOf is raw without its fixed header.
func bodyOf(raw []byte) []byte {
	for i := 1; i < len(raw) && i <= 4; i++ {
		if raw[i]&0x80 == 0 {
			return raw[i+1:]
		}
	}
	return nil
}

func FuzzDecodeConnect(f *testing.F)     { fuzzDecode(f, Connect) }
func FuzzDecodeConnack(f *testing.F)     { fuzzDecode(f, Connack) }
func FuzzDecodePublish(f *testing.F)     { fuzzDecode(f, Publish) }
func FuzzDecodePuback(f *testing.F)      { fuzzDecode(f, Puback) }
func FuzzDecodePubrec(f *testing.F)      { fuzzDecode(f, Pubrec) }
func FuzzDecodePubrel(f *testing.F)      { fuzzDecode(f, Pubrel) }
func FuzzDecodePubcomp(f *testing.F)     { fuzzDecode(f, Pubcomp) }
func FuzzDecodeSubscribe(f *testing.F)   { fuzzDecode(f, Subscribe) }
func FuzzDecodeSuback(f *testing.F)      { fuzzDecode(f, Suback) }
func FuzzDecodeUnsubscribe(f *testing.F) { fuzzDecode(f, Unsubscribe) }
func FuzzDecodeUnsuback(f *testing.F)    { fuzzDecode(f, Unsuback) }
func FuzzDecodeDisconnect(f *testing.F)  { fuzzDecode(f, Disconnect) }
func FuzzDecodeAuth(f *testing.F)        { fuzzDecode(f, Auth) }

// FuzzDecodeProperties fuzzes the property decoder on its own, for every
// packet type that carries properties.
func FuzzDecodeProperties(f *testing.F) {
	for _, tc := range TMalformedPackets {
		f.Add(tc.Raw[0]>>4, bodyOf(tc.Raw))
	}
	f.Fuzz(func(t *testing.T, typ byte, b []byte) {
		var p Properties
		n, err := p.Decode(typ%16, bytes.NewBuffer(b))
		if err == nil && n > len(b) {
			t.Fatalf("took %d bytes of %d", n, len(b))
		}
	})
}

// FuzzDecodeLength fuzzes the Variable Byte Integer decoder.
func FuzzDecodeLength(f *testing.F) {
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		n, bu, err := DecodeLength(r)
		if bu > 4 || len(b)-r.Len() > 4 {
			t.Fatalf("read %d bytes", len(b)-r.Len())
		}
		if err == nil && (n < 0 || n > 268435455) {
			t.Fatalf("value %d", n)
		}
		m, next, err2 := decodeVarint(b, 0)
		if (err == nil) != (err2 == nil) || (err == nil && (m != n || next != bu)) {
			t.Fatalf("decodeVarint %d %d %v, DecodeLength %d %d %v", m, next, err2, n, bu, err)
		}
	})
}
