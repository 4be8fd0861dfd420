// Package report turns ferry-bench JSON result lines from repeated runs
// into a markdown comparison table: one row per case (the -tag), one column
// per broker (the -label), each cell the median of the runs with their
// min–max range.
package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"
)

// Read parses JSON result lines, skipping blank lines.
func Read(r io.Reader) ([]load.Result, error) {
	var rs []load.Result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var res load.Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			return nil, fmt.Errorf("report: line %d: %w", n, err)
		}
		rs = append(rs, res)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("report: read: %w", err)
	}
	return rs, nil
}

// stat is the median and range of one metric over runs.
type stat struct{ med, lo, hi float64 }

func stats(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: m, lo: s[0], hi: s[len(s)-1]}
}

// si formats v with a k/M suffix and three significant digits.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.3gk", v/1e3)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func (s stat) format(f func(float64) string, n int) string {
	if n == 1 {
		return f(s.med)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.med), f(s.lo), f(s.hi))
}

func ms(v float64) string { return fmt.Sprintf("%.2f ms", v) }

// cell summarises one case on one broker.
func cell(rs []load.Result) string {
	n := len(rs)
	get := func(f func(load.Result) float64) stat {
		vs := make([]float64, 0, n)
		for _, r := range rs {
			vs = append(vs, f(r))
		}
		return stats(vs)
	}
	var b strings.Builder
	switch sc := rs[0].Scenario; sc {
	case load.Latency, load.ReqResp:
		lat := func(f func(*load.LatencyMS) float64) func(load.Result) float64 {
			return func(r load.Result) float64 {
				if r.Latency == nil {
					return 0
				}
				return f(r.Latency)
			}
		}
		fmt.Fprintf(&b, "p50 %s, p99 %s", get(lat(func(l *load.LatencyMS) float64 { return l.P50 })).format(ms, n),
			get(lat(func(l *load.LatencyMS) float64 { return l.P99 })).format(ms, n))
		if sc == load.ReqResp {
			fmt.Fprintf(&b, ", %s rt/s", get(func(r load.Result) float64 { return r.RecvRate }).format(si, n))
		}
	case load.Idle:
		kb := func(v float64) string { return fmt.Sprintf("%.1f KB", v/1024) }
		fmt.Fprintf(&b, "%s RSS/conn, %s conn/s", get(func(r load.Result) float64 { return float64(r.RSSPerConnBytes) }).format(kb, n),
			get(func(r load.Result) float64 { return r.ConnectRate }).format(si, n))
		if alive := get(func(r load.Result) float64 { return float64(r.Alive) }); alive.lo < float64(rs[0].Clients) {
			fmt.Fprintf(&b, ", alive min %.0f/%d", alive.lo, rs[0].Clients)
		}
	case load.Storm:
		secs := func(v float64) string { return fmt.Sprintf("%.2f s", v) }
		worst := func(f func(load.Result) int) int {
			w := 0
			for _, r := range rs {
				w = max(w, f(r))
			}
			return w
		}
		least := func(f func(load.Result) int64) int64 {
			l := f(rs[0])
			for _, r := range rs[1:] {
				l = min(l, f(r))
			}
			return l
		}
		fmt.Fprintf(&b, "%d sessions (%s): move %s, %s conn/s", rs[0].Clients, rs[0].MoveMode,
			get(func(r load.Result) float64 { return r.MoveSeconds }).format(secs, n),
			get(func(r load.Result) float64 { return r.MoveRate }).format(si, n))
		fmt.Fprintf(&b, ", lost max %d", worst(func(r load.Result) int { return r.SessionsLost + r.LostAfterMove + r.Clients - r.Connected }))
		if v := worst(func(r load.Result) int { return r.DroppedAfterMove }); v > 0 {
			fmt.Fprintf(&b, ", dropped after the move max %d", v)
		}
		if v := worst(func(r load.Result) int { return r.Retried }); v > 0 {
			fmt.Fprintf(&b, ", retried max %d", v)
		}
		fmt.Fprintf(&b, ", delivered after the move min %d/%d", least(func(r load.Result) int64 { return r.Unique }),
			rs[0].Clients*max(len(rs[0].Checks), 1))
	default:
		fmt.Fprintf(&b, "%s msg/s", get(func(r load.Result) float64 { return r.RecvRate }).format(si, n))
		if loss := get(func(r load.Result) float64 { return r.LossPct }); loss.hi > 0 {
			fmt.Fprintf(&b, ", loss %.1f%%", loss.med)
		}
		if d := get(func(r load.Result) float64 { return float64(r.Dupes) }); d.hi > 0 {
			fmt.Fprintf(&b, ", dupes %s", si(d.med))
		}
	}
	if c := get(func(r load.Result) float64 { return r.BrokerCPU }); c.hi > 0 {
		fmt.Fprintf(&b, " [broker CPU %.0f%%]", c.med*100)
	}
	errs := 0
	for _, r := range rs {
		errs += r.ErrorsAll
	}
	if errs > 0 {
		fmt.Fprintf(&b, ", %d client errors", errs)
	}
	return b.String()
}

// Markdown writes the comparison table. Cases and brokers keep the order
// in which they first appear. The last column is the highest generator CPU
// share seen in the row: near 100 % the generator may be the limit.
func Markdown(w io.Writer, rs []load.Result) error {
	var tags, brokers []string
	groups := map[[2]string][]load.Result{}
	for _, r := range rs {
		tag := r.Tag
		if tag == "" {
			tag = r.Scenario
		}
		if !slices.Contains(tags, tag) {
			tags = append(tags, tag)
		}
		if !slices.Contains(brokers, r.Broker) {
			brokers = append(brokers, r.Broker)
		}
		k := [2]string{tag, r.Broker}
		groups[k] = append(groups[k], r)
	}
	var b strings.Builder
	b.WriteString("| case |")
	for _, br := range brokers {
		fmt.Fprintf(&b, " %s |", br)
	}
	b.WriteString(" runs | gen CPU max |\n|---|")
	for range brokers {
		b.WriteString("---|")
	}
	b.WriteString("---|---|\n")
	for _, tag := range tags {
		fmt.Fprintf(&b, "| %s |", tag)
		runs, cpu := 0, 0.0
		for _, br := range brokers {
			g := groups[[2]string{tag, br}]
			if len(g) == 0 {
				b.WriteString(" – |")
				continue
			}
			runs = max(runs, len(g))
			for _, r := range g {
				cpu = max(cpu, r.GenCPU)
			}
			fmt.Fprintf(&b, " %s |", cell(g))
		}
		fmt.Fprintf(&b, " %d | %.0f%% |\n", runs, cpu*100)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
