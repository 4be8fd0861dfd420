// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// TestInterestFirstAndLast: the interest function hears of a filter when
// its first subscriber comes and its last goes, once each, and of each
// shared group of a filter on its own.
func TestInterestFirstAndLast(t *testing.T) {
	x := NewTopicsIndex()
	var got []string
	x.SetInterest(func(filter string, added bool) {
		if added {
			got = append(got, "+"+filter)
		} else {
			got = append(got, "-"+filter)
		}
	})
	steps := []struct {
		sub    bool
		client string
		filter string
	}{
		{true, "a", "x/+"},
		{true, "b", "x/+"},          // second subscriber: nothing
		{true, "a", "x/+"},          // resubscribe: nothing
		{true, "a", "$share/g/x/+"}, // a group is an interest of its own
		{true, "b", "$share/g/x/+"},
		{true, "b", "$share/h/x/+"},
		{false, "a", "x/+"},
		{false, "a", "x/+"}, // not subscribed any more: nothing
		{false, "c", "x/+"}, // never subscribed: nothing
		{false, "b", "x/+"},
		{false, "a", "$share/g/x/+"},
		{false, "b", "$share/g/x/+"},
		{false, "b", "$share/h/x/+"},
		{false, "b", "nothing/here"},
	}
	for _, s := range steps {
		if s.sub {
			x.Subscribe(s.client, packets.Subscription{Filter: s.filter})
		} else {
			x.Unsubscribe(s.filter, s.client)
		}
	}
	require.Equal(t, []string{"+x/+", "+$share/g/x/+", "+$share/h/x/+", "-x/+", "-$share/g/x/+", "-$share/h/x/+"}, got)
}

// TestRelayDeliversWithoutRetaining: a retained message a relay client
// injects reaches a Retain-As-Published subscriber with its retain flag,
// but is not retained here.
func TestRelayDeliversWithoutRetaining(t *testing.T) {
	s := newServer()
	_ = s.Serve()
	defer s.Close()

	relay := s.NewClient(nil, LocalListener, "relay", true)
	relay.Net.Relay = true

	receiver, r, w := newTestClient()
	receiver.ID = "receiver"
	receiver.Properties.ProtocolVersion = 5
	s.Clients.Add(receiver)
	s.Topics.Subscribe(receiver.ID, packets.Subscription{Filter: "a/b/c", RetainAsPublished: true})

	got := make(chan []byte)
	go func() {
		buf, _ := io.ReadAll(r)
		got <- buf
	}()
	pk := *packets.TPacketData[packets.Publish].Get(packets.TPublishRetain).Packet
	_, before := s.Topics.Retained.Get(pk.TopicName)
	require.False(t, before)
	require.NoError(t, s.InjectPacket(relay, pk))
	time.Sleep(10 * time.Millisecond)
	_ = w.Close()
	buf := <-got
	require.NotEmpty(t, buf)
	require.Equal(t, byte(packets.Publish<<4|1), buf[0]&0xf1, "delivered with the retain flag")
	_, after := s.Topics.Retained.Get(pk.TopicName)
	require.False(t, after, "a relayed message is not retained")
	require.True(t, strings.Contains(string(buf), pk.TopicName))
}

// TestRestoreSession: a session restored from another server is inherited
// by the connection being established: its subscriptions and in-flight
// messages, and no hook hears of the restored client's end.
func TestRestoreSession(t *testing.T) {
	s := newServer()
	_ = s.Serve()
	defer s.Close()
	old := s.NewClient(nil, LocalListener, "moved", false)
	s.Clients.Add(old)
	s.Topics.Subscribe("moved", packets.Subscription{Filter: "stale/#"})
	old.State.Subscriptions.Add("stale/#", packets.Subscription{Filter: "stale/#"})

	s.RestoreSession(storage.Client{ID: "moved", ProtocolVersion: 5,
		Properties: storage.ClientProperties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}},
		[]storage.Subscription{{Filter: "a/+", Qos: 1}},
		[]storage.Message{{ID: "x", TopicName: "a/b", Payload: []byte("p"), FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7}})

	cl, ok := s.Clients.Get("moved")
	require.True(t, ok)
	require.NotSame(t, old, cl, "the stale copy is replaced")
	require.True(t, cl.Closed(), "restored disconnected")
	_, ok = cl.State.Subscriptions.Get("a/+")
	require.True(t, ok)
	require.Empty(t, s.Topics.Subscribers("stale/x").Subscriptions, "the stale copy's subscriptions are gone")
	require.Contains(t, s.Topics.Subscribers("a/b").Subscriptions, "moved")
	pk, ok := cl.State.Inflight.Get(7)
	require.True(t, ok)
	require.Equal(t, "a/b", pk.TopicName)
	require.Equal(t, uint32(60), cl.Properties.Props.SessionExpiryInterval)
}

// TestForgetSession: a connected session taken over by another server is
// disconnected with 0x8E, without its will, and dropped.
func TestForgetSession(t *testing.T) {
	s := newServer()
	h := new(willCounter)
	require.NoError(t, s.AddHook(h, nil))
	_ = s.Serve()
	defer s.Close()

	cl, r, w := newTestClient()
	defer w.Close()
	cl.ID = "gone"
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Will = Will{Flag: 1, TopicName: "lwt", Payload: []byte("x")}
	cl.State.handled = make(chan struct{})
	s.Clients.Add(cl)
	s.Topics.Subscribe("gone", packets.Subscription{Filter: "f/#"})
	cl.State.Subscriptions.Add("f/#", packets.Subscription{Filter: "f/#"})
	go func() {
		// The connection's handler: it ends when the connection is closed.
		<-cl.State.open.Done()
		close(cl.State.handled)
	}()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	s.ForgetSession("gone")
	_, ok := s.Clients.Get("gone")
	require.False(t, ok)
	require.Empty(t, s.Topics.Subscribers("f/x").Subscriptions)
	_ = w.Close()
	b := <-got
	require.NotEmpty(t, b)
	require.Equal(t, byte(packets.Disconnect<<4), b[0])
	require.Contains(t, string(b), string([]byte{packets.ErrSessionTakenOver.Code}))
	require.Zero(t, h.wills.Load(), "no will: the session goes on elsewhere")
}

// TestWillPublisher: with a will publisher set, the engine hands it the
// will instead of delivering it itself, and OnWillSent is still called.
func TestWillPublisher(t *testing.T) {
	s := newServer()
	h := new(willCounter)
	require.NoError(t, s.AddHook(h, nil))
	var got []packets.Packet
	s.SetWillPublisher(func(_ *Client, pk packets.Packet) { got = append(got, pk) })
	_ = s.Serve()
	defer s.Close()
	cl, _, _ := newTestClient()
	cl.ID = "dying"
	cl.Properties.Will = Will{Flag: 1, TopicName: "lwt/x", Payload: []byte("bye"), Retain: true}
	s.sendLWT(cl)
	require.Len(t, got, 1)
	require.Equal(t, "lwt/x", got[0].TopicName)
	require.Equal(t, int64(1), h.wills.Load())
	_, retained := s.Topics.Retained.Get("lwt/x")
	require.False(t, retained, "the publisher retains it, not the engine")
}

type willCounter struct {
	HookBase
	wills atomic.Int64
}

func (h *willCounter) ID() string                         { return "will-counter" }
func (h *willCounter) Provides(b byte) bool               { return b == OnWillSent }
func (h *willCounter) OnWillSent(*Client, packets.Packet) { h.wills.Add(1) }

// TestAtReadEnd: a function registered while packets of one read buffer
// are processed runs after the last of them, once, before the reader waits
// for more; registering outside the reader is refused.
func TestAtReadEnd(t *testing.T) {
	cl, r, _ := newTestClient()
	defer cl.Stop(errClientStop)
	require.False(t, cl.AtReadEnd(func() {}), "outside the reader")

	two := []byte{
		packets.Publish << 4, 8, 0, 3, 'a', '/', 'b', 'x', 'y', 'z',
		packets.Publish << 4, 8, 0, 3, 'a', '/', 'c', 'x', 'y', 'z',
	}
	var seen, ran []int
	more := make(chan struct{})
	go func() {
		_, _ = r.Write(two) // one buffer: both packets
		<-more
		_, _ = r.Write(two[:10]) // a second read
		_ = r.Close()
	}()
	err := cl.Read(func(cl *Client, pk packets.Packet) error {
		seen = append(seen, len(seen))
		n := len(seen)
		require.True(t, cl.AtReadEnd(func() {
			ran = append(ran, n)
			if len(ran) == 2 {
				require.Equal(t, 2, len(seen), "run after the buffer's last packet")
				close(more)
			}
		}))
		return nil
	})
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, []int{1, 2, 3}, ran)
}

type refuser struct{ HookBase }

func (h *refuser) ID() string           { return "refuser" }
func (h *refuser) Provides(b byte) bool { return b == OnSessionEstablish }
func (h *refuser) OnSessionEstablish(cl *Client, _ packets.Packet) {
	cl.RefuseSession(packets.ErrServerUnavailable)
}

// TestRefuseSession: a session refused in OnSessionEstablish gets a
// CONNACK with the code and no session.
func TestRefuseSession(t *testing.T) {
	s := newServer()
	require.NoError(t, s.AddHook(new(refuser), nil))
	_ = s.Serve()
	defer s.Close()
	cl, r, _ := newTestClient()
	defer r.Close()
	cl.Properties.ProtocolVersion = 5
	done := make(chan error, 1)
	go func() { done <- s.EstablishConnection("tcp", cl.Net.Conn) }()
	_, err := r.Write(packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt5).RawBytes)
	require.NoError(t, err)
	b := make([]byte, 64)
	_ = r.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := r.Read(b)
	require.NoError(t, err)
	b = b[:n]
	require.Equal(t, byte(packets.Connack<<4), b[0])
	require.Greater(t, len(b), 3)
	require.Equal(t, packets.ErrServerUnavailable.Code, b[3], "reason code")
	_ = r.Close()
	<-done
	_, ok := s.Clients.Get("mochi-v5")
	require.False(t, ok, "no session")
}

// TestForgetSessionDuringDisconnect: a session taken over elsewhere while
// its client sends DISCONNECT: the engine's clearing of the will and
// ForgetSession's must not race (-race found it in a rolling restart).
func TestForgetSessionDuringDisconnect(t *testing.T) {
	s := newServer()
	_ = s.Serve()
	defer s.Close()
	connect := []byte{
		packets.Connect << 4, 24, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x04, 0, 60, // will flag, QoS 0
		0, 3, 'z', 'e', 'n', 0, 3, 'l', 'w', 't', 0, 2, 'g', 'o',
	}
	for range 100 {
		c, sc := tcpPair(t)
		done := make(chan error, 1)
		go func() { done <- s.EstablishConnection("tcp", sc) }()
		_, err := c.Write(connect)
		require.NoError(t, err)
		ack := make([]byte, 4)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(c, ack)
		require.NoError(t, err)
		require.Equal(t, byte(packets.Connack<<4), ack[0])
		forgot := make(chan struct{})
		go func() {
			s.ForgetSession("zen")
			close(forgot)
		}()
		_, _ = c.Write([]byte{packets.Disconnect << 4, 0})
		<-forgot
		_ = c.Close()
		<-done
	}
}
