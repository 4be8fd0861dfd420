package mqttc

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary streams to the reader and decoder: they must
// return errors, never panic, and a PUBLISH that decodes must re-encode to
// one that decodes to the same fields.
func FuzzDecode(f *testing.F) {
	for _, tc := range malformed {
		f.Add(tc.v == V5, tc.raw)
	}
	f.Add(false, AppendPublish(nil, &Publish{Topic: []byte("a/b"), QoS: 1, PacketID: 3, Payload: []byte("xyz")}, V311))
	f.Add(true, AppendPublish(nil, &Publish{Topic: []byte("a"), QoS: 2, PacketID: 1, Payload: []byte("p"),
		Props: Properties{ResponseTopic: []byte("r"), CorrelationData: []byte("c")}}, V5))
	f.Add(true, []byte{0x20, 0x03, 0x00, 0x00, 0x00})
	f.Add(false, []byte{0x90, 0x03, 0x00, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, v5 bool, raw []byte) {
		v := V311
		if v5 {
			v = V5
		}
		p, err := decodeStream(raw, v)
		if err != nil || p.Type != PUBLISH {
			return
		}
		in := Publish{Topic: p.Topic, QoS: p.QoS, Retain: p.Retain, Dup: p.Dup, PacketID: p.PacketID, Payload: p.Payload}
		if v == V5 {
			in.Props.ResponseTopic, in.Props.CorrelationData = p.Props.ResponseTopic, p.Props.CorrelationData
		}
		q, err := decodeStream(AppendPublish(nil, &in, v), v)
		if err != nil {
			t.Fatalf("re-encoded publish does not decode: %v", err)
		}
		if !bytes.Equal(q.Topic, p.Topic) || !bytes.Equal(q.Payload, p.Payload) || q.QoS != p.QoS ||
			q.PacketID != p.PacketID || q.Retain != p.Retain || q.Dup != p.Dup ||
			!bytes.Equal(q.Props.ResponseTopic, in.Props.ResponseTopic) ||
			!bytes.Equal(q.Props.CorrelationData, in.Props.CorrelationData) {
			t.Fatalf("round trip changed the publish: %+v -> %+v", p, q)
		}
	})
}
