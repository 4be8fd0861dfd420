package broker

import (
	"bytes"
	"testing"
)

func TestWithoutV3Disconnect(t *testing.T) {
	pub := []byte{0x30, 0x05, 0x00, 0x01, 'a', 0xe0, 0x00} // QoS 0 PUBLISH to "a", payload e0 00
	ack := []byte{0x40, 0x02, 0x00, 0x01}
	v3 := []byte{0xe0, 0x00}
	v5 := []byte{0xe0, 0x02, 0x8b, 0x00}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name    string
		in, out []byte
		dropped bool
	}{
		{"DISCONNECT alone", v3, []byte{}, true},
		{"after other packets", cat(ack, pub, v3), cat(ack, pub), true},
		{"between packets", cat(ack, v3, ack), cat(ack, ack), true},
		{"payload ending like one", pub, pub, false},
		{"MQTT 5 DISCONNECT", cat(ack, v5), cat(ack, v5), false},
		{"partial packet", []byte{0x30, 0x09, 0xe0, 0x00}, []byte{0x30, 0x09, 0xe0, 0x00}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, dropped := withoutV3Disconnect(tc.in)
			if dropped != tc.dropped || !bytes.Equal(got, tc.out) {
				t.Errorf("got % x, %v; want % x, %v", got, dropped, tc.out, tc.dropped)
			}
		})
	}
}
