package main

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 10 * time.Second

func TestOptionsValidate(t *testing.T) {
	good := options{Broker: "tcp://127.0.0.1:1883", Topic: "b/t", Subscribers: 1, Messages: 1, QoS: 1, Timeout: time.Second}
	tests := []struct {
		name    string
		mutate  func(*options)
		wantErr string
	}{
		{"defaults are valid", func(*options) {}, ""},
		{"empty broker", func(o *options) { o.Broker = "" }, "broker"},
		{"wildcard topic", func(o *options) { o.Topic = "b/+" }, "topic"},
		{"no subscribers", func(o *options) { o.Subscribers = 0 }, "subscribers"},
		{"no messages", func(o *options) { o.Messages = 0 }, "messages"},
		{"qos 3", func(o *options) { o.QoS = 3 }, "qos"},
		{"negative interval", func(o *options) { o.Interval = -time.Second }, "interval"},
		{"zero timeout", func(o *options) { o.Timeout = 0 }, "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.mutate(&o)
			err := o.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("validate() = %v, want error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestTallyCheck(t *testing.T) {
	tests := []struct {
		name         string
		seqs         []int
		n            int
		wantReceived int
		wantMissing  []int
		wantDups     int
	}{
		{"complete", []int{2, 0, 1}, 3, 3, nil, 0},
		{"nothing", nil, 2, 0, []int{0, 1}, 0},
		{"gap", []int{0, 2}, 4, 2, []int{1, 3}, 0},
		{"duplicate", []int{0, 1, 1}, 2, 3, nil, 1},
		{"duplicate and gap", []int{1, 1, 1}, 2, 3, []int{0}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tl := &tally{seen: map[int]int{}}
			for _, s := range tc.seqs {
				tl.add(s)
			}
			received, missing, dups := tl.check(tc.n)
			if received != tc.wantReceived || !slices.Equal(missing, tc.wantMissing) || dups != tc.wantDups {
				t.Errorf("check(%d) = %d, %v, %d; want %d, %v, %d", tc.n, received, missing, dups, tc.wantReceived, tc.wantMissing, tc.wantDups)
			}
		})
	}
}

// TestEverySubscriberGetsEverything runs the fan-out against a real broker,
// with an outside subscriber counting the messages too and a retained message
// from someone else already on the topic.
func TestEverySubscriberGetsEverything(t *testing.T) {
	const subscribers, messages = 5, 20
	b := testutil.StartBroker(t)

	var outside atomic.Int64
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("outsider").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	if tok := c.Publish("broadcast/test", 1, true, "not part of the run"); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	tok := c.Subscribe("broadcast/test", 1, func(_ mqtt.Client, m mqtt.Message) {
		if strings.Contains(string(m.Payload()), `"run"`) {
			outside.Add(1)
		}
	})
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	o := options{Broker: b.URL, Topic: "broadcast/test", Subscribers: subscribers, Messages: messages, QoS: 1, Timeout: waitFor}
	if err := run(ctx, o, &out); err != nil {
		t.Fatalf("run() = %v\n%s", err, out.String())
	}

	complete := regexp.MustCompile(`msg="subscriber complete" subscriber=(\d+) received=(\d+)`).FindAllStringSubmatch(out.String(), -1)
	seen := map[string]bool{}
	for _, m := range complete {
		seen[m[1]] = true
		if m[2] != "20" {
			t.Errorf("subscriber %s received %s messages, want 20", m[1], m[2])
		}
	}
	if len(seen) != subscribers {
		t.Errorf("%d subscribers report complete, want %d\n%s", len(seen), subscribers, out.String())
	}
	if n := strings.Count(out.String(), `msg="foreign message ignored"`); n != subscribers {
		t.Errorf("%d subscribers ignored the retained foreign message, want %d", n, subscribers)
	}
	if !strings.Contains(out.String(), "every subscriber received every message") {
		t.Errorf("output lacks the verdict:\n%s", out.String())
	}
	testutil.Eventually(t, waitFor, "outside subscriber sees every message", func() bool {
		return outside.Load() == messages
	})
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of run and the
// reads of the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
