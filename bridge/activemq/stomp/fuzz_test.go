package stomp

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzFrameDecode: the decoder never panics, and every frame it decodes
// encodes (AppendFrame) to bytes that decode to the same frame.
func FuzzFrameDecode(f *testing.F) {
	for _, tc := range catalogue {
		f.Add([]byte(tc.wire))
	}
	f.Add([]byte("SEND\ndestination:/queue/a\ncontent-length:0\nreceipt:r1\n\n\x00\nMESSAGE\nsubscription:s1\nack:ID\\c1\n\nhi\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), catalogueLimits)
		for range 16 {
			fr, err := r.ReadFrame()
			if err != nil {
				return
			}
			wire, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatalf("decoded frame %+v does not encode: %v", fr, err)
			}
			// Escaping can lengthen lines: decode again without tight limits.
			back, err := NewReader(bytes.NewReader(wire), Limits{}).ReadFrame()
			if err != nil {
				t.Fatalf("re-encoded %q does not decode: %v", wire, err)
			}
			if !reflect.DeepEqual(normalize([]Frame{*back}), normalize([]Frame{*fr})) {
				t.Fatalf("round trip\n got %+v\nwant %+v", back, fr)
			}
		}
	})
}
