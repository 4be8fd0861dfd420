package broker

import (
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// bridgeSysPrefix is where route statistics appear as retained MQTT
// messages: $SYS/ferry/bridge/<route>/<stat>[/<label value>...].
const bridgeSysPrefix = "$SYS/ferry/bridge/"

// publishBridgeSys republishes every route's statistics under $SYS each
// mqtt.sys_interval, from the same metrics /metrics serves, so an MQTT-only
// operator (mosquitto_sub -t '$SYS/ferry/bridge/#') sees them too, and
// each route's backend state (bridge.RouteState) under <route>/state.
func (b *Broker) publishBridgeSys() {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.MQTT.SysInterval)
	defer t.Stop()
	for {
		b.bridgeSysOnce()
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
	}
}

func (b *Broker) bridgeSysOnce() {
	families, err := b.registry.Gather()
	if err != nil {
		b.log.Debug("gather bridge metrics", "err", err)
	}
	for _, f := range families {
		name, ok := strings.CutPrefix(f.GetName(), "ferry_bridge_")
		if !ok {
			continue
		}
		for _, m := range f.GetMetric() {
			route := ""
			var extra []string
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" {
					route = l.GetValue()
				} else {
					extra = append(extra, l.GetValue())
				}
			}
			if route == "" {
				continue
			}
			topic := bridgeSysPrefix + route + "/" + name
			if len(extra) > 0 {
				topic += "/" + strings.Join(extra, "/")
			}
			_ = b.mochi.Publish(topic, []byte(metricValue(f.GetType(), m)), true, 0)
		}
	}
	if b.bridge == nil {
		return
	}
	// The backend's state in words: "up", or when it went down and why.
	for _, st := range b.bridge.States() {
		_ = b.mochi.Publish(bridgeSysPrefix+st.Route+"/state", []byte(st.String()), true, 0)
	}
}

func metricValue(t dto.MetricType, m *dto.Metric) string {
	var v float64
	switch t {
	case dto.MetricType_COUNTER:
		v = m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		v = m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		if h.GetSampleCount() == 0 {
			return "0"
		}
		v = h.GetSampleSum() / float64(h.GetSampleCount()) // mean
	default:
		return ""
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
