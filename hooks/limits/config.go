package limits

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"time"
)

// Defaults applied to zero fields of Config, and protocol bounds.
const (
	// DefaultMaxTopicLength is the protocol maximum: a UTF-8 string in
	// MQTT has a two-byte length.
	DefaultMaxTopicLength = 65535
	// MaxTopicLength is the largest MaxTopicLength accepted.
	MaxTopicLength = 65535
	// DefaultMaxTopicLevels bounds topic depth; topic trees deeper than this
	// are almost always a bug or an attack on the subscription trie.
	DefaultMaxTopicLevels = 128
	// DefaultMaxSubscriptions is the per-client subscription limit.
	DefaultMaxSubscriptions = 1000
	// DefaultClientIDMaxLength bounds client identifiers, which mochi keeps
	// in memory and in logs for every client.
	DefaultClientIDMaxLength = 256
	// MaxClientIDLength is the largest ClientIDMaxLength accepted.
	MaxClientIDLength = 65535
	// MinHeapBytes is the smallest MaxHeapBytes accepted: a smaller value is
	// almost certainly a unit mistake, and would refuse every client.
	MinHeapBytes = 1 << 20

	// MaxPublishBurst is the largest PublishBurst accepted, and the default
	// for rates above it.
	MaxPublishBurst = math.MaxInt32

	// MaxThrottleWait is the longest a throttled client's read loop waits
	// for tokens. A client whose next message would need a longer wait is
	// disconnected with 0x96 message rate too high instead.
	MaxThrottleWait = 5 * time.Second

	// heapSampleEvery is how old a heap sample may be before the overload
	// guard reads runtime/metrics again.
	heapSampleEvery = 100 * time.Millisecond
)

// Values of Config.RateAction.
const (
	// RateThrottle makes the client's read loop wait for tokens, which
	// backpressures the client through TCP.
	RateThrottle = "throttle"
	// RateDisconnect disconnects a client that exceeds its rate (MQTT 5:
	// DISCONNECT 0x96 message rate too high; MQTT 3: the connection is
	// closed).
	RateDisconnect = "disconnect"
)

// Config sets the limits. The zero value is a working configuration: zero
// fields take the Default constants, and rate limits and the overload guard
// are off.
type Config struct {
	// MaxTopicLength bounds a topic name or filter, in bytes. Default 65535,
	// the protocol maximum.
	MaxTopicLength int `yaml:"max_topic_length"`
	// MaxTopicLevels bounds the number of levels ('/'-separated parts) of a
	// topic name or filter. For a shared subscription the "$share/group/"
	// prefix is not counted. Default 128.
	MaxTopicLevels int `yaml:"max_topic_levels"`
	// MaxSubscriptions bounds the number of subscriptions one client holds.
	// Default 1000; negative means no limit (zero takes the default, as for
	// every other field).
	MaxSubscriptions int `yaml:"max_subscriptions"`
	// PublishRate bounds each client's PUBLISH packets per second with a
	// token bucket. 0 (the default) means no limit.
	PublishRate float64 `yaml:"publish_rate"`
	// PublishBurst is the message bucket's size: how many messages a client
	// that was idle may send at once. Default max(1, PublishRate), rounded up. Only
	// valid with PublishRate.
	PublishBurst int `yaml:"publish_burst"`
	// PublishByteRate bounds each client's PUBLISH bytes per second (the
	// packet's remaining length: topic, properties and payload). The bucket
	// holds one second's worth; a larger packet is let through when the
	// bucket is full and the client then waits for the debt. 0 (the
	// default) means no limit.
	PublishByteRate float64 `yaml:"publish_byte_rate"`
	// RateAction is what happens to a client over its rate: "throttle" (the
	// default) or "disconnect".
	RateAction string `yaml:"rate_action"`
	// ClientIDMaxLength bounds the client identifier, in bytes. Default 256.
	ClientIDMaxLength int `yaml:"client_id_max_length"`
	// ClientIDPattern, when set, is a regular expression (RE2 syntax) that
	// the whole client identifier must match. An empty identifier, which
	// mochi replaces by a generated one, must match it too.
	ClientIDPattern string `yaml:"client_id_pattern"`
	// MaxGoroutines refuses new connections while the process runs more
	// goroutines than this (mochi runs two per client). 0 (the default)
	// turns this guard off.
	MaxGoroutines int `yaml:"max_goroutines"`
	// MaxHeapBytes refuses new connections while the Go heap in use (live
	// and not yet swept objects plus free space in in-use spans, as
	// runtime.MemStats.HeapInuse) exceeds this. It is sampled at most every
	// 100 ms, not read per connection. 0 (the default) turns this guard off.
	MaxHeapBytes uint64 `yaml:"max_heap_bytes"`
}

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.MaxTopicLength == 0 {
		c.MaxTopicLength = DefaultMaxTopicLength
	}
	if c.MaxTopicLevels == 0 {
		c.MaxTopicLevels = DefaultMaxTopicLevels
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if c.PublishBurst == 0 && c.PublishRate > 0 {
		c.PublishBurst = int(max(1, min(math.Ceil(c.PublishRate), MaxPublishBurst)))
	}
	if c.RateAction == "" {
		c.RateAction = RateThrottle
	}
	if c.ClientIDMaxLength == 0 {
		c.ClientIDMaxLength = DefaultClientIDMaxLength
	}
	return c
}

// rateOn reports whether a per-client rate limit is configured.
func (c Config) rateOn() bool { return c.PublishRate > 0 || c.PublishByteRate > 0 }

// intBound is one row of the bounds table Validate checks.
type intBound struct {
	name     string
	value    int
	min, max int
}

// Validate reports every problem with c (after defaults) at once, joined
// with errors.Join. Each error's text starts with the field's YAML key, e.g.
// "publish_rate: -1 is negative".
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	for _, b := range []intBound{
		{"max_topic_length", c.MaxTopicLength, 1, MaxTopicLength},
		{"max_topic_levels", c.MaxTopicLevels, 1, MaxTopicLength/2 + 1},
		{"publish_burst", c.PublishBurst, 0, MaxPublishBurst},
		{"client_id_max_length", c.ClientIDMaxLength, 1, MaxClientIDLength},
		{"max_goroutines", c.MaxGoroutines, 0, math.MaxInt},
	} {
		switch {
		case b.value < b.min:
			errs = append(errs, fmt.Errorf("%s: %d is less than allowed %d", b.name, b.value, b.min))
		case b.value > b.max:
			errs = append(errs, fmt.Errorf("%s: %d is more than allowed %d", b.name, b.value, b.max))
		}
	}
	for _, f := range []struct {
		name  string
		value float64
	}{{"publish_rate", c.PublishRate}, {"publish_byte_rate", c.PublishByteRate}} {
		if math.IsNaN(f.value) || math.IsInf(f.value, 0) || f.value < 0 {
			errs = append(errs, fmt.Errorf("%s: %v is not a finite number >= 0", f.name, f.value))
		}
	}
	if c.PublishBurst > 0 && !(c.PublishRate > 0) {
		errs = append(errs, fmt.Errorf("publish_burst: %d is set but publish_rate is not", c.PublishBurst))
	}
	if c.RateAction != RateThrottle && c.RateAction != RateDisconnect {
		errs = append(errs, fmt.Errorf("rate_action: %q is not %q or %q", c.RateAction, RateThrottle, RateDisconnect))
	}
	if c.ClientIDPattern != "" {
		if _, err := compilePattern(c.ClientIDPattern); err != nil {
			errs = append(errs, fmt.Errorf("client_id_pattern: %w", err))
		}
	}
	if c.MaxHeapBytes != 0 && c.MaxHeapBytes < MinHeapBytes {
		errs = append(errs, fmt.Errorf("max_heap_bytes: %d is less than allowed %d (the value is in bytes)", c.MaxHeapBytes, MinHeapBytes))
	}
	return errors.Join(errs...)
}

// compilePattern compiles a client id pattern anchored at both ends, so
// "sensor-[0-9]+" does not accept "evil-sensor-1".
func compilePattern(p string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + p + `)$`)
}
