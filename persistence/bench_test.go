package persistence

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkAppendParallel stores what OnPublish stores for a message with
// one persistent subscriber (a body and a queue ref), from many goroutines,
// waiting like a publisher waits for its PUBACK. The qos2 variant then also
// waits, like OnQosPublish for a QoS 2 message to a connected subscriber,
// for the ref with mochi's packet id: the cost of that second wait.
func BenchmarkAppendParallel(b *testing.B) {
	for _, mode := range []string{SyncAlways, SyncBatch} {
		for _, qos := range []byte{1, 2} {
			name := mode + "/qos1"
			if qos == 2 {
				name = mode + "/qos2"
			}
			b.Run(name, func(b *testing.B) { benchAppend(b, mode, qos) })
		}
	}
}

func benchAppend(b *testing.B, mode string, qos byte) {
	st := openStore(b, Config{Sync: mode})
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   "devices/d1/telemetry",
		Payload:     make([]byte, 256),
		Created:     1_700_000_000,
	}
	var body msgRec
	body.fromPacket(&pk)
	b.SetParallelism(64) // many publishers per core, as on a broker
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bt := st.newBatch()
			id, seq := st.nextSeq(), st.nextSeq()
			bt.set(bt.messageKey(id), body.appendTo)
			ref := refRec{State: refPublish, Qos: qos, MsgID: id}
			bt.set(bt.queueKey("subscriber-1", seq), ref.appendTo)
			if err := st.apply(bt); err != nil {
				b.Error(err)
				return
			}
			if qos < 2 {
				continue
			}
			bt = st.newBatch()
			ref.PacketID = uint16(seq)
			bt.set(bt.queueKey("subscriber-1", seq), ref.appendTo)
			if err := st.apply(bt); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	s := st.Stats()
	b.ReportMetric(float64(s.Fsyncs)/float64(b.N), "fsyncs/op")
	b.ReportMetric(float64(s.Records)/float64(max(s.Batches, 1)), "records/batch")
}
