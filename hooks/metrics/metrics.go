// Package metrics is the mochi hook that counts what the broker does and
// exports it, with mochi's own counters, as Prometheus metrics.
//
// The hook's per-message work is a few atomic adds: no locks, no
// allocation, no labels built on the hot path. Everything else is read from
// mochi's system.Info when Prometheus scrapes.
package metrics

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons, the values of ferry_messages_dropped_total's reason label.
const (
	// ReasonQueueFull: the subscriber's outbound queue was full.
	ReasonQueueFull = "client_queue_full"
	// ReasonInflightFull: the session held its maximum of QoS 1/2 messages.
	ReasonInflightFull = "inflight_full"
	// ReasonExpired: a QoS 1/2 message expired or was abandoned undelivered.
	ReasonExpired = "qos_expired_or_abandoned"
	// ReasonMalformed: a connection was closed for a malformed packet.
	ReasonMalformed = "malformed_packet"
	// ReasonSessionQueueFull: a persistent session's queue was at
	// limits.max_queued_messages or max_queued_bytes; the new message was
	// not queued for it (drop-newest, or block-publisher for a session
	// that is offline).
	ReasonSessionQueueFull = "session_queue_full"
	// ReasonSessionQueueOldest: a queued message was dropped to make room
	// for a newer one (drop-oldest).
	ReasonSessionQueueOldest = "session_queue_dropped_oldest"
)

// QueueCounts are the session-queue counters of the persistence hook.
type QueueCounts struct {
	DroppedNewest, DroppedOldest, Expired, Spilled uint64
}

// Hook counts messages by QoS and drops by reason.
type Hook struct {
	mqtt.HookBase
	info      *system.Info
	sessions  func() int
	in, out   [3]atomic.Uint64
	queueFull atomic.Uint64
	qosDrop   atomic.Uint64
	malformed atomic.Uint64
	connects  atomic.Uint64
	queues    func() QueueCounts
}

// SetQueueCounts makes Collect read the session-queue counters from f.
// Call it before the collector is registered.
func (h *Hook) SetQueueCounts(f func() QueueCounts) { h.queues = f }

// New returns a hook reading mochi's counters from info; sessions reports
// how many sessions (connected or not) the broker holds.
func New(info *system.Info, sessions func() int) *Hook {
	return &Hook{info: info, sessions: sessions}
}

// ID names the hook in mochi's logs.
func (h *Hook) ID() string { return "ferry-metrics" }

// Provides keeps the hook off every event it does not count.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublished, mqtt.OnPacketSent, mqtt.OnPublishDropped, mqtt.OnQosDropped, mqtt.OnSessionEstablished:
		return true
	}
	return false
}

// OnPublished counts a message accepted from a client.
func (h *Hook) OnPublished(_ *mqtt.Client, pk packets.Packet) {
	h.in[min(pk.FixedHeader.Qos, 2)].Add(1)
}

// OnPacketSent counts a message written to a client.
func (h *Hook) OnPacketSent(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.out[min(pk.FixedHeader.Qos, 2)].Add(1)
	}
}

// OnPublishDropped counts a message dropped on a full client queue.
func (h *Hook) OnPublishDropped(*mqtt.Client, packets.Packet) { h.queueFull.Add(1) }

// OnQosDropped counts a QoS 1/2 message abandoned undelivered. mochi also
// calls it for what is not a drop, which is not counted: the in-flight
// messages of a session's previous client after it copied them to the
// client that resumes the session (that is every persistent reconnect),
// flows past their PUBLISH (PUBREL and PUBREC states: delivered already,
// or a publisher's), and a second time, with an empty packet, for each
// message it expired.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Publish && !cl.IsTakenOver() {
		h.qosDrop.Add(1)
	}
}

// OnSessionEstablished counts a successful CONNECT.
func (h *Hook) OnSessionEstablished(*mqtt.Client, packets.Packet) { h.connects.Add(1) }

// CountMalformed counts a connection closed for a malformed packet.
func (h *Hook) CountMalformed() { h.malformed.Add(1) }

var (
	descConnected = prometheus.NewDesc("ferry_connections", "Clients connected now.", nil, nil)
	descConnects  = prometheus.NewDesc("ferry_connects_total", "Successful CONNECTs.", nil, nil)
	descSessions  = prometheus.NewDesc("ferry_sessions", "Sessions held, connected or not.", nil, nil)
	descIn        = prometheus.NewDesc("ferry_messages_received_total", "PUBLISH packets accepted from clients, by QoS.", []string{"qos"}, nil)
	descOut       = prometheus.NewDesc("ferry_messages_sent_total", "PUBLISH packets written to clients, by QoS.", []string{"qos"}, nil)
	descBytesIn   = prometheus.NewDesc("ferry_received_bytes_total", "Bytes read from clients.", nil, nil)
	descBytesOut  = prometheus.NewDesc("ferry_sent_bytes_total", "Bytes written to clients.", nil, nil)
	descDropped   = prometheus.NewDesc("ferry_messages_dropped_total", "Messages not delivered, by reason.", []string{"reason"}, nil)
	descRetained  = prometheus.NewDesc("ferry_retained_messages", "Retained messages held.", nil, nil)
	descSubs      = prometheus.NewDesc("ferry_subscriptions", "Subscriptions held.", nil, nil)
	descInflight  = prometheus.NewDesc("ferry_inflight_messages", "QoS 1/2 messages awaiting acknowledgement.", nil, nil)
	descSpilled   = prometheus.NewDesc("ferry_messages_spilled_total", "QoS 1/2 messages queued for a persistent session in storage only, beyond its memory window.", nil, nil)
)

var qosLabels = [3]string{"0", "1", "2"}

// Describe implements prometheus.Collector.
func (h *Hook) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descConnects, descSessions, descIn, descOut,
		descBytesIn, descBytesOut, descDropped, descRetained, descSubs, descInflight, descSpilled} {
		ch <- d
	}
}

// Collect implements prometheus.Collector, reading every value at scrape.
func (h *Hook) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descConnected, atomic.LoadInt64(&h.info.ClientsConnected))
	counter(descConnects, h.connects.Load())
	gauge(descSessions, int64(h.sessions()))
	for q := range 3 {
		counter(descIn, h.in[q].Load(), qosLabels[q])
		counter(descOut, h.out[q].Load(), qosLabels[q])
	}
	counter(descBytesIn, uint64(atomic.LoadInt64(&h.info.BytesReceived)))
	counter(descBytesOut, uint64(atomic.LoadInt64(&h.info.BytesSent)))
	counter(descDropped, h.queueFull.Load(), ReasonQueueFull)
	counter(descDropped, uint64(atomic.LoadInt64(&h.info.InflightDropped)), ReasonInflightFull)
	var q QueueCounts
	if h.queues != nil {
		q = h.queues()
	}
	counter(descDropped, h.qosDrop.Load()+q.Expired, ReasonExpired)
	counter(descDropped, h.malformed.Load(), ReasonMalformed)
	counter(descDropped, q.DroppedNewest, ReasonSessionQueueFull)
	counter(descDropped, q.DroppedOldest, ReasonSessionQueueOldest)
	counter(descSpilled, q.Spilled)
	gauge(descRetained, atomic.LoadInt64(&h.info.Retained))
	gauge(descSubs, atomic.LoadInt64(&h.info.Subscriptions))
	gauge(descInflight, atomic.LoadInt64(&h.info.Inflight))
}

var _ prometheus.Collector = (*Hook)(nil)
