package outbox

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
)

func TestCodecRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    bridge.Message
	}{
		{"empty", bridge.Message{}},
		{"full", bridge.Message{ID: "r-1", Topic: "a/b", Payload: []byte{0, 1, 2}, QoS: 2, Retain: true, ClientID: "c", Username: "u",
			UserProperties: []bridge.Property{{Key: "k", Value: "v"}, {Key: "", Value: ""}}, Created: time.Unix(1, 2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeMessage(encodeMessage(&tc.m))
			if err != nil {
				t.Fatal(err)
			}
			if !equalMessage(got, tc.m) {
				t.Fatalf("got %+v, want %+v", got, tc.m)
			}
			d := bridge.DeadLetter{Message: tc.m, Reason: "because", Attempts: 3, Failed: time.Unix(9, 0)}
			gd, err := decodeDead(encodeDead(&d))
			if err != nil || gd.Reason != d.Reason || gd.Attempts != 3 || !gd.Failed.Equal(d.Failed) || !equalMessage(gd.Message, tc.m) {
				t.Fatalf("dead got %+v, %v", gd, err)
			}
		})
	}
	for _, bad := range [][]byte{nil, {2, 1}, {1, 2}, {1, 1, 3}, {1, 1, 0, 0, 5}, append(encodeMessage(&bridge.Message{}), 0)} {
		if _, err := decodeMessage(bad); err == nil {
			t.Errorf("decode %x: no error", bad)
		}
	}
}

func equalMessage(a, b bridge.Message) bool {
	if len(a.Payload) == 0 && len(b.Payload) == 0 {
		a.Payload, b.Payload = nil, nil
	}
	return a.Created.Equal(b.Created) && bytes.Equal(a.Payload, b.Payload) &&
		reflect.DeepEqual(a.UserProperties, b.UserProperties) &&
		a.ID == b.ID && a.Topic == b.Topic && a.QoS == b.QoS && a.Retain == b.Retain &&
		a.ClientID == b.ClientID && a.Username == b.Username
}

// FuzzOutboxRecord: the decoder never panics, and what it accepts
// re-encodes to a record that decodes to the same message.
func FuzzOutboxRecord(f *testing.F) {
	f.Add(encodeMessage(&bridge.Message{ID: "r-1", Topic: "a/b", Payload: []byte("x"), QoS: 1,
		UserProperties: []bridge.Property{{Key: "k", Value: "v"}}, Created: time.Unix(1, 0)}))
	f.Add(encodeDead(&bridge.DeadLetter{Reason: "r", Attempts: 2}))
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeMessage(b); err == nil {
			m2, err := decodeMessage(encodeMessage(&m))
			if err != nil || !equalMessage(m, m2) {
				t.Fatalf("message round trip: %+v vs %+v (%v)", m, m2, err)
			}
		}
		if d, err := decodeDead(b); err == nil {
			d2, err := decodeDead(encodeDead(&d))
			if err != nil || d.Reason != d2.Reason || d.Attempts != d2.Attempts || !equalMessage(d.Message, d2.Message) {
				t.Fatalf("dead round trip: %+v vs %+v (%v)", d, d2, err)
			}
		}
	})
}
