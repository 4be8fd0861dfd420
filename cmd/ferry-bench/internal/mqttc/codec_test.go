package mqttc

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// split parses one whole packet from raw with our Reader.
func split(t testing.TB, raw []byte) (byte, []byte) {
	t.Helper()
	h, body, err := NewReader(bytes.NewReader(raw)).Next()
	if err != nil {
		t.Fatalf("split %x: %v", raw, err)
	}
	return h, body
}

// mochiDecode decodes raw with mochi's packet codec, an independent
// implementation used as the reference.
func mochiDecode(t *testing.T, raw []byte, v byte) packets.Packet {
	t.Helper()
	h, body := split(t, raw)
	pk := packets.Packet{ProtocolVersion: v}
	if err := pk.FixedHeader.Decode(h); err != nil {
		t.Fatalf("mochi fixed header: %v", err)
	}
	pk.FixedHeader.Remaining = len(body)
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Subscribe:
		err = pk.SubscribeDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingreq:
		err = pk.PingreqDecode(body)
	default:
		t.Fatalf("no mochi decoder for type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		t.Fatalf("mochi decode %x: %v", raw, err)
	}
	return pk
}

func TestVarintRoundTrip(t *testing.T) {
	for _, v := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, MaxRemainingLength} {
		b := AppendVarint(nil, v)
		if len(b) != varintLen(v) {
			t.Errorf("varint %d: %d bytes, varintLen says %d", v, len(b), varintLen(v))
		}
		got, n, err := ReadVarint(b)
		if err != nil || got != v || n != len(b) {
			t.Errorf("varint %d: got %d, %d bytes, %v", v, got, n, err)
		}
	}
}

func TestPublishRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		v       byte
		qos     byte
		payload int
		retain  bool
		rt, cd  []byte
	}{
		{name: "v311 qos0 empty payload", v: V311, qos: 0, payload: 0},
		{name: "v311 qos1 small", v: V311, qos: 1, payload: 64},
		{name: "v311 qos2 two-byte length", v: V311, qos: 2, payload: 1024},
		{name: "v311 qos0 three-byte length retain", v: V311, qos: 0, payload: 70000, retain: true},
		{name: "v5 qos0 no props", v: V5, qos: 0, payload: 64},
		{name: "v5 qos1 response topic and correlation", v: V5, qos: 1, payload: 100, rt: []byte("resp/7"), cd: []byte{0, 1, 2, 3, 4, 5, 6, 7}},
		{name: "v5 qos2 correlation only", v: V5, qos: 2, payload: 20000, cd: []byte("x")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{0xA5}, tc.payload)
			in := Publish{Topic: []byte("bench/a/b"), QoS: tc.qos, Retain: tc.retain, Payload: payload}
			if tc.qos > 0 {
				in.PacketID = 513
			}
			in.Props.ResponseTopic, in.Props.CorrelationData = tc.rt, tc.cd
			raw := AppendPublish([]byte("prefix"), &in, tc.v)
			if !bytes.HasPrefix(raw, []byte("prefix")) {
				t.Fatal("AppendPublish clobbered the existing bytes")
			}
			raw = raw[len("prefix"):]

			h, body := split(t, raw)
			got, err := Decode(h, body, tc.v)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got.Type != PUBLISH || got.QoS != tc.qos || got.Retain != tc.retain || got.PacketID != in.PacketID ||
				string(got.Topic) != "bench/a/b" || !bytes.Equal(got.Payload, payload) ||
				!bytes.Equal(got.Props.ResponseTopic, tc.rt) || !bytes.Equal(got.Props.CorrelationData, tc.cd) {
				t.Fatalf("round trip mismatch: %+v", got)
			}

			pk := mochiDecode(t, raw, tc.v)
			if pk.TopicName != "bench/a/b" || pk.FixedHeader.Qos != tc.qos || pk.FixedHeader.Retain != tc.retain ||
				pk.PacketID != in.PacketID || !bytes.Equal(pk.Payload, payload) ||
				pk.Properties.ResponseTopic != string(tc.rt) || !bytes.Equal(pk.Properties.CorrelationData, tc.cd) {
				t.Fatalf("mochi decodes differently: %+v", pk)
			}
		})
	}
}

func TestConnectAcceptedByMochi(t *testing.T) {
	tests := []struct {
		name string
		c    Connect
	}{
		{name: "v311 clean", c: Connect{Version: V311, ClientID: "pub-1", Clean: true, KeepAlive: 30}},
		{name: "v311 persistent with credentials", c: Connect{Version: V311, ClientID: "sub-1", Username: "u", Password: "p"}},
		{name: "v5 session expiry and receive maximum", c: Connect{Version: V5, ClientID: "c", SessionExpiry: 3600, ReceiveMaximum: 65535}},
		{name: "v5 clean no props", c: Connect{Version: V5, ClientID: "c5", Clean: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pk := mochiDecode(t, AppendConnect(nil, &tc.c), tc.c.Version)
			if code := pk.ConnectValidate(); code != packets.CodeSuccess {
				t.Fatalf("mochi rejects CONNECT: %v", code)
			}
			if pk.Connect.ClientIdentifier != tc.c.ClientID || pk.Connect.Clean != tc.c.Clean ||
				pk.Connect.Keepalive != tc.c.KeepAlive || string(pk.Connect.Username) != tc.c.Username ||
				string(pk.Connect.Password) != tc.c.Password || pk.ProtocolVersion != tc.c.Version ||
				pk.Properties.SessionExpiryInterval != tc.c.SessionExpiry || pk.Properties.ReceiveMaximum != tc.c.ReceiveMaximum {
				t.Fatalf("mochi decodes differently: %+v / %+v", pk.Connect, pk.Properties)
			}
		})
	}
}

func TestSubscribeAcceptedByMochi(t *testing.T) {
	subs := []Subscription{{Filter: "bench/+/x", QoS: 1}, {Filter: "a/#", QoS: 2}}
	for _, v := range []byte{V311, V5} {
		pk := mochiDecode(t, AppendSubscribe(nil, 9, subs, v), v)
		if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
			t.Fatalf("v%d: mochi rejects SUBSCRIBE: %v", v, code)
		}
		if pk.PacketID != 9 || len(pk.Filters) != 2 || pk.Filters[0].Filter != "bench/+/x" || pk.Filters[0].Qos != 1 ||
			pk.Filters[1].Filter != "a/#" || pk.Filters[1].Qos != 2 {
			t.Fatalf("v%d: mochi decodes differently: %+v", v, pk.Filters)
		}
	}
}

func TestAcksAcceptedByMochi(t *testing.T) {
	for _, typ := range []byte{PUBACK, PUBREC, PUBREL, PUBCOMP} {
		for _, v := range []byte{V311, V5} {
			raw := AppendAck(nil, typ, 65535)
			pk := mochiDecode(t, raw, v)
			if pk.PacketID != 65535 || pk.FixedHeader.Type != typ {
				t.Fatalf("type %d v%d: mochi decodes %+v", typ, v, pk)
			}
			h, body := split(t, raw)
			got, err := Decode(h, body, v)
			if err != nil || got.Type != typ || got.PacketID != 65535 {
				t.Fatalf("type %d v%d: decode %+v, %v", typ, v, got, err)
			}
		}
	}
	for _, raw := range [][]byte{AppendPingreq(nil), AppendDisconnect(nil)} {
		mochiDecode(t, raw, V5)
	}
}

// TestDecodeMochiEncoded decodes what mochi's server-side encoder writes.
func TestDecodeMochiEncoded(t *testing.T) {
	tests := []struct {
		name  string
		v     byte
		pk    packets.Packet
		check func(Packet) bool
	}{
		{
			name:  "v311 connack session present",
			v:     V311,
			pk:    packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, SessionPresent: true},
			check: func(p Packet) bool { return p.Type == CONNACK && p.SessionPresent && p.Reason == 0 },
		},
		{
			name: "v5 connack with properties",
			v:    V5,
			pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: 0x87,
				Properties: packets.Properties{ReceiveMaximum: 1024, AssignedClientID: "auto-1", ReasonString: "no",
					User: []packets.UserProperty{{Key: "k", Val: "v"}}, TopicAliasMaximum: 5, ServerKeepAlive: 10, ServerKeepAliveFlag: true}},
			check: func(p Packet) bool {
				return p.Type == CONNACK && p.Reason == 0x87 && p.Props.ReceiveMaximum == 1024 &&
					string(p.Props.AssignedClientID) == "auto-1" && string(p.Props.ReasonString) == "no"
			},
		},
		{
			name: "v5 suback mixed codes",
			v:    V5,
			pk:   packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 3, ReasonCodes: []byte{1, 0x80}},
			check: func(p Packet) bool {
				return p.Type == SUBACK && p.PacketID == 3 && bytes.Equal(p.Granted, []byte{1, 0x80})
			},
		},
		{
			name:  "v311 suback",
			v:     V311,
			pk:    packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 4, ReasonCodes: []byte{2}},
			check: func(p Packet) bool { return p.Type == SUBACK && p.PacketID == 4 && bytes.Equal(p.Granted, []byte{2}) },
		},
		{
			name: "v5 puback with reason and user property",
			v:    V5,
			pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 77, ReasonCode: 0x97,
				Properties: packets.Properties{User: []packets.UserProperty{{Key: "a", Val: "b"}}}},
			check: func(p Packet) bool { return p.Type == PUBACK && p.PacketID == 77 && p.Reason == 0x97 },
		},
		{
			name:  "v5 pubrel",
			v:     V5,
			pk:    packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 8},
			check: func(p Packet) bool { return p.Type == PUBREL && p.PacketID == 8 },
		},
		{
			name: "v5 disconnect with reason string",
			v:    V5,
			pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x8E,
				Properties: packets.Properties{ReasonString: "taken over"}},
			check: func(p Packet) bool {
				return p.Type == DISCONNECT && p.Reason == 0x8E && string(p.Props.ReasonString) == "taken over"
			},
		},
		{
			name: "v5 publish with subscription identifier and expiry",
			v:    V5,
			pk: packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 5, TopicName: "t",
				Payload: []byte("hi"), Properties: packets.Properties{SubscriptionIdentifier: []int{300}, MessageExpiryInterval: 60,
					ResponseTopic: "r", CorrelationData: []byte{9}}, Mods: packets.Mods{AllowResponseInfo: true}},
			check: func(p Packet) bool {
				return p.Type == PUBLISH && p.PacketID == 5 && string(p.Topic) == "t" && string(p.Payload) == "hi" &&
					string(p.Props.ResponseTopic) == "r" && bytes.Equal(p.Props.CorrelationData, []byte{9})
			},
		},
		{
			name:  "pingresp",
			v:     V311,
			pk:    packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}},
			check: func(p Packet) bool { return p.Type == PINGRESP },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.pk.ProtocolVersion = tc.v
			var buf bytes.Buffer
			var err error
			switch tc.pk.FixedHeader.Type {
			case packets.Connack:
				err = tc.pk.ConnackEncode(&buf)
			case packets.Suback:
				err = tc.pk.SubackEncode(&buf)
			case packets.Puback:
				err = tc.pk.PubackEncode(&buf)
			case packets.Pubrel:
				err = tc.pk.PubrelEncode(&buf)
			case packets.Disconnect:
				err = tc.pk.DisconnectEncode(&buf)
			case packets.Publish:
				err = tc.pk.PublishEncode(&buf)
			case packets.Pingresp:
				err = tc.pk.PingrespEncode(&buf)
			}
			if err != nil {
				t.Fatalf("mochi encode: %v", err)
			}
			h, body := split(t, buf.Bytes())
			got, err := Decode(h, body, tc.v)
			if err != nil {
				t.Fatalf("decode %x: %v", buf.Bytes(), err)
			}
			if !tc.check(got) {
				t.Fatalf("decoded %+v", got)
			}
		})
	}
}

// malformed is the catalogue of bad server packets, shared with the fuzz
// target as seeds.
var malformed = []struct {
	name string
	v    byte
	raw  []byte
	want error
}{
	{name: "connack truncated", v: V311, raw: []byte{0x20, 0x01, 0x00}, want: ErrMalformed},
	{name: "connack bad flags", v: V311, raw: []byte{0x20, 0x02, 0x02, 0x00}, want: ErrMalformed},
	{name: "connack trailing bytes", v: V311, raw: []byte{0x20, 0x03, 0x00, 0x00, 0x00}, want: ErrMalformed},
	{name: "v5 connack missing properties", v: V5, raw: []byte{0x20, 0x02, 0x00, 0x00}, want: ErrMalformed},
	{name: "v5 connack properties overrun", v: V5, raw: []byte{0x20, 0x03, 0x00, 0x00, 0x05}, want: ErrMalformed},
	{name: "v5 connack unknown property", v: V5, raw: []byte{0x20, 0x05, 0x00, 0x00, 0x02, 0x04, 0x00}, want: ErrMalformed},
	{name: "v5 connack truncated u32 property", v: V5, raw: []byte{0x20, 0x05, 0x00, 0x00, 0x02, 0x11, 0x00}, want: ErrMalformed},
	{name: "v5 connack property id varint too long", v: V5, raw: []byte{0x20, 0x07, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff}, want: ErrMalformed},
	{name: "publish qos 3", v: V311, raw: []byte{0x36, 0x05, 0x00, 0x01, 't', 0x00, 0x01}, want: ErrMalformed},
	{name: "publish topic overruns body", v: V311, raw: []byte{0x30, 0x03, 0x00, 0x09, 't'}, want: ErrMalformed},
	{name: "publish qos1 missing packet id", v: V311, raw: []byte{0x32, 0x03, 0x00, 0x01, 't'}, want: ErrMalformed},
	{name: "publish qos1 packet id zero", v: V311, raw: []byte{0x32, 0x05, 0x00, 0x01, 't', 0x00, 0x00}, want: ErrProtocol},
	{name: "v5 publish missing properties", v: V5, raw: []byte{0x30, 0x03, 0x00, 0x01, 't'}, want: ErrMalformed},
	{name: "v5 publish user property truncated", v: V5, raw: []byte{0x30, 0x08, 0x00, 0x01, 't', 0x04, 0x26, 0x00, 0x01, 'k'}, want: ErrMalformed},
	{name: "puback truncated", v: V311, raw: []byte{0x40, 0x01, 0x00}, want: ErrMalformed},
	{name: "puback trailing bytes v311", v: V311, raw: []byte{0x40, 0x03, 0x00, 0x01, 0x00}, want: ErrMalformed},
	{name: "pubrel wrong flags", v: V311, raw: []byte{0x60, 0x02, 0x00, 0x01}, want: ErrMalformed},
	{name: "puback with flags", v: V311, raw: []byte{0x41, 0x02, 0x00, 0x01}, want: ErrMalformed},
	{name: "suback without codes", v: V311, raw: []byte{0x90, 0x02, 0x00, 0x01}, want: ErrMalformed},
	{name: "pingresp with body", v: V311, raw: []byte{0xd0, 0x01, 0x00}, want: ErrMalformed},
	{name: "connect from server", v: V311, raw: []byte{0x10, 0x00}, want: ErrUnexpected},
	{name: "reserved type 0", v: V311, raw: []byte{0x00, 0x00}, want: ErrUnexpected},
	{name: "remaining length five bytes", v: V311, raw: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, want: ErrMalformed},
	{name: "remaining length over limit", v: V311, raw: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, want: ErrTooLarge},
	{name: "body shorter than remaining length", v: V311, raw: []byte{0x30, 0x05, 0x00}, want: io.ErrUnexpectedEOF},
	{name: "eof inside remaining length", v: V311, raw: []byte{0x30, 0x80}, want: io.ErrUnexpectedEOF},
}

func decodeStream(raw []byte, v byte) (Packet, error) {
	r := NewReader(bytes.NewReader(raw))
	r.Max = 1 << 20
	h, body, err := r.Next()
	if err != nil {
		return Packet{}, err
	}
	return Decode(h, body, v)
}

func TestDecodeMalformed(t *testing.T) {
	for _, tc := range malformed {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodeStream(tc.raw, tc.v)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %+v, err %v; want %v", p, err, tc.want)
			}
		})
	}
}

// TestEncodeSizes checks the remaining length is right at every varint
// width, where finishPacket moves the body.
func TestEncodeSizes(t *testing.T) {
	for _, n := range []int{0, 117, 118, 16373, 16374, 2097141, 2097142} {
		p := Publish{Topic: []byte("t"), Payload: make([]byte, n)}
		raw := AppendPublish(nil, &p, V311)
		_, body := split(t, raw)
		if len(body) != n+3 || len(raw) != 1+varintLen(n+3)+n+3 {
			t.Fatalf("payload %d: packet %d bytes, body %d", n, len(raw), len(body))
		}
	}
}

func TestReaderReusesBuffer(t *testing.T) {
	var raw []byte
	for i := range 3 {
		raw = AppendPublish(raw, &Publish{Topic: []byte("t"), Payload: []byte(strings.Repeat("x", i+1))}, V311)
	}
	r := NewReader(bytes.NewReader(raw))
	for i := range 3 {
		h, body, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		p, err := Decode(h, body, V311)
		if err != nil || len(p.Payload) != i+1 {
			t.Fatalf("packet %d: %+v %v", i, p, err)
		}
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("clean end of stream: got %v, want io.EOF", err)
	}
}
