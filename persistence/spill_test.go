package persistence

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// smallWindow makes the memory window 3 (MaximumInflight 6), so that a
// handful of messages covers both mochi's memory and the spilled backlog.
func smallWindow(c *mqtt.Capabilities) { c.MaximumInflight = 6 }

// offlineSubscriber leaves a persistent session subscribed to filter.
func offlineSubscriber(t *testing.T, b *broker, id, filter string) {
	t.Helper()
	sub := connect(t, b.url, id, false, nil)
	wait(t, "subscribe", sub.Subscribe(filter, 1, nil))
	sub.Disconnect(100)
	eventually(t, 5*time.Second, "subscriber offline", func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.Closed()
	})
}

func payloads(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("m%03d", i))
	}
	return out
}

// TestOfflineQueueBounds: an offline persistent session over its count or
// byte bound keeps the messages its policy says, counts the others, and
// gets the kept ones in order when it comes back.
func TestOfflineQueueBounds(t *testing.T) {
	// Each message is topic "b/x" (3 bytes) + payload "m000" (4 bytes).
	for _, tc := range []struct {
		name        string
		limits      QueueLimits
		publish     int
		want        []string
		newest, old uint64
		topic       string // "b/x" unless set
	}{
		{"count drop-newest", QueueLimits{MaxMessages: 5, Policy: PolicyDropNewest}, 8, payloads(0, 5), 3, 0, ""},
		{"count drop-oldest", QueueLimits{MaxMessages: 5, Policy: PolicyDropOldest}, 8, payloads(3, 8), 0, 3, ""},
		{"bytes drop-newest", QueueLimits{MaxBytes: 4 * 7, Policy: PolicyDropNewest}, 9, payloads(0, 4), 5, 0, ""},
		{"bytes drop-oldest", QueueLimits{MaxBytes: 4 * 7, Policy: PolicyDropOldest}, 9, payloads(5, 9), 0, 5, ""},
		{"block-publisher offline acts as drop-newest", QueueLimits{MaxMessages: 6, Policy: PolicyBlockPublisher}, 9, payloads(0, 6), 3, 0, ""},
		{"under the bound nothing dropped", QueueLimits{MaxMessages: 20, Policy: PolicyDropOldest}, 12, payloads(0, 12), 0, 0, ""},
		// '$' topics, which '#' does not match, are kept out of deliveries too.
		{"'$' topic drop-newest", QueueLimits{MaxMessages: 5, Policy: PolicyDropNewest}, 8, payloads(0, 5), 3, 0, "$b/x"},
		{"'$' topic drop-oldest", QueueLimits{MaxMessages: 5, Policy: PolicyDropOldest}, 9, payloads(4, 9), 0, 4, "$b/x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st := openStore(t, Config{Dir: dir})
			lim := func(h *Hook) { h.SetQueueLimits(tc.limits) }
			b := startBrokerWith(t, st, smallWindow, lim)
			topic := cmp.Or(tc.topic, "b/x")
			offlineSubscriber(t, b, "sub", strings.TrimSuffix(topic, "x")+"#")
			pub := connect(t, b.url, "pub", true, nil)
			for _, p := range payloads(0, tc.publish) {
				wait(t, "publish", pub.Publish(topic, 1, false, p))
			}
			eventually(t, 5*time.Second, "queue settled", func() bool { return countKeys(t, st, prefixQueue) == len(tc.want) })
			s := b.hook.QueueStats()
			if s.DroppedNewest != tc.newest || s.DroppedOldest != tc.old {
				t.Fatalf("dropped newest %d oldest %d, want %d and %d", s.DroppedNewest, s.DroppedOldest, tc.newest, tc.old)
			}
			if n := b.srv.Info.InflightDropped; n != 0 {
				t.Fatalf("mochi dropped %d", n)
			}

			// Half the cases come back after a restart, half on the same broker.
			if tc.publish%2 == 0 {
				pub.Disconnect(100)
				b.close()
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
				st = openStore(t, Config{Dir: dir})
				b = startBrokerWith(t, st, smallWindow, lim)
			}
			var c collector
			connect(t, b.url, "sub", false, c.handle)
			eventually(t, 5*time.Second, fmt.Sprintf("%d messages", len(tc.want)), func() bool { return len(c.snapshot()) >= len(tc.want) })
			if got := c.snapshot(); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			assertQueueEmpties(t, b, st, "sub")
			eventually(t, 5*time.Second, "bodies deleted", func() bool { return countKeys(t, st, prefixMessage) == 0 })
		})
	}
}

// TestSpillDrainKeepsOrderWithLivePublishes: a session with a spilled
// backlog reconnects while publishers go on; it gets every message once,
// each publisher's in order: the backlog first, live ones behind it.
func TestSpillDrainKeepsOrderWithLivePublishes(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, smallWindow)
	offlineSubscriber(t, b, "sub", "o/#")
	const before, during, pubs = 200, 200, 3
	var pubsC []paho.Client
	for p := range pubs {
		pubsC = append(pubsC, connect(t, b.url, fmt.Sprint("pub", p), true, nil))
	}
	publish := func(from, to int) {
		var wg sync.WaitGroup
		for p, c := range pubsC {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := from; i < to; i++ {
					if tok := c.Publish(fmt.Sprintf("o/%d", p), 1, false, fmt.Sprintf("%d:%d", p, i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
						t.Errorf("publish: %v", tok.Error())
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	publish(0, before)
	if s := b.hook.QueueStats(); s.Spilled < pubs*before-10 {
		t.Fatalf("spilled %d, want nearly all of %d", s.Spilled, pubs*before)
	}

	var c collector
	connect(t, b.url, "sub", false, c.handle)
	publish(before, before+during)
	total := pubs * (before + during)
	eventually(t, 10*time.Second, fmt.Sprintf("%d messages", total), func() bool { return len(c.snapshot()) >= total })
	next := make([]int, pubs)
	for _, m := range c.snapshot() {
		var p, i int
		if _, err := fmt.Sscanf(m, "%d:%d", &p, &i); err != nil {
			t.Fatal(err)
		}
		if i != next[p] {
			t.Fatalf("publisher %d: got %d, want %d (out of order or duplicate)", p, i, next[p])
		}
		next[p]++
	}
	if got := len(c.snapshot()); got != total {
		t.Fatalf("got %d messages, want %d", got, total)
	}
	assertQueueEmpties(t, b, st, "sub")
}

// TestSpillSurvivesRestartInOrder: spilled messages, and a drain cut short
// by a disconnect, survive a restart and arrive in order.
func TestSpillSurvivesRestartInOrder(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b := startBroker(t, st, smallWindow)
	offlineSubscriber(t, b, "sub", "r/#")
	pub := connect(t, b.url, "pub", true, nil)
	const n = 50
	for i := range n {
		wait(t, "publish", pub.Publish("r/x", 1, false, strconv.Itoa(i)))
	}
	// Take a few, then go away in the middle of the drain.
	var first collector
	c1 := connect(t, b.url, "sub", false, first.handle)
	eventually(t, 5*time.Second, "some messages", func() bool { return len(first.snapshot()) >= 5 })
	c1.Disconnect(0)
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, Config{Dir: dir})
	b = startBroker(t, st, smallWindow)
	var second collector
	connect(t, b.url, "sub", false, second.handle)
	seen := len(first.snapshot())
	// The first connection may have been given (and have acknowledged)
	// everything before it went: the rest is what neither has yet.
	eventually(t, 5*time.Second, "the rest", func() bool {
		have := map[string]bool{}
		for _, m := range append(first.snapshot(), second.snapshot()...) {
			have[m] = true
		}
		return len(have) == n
	})
	if seen == n {
		t.Logf("the first connection got all %d before it went: the drain was not cut short this time", n)
	}
	// QoS 1: what the first connection got may come again, but nothing is
	// missing and the order holds.
	all := append(first.snapshot(), second.snapshot()...)
	want := 0
	for _, m := range all {
		i, _ := strconv.Atoi(m)
		if i > want {
			t.Fatalf("message %d before %d: %v", i, want, all)
		}
		if i == want {
			want++
		}
	}
	if want != n {
		t.Fatalf("got up to %d of %d (first connection %d)", want, n, seen)
	}
	assertQueueEmpties(t, b, st, "sub")
}

// TestConnectedQueueBounds: a connected persistent subscriber that does not
// acknowledge gets its memory window (3) written; the next messages are
// spilled, and beyond the bound (5) the policy decides. drop-oldest drops
// the oldest message not yet written to it, never one it may have.
func TestConnectedQueueBounds(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		limits                QueueLimits
		want                  []string
		newest, old, timeouts uint64
	}{
		{"drop-newest", QueueLimits{MaxMessages: 5, Policy: PolicyDropNewest}, payloads(0, 5), 3, 0, 0},
		{"drop-oldest", QueueLimits{MaxMessages: 5, Policy: PolicyDropOldest}, append(payloads(0, 3), payloads(6, 8)...), 0, 3, 0},
		{"block-publisher times out, then drop-newest", QueueLimits{MaxMessages: 5, Policy: PolicyBlockPublisher, BlockWait: 100 * time.Millisecond}, payloads(0, 5), 3, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t, Config{})
			b := startBrokerWith(t, st, smallWindow, func(h *Hook) { h.SetQueueLimits(tc.limits) })
			var mu sync.Mutex
			var got []paho.Message
			o := paho.NewClientOptions().AddBroker(b.url).SetClientID("slow").SetCleanSession(false).
				SetAutoReconnect(false).SetOrderMatters(true).SetAutoAckDisabled(true).
				SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
					mu.Lock()
					got = append(got, m)
					mu.Unlock()
				})
			sub := paho.NewClient(o)
			wait(t, "connect", sub.Connect())
			t.Cleanup(func() { sub.Disconnect(0) })
			wait(t, "subscribe", sub.Subscribe("c/#", 1, nil))
			pub := connect(t, b.url, "pub", true, nil)
			for _, p := range payloads(0, 8) {
				wait(t, "publish", pub.Publish("c/x", 1, false, p))
			}
			s := b.hook.QueueStats()
			if s.DroppedNewest != tc.newest || s.DroppedOldest != tc.old || s.BlockTimedOut != tc.timeouts {
				t.Fatalf("stats %+v, want newest %d oldest %d timeouts %d", s, tc.newest, tc.old, tc.timeouts)
			}
			var payloadsGot []string
			acked := 0
			eventually(t, 5*time.Second, fmt.Sprintf("%d messages", len(tc.want)), func() bool {
				mu.Lock()
				defer mu.Unlock()
				for ; acked < len(got); acked++ {
					payloadsGot = append(payloadsGot, string(got[acked].Payload()))
					got[acked].Ack()
				}
				return len(payloadsGot) >= len(tc.want)
			})
			if !slices.Equal(payloadsGot, tc.want) {
				t.Fatalf("got %v, want %v", payloadsGot, tc.want)
			}
			assertQueueEmpties(t, b, st, "slow")
		})
	}
}

// TestBlockPublisherWaitsForRoom: under block-publisher a publish to a
// connected subscriber whose queue is full waits until the subscriber
// acknowledges, and is then queued, not dropped.
func TestBlockPublisherWaitsForRoom(t *testing.T) {
	st := openStore(t, Config{})
	b := startBrokerWith(t, st, smallWindow, func(h *Hook) {
		h.SetQueueLimits(QueueLimits{MaxMessages: 2, Policy: PolicyBlockPublisher, BlockWait: 5 * time.Second})
	})
	msgs := make(chan paho.Message, 10)
	o := paho.NewClientOptions().AddBroker(b.url).SetClientID("slow").SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(true).SetAutoAckDisabled(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m })
	sub := paho.NewClient(o)
	wait(t, "connect", sub.Connect())
	t.Cleanup(func() { sub.Disconnect(0) })
	wait(t, "subscribe", sub.Subscribe("w/#", 1, nil))
	pub := connect(t, b.url, "pub", true, nil)
	wait(t, "publish", pub.Publish("w/x", 1, false, "0"))
	wait(t, "publish", pub.Publish("w/x", 1, false, "1"))
	tok := pub.Publish("w/x", 1, false, "2")
	if tok.WaitTimeout(200 * time.Millisecond) {
		t.Fatal("third publish acknowledged while the queue was full")
	}
	(<-msgs).Ack()
	wait(t, "blocked publish", tok)
	for _, want := range []string{"1", "2"} {
		select {
		case m := <-msgs:
			if string(m.Payload()) != want {
				t.Fatalf("got %s, want %s", m.Payload(), want)
			}
			m.Ack()
		case <-time.After(5 * time.Second):
			t.Fatalf("message %s not delivered", want)
		}
	}
	if s := b.hook.QueueStats(); s.Blocked != 1 || s.BlockTimedOut != 0 || s.DroppedNewest != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestSpillDrainAcrossReconnects: the subscriber of a spilled session comes
// and goes in the middle of the drain while a publisher goes on; in the end
// it has every message, and no message ever arrived before an older one it
// had not seen yet (QoS 1 repeats after a reconnect are allowed).
func TestSpillDrainAcrossReconnects(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, smallWindow)
	offlineSubscriber(t, b, "sub", "a/#")
	pub := connect(t, b.url, "pub", true, nil)
	const n = 600
	for i := range n / 2 {
		wait(t, "publish", pub.Publish("a/x", 1, false, strconv.Itoa(i)))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := n / 2; i < n; i++ {
			if tok := pub.Publish("a/x", 1, false, strconv.Itoa(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Errorf("publish %d: %v", i, tok.Error())
				return
			}
		}
	}()
	var c collector
	for range 5 {
		before := len(c.snapshot())
		s := connect(t, b.url, "sub", false, c.handle)
		// Some messages, unless the last one is in already.
		eventually(t, 5*time.Second, "some messages", func() bool {
			got := c.snapshot()
			return len(got) >= before+20 || slices.Contains(got, strconv.Itoa(n-1))
		})
		// Reconnecting at once: mostly a takeover of a connection the
		// broker has not seen closing yet.
		s.Disconnect(0)
	}
	<-done
	last := connect(t, b.url, "sub", false, c.handle)
	// Progress, if it stops: a feed stuck, or one slow on a busy machine
	// (the window is 3 messages).
	var progress []int
	deadline, sample := time.Now().Add(10*time.Second), time.Now()
	for {
		got := c.snapshot()
		if len(got) > 0 && got[len(got)-1] == strconv.Itoa(n-1) {
			break
		}
		if time.Now().After(sample) {
			progress = append(progress, len(got))
			sample = sample.Add(500 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			cl, _ := b.srv.Clients.Get("sub")
			hs := "no session"
			b.hook.mu.Lock()
			if ss := b.hook.sessions["sub"]; ss != nil {
				hs = fmt.Sprintf("backlog %d, transfer %d, feed under way %v, pending spill %d", ss.backlog.len(), len(ss.transfer), ss.feedCl != nil, ss.pendingSpill)
			}
			b.hook.mu.Unlock()
			t.Fatalf("the last message not within 10s; connected %v; deliveries every 0.5 s: %v; last %v; in flight %d; hook: %s",
				last.IsConnected(), progress, got[max(len(got)-3, 0):], cl.State.Inflight.Len(), hs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := 0
	for _, m := range c.snapshot() {
		i, _ := strconv.Atoi(m)
		if i > want {
			t.Fatalf("message %d before %d", i, want)
		}
		if i == want {
			want++
		}
	}
	if want != n {
		t.Fatalf("got up to %d of %d", want, n)
	}
	assertQueueEmpties(t, b, st, "sub")
}

// assertQueueEmpties waits until no queue ref is left, or fails showing
// what is left on disk and in the hook of session id.
func assertQueueEmpties(t *testing.T, b *broker, st *Store, id string) {
	t.Helper()
	assertQueueEmptied(t, b, st, id, prefixQueue)
}

// assertQueueEmptiesFor is assertQueueEmpties for the refs of id only.
func assertQueueEmptiesFor(t *testing.T, b *broker, st *Store, id string) {
	t.Helper()
	assertQueueEmptied(t, b, st, id, string(clientPrefix(prefixQueue, id)))
}

func assertQueueEmptied(t *testing.T, b *broker, st *Store, id, prefix string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for countKeys(t, st, prefix) != 0 {
		if time.Now().Before(deadline) {
			<-tick.C
			continue
		}
		_ = st.scan(prefix, func(k, v []byte) error {
			_, seq, _ := parseQueueKey(k)
			rec, _ := decodeRef(v)
			t.Logf("left on disk: seq %d %+v", seq, rec)
			return nil
		})
		b.hook.mu.Lock()
		if ss := b.hook.sessions[id]; ss != nil {
			t.Logf("session: count %d, entries %d, backlog %d, transfer %d, pending spills %d", ss.count, len(ss.entries), ss.backlog.len(), len(ss.transfer), ss.pendingSpill)
		}
		b.hook.mu.Unlock()
		t.Fatal("queue not emptied")
	}
	b.hook.mu.Lock()
	defer b.hook.mu.Unlock()
	if ss := b.hook.sessions[id]; ss != nil && (ss.count != 0 || ss.bytes != 0 || len(ss.entries) != 0) {
		t.Fatalf("queue empty on disk, but the session counts %d messages, %d bytes, %d entries", ss.count, ss.bytes, len(ss.entries))
	}
}

// TestQueueBoundsRebuiltAtLoad: a session's count and bytes are rebuilt
// from the store at start, so the bound holds across a restart.
func TestQueueBoundsRebuiltAtLoad(t *testing.T) {
	dir := t.TempDir()
	lim := func(h *Hook) { h.SetQueueLimits(QueueLimits{MaxMessages: 5, Policy: PolicyDropOldest}) }
	st := openStore(t, Config{Dir: dir})
	b := startBrokerWith(t, st, smallWindow, lim)
	offlineSubscriber(t, b, "sub", "l/#")
	pub := connect(t, b.url, "pub", true, nil)
	for _, p := range payloads(0, 5) {
		wait(t, "publish", pub.Publish("l/x", 1, false, p))
	}
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, Config{Dir: dir})
	b = startBrokerWith(t, st, smallWindow, lim)
	b.hook.mu.Lock()
	ss := b.hook.sessions["sub"]
	count, bytes, inMochi, spilled := ss.count, ss.bytes, len(ss.entries), ss.backlog.len()
	b.hook.mu.Unlock()
	if count != 5 || bytes != 5*7 || inMochi != 3 || spilled != 2 {
		t.Fatalf("loaded count %d bytes %d, %d in mochi, %d spilled; want 5, 35, 3, 2", count, bytes, inMochi, spilled)
	}
	pub = connect(t, b.url, "pub", true, nil)
	for _, p := range payloads(5, 8) {
		wait(t, "publish", pub.Publish("l/x", 1, false, p))
	}
	if s := b.hook.QueueStats(); s.DroppedOldest != 3 {
		t.Fatalf("dropped oldest %d, want 3", s.DroppedOldest)
	}
	var c collector
	connect(t, b.url, "sub", false, c.handle)
	want := payloads(3, 8)
	eventually(t, 5*time.Second, "five messages", func() bool { return len(c.snapshot()) >= len(want) })
	if got := c.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	assertQueueEmpties(t, b, st, "sub")
}

// TestSpillDrainMQTT5: spilled messages keep their MQTT 5 properties and
// subscription identifier, and the drain respects the client's Receive
// Maximum (mochi's own resend of its window does not). (User properties
// are not checked: they do not arrive with this paho.golang and mochi pair
// even without spilling, see v5_test.go.)
func TestSpillDrainMQTT5(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, func(c *mqtt.Capabilities) { c.MaximumInflight = 20 }) // window 10
	ctx := context.Background()
	sub, _ := connectV5(t, b.url, "v5", 3600, nil)
	subID := 7
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Properties: &paho5.SubscribeProperties{SubscriptionIdentifier: &subID},
		Subscriptions: []paho5.SubscribeOptions{{Topic: "v/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_ = sub.Disconnect(&paho5.Disconnect{})
	eventually(t, 5*time.Second, "subscriber offline", func() bool { cl, _ := b.srv.Clients.Get("v5"); return cl.Closed() })
	pub, _ := connectV5(t, b.url, "v5pub", 0, nil)
	const n = 40
	for i := range n {
		if _, err := pub.Publish(ctx, &paho5.Publish{Topic: "v/x", QoS: 1, Payload: []byte(strconv.Itoa(i)),
			Properties: &paho5.PublishProperties{ContentType: "text/plain", User: paho5.UserProperties{{Key: "i", Value: strconv.Itoa(i)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	if s := b.hook.QueueStats(); s.Spilled != n-10 {
		t.Fatalf("spilled %d, want %d", s.Spilled, n-10)
	}

	var mu sync.Mutex
	var got []*paho5.Publish
	maxInflight := 0
	recvMax := uint16(2)
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.url, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{ClientID: "v5", Conn: conn,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(r paho5.PublishReceived) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			if i, _ := strconv.Atoi(string(r.Packet.Payload)); i >= 10 {
				if cl, ok := b.srv.Clients.Get("v5"); ok {
					maxInflight = max(maxInflight, cl.State.Inflight.Len())
				}
			}
			got = append(got, r.Packet)
			return true, nil
		}}})
	expiry := uint32(3600)
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: "v5", KeepAlive: 30, CleanStart: false,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho5.Disconnect{}) })
	eventually(t, 5*time.Second, "all messages", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= n })
	mu.Lock()
	defer mu.Unlock()
	for i, p := range got {
		if string(p.Payload) != strconv.Itoa(i) {
			t.Fatalf("message %d is %s", i, p.Payload)
		}
		if p.Properties.SubscriptionIdentifier == nil || *p.Properties.SubscriptionIdentifier != subID ||
			p.Properties.ContentType != "text/plain" {
			t.Fatalf("message %d lost properties: %+v", i, p.Properties)
		}
	}
	if maxInflight > int(recvMax) {
		t.Fatalf("%d messages in flight during the drain, Receive Maximum %d", maxInflight, recvMax)
	}
}

// TestOfflineQueueAgainstModel publishes random-sized messages to an
// offline session under random bounds and policies, restarting the broker
// at random moments, and checks what the session gets back, and the drop
// counters, against a model queue.
func TestOfflineQueueAgainstModel(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			lim := QueueLimits{MaxMessages: 3 + rng.IntN(12), MaxBytes: int64(40 + rng.IntN(200))}
			lim.Policy = []string{PolicyDropNewest, PolicyDropOldest, PolicyBlockPublisher}[seed%3]
			t.Logf("limits %+v", lim)
			type msg struct {
				payload string
				size    int64
			}
			var model []msg
			var modelBytes int64
			var newest, oldest uint64
			dir := t.TempDir()
			st := openStore(t, Config{Dir: dir})
			adjust := func(h *Hook) { h.SetQueueLimits(lim) }
			b := startBrokerWith(t, st, smallWindow, adjust)
			offlineSubscriber(t, b, "sub", "m/#")
			pub := connect(t, b.url, "pub", true, nil)
			var dropsBefore QueueStats // counters restart with the broker
			for i := range 60 {
				if rng.IntN(15) == 0 {
					s := b.hook.QueueStats()
					dropsBefore.DroppedNewest += s.DroppedNewest
					dropsBefore.DroppedOldest += s.DroppedOldest
					pub.Disconnect(100)
					b.close()
					if err := st.Close(); err != nil {
						t.Fatal(err)
					}
					st = openStore(t, Config{Dir: dir})
					b = startBrokerWith(t, st, smallWindow, adjust)
					pub = connect(t, b.url, "pub", true, nil)
				}
				p := fmt.Sprintf("%03d%s", i, strings.Repeat("x", rng.IntN(40)))
				m := msg{p, int64(len("m/x") + len(p))}
				wait(t, "publish", pub.Publish("m/x", 1, false, p))
				fits := func() bool {
					return len(model)+1 <= lim.MaxMessages && modelBytes+m.size <= lim.MaxBytes
				}
				if lim.Policy == PolicyDropOldest && m.size <= lim.MaxBytes {
					for !fits() && len(model) > 0 {
						modelBytes -= model[0].size
						model = model[1:]
						oldest++
					}
				}
				if !fits() {
					newest++
					continue
				}
				model = append(model, m)
				modelBytes += m.size
			}
			s := b.hook.QueueStats()
			if got, want := dropsBefore.DroppedNewest+s.DroppedNewest, newest; got != want {
				t.Errorf("dropped newest %d, model %d", got, want)
			}
			if got, want := dropsBefore.DroppedOldest+s.DroppedOldest, oldest; got != want {
				t.Errorf("dropped oldest %d, model %d", got, want)
			}
			var c collector
			connect(t, b.url, "sub", false, c.handle)
			eventually(t, 5*time.Second, fmt.Sprintf("%d messages", len(model)), func() bool { return len(c.snapshot()) >= len(model) })
			var want []string
			for _, m := range model {
				want = append(want, m.payload)
			}
			if got := c.snapshot(); !slices.Equal(got, want) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
			assertQueueEmpties(t, b, st, "sub")
		})
	}
}

// TestSpilledBodiesSharedBetweenSessions: a message spilled for two
// sessions is stored once; its body stays until both have taken it, across
// a restart.
func TestSpilledBodiesSharedBetweenSessions(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir})
	b := startBroker(t, st, smallWindow)
	offlineSubscriber(t, b, "one", "s/#")
	offlineSubscriber(t, b, "two", "s/#")
	pub := connect(t, b.url, "pub", true, nil)
	const n = 10
	for i := range n {
		wait(t, "publish", pub.Publish("s/x", 1, false, strconv.Itoa(i)))
	}
	if got := countKeys(t, st, prefixMessage); got != n {
		t.Fatalf("%d bodies, want %d", got, n)
	}
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, Config{Dir: dir})
	b = startBroker(t, st, smallWindow)
	for _, id := range []string{"one", "two"} {
		var c collector
		s := connect(t, b.url, id, false, c.handle)
		eventually(t, 5*time.Second, id+" gets everything", func() bool { return len(c.snapshot()) == n })
		for i, got := range c.snapshot() {
			if got != strconv.Itoa(i) {
				t.Fatalf("%s: got %v", id, c.snapshot())
			}
		}
		s.Disconnect(100)
		assertQueueEmptiesFor(t, b, st, id)
		want := n
		if id == "two" {
			want = 0
		}
		eventually(t, 5*time.Second, fmt.Sprintf("%d bodies left after %s", want, id), func() bool { return countKeys(t, st, prefixMessage) == want })
	}
}

// expiringBroker starts a broker on st whose hook clock runs skew ahead,
// with a memory window of 3 and a 60 s maximum message expiry.
func expiringBroker(t *testing.T, st *Store, skew *atomic.Int64, lim QueueLimits) *broker {
	t.Helper()
	adjust := func(h *Hook) {
		h.SetQueueLimits(lim)
		h.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	}
	caps := func(c *mqtt.Capabilities) {
		smallWindow(c) // 3 in memory, the rest spilled
		c.MaximumMessageExpiryInterval = 60
	}
	return startBrokerWith(t, st, caps, adjust)
}

// queueFive leaves session "sub" offline with m000..m004 queued on "e/x":
// 3 in mochi's memory window, 2 spilled.
func queueFive(t *testing.T, b *broker, st *Store) paho.Client {
	t.Helper()
	offlineSubscriber(t, b, "sub", "e/#")
	pub := connect(t, b.url, "pub", true, nil)
	for _, p := range payloads(0, 5) {
		wait(t, "publish", pub.Publish("e/x", 1, false, p))
	}
	eventually(t, 5*time.Second, "5 queued", func() bool { return countKeys(t, st, prefixQueue) == 5 })
	return pub
}

// TestSpilledMessagesExpireWhileOffline: spilled messages of an offline
// session that expire are deleted then, not when the session comes back:
// they no longer fill its queue (new messages are queued, not dropped) or
// the disk. Those in mochi's memory window are mochi's to expire.
func TestSpilledMessagesExpireWhileOffline(t *testing.T) {
	st := openStore(t, Config{})
	var skew atomic.Int64
	b := expiringBroker(t, st, &skew, QueueLimits{MaxMessages: 5, Policy: PolicyDropNewest})
	pub := queueFive(t, b, st)

	skew.Store(int64(2 * time.Minute))
	eventually(t, 5*time.Second, "spilled messages expired", func() bool { return b.hook.QueueStats().Expired == 2 })
	skew.Store(0)
	eventually(t, 5*time.Second, "their keys deleted", func() bool {
		return countKeys(t, st, prefixQueue) == 3 && countKeys(t, st, prefixMessage) == 3
	})

	// Room for two more; the third is over the bound.
	for _, p := range payloads(5, 8) {
		wait(t, "publish", pub.Publish("e/x", 1, false, p))
	}
	if s := b.hook.QueueStats(); s.DroppedNewest != 1 {
		t.Fatalf("dropped %d, want 1 (m007)", s.DroppedNewest)
	}
	var c collector
	connect(t, b.url, "sub", false, c.handle)
	want := []string{"m000", "m001", "m002", "m005", "m006"}
	eventually(t, 5*time.Second, "5 messages", func() bool { return len(c.snapshot()) >= len(want) })
	if got := c.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	assertQueueEmpties(t, b, st, "sub")
}

func TestSpillQueueFilter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		seqs       []uint64
		popped     int
		drop, want []uint64
	}{
		{"none dropped", []uint64{1, 2, 3}, 0, nil, []uint64{1, 2, 3}},
		{"all dropped", []uint64{1, 2, 3}, 0, []uint64{1, 2, 3}, nil},
		{"middle, after a pop", []uint64{1, 2, 3, 4, 5}, 2, []uint64{4}, []uint64{3, 5}},
		{"front and back", []uint64{1, 2, 3, 4}, 0, []uint64{1, 4}, []uint64{2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q spillQueue
			for _, s := range tc.seqs {
				q.insert(spillItem{seq: s})
			}
			q.popFront(tc.popped)
			q.filter(func(it spillItem) bool { return !slices.Contains(tc.drop, it.seq) })
			var got []uint64
			for q.len() > 0 {
				got = append(got, q.popFront(1)[0].seq)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestExpiresAt(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		created, expiry, maxExpiry int64
		want                       uint32
	}{
		{"never", 100, 0, 0, 0},
		{"own expiry", 100, 160, 0, 160},
		{"server maximum only", 100, 0, 30, 130},
		{"server maximum first", 100, 160, 30, 130},
		{"own expiry first", 100, 120, 30, 120},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expiresAt(tc.created, tc.expiry, tc.maxExpiry); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}

// TestSpilledExpiryAfterRestart: spilled messages restored at a start
// still expire on time while their session stays offline.
func TestSpilledExpiryAfterRestart(t *testing.T) {
	dir := t.TempDir()
	var skew atomic.Int64
	st := openStore(t, Config{Dir: dir})
	b := expiringBroker(t, st, &skew, QueueLimits{})
	queueFive(t, b, st).Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, Config{Dir: dir})
	b = expiringBroker(t, st, &skew, QueueLimits{})
	if n := countKeys(t, st, prefixQueue); n != 5 {
		t.Fatalf("%d queued after the restart, want 5", n)
	}
	skew.Store(int64(2 * time.Minute))
	eventually(t, 5*time.Second, "spilled messages expired", func() bool { return b.hook.QueueStats().Expired == 2 })
	eventually(t, 5*time.Second, "their keys deleted", func() bool { return countKeys(t, st, prefixQueue) == 3 })
}
