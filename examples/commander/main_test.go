package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 10 * time.Second

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		o       options
		wantErr string
	}{
		{"send", options{Broker: "tcp://x:1", Device: "d", Send: "reboot", Timeout: time.Second}, ""},
		{"watch", options{Broker: "tcp://x:1", Watch: true, Timeout: time.Second}, ""},
		{"nothing to do", options{Broker: "tcp://x:1", Timeout: time.Second}, "nothing to do"},
		{"send without device", options{Broker: "tcp://x:1", Send: "reboot", Timeout: time.Second}, "device"},
		{"device with wildcard", options{Broker: "tcp://x:1", Device: "#", Send: "reboot", Timeout: time.Second}, "device"},
		{"empty broker", options{Watch: true, Timeout: time.Second}, "broker"},
		{"zero timeout", options{Broker: "tcp://x:1", Watch: true}, "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.validate()
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

func TestSplitTopic(t *testing.T) {
	tests := []struct{ topic, device, kind string }{
		{"devices/dev1/telemetry", "dev1", "telemetry"},
		{"devices/x/status", "x", "status"},
		{"devices/a/b/c", "", "devices/a/b/c"},
	}
	for _, tc := range tests {
		if d, k := splitTopic(tc.topic); d != tc.device || k != tc.kind {
			t.Errorf("splitTopic(%q) = %q, %q; want %q, %q", tc.topic, d, k, tc.device, tc.kind)
		}
	}
}

// TestSend checks a send-only run delivers the command at QoS 1 and returns.
func TestSend(t *testing.T) {
	b := testutil.StartBroker(t)
	dev := newFakeDevice(t, b.URL, "dev7")

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out syncBuffer
	if err := run(ctx, options{Broker: b.URL, Device: "dev7", Send: "reboot", Timeout: waitFor}, &out); err != nil {
		t.Fatalf("run() = %v", err)
	}
	if !strings.Contains(out.String(), "command sent") {
		t.Errorf("output lacks the confirmation:\n%s", out.String())
	}
	testutil.Eventually(t, waitFor, "device receives the command", func() bool {
		cmds := dev.received()
		return len(cmds) == 1 && cmds[0].payload == "reboot" && cmds[0].qos == 1
	})
}

// TestWatchAndSend checks the watcher prints retained status, live telemetry
// and nothing outside its filters, and that its command reaches the device.
func TestWatchAndSend(t *testing.T) {
	b := testutil.StartBroker(t)
	dev := newFakeDevice(t, b.URL, "dev2")
	dev.publish(t, "devices/dev2/status", "online", true) // retained, before the watcher exists

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		out     syncBuffer
		runErr  error
		stopped = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		runErr = run(ctx, options{Broker: b.URL, Device: "dev2", Send: "led-on", Watch: true, Timeout: waitFor}, &out)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})

	testutil.Eventually(t, waitFor, "device receives the command", func() bool {
		cmds := dev.received()
		return len(cmds) == 1 && cmds[0].payload == "led-on"
	})
	testutil.Eventually(t, waitFor, "watcher prints the retained status", func() bool {
		return strings.Contains(out.String(), "msg=status device=dev2 status=online retained=true")
	})

	dev.publish(t, "devices/dev2/secrets", "hidden", false)
	dev.publish(t, "devices/dev2/telemetry", "21.5", false)
	testutil.Eventually(t, waitFor, "watcher prints telemetry", func() bool {
		return strings.Contains(out.String(), "msg=telemetry device=dev2 qos=1 payload=21.5")
	})
	// Published before the telemetry on the same connection, so it would
	// have arrived by now if the filters let it through.
	if strings.Contains(out.String(), "hidden") {
		t.Errorf("watcher printed a topic outside its filters:\n%s", out.String())
	}

	cancel()
	select {
	case <-stopped:
	case <-time.After(waitFor):
		t.Fatal("run did not return after cancel")
	}
	if runErr != nil {
		t.Fatalf("run() = %v, want nil", runErr)
	}
}

type command struct {
	payload string
	qos     byte
}

// fakeDevice stands in for a device: it records commands and publishes.
type fakeDevice struct {
	c    mqtt.Client
	mu   sync.Mutex
	cmds []command
}

func newFakeDevice(t *testing.T, url, id string) *fakeDevice {
	t.Helper()
	d := &fakeDevice{}
	d.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("fake-" + id).SetAutoReconnect(false))
	if tok := d.c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("fake device connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	tok := d.c.Subscribe("devices/"+id+"/commands", 1, func(_ mqtt.Client, m mqtt.Message) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.cmds = append(d.cmds, command{payload: string(m.Payload()), qos: m.Qos()})
	})
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("fake device subscribe: %v", tok.Error())
	}
	return d
}

func (d *fakeDevice) received() []command {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]command(nil), d.cmds...)
}

func (d *fakeDevice) publish(t *testing.T, topic, payload string, retained bool) {
	t.Helper()
	if tok := d.c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
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
