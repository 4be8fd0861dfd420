package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 10 * time.Second

func TestOptionsValidate(t *testing.T) {
	good := options{Broker: "tcp://127.0.0.1:1883", Mode: "client", Topic: "service/echo", Requests: 1, Inflight: 1, Timeout: time.Second}
	tests := []struct {
		name    string
		mutate  func(*options)
		wantErr string
	}{
		{"client", func(*options) {}, ""},
		{"server ignores client fields", func(o *options) { o.Mode, o.Requests, o.Inflight = "server", 0, 0 }, ""},
		{"bad mode", func(o *options) { o.Mode = "both" }, "mode"},
		{"broker not a URL", func(o *options) { o.Broker = "127.0.0.1:1883" }, "broker"},
		{"wildcard topic", func(o *options) { o.Topic = "service/#" }, "topic"},
		{"no requests", func(o *options) { o.Requests = 0 }, "n 0"},
		{"no inflight", func(o *options) { o.Inflight = 0 }, "inflight"},
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

// TestClientAndServer runs both modes against each other.
func TestClientAndServer(t *testing.T) {
	b := testutil.StartBroker(t)
	srvOut := startServer(t, b.URL, "service/echo")

	const n = 20
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	o := options{Broker: b.URL, Mode: "client", Topic: "service/echo", Requests: n, Inflight: 5, Timeout: waitFor}
	if err := run(ctx, o, &out); err != nil {
		t.Fatalf("client run() = %v\n%s", err, out.String())
	}

	replies := regexp.MustCompile(`msg=reply seq=(\d+) correlation=(\S+) rtt=`).FindAllStringSubmatch(out.String(), -1)
	seqs, corrs := map[string]bool{}, map[string]bool{}
	for _, r := range replies {
		seqs[r[1]], corrs[r[2]] = true, true
	}
	if len(replies) != n || len(seqs) != n || len(corrs) != n {
		t.Errorf("got %d reply lines, %d distinct seqs, %d distinct correlations; want %d of each\n%s",
			len(replies), len(seqs), len(corrs), n, out.String())
	}
	if !strings.Contains(out.String(), "answered=20 failed=0 unmatched=0") {
		t.Errorf("summary missing or wrong:\n%s", out.String())
	}
	// The server saw every request: one line per correlation data.
	for c := range corrs {
		if !strings.Contains(srvOut.String(), "correlation="+c) {
			t.Errorf("server output lacks request %s", c)
		}
	}
}

// TestServerReplies checks the server's side of the contract with a plain
// MQTT 5 client: reply on the Response Topic, same Correlation Data, same
// payload; requests without a Response Topic are ignored.
func TestServerReplies(t *testing.T) {
	b := testutil.StartBroker(t)
	srvOut := startServer(t, b.URL, "service/echo")
	c, got := newRawClient(t, b.Addr, "test-requester", "test/replies/#", nil)

	publish(t, c, &paho.Publish{Topic: "service/echo", QoS: 1, Payload: []byte("no reply wanted")})
	testutil.Eventually(t, waitFor, "server ignores a request without response topic", func() bool {
		return strings.Contains(srvOut.String(), "request without response topic ignored")
	})
	for _, corr := range []string{"first", "second"} {
		publish(t, c, &paho.Publish{Topic: "service/echo", QoS: 1, Payload: []byte("ping " + corr),
			Properties: &paho.PublishProperties{ResponseTopic: "test/replies/" + corr, CorrelationData: []byte(corr)}})
	}

	testutil.Eventually(t, waitFor, "two replies", func() bool { return len(got.all()) >= 2 })
	want := []received{
		{topic: "test/replies/first", corr: "first", payload: "ping first"},
		{topic: "test/replies/second", corr: "second", payload: "ping second"},
	}
	all := got.all()
	slices.SortFunc(all, func(a, b received) int { return strings.Compare(a.topic, b.topic) })
	if !slices.Equal(all, want) {
		t.Errorf("replies = %+v, want %+v", all, want)
	}
}

// TestClientDetectsBadReplies points the client at responders that break the
// contract; it must fail rather than accept the replies.
func TestClientDetectsBadReplies(t *testing.T) {
	tests := []struct {
		name    string
		respond func(req *paho.Publish) *paho.Publish
		wantErr string
		wantOut string
	}{
		{
			name: "wrong correlation data",
			respond: func(req *paho.Publish) *paho.Publish {
				corr := slices.Clone(req.Properties.CorrelationData)
				slices.Reverse(corr)
				return &paho.Publish{Topic: req.Properties.ResponseTopic, Payload: req.Payload,
					Properties: &paho.PublishProperties{CorrelationData: corr}}
			},
			wantErr: "no reply",
			wantOut: "unmatched=2",
		},
		{
			name: "payload not echoed",
			respond: func(req *paho.Publish) *paho.Publish {
				return &paho.Publish{Topic: req.Properties.ResponseTopic, Payload: []byte("something else"),
					Properties: &paho.PublishProperties{CorrelationData: req.Properties.CorrelationData}}
			},
			wantErr: "does not echo",
			wantOut: "answered=0 failed=2",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := testutil.StartBroker(t)
			newRawClient(t, b.Addr, "bad-responder", "service/echo", tc.respond)

			var out syncBuffer
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			o := options{Broker: b.URL, Mode: "client", Topic: "service/echo", Requests: 2, Inflight: 2, Timeout: 500 * time.Millisecond}
			err := run(ctx, o, &out)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("run() = %v, want error mentioning %q", err, tc.wantErr)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output lacks %q:\n%s", tc.wantOut, out.String())
			}
		})
	}
}

// startServer runs the server mode until the test ends and returns its output
// once it is subscribed.
func startServer(t *testing.T, url, topic string) *syncBuffer {
	t.Helper()
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := run(ctx, options{Broker: url, Mode: "server", Topic: topic, Timeout: waitFor}, &out); err != nil {
			t.Errorf("server run() = %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	testutil.Eventually(t, waitFor, "server subscribed", func() bool {
		return strings.Contains(out.String(), "msg=serving")
	})
	return &out
}

type received struct{ topic, corr, payload string }

type inbox struct {
	mu   sync.Mutex
	msgs []received
}

func (in *inbox) all() []received {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.msgs)
}

// newRawClient connects a bare paho MQTT 5 client subscribed to filter. It
// records what arrives and, if respond is set, publishes respond's answer to
// each message at QoS 0 (which does not wait, so it may be sent from the
// receive callback).
func newRawClient(t *testing.T, addr, id, filter string, respond func(*paho.Publish) *paho.Publish) (*paho.Client, *inbox) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	in := &inbox{}
	c := paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			var corr string
			if p.Properties != nil {
				corr = string(p.Properties.CorrelationData)
			}
			in.mu.Lock()
			in.msgs = append(in.msgs, received{topic: p.Topic, corr: corr, payload: string(p.Payload)})
			in.mu.Unlock()
			if respond != nil && p.Properties != nil && p.Properties.ResponseTopic != "" {
				if _, err := pr.Client.Publish(context.Background(), respond(p)); err != nil {
					t.Errorf("respond: %v", err)
				}
			}
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return c, in
}

func publish(t *testing.T, c *paho.Client, p *paho.Publish) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := c.Publish(ctx, p); err != nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
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
