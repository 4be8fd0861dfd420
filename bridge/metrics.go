package bridge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the bridge's Prometheus series, all labelled by route.
type metrics struct {
	delivered, retried, failed, dead, refused, outages *prometheus.CounterVec
	dropped                                            *prometheus.CounterVec
	latency                                            *prometheus.HistogramVec
	depth, bytes, maxBytes, lag, up, down              *prometheus.Desc
	b                                                  *Bridge
}

// routeMetrics are one route's children, resolved once in New so the hot
// path does no label lookups.
type routeMetrics struct {
	delivered, retried, failed, deadLettered, refused prometheus.Counter
	outages                                           prometheus.Counter
	dropFull, dropExpired, dropFailed, dropShutdown   prometheus.Counter
	latency                                           prometheus.Observer
}

func newMetrics(b *Bridge, deps Deps) (*metrics, error) {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "bridge", Name: name, Help: help}, []string{"route"})
	}
	m := &metrics{
		delivered: counter("delivered_total", "Messages acked by the backend (egress) or accepted by the broker (ingress)."),
		retried:   counter("retried_total", "Delivery retries scheduled after a failure."),
		failed:    counter("failed_total", "Failed delivery attempts."),
		dead:      counter("dead_lettered_total", "Messages moved to the dead-letter store."),
		refused:   counter("refused_total", "Publishes refused because the route's outbox was full (when_full: block)."),
		outages:   counter("outages_total", "Times the route's backend became unavailable (the route went down)."),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "bridge", Name: "dropped_total",
			Help: "Messages dropped, by reason: full (drop-oldest or at-most-once queue), expired (max_age), failed (at-most-once past max_attempts), shutdown."},
			[]string{"route", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "bridge", Name: "delivery_latency_seconds",
			Help:    "Time from the bridge accepting a message to the backend's ack.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"route"}),
		depth: prometheus.NewDesc("ferry_bridge_queue_depth", "Undelivered messages in the route's outbox or memory queue.", []string{"route"}, nil),
		bytes: prometheus.NewDesc("ferry_bridge_queue_bytes", "Bytes of undelivered messages in the route's outbox.", []string{"route"}, nil),
		maxBytes: prometheus.NewDesc("ferry_bridge_queue_max_bytes", "The route's outbox limit (max_bytes): at it, when_full applies.",
			[]string{"route"}, nil),
		lag: prometheus.NewDesc("ferry_bridge_lag_seconds", "Age of the route's oldest undelivered message (0 when none).", []string{"route"}, nil),
		up: prometheus.NewDesc("ferry_bridge_backend_up", "1 while the route's backend takes messages, 0 while the route is down and holds them.",
			[]string{"route"}, nil),
		down: prometheus.NewDesc("ferry_bridge_backend_down_seconds", "How long the route has been down (0 when up).", []string{"route"}, nil),
		b:    b,
	}
	for _, r := range b.routes {
		n := r.name
		r.met = routeMetrics{
			delivered:    m.delivered.WithLabelValues(n),
			retried:      m.retried.WithLabelValues(n),
			failed:       m.failed.WithLabelValues(n),
			deadLettered: m.dead.WithLabelValues(n),
			refused:      m.refused.WithLabelValues(n),
			outages:      m.outages.WithLabelValues(n),
			dropFull:     m.dropped.WithLabelValues(n, "full"),
			dropExpired:  m.dropped.WithLabelValues(n, "expired"),
			dropFailed:   m.dropped.WithLabelValues(n, "failed"),
			dropShutdown: m.dropped.WithLabelValues(n, "shutdown"),
			latency:      m.latency.WithLabelValues(n),
		}
	}
	if deps.Registerer != nil {
		for _, c := range []prometheus.Collector{m.delivered, m.retried, m.failed, m.dead, m.refused, m.outages, m.dropped, m.latency, m} {
			if err := deps.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Describe implements prometheus.Collector for the queue gauges.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.depth
	ch <- m.bytes
	ch <- m.maxBytes
	ch <- m.lag
	ch <- m.up
	ch <- m.down
}

// Collect reads the queue gauges at scrape time, so Offer never updates
// them.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, r := range m.b.routes {
		up, since, _ := r.health.state()
		v, down := 1.0, 0.0
		if !up {
			v, down = 0, now.Sub(since).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, v, r.name)
		ch <- prometheus.MustNewConstMetric(m.down, prometheus.GaugeValue, down, r.name)
		switch {
		case r.durable:
			u := m.b.outbox.Usage(r.name)
			ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(u.Messages), r.name)
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.GaugeValue, float64(u.Bytes), r.name)
			ch <- prometheus.MustNewConstMetric(m.maxBytes, prometheus.GaugeValue, float64(r.cfg.MaxBytes), r.name)
			lag := 0.0
			if t, err := m.b.outbox.Oldest(r.name); err == nil && !t.IsZero() {
				lag = now.Sub(t).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, lag, r.name)
		case r.queue != nil:
			ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(len(r.queue)), r.name)
		}
	}
}
