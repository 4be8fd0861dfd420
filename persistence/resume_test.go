package persistence

import (
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/mochitest"
)

// pauseHook stops one client goroutine of mochi at a chosen event, so a
// test can act in a window that is otherwise a race.
type pauseHook struct {
	mqtt.HookBase
	event   byte
	match   func(cl *mqtt.Client, pk packets.Packet) bool
	paused  chan struct{} // closed when the goroutine stops
	resumed chan struct{} // closed by resume
	once    sync.Once
}

// newPauseHook pauses at event (where match says so); the test's end
// resumes it if the test did not.
func newPauseHook(t *testing.T, event byte, match func(*mqtt.Client, packets.Packet) bool) *pauseHook {
	p := &pauseHook{event: event, match: match, paused: make(chan struct{}), resumed: make(chan struct{})}
	t.Cleanup(p.resume)
	return p
}

func (p *pauseHook) ID() string           { return "test-pause" }
func (p *pauseHook) Provides(b byte) bool { return b == p.event }
func (p *pauseHook) pause()               { close(p.paused); <-p.resumed }
func (p *pauseHook) resume()              { p.once.Do(func() { close(p.resumed) }) }
func (p *pauseHook) OnStarted()           { p.pause() }
func (p *pauseHook) waitPaused(t *testing.T) {
	t.Helper()
	select {
	case <-p.paused:
	case <-time.After(5 * time.Second):
		t.Fatal("hook never paused")
	}
}

func (p *pauseHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if p.match(cl, pk) {
		p.pause()
	}
}

func (p *pauseHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if p.match(cl, pk) {
		p.pause()
	}
}

// qos2Inbox reads PUBLISHes as a QoS 2 subscriber (PUBREC, then PUBCOMP on
// PUBREL) until want have arrived and nothing more comes for a while.
func qos2Inbox(t *testing.T, c *rawClient, want int) []string {
	t.Helper()
	var got []string
	for {
		timeout := 5 * time.Second
		if len(got) >= want {
			timeout = 300 * time.Millisecond // a duplicate would follow at once
		}
		pk, err := c.next(timeout)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && len(got) >= want {
			return got
		}
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			got = append(got, string(pk.Payload))
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
		case packets.Pubrel:
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
		}
	}
}

// TestPublishWhileSessionResumes: a message published to a persistent
// session while mochi is resuming it (after CONNACK, before it resends the
// queued messages) reaches the client after them, once. Upstream mochi sent
// it at once and then again with the resend; a QoS 2 client that completed
// the first took the second for a new message, and the queue order was
// lost. The engine resends only what the session inherited and writes the
// new message through the queue, after the resend.
func TestPublishWhileSessionResumes(t *testing.T) {
	st := openStore(t, Config{Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub, _ := dialRaw(t, b.url, "resumer")
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "r/#", Qos: 2}}})
	if ack := sub.read(); ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback %+v", ack)
	}
	_ = sub.conn.Close()
	eventually(t, 5*time.Second, "subscriber gone", func() bool {
		cl, ok := b.srv.Clients.Get("resumer")
		return ok && cl.Closed()
	})
	pub := connect(t, b.url, "pub", true, nil)
	queued := []string{"q1", "q2", "q3"}
	for _, m := range queued {
		wait(t, "publish "+m, pub.Publish("r/1", 2, false, m))
	}

	pause := newPauseHook(t, mqtt.OnPacketSent, func(cl *mqtt.Client, pk packets.Packet) bool {
		return cl.ID == "resumer" && pk.FixedHeader.Type == packets.Connack
	})
	if err := b.srv.AddHook(pause, nil); err != nil {
		t.Fatal(err)
	}
	sub2, present := dialRaw(t, b.url, "resumer") // mochi stops after its CONNACK
	if !present {
		t.Fatal("session not present")
	}
	pause.waitPaused(t)
	tok := pub.Publish("r/1", 2, false, "new")
	eventually(t, 5*time.Second, "publish handed to the resuming client", func() bool {
		cl, ok := b.srv.Clients.Get("resumer")
		return ok && slices.ContainsFunc(cl.State.Inflight.GetAll(false), func(pk packets.Packet) bool {
			return string(pk.Payload) == "new"
		})
	})
	pause.resume()

	got := qos2Inbox(t, sub2, 4)
	wait(t, "publish new", tok)
	if want := append(queued, "new"); !slices.Equal(got, want) {
		t.Fatalf("subscriber got %q, want %q", got, want)
	}
}

// TestPublishBeforeOnStartedIsStored: mochi's listeners serve before it
// calls OnStarted; a message acknowledged in that window is stored before
// the acknowledgement like any other (not only later, when mochi hands it
// to the subscriber).
func TestPublishBeforeOnStartedIsStored(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	b := startBroker(t, st, nil)
	sub, _ := dialRaw(t, b.url, "early")
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "e/#", Qos: 1}}})
	if ack := sub.read(); ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback %+v", ack)
	}
	_ = sub.conn.Close()
	eventually(t, 5*time.Second, "subscriber gone", func() bool {
		cl, ok := b.srv.Clients.Get("early")
		return ok && cl.Closed()
	})
	b.close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart with hooks before ours that hold OnStarted (the listeners
	// already serve, our OnStarted has not run) and the hand-over of the
	// message to the subscriber.
	st2 := openStore(t, Config{Dir: dir, Sync: SyncAlways})
	srv := mqtt.New(&mqtt.Options{Logger: discard()})
	started := newPauseHook(t, mqtt.OnStarted, nil)
	handOver := newPauseHook(t, mqtt.OnQosPublish, func(cl *mqtt.Client, pk packets.Packet) bool {
		return cl.ID == "early" && pk.FixedHeader.Type == packets.Publish
	})
	for _, hk := range []mqtt.Hook{new(auth.AllowHook), started, handOver, NewHook(st2, srv)} {
		if err := srv.AddHook(hk, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := mochitest.NewListener(srv, "test")
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	started.waitPaused(t)
	pub := connect(t, "tcp://"+l.Address(), "early-pub", true, nil)
	// The engine hands the message to the subscriber's session before it
	// writes the PUBACK, which the store's commit holds in any case.
	tok := pub.Publish("e/1", 1, false, "acked")
	handOver.waitPaused(t)
	putRaw(t, st2, "z/barrier", "") // whatever was written is committed
	crashed := t.TempDir()
	copyDir(t, st2.Dir(), crashed)
	started.resume()
	handOver.resume()
	wait(t, "publish", tok)
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	mochitest.Close(t, srv)

	st3 := openStore(t, Config{Dir: crashed})
	b3 := startBroker(t, st3, nil)
	sub3, present := dialRaw(t, b3.url, "early")
	if !present {
		t.Fatal("session not present")
	}
	pk, err := sub3.next(2 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "acked" {
		t.Fatalf("want the message acknowledged before OnStarted, got type %d payload %q, %v", pk.FixedHeader.Type, pk.Payload, err)
	}
}
