package bridge_test

import (
	"testing"

	"github.com/ferrymq/ferry/bridge"
)

// TestQueueMaxBytesMetric: each durable route exports its outbox limit, so
// "outbox near full" is queue_bytes / queue_max_bytes in an alert rather
// than a number copied from the configuration.
func TestQueueMaxBytesMetric(t *testing.T) {
	e := start(t, t.TempDir(), &fake{}, routes(t, `
- name: small
  from: "a/#"
  to: {fake: {}}
  max_bytes: 4096
- name: default
  from: "b/#"
  to: {fake: {}}
`))
	for _, tc := range []struct {
		route string
		want  float64
	}{
		{"small", 4096},
		{"default", bridge.DefaultMaxBytes},
	} {
		if got := e.metric(t, "ferry_bridge_queue_max_bytes", "route", tc.route); got != tc.want {
			t.Errorf("route %s: ferry_bridge_queue_max_bytes = %v, want %v", tc.route, got, tc.want)
		}
	}
}
