package report

import (
	"strings"
	"testing"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"
)

func TestClusterTargets(t *testing.T) {
	var rs []load.Result
	add := func(tag, label, sc string, qos int, rates ...float64) {
		for _, v := range rates {
			r := load.Result{Scenario: sc, Tag: tag, Broker: label, QoS: qos, RecvRate: v, Received: 1}
			if sc == load.Latency {
				r.TargetRate = 2000
				r.Latency = &load.LatencyMS{P50: v / 4, P99: v}
			}
			rs = append(rs, r)
		}
	}
	add("fan-in QoS0", LabelSingle, load.FanIn, 0, 600e3, 610e3, 590e3)
	add("fan-in QoS0", LabelClusterSame, load.FanIn, 0, 500e3)
	add("fan-in QoS0", LabelClusterCross, load.FanIn, 0, 150e3)
	add("fan-in QoS1", LabelSingle, load.FanIn, 1, 240e3)
	add("fan-in QoS1", LabelClusterSame, load.FanIn, 1, 200e3)
	add("fan-in QoS1", LabelClusterCross, load.FanIn, 1, 130e3, 120e3, 125e3)
	add("pairs QoS1 lossy", LabelSingle, load.Pairs, 1, 100e3)
	add("pairs QoS1 lossy", LabelClusterCross, load.Pairs, 1, 90e3)
	rs[len(rs)-1].Lost, rs[len(rs)-1].LossPct = 5, 0.01
	add("latency QoS1", LabelSingle, load.Latency, 1, 0.4)
	add("latency QoS1", LabelClusterCross, load.Latency, 1, 1.5, 2.5, 1.8)
	add("latency QoS1 slow", LabelClusterCross, load.Latency, 1, 3)
	add("idle", LabelSingle, load.Idle, 0, 1) // no cross runs: no row
	rs = append(rs,
		load.Result{Scenario: load.Storm, Tag: "storm", Broker: "cluster", MoveMode: load.MoveKill, Clients: 100, Connected: 100,
			Resumed: 100, MoveSeconds: 1.25, Acked: 200, Unique: 200, Checks: []load.StormCheck{
				{Round: 1, AfterMove: 0.01, Acked: 100, Delivered: 100, Seconds: 0.5}, {Round: 2, AfterMove: 10.6, Acked: 100, Delivered: 100, Seconds: 0.1}}},
		load.Result{Scenario: load.Storm, Tag: "storm lossy", Broker: "cluster", MoveMode: load.MoveClose, Clients: 100, Connected: 100,
			Resumed: 99, NotPresent: 1, SessionsLost: 1, MoveSeconds: 2, Acked: 100, Unique: 99, Lost: 1,
			Checks: []load.StormCheck{{Round: 1, Acked: 100, Delivered: 99, Lost: 1, LostByAddr: map[string]int{"b:1": 1}}}},
		load.Result{Scenario: load.Storm, Tag: "storm late loss", Broker: "cluster", MoveMode: load.MoveKill, Clients: 100, Connected: 100,
			Resumed: 100, MoveSeconds: 1, Acked: 200, Unique: 150, Lost: 50, Checks: []load.StormCheck{
				{Round: 1, Acked: 100, Delivered: 100}, {Round: 2, AfterMove: 12, Acked: 100, Delivered: 50, Lost: 50, LostByAddr: map[string]int{"a:1": 50}}}},
	)
	var b strings.Builder
	if err := ClusterTargets(&b, rs); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| target | measured | met |",
		"| fan-in QoS0: cross-node vs single node | 150k msg/s: 25 % of single (600k msg/s), 30 % of cluster-same (500k msg/s) (1 runs) | – (no target at QoS 0) |",
		"| fan-in QoS1: cross-node ≥ 50 % of single node | 125k msg/s: 52 % of single (240k msg/s), 62 % of cluster-same (200k msg/s) (3 runs) | **yes** |",
		"| pairs QoS1 lossy: cross-node ≥ 50 % of single node | 90k msg/s: 90 % of single (100k msg/s); loss max 0.01 % (1 runs) | **no** |",
		"| latency QoS1: cross-node p99 ≤ 2 ms at 2k msg/s | p99 1.80 ms, p50 0.45 ms (single p99 0.40 ms), 3 runs | **yes** |",
		"| latency QoS1 slow: cross-node p99 ≤ 2 ms at 2k msg/s | p99 3.00 ms, p50 0.75 ms, 1 runs | **no** |",
		"| storm: 100 sessions move (kill), none lost | 100/100 sessions set up, move 1.25 s, 100 resumed, 0 lost (0 not present, 0 no CONNACK), 0 retried, 0 dropped after the move; " +
			"check 1 (0.0 s after the move): 100/100 delivered, the last 0.50 s after the first publish; check 2 (10.6 s after the move): 100/100 delivered, the last 0.10 s after the first publish | **yes** |",
		"| storm lossy: 100 sessions move (close), none lost | 100/100 sessions set up, move 2.00 s, 99 resumed, 1 lost (1 not present, 0 no CONNACK), 0 retried, 0 dropped after the move; " +
			"check 1 (0.0 s after the move): 99/100 delivered, undelivered by node: b:1 1 | **no** |",
		"| storm late loss: 100 sessions move (kill), none lost | 100/100 sessions set up, move 1.00 s, 100 resumed, 0 lost (0 not present, 0 no CONNACK), 0 retried, 0 dropped after the move; " +
			"check 1 (0.0 s after the move): 100/100 delivered; check 2 (12.0 s after the move): 50/100 delivered, undelivered by node: a:1 50 | **no** |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "idle") {
		t.Errorf("a row for a case without cross-node runs:\n%s", out)
	}
}

func TestStormCell(t *testing.T) {
	rs := []load.Result{
		{Scenario: load.Storm, MoveMode: load.MoveKill, Clients: 10, Connected: 10, Resumed: 10, MoveSeconds: 1, MoveRate: 10, Unique: 10},
		{Scenario: load.Storm, MoveMode: load.MoveKill, Clients: 10, Connected: 9, Resumed: 8, NotPresent: 1, SessionsLost: 1, Retried: 2,
			MoveSeconds: 3, MoveRate: 3, Unique: 8},
	}
	want := "10 sessions (kill): move 2.00 s (1.00 s–3.00 s), 6.5 (3–10) conn/s, lost max 2, retried max 2, delivered after the move min 8/10"
	if got := cell(rs); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}
