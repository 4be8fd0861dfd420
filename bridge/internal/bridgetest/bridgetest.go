// Package bridgetest holds test helpers shared by the bridge and its
// connectors: polling, a goroutine-leak check, metric reads and a
// recording Publisher.
package bridgetest

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/bridge"
)

// Eventually polls cond every few milliseconds until it is true, failing t
// after d with msg.
func Eventually(t testing.TB, d time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, msg)
		}
		<-tick.C
	}
}

// NoLeaks records the goroutine count now and, at cleanup (registered
// first, so it runs after every later cleanup), polls until the count is
// back to it, failing with the stacks of the goroutines left.
func NoLeaks(t testing.TB) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutine leak: %d running, %d at start\n%s", runtime.NumGoroutine(), base, buf[:n])
				return
			}
			<-tick.C
		}
	})
}

// Metric returns the value of the counter or gauge name whose labels
// include all of labels ("route", "r", ...), summed; 0 when absent. For a
// histogram it returns the sample count.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// Publisher records what the bridge publishes into the broker.
type Publisher struct {
	mu   sync.Mutex
	msgs []bridge.Message
	fail func(bridge.Message) error
}

// SetFail makes Publish return fn's error for each message (nil: accept).
func (p *Publisher) SetFail(fn func(bridge.Message) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = fn
}

// Publish implements bridge.Publisher.
func (p *Publisher) Publish(_ context.Context, m bridge.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		if err := p.fail(m); err != nil {
			return err
		}
	}
	p.msgs = append(p.msgs, m)
	return nil
}

// Messages returns a copy of what was published.
func (p *Publisher) Messages() []bridge.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]bridge.Message(nil), p.msgs...)
}

// Topics returns the published topics joined by spaces.
func (p *Publisher) Topics() string {
	var s []string
	for _, m := range p.Messages() {
		s = append(s, m.Topic)
	}
	return strings.Join(s, " ")
}

// Logs is a slog.Handler that records every record at Info or above, for
// tests that check what a route logs.
type Logs struct {
	mu   sync.Mutex
	recs []slog.Record
}

// Logger returns a logger writing to l.
func (l *Logs) Logger() *slog.Logger { return slog.New(l) }

// Enabled implements slog.Handler.
func (l *Logs) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }

// Handle implements slog.Handler.
func (l *Logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// WithAttrs implements slog.Handler (attributes are not recorded).
func (l *Logs) WithAttrs([]slog.Attr) slog.Handler { return l }

// WithGroup implements slog.Handler.
func (l *Logs) WithGroup(string) slog.Handler { return l }

// Lines returns "LEVEL message" of every record at level or above whose
// message contains substr.
func (l *Logs) Lines(level slog.Level, substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if r.Level >= level && strings.Contains(r.Message, substr) {
			out = append(out, r.Level.String()+" "+r.Message)
		}
	}
	return out
}

// All returns every recorded line, one per line, for failure messages.
func (l *Logs) All() string {
	return strings.Join(l.Lines(slog.LevelInfo, ""), "\n")
}
