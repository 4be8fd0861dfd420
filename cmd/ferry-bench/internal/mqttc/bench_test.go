package mqttc

import "testing"

func BenchmarkAppendPublish(b *testing.B) {
	p := Publish{Topic: []byte("bench/0000/fan-in/7"), QoS: 1, PacketID: 9, Payload: make([]byte, 64)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendPublish(buf[:0], &p, V311)
	}
}

func BenchmarkDecodePublish(b *testing.B) {
	raw := AppendPublish(nil, &Publish{Topic: []byte("bench/0000/fan-in/7"), QoS: 1, PacketID: 9, Payload: make([]byte, 64)}, V311)
	h, body := raw[0], raw[2:]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(h, body, V311); err != nil {
			b.Fatal(err)
		}
	}
}
