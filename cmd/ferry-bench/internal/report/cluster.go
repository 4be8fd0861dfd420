package report

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"
)

// Labels (the -label of ferry-bench) that bench/cluster.sh gives its
// three set-ups, and ClusterTargets compares.
const (
	// LabelSingle is one ferry node without a cluster section: the
	// same-node baseline.
	LabelSingle = "single"
	// LabelClusterSame is publishers and subscribers on the same node of
	// a cluster.
	LabelClusterSame = "cluster-same"
	// LabelClusterCross is publishers on one node of a cluster and
	// subscribers on another.
	LabelClusterCross = "cluster-cross"
)

// The cluster's targets.
const (
	// TargetCrossRatio is the least cross-node QoS 1 throughput, as a
	// share of the single node's.
	TargetCrossRatio = 0.5
	// TargetCrossP99MS is the most cross-node QoS 1 p99 latency, in
	// milliseconds, at the latency scenario's rate (2k msg/s).
	TargetCrossP99MS = 2.0
)

// ClusterTargets writes a markdown table checking the cluster's targets
// against the results: for each case (tag) with LabelClusterCross runs,
// the cross-node throughput over the single node's and the same-node
// cluster's (medians; the target at QoS ≥ 1 only), or the cross-node p99
// latency; and for each storm case, whether every session resumed and got
// its message after the move, in every run.
func ClusterTargets(w io.Writer, rs []load.Result) error {
	var tags []string
	groups := map[string]map[string][]load.Result{}
	for _, r := range rs {
		tag := r.Tag
		if tag == "" {
			tag = r.Scenario
		}
		if groups[tag] == nil {
			tags = append(tags, tag)
			groups[tag] = map[string][]load.Result{}
		}
		groups[tag][r.Broker] = append(groups[tag][r.Broker], r)
	}
	var b strings.Builder
	b.WriteString("| target | measured | met |\n|---|---|---|\n")
	for _, tag := range tags {
		g := groups[tag]
		if row := storms(tag, g); row != "" {
			b.WriteString(row)
			continue
		}
		cross := g[LabelClusterCross]
		if len(cross) == 0 {
			continue
		}
		switch cross[0].Scenario {
		case load.Latency:
			b.WriteString(latencyRow(tag, g))
		case load.FanIn, load.Pairs, load.FanOut:
			b.WriteString(throughputRow(tag, g))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func median(rs []load.Result, f func(load.Result) float64) float64 {
	vs := make([]float64, 0, len(rs))
	for _, r := range rs {
		vs = append(vs, f(r))
	}
	return stats(vs).med
}

func recvRate(r load.Result) float64 { return r.RecvRate }

func p99(r load.Result) float64 {
	if r.Latency == nil {
		return 0
	}
	return r.Latency.P99
}

// lossless says whether no run lost a message or failed to deliver any.
func lossless(rs []load.Result) bool {
	for _, r := range rs {
		if r.Lost > 0 || r.Received == 0 {
			return false
		}
	}
	return true
}

func maxLoss(rs []load.Result) float64 {
	m := 0.0
	for _, r := range rs {
		m = max(m, r.LossPct)
	}
	return m
}

func yesNo(ok bool) string {
	if ok {
		return "**yes**"
	}
	return "**no**"
}

func throughputRow(tag string, g map[string][]load.Result) string {
	cross := g[LabelClusterCross]
	c := median(cross, recvRate)
	var parts []string
	ratio := -1.0
	for _, base := range []string{LabelSingle, LabelClusterSame} {
		if rs := g[base]; len(rs) > 0 {
			m := median(rs, recvRate)
			if m > 0 {
				parts = append(parts, fmt.Sprintf("%.0f %% of %s (%s msg/s)", 100*c/m, base, si(m)))
				if base == LabelSingle {
					ratio = c / m
				}
			}
		}
	}
	measured := fmt.Sprintf("%s msg/s", si(c))
	if len(parts) > 0 {
		measured += ": " + strings.Join(parts, ", ")
	}
	if l := maxLoss(cross); l > 0 {
		measured += fmt.Sprintf("; loss max %.2f %%", l)
	}
	measured += fmt.Sprintf(" (%d runs)", len(cross))
	target := fmt.Sprintf("%s: cross-node ≥ %.0f %% of single node", tag, 100*TargetCrossRatio)
	met := "– (no target at QoS 0)"
	if cross[0].QoS > 0 {
		met = yesNo(ratio >= TargetCrossRatio && lossless(cross))
		if ratio < 0 {
			met = "– (no single-node runs)"
		}
	} else {
		target = fmt.Sprintf("%s: cross-node vs single node", tag)
	}
	return fmt.Sprintf("| %s | %s | %s |\n", target, measured, met)
}

func latencyRow(tag string, g map[string][]load.Result) string {
	cross := g[LabelClusterCross]
	c := median(cross, p99)
	p50 := median(cross, func(r load.Result) float64 {
		if r.Latency == nil {
			return 0
		}
		return r.Latency.P50
	})
	measured := fmt.Sprintf("p99 %.2f ms, p50 %.2f ms", c, p50)
	var others []string
	for _, base := range []string{LabelSingle, LabelClusterSame} {
		if rs := g[base]; len(rs) > 0 {
			others = append(others, fmt.Sprintf("%s p99 %.2f ms", base, median(rs, p99)))
		}
	}
	if len(others) > 0 {
		measured += " (" + strings.Join(others, ", ") + ")"
	}
	if l := maxLoss(cross); l > 0 {
		measured += fmt.Sprintf("; loss max %.2f %%", l)
	}
	measured += fmt.Sprintf(", %d runs", len(cross))
	target := fmt.Sprintf("%s: cross-node p99 ≤ %.0f ms at %s msg/s", tag, TargetCrossP99MS, si(cross[0].TargetRate))
	met := "– (no target below QoS 1)"
	if cross[0].QoS > 0 {
		met = yesNo(c > 0 && c <= TargetCrossP99MS && lossless(cross))
	}
	return fmt.Sprintf("| %s | %s | %s |\n", target, measured, met)
}

// storms is the row of a storm case, "" when the case is not one.
func storms(tag string, g map[string][]load.Result) string {
	var labels []string
	for label := range g {
		labels = append(labels, label)
	}
	slices.Sort(labels) // map order is random; runs are listed by label
	var rs []load.Result
	for _, label := range labels {
		for _, r := range g[label] {
			if r.Scenario == load.Storm {
				rs = append(rs, r)
			}
		}
	}
	if len(rs) == 0 {
		return ""
	}
	ok := true
	var runs []string
	for _, r := range rs {
		ok = ok && stormClean(r)
		run := fmt.Sprintf("%d/%d sessions set up, move %.2f s, %d resumed, %d lost (%d not present, %d no CONNACK), %d retried, %d dropped after the move",
			r.Connected, r.Clients, r.MoveSeconds, r.Resumed, r.SessionsLost, r.NotPresent, r.MoveFailed, r.Retried, r.DroppedAfterMove)
		if r.DroppedAfterMove > 0 {
			run += fmt.Sprintf(" (%d reconnected, %d of them lost)", r.Reconnected, r.LostAfterMove)
		}
		if len(r.Checks) == 0 {
			run += ", no check messages"
		}
		for _, c := range r.Checks {
			run += fmt.Sprintf("; check %d (%.1f s after the move): %d/%d delivered", c.Round, c.AfterMove, c.Delivered, r.Connected)
			if c.Seconds > 0 {
				run += fmt.Sprintf(", the last %.2f s after the first publish", c.Seconds)
			}
			if c.Acked < int64(r.Connected) {
				run += fmt.Sprintf(", only %d publishes acked", c.Acked)
			}
			if len(c.LostByAddr) > 0 {
				var by []string
				for addr, n := range c.LostByAddr {
					by = append(by, fmt.Sprintf("%s %d", addr, n))
				}
				slices.Sort(by)
				run += ", undelivered by node: " + strings.Join(by, ", ")
			}
		}
		if r.Mismatched > 0 {
			run += fmt.Sprintf("; %d delivered to the wrong session", r.Mismatched)
		}
		runs = append(runs, run)
	}
	target := fmt.Sprintf("%s: %d sessions move (%s), none lost", tag, rs[0].Clients, rs[0].MoveMode)
	return fmt.Sprintf("| %s | %s | %s |\n", target, strings.Join(runs, "; "), yesNo(ok))
}

// stormClean says whether every session of a storm run was set up,
// resumed with its session present, and received its message of every
// check round after the move.
func stormClean(r load.Result) bool {
	want := int64(r.Connected) * int64(len(r.Checks))
	return r.Clients > 0 && r.Connected == r.Clients && r.SessionsLost == 0 && r.LostAfterMove == 0 && r.Resumed == r.Connected &&
		len(r.Checks) > 0 && r.Acked == want && r.Unique == want && r.Lost == 0 && r.Mismatched == 0
}
