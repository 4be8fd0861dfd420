package limits

import (
	"math"
	"time"
)

// bucket is a token bucket that lends: a reservation always succeeds and may
// drive the balance negative, and the caller waits out the debt. That keeps
// the long-run rate exact even for a reservation larger than the bucket (a
// big message under a byte rate), and makes the wait known up front, so a
// wait that would be too long can be refused before it starts.
//
// A bucket is not safe for concurrent use; its owner serialises access.
type bucket struct {
	rate   float64   // tokens per second, > 0
	size   float64   // capacity, >= 1
	tokens float64   // may be negative: debt
	last   time.Time // when tokens was last brought up to date
}

func newBucket(rate, size float64, now time.Time) bucket {
	return bucket{rate: rate, size: size, tokens: size, last: now}
}

// reserve takes n tokens at time now and returns how long the caller must
// wait before acting (0: at once).
func (b *bucket) reserve(now time.Time, n float64) time.Duration {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(b.size, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(math.Ceil(-b.tokens / b.rate * float64(time.Second)))
}
