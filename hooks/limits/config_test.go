package limits

import (
	"math"
	"strings"
	"testing"
)

func TestWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{"zero value", Config{}, Config{
			MaxTopicLength: 65535, MaxTopicLevels: 128, MaxSubscriptions: 1000,
			RateAction: RateThrottle, ClientIDMaxLength: 256,
		}},
		{"burst follows rate", Config{PublishRate: 50}, Config{
			MaxTopicLength: 65535, MaxTopicLevels: 128, MaxSubscriptions: 1000,
			PublishRate: 50, PublishBurst: 50, RateAction: RateThrottle, ClientIDMaxLength: 256,
		}},
		{"burst at least 1", Config{PublishRate: 0.2}, Config{
			MaxTopicLength: 65535, MaxTopicLevels: 128, MaxSubscriptions: 1000,
			PublishRate: 0.2, PublishBurst: 1, RateAction: RateThrottle, ClientIDMaxLength: 256,
		}},
		{"fractional rate rounds burst up", Config{PublishRate: 2.5}, Config{
			MaxTopicLength: 65535, MaxTopicLevels: 128, MaxSubscriptions: 1000,
			PublishRate: 2.5, PublishBurst: 3, RateAction: RateThrottle, ClientIDMaxLength: 256,
		}},
		{"huge rate caps burst", Config{PublishRate: 1e12}, Config{
			MaxTopicLength: 65535, MaxTopicLevels: 128, MaxSubscriptions: 1000,
			PublishRate: 1e12, PublishBurst: MaxPublishBurst, RateAction: RateThrottle, ClientIDMaxLength: 256,
		}},
		{"set fields kept", Config{
			MaxTopicLength: 10, MaxTopicLevels: 2, MaxSubscriptions: -1, PublishRate: 5, PublishBurst: 1,
			PublishByteRate: 1e6, RateAction: RateDisconnect, ClientIDMaxLength: 23, ClientIDPattern: "a",
			MaxGoroutines: 1e5, MaxHeapBytes: 1 << 30,
		}, Config{
			MaxTopicLength: 10, MaxTopicLevels: 2, MaxSubscriptions: -1, PublishRate: 5, PublishBurst: 1,
			PublishByteRate: 1e6, RateAction: RateDisconnect, ClientIDMaxLength: 23, ClientIDPattern: "a",
			MaxGoroutines: 1e5, MaxHeapBytes: 1 << 30,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if err := tt.in.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // each a line of the joined error, by prefix
	}{
		{"topic length negative", Config{MaxTopicLength: -1}, []string{"max_topic_length: -1 is less than allowed 1"}},
		{"topic length over protocol", Config{MaxTopicLength: 65536}, []string{"max_topic_length: 65536 is more than allowed 65535"}},
		{"topic levels negative", Config{MaxTopicLevels: -3}, []string{"max_topic_levels: -3 is less"}},
		{"topic levels impossible", Config{MaxTopicLevels: 40000}, []string{"max_topic_levels: 40000 is more"}},
		{"burst negative", Config{PublishRate: 1, PublishBurst: -1}, []string{"publish_burst: -1 is less"}},
		{"burst without rate", Config{PublishBurst: 5}, []string{"publish_burst: 5 is set but publish_rate is not"}},
		{"rate negative", Config{PublishRate: -1}, []string{"publish_rate: -1 is not"}},
		{"rate NaN", Config{PublishRate: math.NaN()}, []string{"publish_rate: NaN is not"}},
		{"byte rate infinite", Config{PublishByteRate: math.Inf(1)}, []string{"publish_byte_rate: +Inf is not"}},
		{"rate action", Config{RateAction: "drop"}, []string{`rate_action: "drop" is not "throttle" or "disconnect"`}},
		{"client id length negative", Config{ClientIDMaxLength: -1}, []string{"client_id_max_length: -1 is less"}},
		{"client id length too big", Config{ClientIDMaxLength: 70000}, []string{"client_id_max_length: 70000 is more"}},
		{"client id pattern", Config{ClientIDPattern: "sensor-("}, []string{"client_id_pattern: error parsing regexp"}},
		{"goroutines negative", Config{MaxGoroutines: -1}, []string{"max_goroutines: -1 is less"}},
		{"heap in the wrong unit", Config{MaxHeapBytes: 512}, []string{"max_heap_bytes: 512 is less than allowed 1048576"}},
		{"every problem at once", Config{
			MaxTopicLength: -1, PublishRate: -2, RateAction: "x", ClientIDPattern: "(", MaxHeapBytes: 1,
		}, []string{"max_topic_length:", "publish_rate:", "rate_action:", "client_id_pattern:", "max_heap_bytes:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, want := range tt.want {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], want)
				}
			}
			if _, err := New(tt.cfg, newTestServer(t), nil); err == nil {
				t.Error("New accepted the config")
			}
		})
	}
}

func TestNewNilServer(t *testing.T) {
	if _, err := New(Config{}, nil, nil); err == nil {
		t.Fatal("New accepted a nil server")
	}
}

func TestProvides(t *testing.T) {
	srv := newTestServer(t)
	for _, tt := range []struct {
		name       string
		cfg        Config
		disconnect bool
	}{
		{"no rate limit", Config{}, false},
		{"message rate", Config{PublishRate: 1}, true},
		{"byte rate", Config{PublishByteRate: 1}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(tt.cfg, srv, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := map[byte]bool{mqttOnConnect: true, mqttOnPacketRead: true, mqttOnDisconnect: tt.disconnect}
			for b := byte(0); b < 64; b++ {
				if got := h.Provides(b); got != want[b] {
					t.Errorf("Provides(%d) = %v, want %v", b, got, want[b])
				}
			}
			if h.ID() != "ferry-limits" {
				t.Errorf("ID = %q", h.ID())
			}
		})
	}
}
