// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package packets

// TMalformedCase is one packet a server must refuse, as a client sends it.
type TMalformedCase struct {
	Desc string
	// Raw is the whole packet, fixed header included. Its remaining length
	// always matches its body, so a server reading it never waits for more.
	Raw []byte
	// Version is the protocol version of the connection that sends it: 4
	// (3.1.1) or 5. For a CONNECT it is the version the CONNECT itself names.
	Version byte
	// Code is the reason code the spec prescribes. An MQTT 5 client gets it in
	// a DISCONNECT (a CONNACK for a CONNECT); an MQTT 3.1.1 client's
	// connection is closed with no packet.
	Code byte
}

// TMalformedPackets is the one catalogue of malformed packets and protocol
// errors: the decoders' tests, their fuzz targets' seed corpus, the server's
// tests and Ferry's broker tests all read it.
var TMalformedPackets = []TMalformedCase{
	// CONNECT
	{Desc: "CONNECT v5: properties run past the end", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x02), []byte{0x05, 0x11, 0x00})},
	{Desc: "CONNECT v5: property length of five bytes", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x02), []byte{0x80, 0x80, 0x80, 0x80, 0x01}, noClientID)},
	{Desc: "CONNECT v5: Session Expiry Interval twice", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 10), noClientID)},
	{Desc: "CONNECT v5: Receive Maximum twice", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x21, 0, 5, 0x21, 0, 5), noClientID)},
	{Desc: "CONNECT v5: Receive Maximum 0", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x21, 0, 0), noClientID)},
	{Desc: "CONNECT v5: Maximum Packet Size 0", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x27, 0, 0, 0, 0), noClientID)},
	{Desc: "CONNECT v5: Request Problem Information 2", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x17, 2), noClientID)},
	{Desc: "CONNECT v5: Topic Alias is not a CONNECT property", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x02), props(0x23, 0, 1), noClientID)},
	{Desc: "CONNECT v5: will Content Type twice", Version: 5, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(5, 0x06), props(), []byte{0, 1, 'c'},
			props(0x03, 0, 1, 'a', 0x03, 0, 1, 'b'), []byte{0, 1, 't', 0, 1, 'p'})},
	{Desc: "CONNECT v5: will properties run past the end", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x06), props(), []byte{0, 1, 'c', 0x05, 0x01})},
	{Desc: "CONNECT v5: reserved flag set", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x03), props(), noClientID)},
	{Desc: "CONNECT v5: will QoS 3", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, connectHead(5, 0x1e), props(), []byte{0, 1, 'c'}, props(), []byte{0, 1, 't', 0, 1, 'p'})},
	{Desc: "CONNECT v5: keepalive cut short", Version: 5, Code: 0x81,
		Raw: frame(Connect<<4, []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0})},
	{Desc: "CONNECT 3.1.1: empty", Version: 4, Code: 0x81,
		Raw: []byte{Connect << 4, 0}},
	{Desc: "CONNECT 3.1.1: client id runs past the end", Version: 4, Code: 0x85,
		Raw: frame(Connect<<4, connectHead(4, 0x02), []byte{0, 5, 'a'})},
	{Desc: "CONNECT 3.1.1: user name flag without a user name", Version: 4, Code: 0x82,
		Raw: frame(Connect<<4, connectHead(4, 0x82), []byte{0, 1, 'c'})},

	// PUBLISH
	{Desc: "PUBLISH: remaining length of five bytes", Version: 5, Code: 0x81,
		Raw: []byte{Publish << 4, 0x80, 0x80, 0x80, 0x80, 0x01}},
	{Desc: "PUBLISH: QoS 3", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4|3<<1, []byte{0, 1, 'a', 0, 1}, props())},
	{Desc: "PUBLISH: DUP on QoS 0", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4|1<<3, []byte{0, 1, 'a'}, props())},
	{Desc: "PUBLISH: topic length runs past the end", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4, []byte{0, 5, 'a'})},
	{Desc: "PUBLISH: topic not UTF-8", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4, []byte{0, 2, 0xff, 0xfe}, props())},
	{Desc: "PUBLISH: topic holds U+0000", Version: 4, Code: 0x81,
		Raw: frame(Publish<<4, []byte{0, 2, 'a', 0})},
	{Desc: "PUBLISH 3.1.1: QoS 1 without a packet identifier", Version: 4, Code: 0x81,
		Raw: frame(Publish<<4|1<<1, []byte{0, 1, 'a'})},
	{Desc: "PUBLISH 3.1.1: QoS 1 with packet identifier 0", Version: 4, Code: 0x82,
		Raw: frame(Publish<<4|1<<1, []byte{0, 1, 'a', 0, 0})},
	{Desc: "PUBLISH v5: property length runs past the end", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4|1<<1, []byte{0, 1, 'a', 0, 1, 0x7f, 0xff, 0xff})},
	{Desc: "PUBLISH v5: Topic Alias twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x23, 0, 1, 0x23, 0, 1), []byte("x"))},
	{Desc: "PUBLISH v5: Payload Format Indicator twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x01, 0, 0x01, 1), []byte("x"))},
	{Desc: "PUBLISH v5: Message Expiry Interval twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x02, 0, 0, 0, 10, 0x02, 0, 0, 0, 10), []byte("x"))},
	{Desc: "PUBLISH v5: Content Type twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x03, 0, 1, 'a', 0x03, 0, 1, 'b'), []byte("x"))},
	{Desc: "PUBLISH v5: Response Topic twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x08, 0, 1, 'r', 0x08, 0, 1, 'r'), []byte("x"))},
	{Desc: "PUBLISH v5: Correlation Data twice", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x09, 0, 1, 1, 0x09, 0, 1, 2), []byte("x"))},
	{Desc: "PUBLISH v5: Payload Format Indicator 2", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x01, 2), []byte("x"))},
	{Desc: "PUBLISH v5: Session Expiry Interval is not a PUBLISH property", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x11, 0, 0, 0, 0), []byte("x"))},
	{Desc: "PUBLISH v5: Subscription Identifier from a client", Version: 5, Code: 0x82,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x0b, 1), []byte("x"))},
	{Desc: "PUBLISH v5: Topic Alias 0", Version: 5, Code: 0x94,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, props(0x23, 0, 0), []byte("x"))},
	{Desc: "PUBLISH v5: user property value runs past the property length", Version: 5, Code: 0x81,
		Raw: frame(Publish<<4, []byte{0, 1, 'a'}, []byte{4, 0x26, 0, 1, 'k', 0, 1, 'v'}, []byte("x"))},

	// SUBSCRIBE
	{Desc: "SUBSCRIBE v5: filter without its options byte (upstream #501)", Version: 5, Code: 0x81,
		Raw: []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'}},
	{Desc: "SUBSCRIBE v5: reserved option bits (0xC1)", Version: 5, Code: 0x81,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(), []byte{0, 1, 'a', 0xc1})},
	{Desc: "SUBSCRIBE v5: Retain Handling 3", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(), []byte{0, 1, 'a', 0x31})},
	{Desc: "SUBSCRIBE v5: QoS 3", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(), []byte{0, 1, 'a', 0x03})},
	{Desc: "SUBSCRIBE v5: Subscription Identifier 0", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(0x0b, 0), []byte{0, 1, 'a', 1})},
	{Desc: "SUBSCRIBE v5: Subscription Identifier twice", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(0x0b, 1, 0x0b, 2), []byte{0, 1, 'a', 1})},
	{Desc: "SUBSCRIBE v5: Subscription Identifier of five bytes", Version: 5, Code: 0x81,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(0x0b, 0x80, 0x80, 0x80, 0x80, 0x01), []byte{0, 1, 'a', 1})},
	{Desc: "SUBSCRIBE v5: no filter", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props())},
	{Desc: "SUBSCRIBE v5: packet identifier 0", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 0}, props(), []byte{0, 1, 'a', 1})},
	{Desc: "SUBSCRIBE v5: No Local on a shared subscription", Version: 5, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1}, props(), []byte{0, 10}, []byte("$share/g/a"), []byte{0x05})},
	{Desc: "SUBSCRIBE: reserved fixed header flags", Version: 4, Code: 0x81,
		Raw: frame(Subscribe<<4, []byte{0, 1, 0, 1, 'a', 0})},
	{Desc: "SUBSCRIBE 3.1.1: filter without its QoS byte", Version: 4, Code: 0x81,
		Raw: frame(Subscribe<<4|2, []byte{0, 1, 0, 1, 'a'})},
	{Desc: "SUBSCRIBE 3.1.1: reserved QoS bits", Version: 4, Code: 0x82,
		Raw: frame(Subscribe<<4|2, []byte{0, 1, 0, 1, 'a', 0x04})},
	{Desc: "SUBSCRIBE 3.1.1: filter length runs past the end", Version: 4, Code: 0x81,
		Raw: frame(Subscribe<<4|2, []byte{0, 1, 0, 5, 'a'})},

	// UNSUBSCRIBE
	{Desc: "UNSUBSCRIBE v5: no property length", Version: 5, Code: 0x81,
		Raw: frame(Unsubscribe<<4|2, []byte{0, 1})},
	{Desc: "UNSUBSCRIBE v5: no filter", Version: 5, Code: 0x82,
		Raw: frame(Unsubscribe<<4|2, []byte{0, 1}, props())},
	{Desc: "UNSUBSCRIBE v5: filter length runs past the end", Version: 5, Code: 0x81,
		Raw: frame(Unsubscribe<<4|2, []byte{0, 1}, props(), []byte{0, 5, 'a'})},
	{Desc: "UNSUBSCRIBE: reserved fixed header flags", Version: 4, Code: 0x81,
		Raw: frame(Unsubscribe<<4, []byte{0, 1, 0, 1, 'a'})},

	// PUBACK, PUBREC, PUBREL, PUBCOMP
	{Desc: "PUBACK: packet identifier cut short", Version: 4, Code: 0x81,
		Raw: frame(Puback<<4, []byte{0})},
	{Desc: "PUBACK: reserved fixed header flags", Version: 5, Code: 0x81,
		Raw: frame(Puback<<4|1, []byte{0, 1})},
	{Desc: "PUBREL: packet identifier cut short", Version: 4, Code: 0x81,
		Raw: frame(Pubrel<<4|2, []byte{0})},
	{Desc: "PUBREL: reserved fixed header flags", Version: 5, Code: 0x81,
		Raw: frame(Pubrel<<4, []byte{0, 1})},
	{Desc: "PUBACK v5: property length runs past the end", Version: 5, Code: 0x81,
		Raw: frame(Puback<<4, []byte{0, 1, 0, 5})},
	{Desc: "PUBREC v5: Topic Alias is not a PUBREC property", Version: 5, Code: 0x81,
		Raw: frame(Pubrec<<4, []byte{0, 1, 0}, props(0x23, 0, 1))},
	{Desc: "PUBCOMP v5: Reason String twice", Version: 5, Code: 0x82,
		Raw: frame(Pubcomp<<4, []byte{0, 1, 0}, props(0x1f, 0, 1, 'a', 0x1f, 0, 1, 'b'))},

	// DISCONNECT
	{Desc: "DISCONNECT v5: properties run past the end", Version: 5, Code: 0x81,
		Raw: frame(Disconnect<<4, []byte{0, 5, 0x11})},
	{Desc: "DISCONNECT v5: Session Expiry Interval twice", Version: 5, Code: 0x82,
		Raw: frame(Disconnect<<4, []byte{0}, props(0x11, 0, 0, 0, 0, 0x11, 0, 0, 0, 0))},
	{Desc: "DISCONNECT: reserved fixed header flags", Version: 5, Code: 0x81,
		Raw: []byte{Disconnect<<4 | 1, 0}},

	// AUTH
	{Desc: "AUTH v5: reason code without a property length", Version: 5, Code: 0x81,
		Raw: frame(Auth<<4, []byte{0x18})},
	{Desc: "AUTH v5: Authentication Method twice", Version: 5, Code: 0x82,
		Raw: frame(Auth<<4, []byte{0x18}, props(0x15, 0, 1, 'a', 0x15, 0, 1, 'b'))},
	{Desc: "AUTH v5: reason code not allowed in AUTH", Version: 5, Code: 0x82,
		Raw: frame(Auth<<4, []byte{0x05}, props())},
	{Desc: "AUTH 3.1.1: reserved packet type", Version: 4, Code: 0x81,
		Raw: []byte{Auth << 4, 0}},
}

// noClientID is an empty client identifier.
var noClientID = []byte{0, 0}

// connectHead is the variable header of a CONNECT up to its keepalive (60 s).
func connectHead(version, flags byte) []byte {
	return []byte{0, 4, 'M', 'Q', 'T', 'T', version, flags, 0, 60}
}

// props is an MQTT 5 property block: its length, then b.
func props(b ...byte) []byte {
	return append([]byte{byte(len(b))}, b...)
}

// frame is a packet: first, the remaining length, then the parts.
func frame(first byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := []byte{first}
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
