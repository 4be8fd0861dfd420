package limits

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

var versions = []struct {
	name    string
	version byte
}{{"v3", v3}, {"v5", v5}}

func TestTopicLimits(t *testing.T) {
	h, addr := startServer(t, Config{MaxTopicLength: 32, MaxTopicLevels: 4})
	long := "a/" + strings.Repeat("x", 31) // 33 bytes
	atLength := "a/" + strings.Repeat("x", 30)
	pub := func(topic string) func(*rawClient) {
		return func(c *rawClient) { c.publish(topic, 1, []byte("x"), packets.Properties{}) }
	}
	sub := func(filters ...string) func(*rawClient) {
		return func(c *rawClient) { c.subscribe(filters...) }
	}
	wildcards := func(s Stats) uint64 { return s.PublishWildcard }
	tooLong := func(s Stats) uint64 { return s.TopicTooLong }
	tooDeep := func(s Stats) uint64 { return s.TopicTooDeep }
	tests := []struct {
		name string
		send func(*rawClient)
		want packets.Code // CodeSuccess: accepted
		stat func(Stats) uint64
	}{
		{"publish with +", pub("a/+/b"), packets.ErrTopicNameInvalid, wildcards},
		{"publish with #", pub("a/#"), packets.ErrTopicNameInvalid, wildcards},
		{"publish topic too long", pub(long), packets.ErrTopicNameInvalid, tooLong},
		{"publish topic too deep", pub("a/b/c/d/e"), packets.ErrTopicNameInvalid, tooDeep},
		{"publish empty levels count", pub("////"), packets.ErrTopicNameInvalid, tooDeep},
		{"publish at the limits", pub("a/b/c/" + strings.Repeat("x", 26)), packets.CodeSuccess, nil},
		{"subscribe filter too long", sub(long), packets.ErrTopicFilterInvalid, tooLong},
		{"subscribe filter too deep", sub("a/b/c/+/#"), packets.ErrTopicFilterInvalid, tooDeep},
		{"subscribe one bad filter among good", sub("a", "b/c", "a/b/c/d/e"), packets.ErrTopicFilterInvalid, tooDeep},
		{"subscribe at the limits", sub("a/b/+/#", atLength), packets.CodeSuccess, nil},
		{"shared subscription prefix not counted", sub("$share/group/a/b/c/d"), packets.CodeSuccess, nil},
		{"shared subscription too deep", sub("$share/group/a/b/c/d/e"), packets.ErrTopicFilterInvalid, tooDeep},
	}
	for _, v := range versions {
		for i, tt := range tests {
			t.Run(v.name+"/"+tt.name, func(t *testing.T) {
				c := dial(t, addr, v.version)
				c.mustConnect(fmt.Sprintf("topic-%s-%d", v.name, i))
				var before uint64
				if tt.stat != nil {
					before = tt.stat(h.Stats())
				}
				tt.send(c)
				if tt.want == packets.CodeSuccess {
					pk, err := c.read(readTimeout)
					if err != nil || (pk.FixedHeader.Type != packets.Puback && pk.FixedHeader.Type != packets.Suback) {
						t.Fatalf("got %s (reason 0x%02x), err %v; want an ack", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode, err)
					}
					for _, code := range append(pk.ReasonCodes, pk.ReasonCode) {
						if code >= 0x80 {
							t.Fatalf("ack reason 0x%02x, want success", code)
						}
					}
					c.ping()
					return
				}
				c.expectRefused(tt.want)
				if got := tt.stat(h.Stats()); got != before+1 {
					t.Errorf("counter = %d, want %d", got, before+1)
				}
			})
		}
	}
}

// TestInvalidUTF8Topic asserts what mochi itself does with a topic that is
// not UTF-8 (it fails to decode the packet, tells an MQTT 5 client
// DISCONNECT 0x81 and closes the connection), so the hook need not check it,
// and that nothing is delivered.
func TestInvalidUTF8Topic(t *testing.T) {
	h, addr := startServer(t, Config{})
	for _, v := range versions {
		for _, tt := range []struct {
			name string
			send func(*rawClient)
		}{
			{"publish", func(c *rawClient) { c.publish("bad/\xff\xfe", 1, []byte("x"), packets.Properties{}) }},
			{"publish NUL", func(c *rawClient) { c.publish("bad/\x00", 1, []byte("x"), packets.Properties{}) }},
			{"subscribe", func(c *rawClient) { c.subscribe("bad/\xc3") }},
		} {
			t.Run(v.name+"/"+tt.name, func(t *testing.T) {
				s := dial(t, addr, v5)
				s.mustConnect("utf8-sub-" + v.name + tt.name)
				s.mustSubscribe("bad/#")
				c := dial(t, addr, v.version)
				c.mustConnect("utf8-" + v.name + tt.name)
				tt.send(c)
				c.expectRefused(packets.ErrMalformedPacket)
				s.ping() // the PUBACK comes after any message mochi had delivered
				if pk, err := s.read(100 * time.Millisecond); err == nil {
					t.Fatalf("subscriber got %s %q", packets.PacketNames[pk.FixedHeader.Type], pk.TopicName)
				}
			})
		}
	}
	if s := h.Stats(); s != (Stats{}) {
		t.Errorf("hook counted %+v; mochi should have refused these before the hook", s)
	}
}

// TestTopicAlias: mochi resolves topic aliases after OnPacketRead, so a
// PUBLISH that uses an alias has an empty topic name there. It must pass,
// and a wildcard in the topic that sets an alias must not.
func TestTopicAlias(t *testing.T) {
	h, addr := startServer(t, Config{})
	s := dial(t, addr, v5)
	s.mustConnect("alias-sub")
	s.mustSubscribe("alias/#")

	c := dial(t, addr, v5)
	c.mustConnect("alias-pub")
	alias := packets.Properties{TopicAlias: 1, TopicAliasFlag: true}
	c.publish("alias/t", 0, []byte("set"), alias)
	c.publish("", 0, []byte("use"), alias)
	for _, want := range []string{"set", "use"} {
		pk := s.expect(packets.Publish)
		if pk.TopicName != "alias/t" || string(pk.Payload) != want {
			t.Fatalf("subscriber got %q %q, want alias/t %q", pk.TopicName, pk.Payload, want)
		}
	}
	c.ping()

	c.publish("alias/+", 0, []byte("wild"), packets.Properties{TopicAlias: 2, TopicAliasFlag: true})
	c.expectRefused(packets.ErrTopicNameInvalid)
	if got := h.Stats().PublishWildcard; got != 1 {
		t.Errorf("PublishWildcard = %d, want 1", got)
	}
}

func TestClientID(t *testing.T) {
	h, addr := startServer(t, Config{ClientIDMaxLength: 12, ClientIDPattern: `sensor-[0-9]+`})
	tests := []struct {
		id string
		ok bool
	}{
		{"sensor-1", true},
		{"sensor-12345", true},    // 12 bytes: at the limit
		{"sensor-123456", false},  // 13 bytes
		{"sensor-x", false},       // pattern
		{"xsensor-1", false},      // pattern is anchored at the start
		{"sensor-1x", false},      // and at the end
		{"", false},               // mochi would assign an id; it must match too
		{"sensor-1\u00e9", false}, // pattern
	}
	refused := uint64(0)
	for _, v := range versions {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%q", v.name, tt.id), func(t *testing.T) {
				c := dial(t, addr, v.version)
				ack := c.connect(tt.id)
				if tt.ok {
					if ack.ReasonCode != 0 {
						t.Fatalf("CONNACK 0x%02x, want success", ack.ReasonCode)
					}
					c.ping()
					return
				}
				refused++
				want := packets.ErrClientIdentifierNotValid.Code
				if v.version < 5 {
					want = packets.Err3ClientIdentifierNotValid.Code
				}
				if ack.ReasonCode != want {
					t.Fatalf("CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, want)
				}
				c.expectClosed()
				if got := h.Stats().RefusedClientID; got != refused {
					t.Errorf("RefusedClientID = %d, want %d", got, refused)
				}
			})
		}
	}
}

// TestWillTopic: mochi publishes wills itself, bypassing OnPacketRead, so
// the will topic is checked at CONNECT.
func TestWillTopic(t *testing.T) {
	h, addr := startServer(t, Config{MaxTopicLength: 32, MaxTopicLevels: 4})
	tests := []struct {
		topic string
		ok    bool
		stat  func(Stats) uint64
	}{
		{"will/a/b/c", true, nil},
		{"will/a/b/c/d", false, func(s Stats) uint64 { return s.TopicTooDeep }},
		{"will/" + strings.Repeat("x", 28), false, func(s Stats) uint64 { return s.TopicTooLong }},
		{"will/+", false, func(s Stats) uint64 { return s.PublishWildcard }},
	}
	for _, v := range versions {
		for i, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", v.name, tt.topic), func(t *testing.T) {
				var before uint64
				if tt.stat != nil {
					before = tt.stat(h.Stats())
				}
				c := dial(t, addr, v.version)
				c.sendConnect(packets.ConnectParams{
					ClientIdentifier: fmt.Sprintf("will-%s-%d", v.name, i),
					WillFlag:         true, WillTopic: tt.topic, WillPayload: []byte("gone"),
				})
				if tt.ok {
					if ack := c.expect(packets.Connack); ack.ReasonCode != 0 {
						t.Fatalf("CONNACK 0x%02x, want success", ack.ReasonCode)
					}
					c.ping()
					return
				}
				if v.version == v5 {
					if ack := c.expect(packets.Connack); ack.ReasonCode != packets.ErrTopicNameInvalid.Code {
						t.Fatalf("CONNACK 0x%02x, want 0x90", ack.ReasonCode)
					}
				}
				c.expectClosed()
				if got := tt.stat(h.Stats()); got != before+1 {
					t.Errorf("counter = %d, want %d", got, before+1)
				}
			})
		}
	}
}

func TestOverloadGuard(t *testing.T) {
	// Goroutines parked here keep the count above what it was when the test
	// read it, whatever earlier tests' goroutines do meanwhile.
	park := make(chan struct{})
	defer close(park)
	goroutinesNow := runtime.NumGoroutine()
	for range 100 {
		go func() { <-park }()
	}
	// A live 16 MiB allocation keeps the heap above MinHeapBytes.
	ballast := make([]byte, 16<<20)
	defer runtime.KeepAlive(ballast)

	tests := []struct {
		name string
		cfg  Config
		busy bool
	}{
		{"goroutines just below current count", Config{MaxGoroutines: goroutinesNow}, true},
		{"goroutines far above", Config{MaxGoroutines: 1 << 20}, false},
		{"heap over", Config{MaxHeapBytes: MinHeapBytes}, true},
		{"heap far above", Config{MaxHeapBytes: 1 << 40}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, addr := startServer(t, tt.cfg)
			for i, v := range versions {
				c := dial(t, addr, v.version)
				ack := c.connect("guard-" + v.name)
				if !tt.busy {
					if ack.ReasonCode != 0 {
						t.Fatalf("%s: CONNACK 0x%02x, want success", v.name, ack.ReasonCode)
					}
					c.ping()
					continue
				}
				want := packets.ErrServerBusy.Code
				if v.version < 5 {
					want = packets.Err3ServerUnavailable.Code
				}
				if ack.ReasonCode != want {
					t.Fatalf("%s: CONNACK 0x%02x, want 0x%02x", v.name, ack.ReasonCode, want)
				}
				c.expectClosed()
				if got := h.Stats().RefusedBusy; got != uint64(i+1) {
					t.Errorf("RefusedBusy = %d, want %d", got, i+1)
				}
			}
		})
	}
}

// TestMaxSubscriptions sends 10,000 filters in ten SUBSCRIBE packets: the
// client is stopped at the default limit of 1000 and the broker keeps
// serving others.
func TestMaxSubscriptions(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			h, addr := startServer(t, Config{})
			batch := func(n int) []string {
				fs := make([]string, 1000)
				for i := range fs {
					fs[i] = fmt.Sprintf("flood/%d/%d", n, i)
				}
				return fs
			}
			c := dial(t, addr, v.version)
			c.mustConnect("flood")
			c.mustSubscribe(batch(0)...) // 1000: at the limit
			c.mustSubscribe(batch(0)...) // the same again: nothing new
			// A packet repeating filters it holds, plus one new filter
			// repeated, would add one: too many.
			var flood []byte
			for n := 1; n < 10; n++ {
				flood = append(flood, c.encode(packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
					PacketID:    c.id(),
					Filters:     subs(batch(n)),
				})...)
			}
			// The broker closes the connection after the first of these; the
			// rest of the write may fail, which is fine.
			_, _ = c.conn.Write(flood)
			c.expectRefused(packets.ErrQuotaExceeded)
			if got := h.Stats().TooManySubscriptions; got != 1 {
				t.Errorf("TooManySubscriptions = %d, want 1", got)
			}

			other := dial(t, addr, v5)
			other.mustConnect("other")
			other.mustSubscribe("other/t")
			other.publish("other/t", 0, []byte("hi"), packets.Properties{})
			if pk := other.expect(packets.Publish); string(pk.Payload) != "hi" {
				t.Fatalf("got %q", pk.Payload)
			}
		})
	}
}

// TestMaxSubscriptionsDistinct checks the count of new filters: held and
// repeated filters do not count.
func TestMaxSubscriptionsDistinct(t *testing.T) {
	_, addr := startServer(t, Config{MaxSubscriptions: 3})
	c := dial(t, addr, v5)
	c.mustConnect("distinct")
	c.mustSubscribe("a", "b")
	c.mustSubscribe("a", "b", "c", "c", "c") // one new, three times
	c.mustSubscribe("c", "b", "a")
	c.subscribe("a", "d")
	c.expectRefused(packets.ErrQuotaExceeded)

	_, addr = startServer(t, Config{MaxSubscriptions: -1})
	c = dial(t, addr, v5)
	c.mustConnect("unlimited")
	c.mustSubscribe(batchOf(2000)...)
	c.ping()
}

func batchOf(n int) []string {
	fs := make([]string, n)
	for i := range fs {
		fs[i] = fmt.Sprintf("u/%d", i)
	}
	return fs
}

func subs(filters []string) []packets.Subscription {
	s := make([]packets.Subscription, len(filters))
	for i, f := range filters {
		s[i] = packets.Subscription{Filter: f}
	}
	return s
}

// TestThrottle publishes 200 messages as fast as possible at 50/s with a
// burst of 10: about 60 can arrive in the first second, all within about
// 4 s. The bounds are loose so that a slow machine cannot fail the test;
// without throttling all 200 would arrive at once.
func TestThrottle(t *testing.T) {
	h, addr := startServer(t, Config{PublishRate: 50, PublishBurst: 10})
	s := dial(t, addr, v5)
	s.mustConnect("rate-sub")
	s.mustSubscribe("rate/#")
	c := dial(t, addr, v5)
	c.mustConnect("rate-pub")

	const total = 200
	start := time.Now()
	for i := range total {
		c.publish("rate/t", 0, fmt.Appendf(nil, "%d", i), packets.Properties{})
	}
	firstSecond := 0
	for i := range total {
		pk, err := s.read(15 * time.Second)
		if err != nil {
			t.Fatalf("after %d messages: %v", i, err)
		}
		if got := string(pk.Payload); got != fmt.Sprint(i) {
			t.Fatalf("message %d is %q: out of order or lost", i, got)
		}
		if time.Since(start) < time.Second {
			firstSecond++
		}
	}
	t.Logf("%d messages in the first second, %d in %s", firstSecond, total, time.Since(start))
	if firstSecond >= 120 {
		t.Errorf("%d messages arrived in the first second, want fewer than 120", firstSecond)
	}
	if got := h.Stats().Throttled; got < total-10-60 {
		t.Errorf("Throttled = %d, want at least %d", got, total-10-60)
	}
	c.ping() // still connected
}

func TestRateDisconnect(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			// Half a token per second: the third message in a row cannot
			// have earned a token, however slow the machine.
			h, addr := startServer(t, Config{PublishRate: 0.5, PublishBurst: 2, RateAction: RateDisconnect})
			c := dial(t, addr, v.version)
			c.mustConnect("rate-" + v.name)
			c.ping()
			c.ping()
			c.publish("t", 1, nil, packets.Properties{})
			c.expectRefused(packets.ErrMessageRateTooHigh)
			if s := h.Stats(); s.RateDisconnects != 1 || s.Throttled != 0 {
				t.Errorf("stats %+v, want 1 rate disconnect and nothing throttled", s)
			}
		})
	}
}

// TestThrottleTooLong: a message that would have to wait longer than
// MaxThrottleWait disconnects its client even in throttle mode.
func TestThrottleTooLong(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			h, addr := startServer(t, Config{PublishByteRate: 100})
			c := dial(t, addr, v.version)
			c.mustConnect("bytes-" + v.name)
			c.publish("t", 1, make([]byte, 50), packets.Properties{})
			c.expect(packets.Puback)
			// 1000 bytes at 100 B/s: about 10 s of debt.
			c.publish("t", 1, make([]byte, 1000), packets.Properties{})
			c.expectRefused(packets.ErrMessageRateTooHigh)
			if got := h.Stats().RateDisconnects; got != 1 {
				t.Errorf("RateDisconnects = %d, want 1", got)
			}
		})
	}
}

// TestClientStateDropped: the buckets exist only while their client is
// connected.
func TestClientStateDropped(t *testing.T) {
	h, addr := startServer(t, Config{PublishRate: 1000})
	count := func() int {
		n := 0
		h.clients.Range(func(any, any) bool { n++; return true })
		return n
	}
	c := dial(t, addr, v5)
	c.mustConnect("state")
	if n := count(); n != 0 {
		t.Fatalf("%d client states before any PUBLISH, want 0", n)
	}
	c.ping()
	if n := count(); n != 1 {
		t.Fatalf("%d client states after a PUBLISH, want 1", n)
	}
	_ = c.conn.Close()
	eventually(t, 5*time.Second, "client state dropped after disconnect", func() bool { return count() == 0 })
}

// TestStopEndsThrottle: closing the broker does not wait out throttles.
func TestStopEndsThrottle(t *testing.T) {
	h, addr := startServer(t, Config{PublishRate: 0.25}) // a token every 4 s
	c := dial(t, addr, v5)
	c.mustConnect("stop")
	c.ping()
	c.publish("t", 1, nil, packets.Properties{}) // waits about 4 s
	eventually(t, 5*time.Second, "publish throttled", func() bool { return h.Stats().Throttled == 1 })
	start := time.Now()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	c.expectClosed()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("throttled client closed %s after Stop, want at once", d)
	}
	if err := h.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
