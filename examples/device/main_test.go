package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 10 * time.Second

func TestOptionsValidate(t *testing.T) {
	good := options{Broker: "tcp://127.0.0.1:1883", ID: "dev1", Interval: time.Second}
	tests := []struct {
		name    string
		mutate  func(*options)
		wantErr string
	}{
		{"defaults are valid", func(*options) {}, ""},
		{"empty broker", func(o *options) { o.Broker = "" }, "broker"},
		{"empty id", func(o *options) { o.ID = "" }, "id"},
		{"id with slash", func(o *options) { o.ID = "a/b" }, "id"},
		{"id with wildcard", func(o *options) { o.ID = "a+" }, "id"},
		{"zero interval", func(o *options) { o.Interval = 0 }, "interval"},
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

func TestRunFailsWithoutBroker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there any more

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err = run(ctx, options{Broker: "tcp://" + addr, ID: "dev1", Interval: time.Second}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("run() = %v, want a connect error", err)
	}
}

// TestDevice drives the device through its whole life against a real broker:
// online, telemetry, commands, an abrupt connection loss (the will), the
// reconnection and a clean stop.
func TestDevice(t *testing.T) {
	b := testutil.StartBroker(t)
	px := startProxy(t, b.Addr)
	watch := newWatcher(t, b.URL, "watch", "devices/dev1/#")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		out     syncBuffer
		runErr  error
		stopped = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		runErr = run(ctx, options{Broker: px.url(), ID: "dev1", Interval: 20 * time.Millisecond}, &out)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(waitFor):
			t.Error("run did not return after cancel")
		}
	})

	// Online, and retained: a subscriber arriving later still gets it.
	online := watch.waitFor(t, 0, "devices/dev1/status", statusOnline)
	if m := newWatcher(t, b.URL, "late-online", "devices/dev1/status").waitFor(t, 0, "devices/dev1/status", statusOnline); !m.retained {
		t.Errorf("late subscriber got status %q without the retain flag", m.payload)
	}

	// Telemetry: QoS 1 JSON with increasing sequence numbers.
	testutil.Eventually(t, waitFor, "three telemetry messages", func() bool {
		return len(watch.matching("devices/dev1/telemetry")) >= 3
	})
	var last uint64
	for _, m := range watch.matching("devices/dev1/telemetry")[:3] {
		if m.qos != 1 {
			t.Errorf("telemetry delivered at QoS %d, want 1", m.qos)
		}
		var doc telemetry
		if err := json.Unmarshal([]byte(m.payload), &doc); err != nil {
			t.Fatalf("telemetry %q is not JSON: %v", m.payload, err)
		}
		if doc.Device != "dev1" || doc.Seq <= last || doc.Time.IsZero() {
			t.Errorf("telemetry %+v: want device dev1, seq > %d, a time", doc, last)
		}
		last = doc.Seq
	}

	// Commands are printed.
	watch.publish(t, "devices/dev1/commands", "reboot")
	testutil.Eventually(t, waitFor, "device prints the command", func() bool {
		return strings.Contains(out.String(), "command=reboot")
	})

	// Kill the TCP connection under the device, and keep it from reconnecting
	// until we have looked: the broker must publish the retained will.
	px.cut(true)
	offline := watch.waitFor(t, online.index+1, "devices/dev1/status", statusOffline)
	if m := newWatcher(t, b.URL, "late-offline", "devices/dev1/status").waitFor(t, 0, "devices/dev1/status", statusOffline); !m.retained {
		t.Errorf("will %q seen without the retain flag", m.payload)
	}

	// Let it back in: it reconnects, says online again and resubscribes.
	px.cut(false)
	back := watch.waitFor(t, offline.index+1, "devices/dev1/status", statusOnline)
	watch.publish(t, "devices/dev1/commands", "led-on")
	testutil.Eventually(t, waitFor, "device prints a command sent after reconnecting", func() bool {
		return strings.Contains(out.String(), "command=led-on")
	})

	// A clean stop says offline too.
	cancel()
	select {
	case <-stopped:
		if runErr != nil {
			t.Fatalf("run() = %v after cancel, want nil", runErr)
		}
	case <-time.After(waitFor):
		t.Fatal("run did not return after cancel")
	}
	watch.waitFor(t, back.index+1, "devices/dev1/status", statusOffline)
	if !strings.Contains(out.String(), "disconnected") {
		t.Errorf("output lacks the disconnect line:\n%s", out.String())
	}
}

// message is one PUBLISH seen by a watcher, in arrival order.
type message struct {
	index    int
	topic    string
	payload  string
	qos      byte
	retained bool
}

// watcher is an independent MQTT 3.1.1 client recording what it receives.
type watcher struct {
	c    mqtt.Client
	mu   sync.Mutex
	msgs []message
}

func newWatcher(t *testing.T, url, name, filter string) *watcher {
	t.Helper()
	w := &watcher{}
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID("test-" + name).
		SetAutoReconnect(false)
	w.c = mqtt.NewClient(opts)
	if tok := w.c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	t.Cleanup(func() { w.c.Disconnect(0) })
	tok := w.c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.msgs = append(w.msgs, message{index: len(w.msgs), topic: m.Topic(), payload: string(m.Payload()), qos: m.Qos(), retained: m.Retained()})
	})
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("watcher subscribe %s: %v", filter, tok.Error())
	}
	return w
}

func (w *watcher) matching(topic string) []message {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ms []message
	for _, m := range w.msgs {
		if m.topic == topic {
			ms = append(ms, m)
		}
	}
	return ms
}

// waitFor returns the first message at or after index from with this topic
// and payload, failing the test if none arrives in time.
func (w *watcher) waitFor(t *testing.T, from int, topic, payload string) message {
	t.Helper()
	var found message
	testutil.Eventually(t, waitFor, fmt.Sprintf("%s = %q", topic, payload), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, m := range w.msgs[min(from, len(w.msgs)):] {
			if m.topic == topic && m.payload == payload {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

func (w *watcher) publish(t *testing.T, topic, payload string) {
	t.Helper()
	if tok := w.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// proxy forwards TCP connections to the broker so a test can cut them
// abruptly, as a network failure would, without the client's cooperation.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	blocked bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "tcp://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		blocked := p.blocked
		p.mu.Unlock()
		if blocked {
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies src to dst; when either side ends, both are closed.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every forwarded connection; while block is true new connections
// are accepted and closed at once.
func (p *proxy) cut(block bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = block
	if !block {
		return
	}
	for c := range p.conns {
		_ = c.Close()
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
