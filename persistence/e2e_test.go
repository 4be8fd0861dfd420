package persistence

import (
	"fmt"
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// collector records the payloads a paho client receives, in order.
type collector struct {
	mu  sync.Mutex
	got []string
}

func (c *collector) handle(_ paho.Client, m paho.Message) {
	c.mu.Lock()
	c.got = append(c.got, string(m.Payload()))
	c.mu.Unlock()
}

func (c *collector) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func TestRestartDeliversQueuedInOrder(t *testing.T) {
	for _, mode := range []string{SyncAlways, SyncBatch} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			st := openStore(t, Config{Dir: dir, Sync: mode})
			b := startBroker(t, st, nil)

			sub := connect(t, b.url, "sub", false, nil)
			wait(t, "subscribe", sub.Subscribe("t/#", 1, nil))
			sub.Disconnect(100)

			pub := connect(t, b.url, "pub", true, nil)
			wait(t, "retain", pub.Publish("r/kept", 1, true, "retained"))
			const n = 200
			for i := range n {
				wait(t, "publish", pub.Publish("t/x", 1, false, strconv.Itoa(i)))
			}
			pub.Disconnect(100)
			b.close()
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}

			st2 := openStore(t, Config{Dir: dir, Sync: mode})
			b2 := startBroker(t, st2, nil)
			var c collector
			connect(t, b2.url, "sub", false, c.handle)
			eventually(t, 10*time.Second, "all queued messages delivered", func() bool { return len(c.snapshot()) >= n })
			got := c.snapshot()
			for i := range n {
				if got[i] != strconv.Itoa(i) {
					t.Fatalf("message %d is %q, want %d; order %v", i, got[i], i, got[:min(len(got), 20)])
				}
			}

			var r collector
			other := connect(t, b2.url, "other", true, r.handle)
			wait(t, "subscribe retained", other.Subscribe("r/#", 1, nil))
			eventually(t, 5*time.Second, "retained message after restart", func() bool { return len(r.snapshot()) == 1 })
			if got := r.snapshot()[0]; got != "retained" {
				t.Fatalf("retained payload %q", got)
			}
			// Every ref was acknowledged: the queue and bodies drain.
			eventually(t, 5*time.Second, "queue drained", func() bool {
				return countKeys(t, st2, prefixQueue) == 0 && countKeys(t, st2, prefixMessage) == 0
			})
		})
	}
}

func countKeys(t testing.TB, st *Store, prefix string) int {
	t.Helper()
	n := 0
	if err := st.scan(prefix, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestExpiredSessionKeysAllDeleted(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, func(c *mqtt.Capabilities) { c.MaximumSessionExpiryInterval = 1 })
	sub := connect(t, b.url, "short", false, nil)
	wait(t, "subscribe", sub.Subscribe("e/#", 1, nil))
	sub.Disconnect(100)
	pub := connect(t, b.url, "pub", true, nil)
	wait(t, "publish", pub.Publish("e/1", 1, false, "x"))
	if countKeys(t, st, prefixSession) != 1 || countKeys(t, st, prefixSub) != 1 || countKeys(t, st, prefixQueue) != 1 {
		t.Fatalf("before expiry: want one session, subscription and queued message")
	}
	eventually(t, 10*time.Second, "expired session's keys deleted", func() bool {
		n := 0
		for _, p := range []string{prefixSession, prefixSub, prefixQueue, prefixMessage} {
			n += countKeys(t, st, p)
		}
		return n == 0
	})
}

// TestAckedMessagesInCrashCopy: right after the last PUBACK the store's
// files, copied from the still running broker (a kill -9 stand-in), hold
// every acknowledged message for the offline persistent subscriber.
func TestAckedMessagesInCrashCopy(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub := connect(t, b.url, "sub", false, nil)
	wait(t, "subscribe", sub.Subscribe("t/#", 1, nil))
	sub.Disconnect(100)
	pub := connect(t, b.url, "pub", true, nil)
	const n = 50
	for i := range n {
		wait(t, "publish", pub.Publish("t/x", 1, false, strconv.Itoa(i)))
	}
	crashed := t.TempDir()
	copyDir(t, st.Dir(), crashed)

	st2 := openStore(t, Config{Dir: crashed})
	b2 := startBroker(t, st2, nil)
	var c collector
	connect(t, b2.url, "sub", false, c.handle)
	eventually(t, 10*time.Second, "every acknowledged message", func() bool { return len(c.snapshot()) >= n })
	for i, got := range c.snapshot()[:n] {
		if got != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, got)
		}
	}
}

// TestRestartKeepsPerPublisherOrder: two publishers interleave; after the
// restart each one's messages arrive in the order it sent them.
func TestRestartKeepsPerPublisherOrder(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub := connect(t, b.url, "sub", false, nil)
	wait(t, "subscribe", sub.Subscribe("t/#", 1, nil))
	sub.Disconnect(100)
	const n = 100
	var wg sync.WaitGroup
	for _, name := range []string{"A", "B"} {
		pub := connect(t, b.url, "pub"+name, true, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if tok := pub.Publish("t/"+name, 1, false, fmt.Sprintf("%s-%d", name, i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Errorf("publish %s %d: %v", name, i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st2 := openStore(t, Config{Dir: dir})
	b2 := startBroker(t, st2, nil)
	var c collector
	connect(t, b2.url, "sub", false, c.handle)
	eventually(t, 10*time.Second, "all messages", func() bool { return len(c.snapshot()) >= 2*n })
	next := map[string]int{}
	for _, m := range c.snapshot() {
		name, i, _ := strings.Cut(m, "-")
		if want := strconv.Itoa(next[name]); i != want {
			t.Fatalf("publisher %s: got %s, want %s", name, i, want)
		}
		next[name]++
	}
}
