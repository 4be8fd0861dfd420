package cluster

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestMessageFrameRoundTrip(t *testing.T) {
	for _, pk := range []packets.Packet{
		{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x"), ProtocolVersion: 4, Created: 100},
		{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Retain: true}, TopicName: "t", ProtocolVersion: 5, Created: 1, Expiry: 61,
			Properties: packets.Properties{MessageExpiryInterval: 60, ContentType: "text/plain", ResponseTopic: "r",
				CorrelationData: []byte{1, 2}, User: []packets.UserProperty{{Key: "k", Val: "v"}}, TopicAlias: 3, TopicAliasFlag: true}},
		{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "e/m/p/t/y", ProtocolVersion: 5},
	} {
		var buf bytes.Buffer
		if err := encodeMessage(&buf, &pk); err != nil {
			t.Fatal(err)
		}
		got, err := decodeMessage(buf.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", pk.TopicName, err)
		}
		if got.TopicName != pk.TopicName || !bytes.Equal(got.Payload, pk.Payload) || got.FixedHeader.Qos != pk.FixedHeader.Qos ||
			got.FixedHeader.Retain != pk.FixedHeader.Retain || got.Created != pk.Created || got.Expiry != pk.Expiry ||
			got.ProtocolVersion != pk.ProtocolVersion || got.Properties.ContentType != pk.Properties.ContentType ||
			len(got.Properties.User) != len(pk.Properties.User) || got.Properties.MessageExpiryInterval != pk.Properties.MessageExpiryInterval {
			t.Fatalf("round trip of %+v gave %+v", pk, got)
		}
		if got.Properties.TopicAlias != 0 {
			t.Fatal("a topic alias crossed nodes")
		}
		// With route info and subscription identifiers appended.
		info := routeInfo{Shares: []string{"$share/g/a/#"}, NoPlain: true}
		appendRouteInfo(&buf, info)
		rest, gotInfo := splitRouteInfo(buf.Bytes())
		if len(gotInfo.Shares) != 1 || !gotInfo.NoPlain {
			t.Fatalf("route info %+v", gotInfo)
		}
		if _, err := decodeMessage(rest); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMalformedFramesRefused: what another node (or anything publishing
// on Ferry's subjects) sends that is not a frame is an error, not a panic
// nor a message.
func TestMalformedFramesRefused(t *testing.T) {
	var good bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "a", Payload: []byte("p"), ProtocolVersion: 5}
	if err := encodeMessage(&good, &pk); err != nil {
		t.Fatal(err)
	}
	g := good.Bytes()
	for name, b := range map[string][]byte{
		"empty":          nil,
		"short":          g[:wireHeader],
		"version":        append([]byte{9}, g[1:]...),
		"not a publish":  append(append([]byte{}, g[:wireHeader]...), append([]byte{0x82}, g[wireHeader+1:]...)...),
		"bad qos":        append(append([]byte{}, g[:wireHeader]...), append([]byte{0x36}, g[wireHeader+1:]...)...),
		"truncated":      g[:len(g)-3],
		"length too big": append(append([]byte{}, g[:wireHeader+1]...), append([]byte{0x7f}, g[wireHeader+2:]...)...),
		"plain text":     []byte("hello, this is not a frame at all"),
	} {
		if _, err := decodeMessage(b); !errors.Is(err, errWire) {
			t.Errorf("%s: error %v, want errWire", name, err)
		}
	}
}

func FuzzDecodeMessage(f *testing.F) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "a/b", Payload: []byte("p"), ProtocolVersion: 5,
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}}}
	_ = encodeMessage(&buf, &pk)
	f.Add(buf.Bytes())
	appendRouteInfo(&buf, routeInfo{Shares: []string{"$share/g/#"}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		rest, _ := splitRouteInfo(b)
		_, _ = decodeMessage(rest)
		_, _ = decodeQueued(b)
	})
}
