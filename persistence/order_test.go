package persistence

import (
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// TestRestartKeepsQueueOrder: a connected subscriber's memory window (10)
// holds messages sent on the live path, whose QoS 1 packet ids are not
// stored, and, once it overflowed, spilled messages fed back with stored
// ids. After a restart the offline window (3) is smaller: the oldest
// messages load into memory, the rest stays spilled, and the messages
// with a stored packet id must not be resent ahead of older spilled ones.
func TestRestartKeepsQueueOrder(t *testing.T) {
	dir := t.TempDir()
	caps := func(c *mqtt.Capabilities) { c.MaximumInflight = 20 } // connected window: 10
	limits := func(h *Hook) { h.SetQueueLimits(QueueLimits{MemoryWindow: 3}) }
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b := startBrokerWith(t, st, caps, limits)

	var mu sync.Mutex
	var first []paho.Message
	o := paho.NewClientOptions().AddBroker(b.url).SetClientID("sub").SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).SetAutoAckDisabled(true).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			mu.Lock()
			first = append(first, m)
			mu.Unlock()
		})
	sub := paho.NewClient(o)
	wait(t, "connect", sub.Connect())
	wait(t, "subscribe", sub.Subscribe("o/#", 1, nil))
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(first)
	}

	pub := connect(t, b.url, "pub", true, nil)
	const n = 15
	for i := range n {
		wait(t, "publish", pub.Publish("o/x", 1, false, strconv.Itoa(i)))
	}
	// The window: 0-9 on the live path; 10-14 spilled.
	eventually(t, 5*time.Second, "the window", func() bool { return received() == 10 })
	mu.Lock()
	first[0].Ack()
	first[1].Ack()
	mu.Unlock()
	// Room for two: 10 and 11 are fed from the store, with their ids.
	eventually(t, 5*time.Second, "two fed", func() bool { return received() == 12 })
	sub.Disconnect(0)
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b = startBrokerWith(t, st, caps, limits)
	var second collector
	dup := map[string]bool{}
	connect(t, b.url, "sub", false, func(c paho.Client, m paho.Message) {
		second.mu.Lock()
		dup[string(m.Payload())] = m.Duplicate()
		second.mu.Unlock()
		second.handle(c, m)
	})
	eventually(t, 5*time.Second, "the rest", func() bool { return len(second.snapshot()) >= n-2 })
	got := second.snapshot()
	for i, m := range got {
		if want := strconv.Itoa(i + 2); m != want {
			t.Fatalf("after the restart got %v, want 2 to %d in order", got, n-1)
		}
	}
	// 10 and 11 had been sent with a stored packet id: resent as such.
	second.mu.Lock()
	defer second.mu.Unlock()
	for _, m := range []string{"2", "10", "11"} {
		if !dup[m] {
			t.Errorf("message %s resent without DUP", m)
		}
	}
	assertQueueEmpties(t, b, st, "sub")
}
