package persistence

import (
	"strconv"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

func putRecord(t *testing.T, st *Store, key []byte, encode func([]byte) []byte) {
	t.Helper()
	b := st.newBatch()
	b.set(key, encode)
	if err := st.apply(b); err != nil {
		t.Fatal(err)
	}
}

// keysOf counts every key of client id.
func keysOf(t *testing.T, st *Store, id string) int {
	t.Helper()
	n := 0
	for _, p := range []string{string(sessionKey(id)), string(clientPrefix(prefixSub, id)), string(clientPrefix(prefixQueue, id))} {
		n += countKeys(t, st, p)
	}
	return n
}

// storeSession writes a v5 session disconnected at `at` with a subscription
// and one queued message, as a crashed broker would leave it.
func storeSession(t *testing.T, st *Store, id string, at int64, expiry uint32) {
	t.Helper()
	putRecord(t, st, sessionKey(id), (&sessionRec{ProtocolVersion: 5, ExpiryFlag: true, ExpiryInterval: expiry, DisconnectedAt: at}).appendTo)
	putRecord(t, st, subKey(id, "a/#"), (&subRec{Qos: 1}).appendTo)
	msgID, seq := st.nextSeq(), st.nextSeq()
	putRecord(t, st, messageKey(msgID), (&msgRec{Qos: 1, Topic: "a/b", Payload: []byte("p"), Created: at}).appendTo)
	putRecord(t, st, queueKey(id, seq), (&refRec{State: refPublish, Qos: 1, MsgID: msgID}).appendTo)
}

func TestSessionExpiryCountsFromStoredDisconnect(t *testing.T) {
	st := openStore(t, Config{})
	now := time.Now().Unix()
	storeSession(t, st, "gone", now-100, 10) // expired while the broker was down
	storeSession(t, st, "soon", now-5, 10)   // expires 5 s after the restart
	storeSession(t, st, "kept", now-5, 1000)
	b := startBroker(t, st, nil)

	if _, ok := b.srv.Clients.Get("gone"); ok {
		t.Fatal("an expired session was restored")
	}
	eventually(t, 5*time.Second, "expired session's keys deleted at load", func() bool { return keysOf(t, st, "gone") == 0 })
	for _, id := range []string{"soon", "kept"} {
		cl, ok := b.srv.Clients.Get(id)
		if !ok {
			t.Fatalf("session %s not restored", id)
		}
		if cl.State.Inflight.Len() != 1 || cl.State.Subscriptions.Len() != 1 {
			t.Fatalf("%s restored with %d in flight, %d subscriptions; want 1 and 1", id, cl.State.Inflight.Len(), cl.State.Subscriptions.Len())
		}
	}

	b.hook.tickRestored(now + 6) // what the hook's ticker does 6 s later
	if _, ok := b.srv.Clients.Get("soon"); ok {
		t.Fatal("session still known after its expiry from the stored disconnect time")
	}
	eventually(t, 5*time.Second, "keys of the session expired after restart deleted", func() bool { return keysOf(t, st, "soon") == 0 })
	if _, ok := b.srv.Clients.Get("kept"); !ok || keysOf(t, st, "kept") != 3 {
		t.Fatal("an unexpired session was dropped")
	}
	if n := countKeys(t, st, prefixMessage); n != 1 {
		t.Fatalf("%d message bodies left, want only kept's", n)
	}
}

// TestSmallInflightSpillsInsteadOfDropping: with a small in-flight window
// (MaximumInflight 5: memory window 2), messages for an offline persistent
// session beyond it are spilled to the store, not dropped by mochi, and all
// of them reach the subscriber in order after a restart.
func TestSmallInflightSpillsInsteadOfDropping(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir})
	caps := func(c *mqtt.Capabilities) { c.MaximumInflight = 5 }
	b := startBroker(t, st, caps)
	sub := connect(t, b.url, "sub", false, nil)
	wait(t, "subscribe", sub.Subscribe("t/#", 1, nil))
	sub.Disconnect(100)
	pub := connect(t, b.url, "pub", true, nil)
	for i := range 10 {
		wait(t, "publish", pub.Publish("t/x", 1, false, strconv.Itoa(i)))
	}
	eventually(t, 5*time.Second, "ten queued refs", func() bool { return countKeys(t, st, prefixQueue) == 10 })
	if cl, _ := b.srv.Clients.Get("sub"); cl.State.Inflight.Len() != 2 {
		t.Fatalf("%d messages in mochi's memory, want the window of 2", cl.State.Inflight.Len())
	}
	if n := b.srv.Info.InflightDropped; n != 0 {
		t.Fatalf("mochi dropped %d", n)
	}
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st2 := openStore(t, Config{Dir: dir})
	if n := countKeys(t, st2, prefixMessage); n != 10 {
		t.Fatalf("%d message bodies after restart, want 10", n)
	}
	b2 := startBroker(t, st2, caps)
	if cl, _ := b2.srv.Clients.Get("sub"); cl.State.Inflight.Len() != 2 {
		t.Fatalf("%d messages loaded into mochi's memory, want the window of 2", cl.State.Inflight.Len())
	}
	var c collector
	connect(t, b2.url, "sub", false, c.handle)
	eventually(t, 5*time.Second, "the ten messages", func() bool { return len(c.snapshot()) == 10 })
	for i, got := range c.snapshot() {
		if got != strconv.Itoa(i) {
			t.Fatalf("got %v, want 0..9 in order", c.snapshot())
		}
	}
	eventually(t, 5*time.Second, "queue emptied", func() bool { return countKeys(t, st2, prefixQueue) == 0 })
}

func TestQos2AndSubscriptionsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub := connect(t, b.url, "sub2", false, nil)
	wait(t, "subscribe", sub.Subscribe("q2/#", 2, nil))
	sub.Disconnect(100)
	pub := connect(t, b.url, "pub", true, nil)
	for i := range 20 {
		wait(t, "publish", pub.Publish("q2/x", 2, false, strconv.Itoa(i)))
	}
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st2 := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b2 := startBroker(t, st2, nil)
	var c collector
	connect(t, b2.url, "sub2", false, c.handle) // no new SUBSCRIBE: the stored one must be back
	pub2 := connect(t, b2.url, "pub", true, nil)
	wait(t, "publish after restart", pub2.Publish("q2/x", 2, false, "after"))
	eventually(t, 10*time.Second, "20 queued + 1 new message", func() bool { return len(c.snapshot()) >= 21 })
	got := c.snapshot()
	for i := range 20 {
		if got[i] != strconv.Itoa(i) {
			t.Fatalf("message %d is %q; got %v", i, got[i], got)
		}
	}
	if got[20] != "after" || len(got) != 21 {
		t.Fatalf("after the queue: %v", got[20:])
	}
	eventually(t, 5*time.Second, "QoS 2 flows complete and deleted", func() bool { return countKeys(t, st2, prefixQueue) == 0 })
}

func TestCleanStartDropsStoredSession(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, nil)
	sub := connect(t, b.url, "c", false, nil)
	wait(t, "subscribe", sub.Subscribe("x/#", 1, nil))
	sub.Disconnect(100)
	eventually(t, 5*time.Second, "session stored", func() bool { return keysOf(t, st, "c") == 2 })
	connect(t, b.url, "c", true, nil)
	eventually(t, 5*time.Second, "clean start deleted the session", func() bool { return keysOf(t, st, "c") == 0 })
}

// TestExpiryCountsFromOriginalTime: a queued message and a retained message
// whose expiry passed while the broker was down are not restored.
func TestExpiryCountsFromOriginalTime(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir})
	caps := func(c *mqtt.Capabilities) { c.MaximumMessageExpiryInterval = 60 }
	b := startBroker(t, st, caps)
	sub := connect(t, b.url, "sub", false, nil)
	wait(t, "subscribe", sub.Subscribe("t/#", 1, nil))
	sub.Disconnect(100)
	pub := connect(t, b.url, "pub", true, nil)
	wait(t, "publish", pub.Publish("t/x", 1, false, "old"))
	wait(t, "retain", pub.Publish("t/r", 1, true, "old retained"))
	pub.Disconnect(100)
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name      string
		later     time.Duration
		wantKept  bool
		wantInfl  int
		wantRetai int
	}{{"within expiry", 30 * time.Second, true, 2, 1}, {"after expiry", 2 * time.Minute, false, 0, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			work := t.TempDir()
			copyDir(t, dir, work)
			st2 := openStore(t, Config{Dir: work})
			b2 := startBrokerWith(t, st2, caps, func(h *Hook) {
				h.now = func() time.Time { return time.Now().Add(tt.later) }
			})
			cl, ok := b2.srv.Clients.Get("sub")
			if !ok {
				t.Fatal("session not restored")
			}
			if n := cl.State.Inflight.Len(); n != tt.wantInfl {
				t.Fatalf("%d messages restored in flight, want %d", n, tt.wantInfl)
			}
			if _, ok := b2.srv.Topics.Retained.Get("t/r"); ok != (tt.wantRetai == 1) {
				t.Fatalf("retained restored: %v, want %d", ok, tt.wantRetai)
			}
			if !tt.wantKept {
				eventually(t, 5*time.Second, "expired records deleted", func() bool {
					return countKeys(t, st2, prefixQueue)+countKeys(t, st2, prefixMessage)+countKeys(t, st2, prefixRetained) == 0
				})
			}
		})
	}
}

func TestDelayedWillSentAfterRestart(t *testing.T) {
	st := openStore(t, Config{})
	now := time.Now().Unix()
	will := func(at int64, topic string) *sessionRec {
		return &sessionRec{ProtocolVersion: 5, ExpiryFlag: true, ExpiryInterval: 100, DisconnectedAt: at,
			WillFlag: true, WillQos: 1, WillDelay: 5, WillTopic: topic, WillPayload: []byte("bye " + topic)}
	}
	putRecord(t, st, sessionKey("due"), will(now-10, "will/due").appendTo)
	putRecord(t, st, sessionKey("later"), will(now-1, "will/later").appendTo)
	b := startBroker(t, st, nil)
	var c collector
	w := connect(t, b.url, "watcher", true, c.handle)
	wait(t, "subscribe", w.Subscribe("will/#", 1, nil))

	b.hook.tickRestored(now)
	eventually(t, 5*time.Second, "the due will", func() bool { return len(c.snapshot()) == 1 })
	b.hook.tickRestored(now + 5)
	eventually(t, 5*time.Second, "the later will", func() bool { return len(c.snapshot()) == 2 })
	if got := c.snapshot(); got[0] != "bye will/due" || got[1] != "bye will/later" {
		t.Fatalf("wills %v", got)
	}
	b.hook.tickRestored(now + 6)
	if len(c.snapshot()) != 2 {
		t.Fatal("a will was sent twice")
	}
	for _, id := range []string{"due", "later"} {
		eventually(t, 5*time.Second, "will cleared on disk", func() bool {
			var rec sessionRec
			_ = st.scan(string(sessionKey(id)), func(_, v []byte) error {
				var err error
				rec, err = decodeSession(v)
				return err
			})
			return !rec.WillFlag && rec.DisconnectedAt != 0
		})
	}
}

// TestSysTicksWriteNothing: mochi's $SYS updates every second reach no
// store write, even with a persistent session subscribed to them.
func TestSysTicksWriteNothing(t *testing.T) {
	st := openStore(t, Config{})
	b := startBroker(t, st, nil)
	sub := connect(t, b.url, "sys", false, nil)
	wait(t, "subscribe", sub.Subscribe("$SYS/#", 1, nil))
	before := st.Stats().Records
	start := b.srv.Info.Clone().Uptime
	eventually(t, 5*time.Second, "two $SYS ticks", func() bool { return b.srv.Info.Clone().Uptime >= start+2 })
	if got := st.Stats().Records; got != before {
		t.Fatalf("%d records written by $SYS ticks", got-before)
	}
}

// TestReleaseBody: a body is deleted with its last queue ref, whether it
// has one ref (not counted in h.refs) or several.
func TestReleaseBody(t *testing.T) {
	for _, refs := range []int{1, 2, 3, 5} {
		t.Run(strconv.Itoa(refs), func(t *testing.T) {
			h := &Hook{refs: map[uint64]int32{}}
			h.setRefsLocked(7, refs)
			for i := 1; i <= refs; i++ {
				var b batch
				h.releaseBodyLocked(7, &b)
				deleted := len(b.ops) == 1 && b.ops[0].kind == opDelete && string(b.ops[0].key) == string(messageKey(7))
				if last := i == refs; deleted != last {
					t.Fatalf("release %d of %d: body deleted %v (ops %d), want %v", i, refs, deleted, len(b.ops), last)
				}
			}
			if len(h.refs) != 0 {
				t.Fatalf("counts left: %v", h.refs)
			}
		})
	}
}
