package report

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"
)

func TestStats(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want stat
	}{
		{name: "empty", in: nil, want: stat{}},
		{name: "one", in: []float64{3}, want: stat{3, 3, 3}},
		{name: "odd", in: []float64{5, 1, 3}, want: stat{3, 1, 5}},
		{name: "even", in: []float64{4, 1, 2, 10}, want: stat{3, 1, 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := stats(tc.in); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMarkdown(t *testing.T) {
	var lines []string
	add := func(r load.Result) {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	for i, rate := range []float64{100e3, 300e3, 200e3} {
		add(load.Result{Scenario: load.FanIn, Tag: "fan-in QoS0", Broker: "mosquitto", RecvRate: rate, LossPct: float64(i), GenCPU: 0.25})
	}
	add(load.Result{Scenario: load.FanIn, Tag: "fan-in QoS0", Broker: "mochi", RecvRate: 150e3, GenCPU: 0.5, BrokerCPU: 0.97})
	add(load.Result{Scenario: load.Latency, Tag: "latency", Broker: "mochi", Latency: &load.LatencyMS{P50: 0.2, P99: 1.5}})
	add(load.Result{Scenario: load.Idle, Tag: "idle", Broker: "mosquitto", Clients: 10, Alive: 9, RSSPerConnBytes: 2048, ConnectRate: 5000})
	rs, err := Read(strings.NewReader(strings.Join(lines, "\n\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := Markdown(&b, rs); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| case | mosquitto | mochi | runs | gen CPU max |",
		"| fan-in QoS0 | 200k (100k–300k) msg/s, loss 1.0% | 150k msg/s [broker CPU 97%] | 3 | 50% |",
		"| latency | – | p50 0.20 ms, p99 1.50 ms | 1 | 0% |",
		"| idle | 2.0 KB RSS/conn, 5k conn/s, alive min 9/10 | – | 1 | 0% |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if _, err := Read(strings.NewReader("{not json\n")); err == nil {
		t.Error("bad line accepted")
	}
}
