package limits

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step struct {
		at   int // ms after t0
		n    float64
		wait time.Duration
	}
	tests := []struct {
		name       string
		rate, size float64
		steps      []step
	}{
		{"burst then wait one token each", 10, 3, []step{
			{0, 1, 0}, {0, 1, 0}, {0, 1, 0},
			{0, 1, 100 * time.Millisecond},
			{0, 1, 200 * time.Millisecond}, // debt accumulates: callers are serial
		}},
		{"refill over time", 10, 3, []step{
			{0, 3, 0},
			{100, 1, 0}, // one token earned
			{100, 1, 100 * time.Millisecond},
		}},
		{"refill capped at size", 10, 3, []step{
			{0, 3, 0},
			{10_000, 3, 0},
			{10_000, 1, 100 * time.Millisecond},
		}},
		{"reservation bigger than the bucket", 100, 100, []step{
			{0, 1000, 9 * time.Second},
			{9000, 1, 10 * time.Millisecond}, // debt repaid, nothing spare
		}},
		{"clock going back is ignored", 10, 1, []step{
			{1000, 1, 0},
			{500, 1, 100 * time.Millisecond},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBucket(tt.rate, tt.size, t0)
			for i, s := range tt.steps {
				if got := b.reserve(at(s.at), s.n); got != s.wait {
					t.Fatalf("step %d: wait %s, want %s", i, got, s.wait)
				}
			}
		})
	}
}

// TestBucketLongRunRate: a caller that always waits as told gets the rate,
// plus the initial burst.
func TestBucketLongRunRate(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBucket(50, 10, now)
	start := now
	for range 1010 {
		now = now.Add(b.reserve(now, 1))
	}
	if got, want := now.Sub(start), 20*time.Second; got < want-time.Millisecond || got > want+time.Millisecond {
		t.Errorf("1010 messages at 50/s with burst 10 took %s, want %s", got, want)
	}
}
