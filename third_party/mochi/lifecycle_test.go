// SPDX-License-Identifier: MIT

package mqtt

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/stretchr/testify/require"
)

// Tests of the connection lifecycle over real TCP connections: Close,
// session takeover and resume, DISCONNECT by protocol version, topic alias
// lifetime. Their client side speaks through a Client used as a codec.

const lifecycleWait = 10 * time.Second

// tcpListener is a listener on 127.0.0.1:0 that reports the port it got.
type tcpListener struct {
	id string
	ln net.Listener
}

func (l *tcpListener) Init(*slog.Logger) (err error) {
	l.ln, err = net.Listen("tcp", "127.0.0.1:0")
	return err
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		go func() { _ = establish(l.id, c) }()
	}
}

func (l *tcpListener) ID() string       { return l.id }
func (l *tcpListener) Address() string  { return l.ln.Addr().String() }
func (l *tcpListener) Protocol() string { return "tcp" }
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	_ = l.ln.Close()
	closeClients(l.id)
}

// startTCPServer serves s (allow-all) on a tcpListener and closes it when the
// test ends, failing with every goroutine's stack if Close hangs.
func startTCPServer(t *testing.T, s *Server) string {
	t.Helper()
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	return serveTCP(t, s)
}

// serveTCP serves s, with the hooks it has, on a tcpListener and closes it
// when the test ends, as startTCPServer.
func serveTCP(t *testing.T, s *Server) string {
	t.Helper()
	l := &tcpListener{id: "tcp"}
	require.NoError(t, s.AddListener(l))
	require.NoError(t, s.Serve())
	t.Cleanup(func() { closeWithin(t, s, lifecycleWait) })
	return l.Address()
}

func closeWithin(t *testing.T, s *Server, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Close()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		t.Fatalf("Close did not return within %s:\n%s", d, buf[:runtime.Stack(buf, true)])
	}
}

// peer is the client side of one connection.
type peer struct {
	t     *testing.T
	conn  net.Conn
	codec *Client
	in    chan packets.Packet
	ended chan struct{} // closed when the server closed the connection
}

func dialPeer(t *testing.T, addr string, version byte) *peer {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, lifecycleWait)
	require.NoError(t, err)
	codec := newClient(conn, &ops{info: new(system.Info), hooks: new(Hooks), log: logger,
		options: &Options{Capabilities: NewDefaultServerCapabilities()}})
	codec.Properties.ProtocolVersion = version
	p := &peer{t: t, conn: conn, codec: codec, in: make(chan packets.Packet, 1024), ended: make(chan struct{})}
	go func() {
		defer close(p.ended)
		for {
			fh := new(packets.FixedHeader)
			if err := codec.ReadFixedHeader(fh); err != nil {
				return
			}
			pk, err := codec.ReadPacket(fh)
			if err != nil {
				return
			}
			p.in <- pk
		}
	}()
	t.Cleanup(func() { _ = conn.Close() })
	return p
}

// connect dials addr and sends CONNECT; it returns the peer and the CONNACK.
func connect(t *testing.T, addr string, version byte, id string, clean bool, expiry uint32) (*peer, packets.Packet) {
	t.Helper()
	p := dialPeer(t, addr, version)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 30,
			ProtocolName: protocolName(version)}}
	if version == 5 && expiry > 0 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = expiry, true
	}
	p.send(pk)
	ack := p.expect(packets.Connack)
	require.Equal(t, packets.CodeSuccess.Code, ack.ReasonCode, "CONNACK of %s", id)
	return p, ack
}

func protocolName(version byte) []byte {
	if version == 3 {
		return []byte("MQIsdp")
	}
	return []byte("MQTT")
}

func (p *peer) send(pk packets.Packet) {
	p.t.Helper()
	require.NoError(p.t, p.codec.WritePacket(pk))
}

// next returns the next packet, or false once the connection has ended.
func (p *peer) next() (packets.Packet, bool) {
	p.t.Helper()
	select {
	case pk := <-p.in:
		return pk, true
	case <-p.ended:
		select {
		case pk := <-p.in:
			return pk, true
		default:
			return packets.Packet{}, false
		}
	case <-time.After(lifecycleWait):
		p.t.Fatalf("no packet and no close within %s", lifecycleWait)
		return packets.Packet{}, false
	}
}

func (p *peer) expect(typ byte) packets.Packet {
	p.t.Helper()
	pk, ok := p.next()
	require.True(p.t, ok, "connection closed, want %s", packets.PacketNames[typ])
	require.Equal(p.t, packets.PacketNames[typ], packets.PacketNames[pk.FixedHeader.Type])
	return pk
}

// expectEach reads one packet of each type in types, in any order (a
// delivery and the PUBACK of its publish, say), and returns them by type.
func (p *peer) expectEach(types ...byte) map[byte]packets.Packet {
	p.t.Helper()
	got := make(map[byte]packets.Packet, len(types))
	for range types {
		pk, ok := p.next()
		require.True(p.t, ok, "connection closed, want %v", types)
		got[pk.FixedHeader.Type] = pk
	}
	for _, typ := range types {
		require.Contains(p.t, got, typ, "want a %s", packets.PacketNames[typ])
	}
	return got
}

// expectClosed waits for the server to close the connection and returns
// what it sent meanwhile.
func (p *peer) expectClosed() []packets.Packet {
	p.t.Helper()
	var got []packets.Packet
	for {
		pk, ok := p.next()
		if !ok {
			return got
		}
		got = append(got, pk)
	}
}

func (p *peer) subscribe(id uint16, filters ...string) {
	p.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	p.send(pk)
	ack := p.expect(packets.Suback)
	for i, c := range ack.ReasonCodes {
		require.Less(p.t, c, packets.ErrUnspecifiedError.Code, "filter %s refused", filters[i])
	}
}

// waitOffline waits until client id's connection has ended and its
// handler has returned.
func waitOffline(t *testing.T, s *Server, id string) {
	t.Helper()
	require.Eventually(t, func() bool {
		cl, ok := s.Clients.Get(id)
		return ok && cl.Closed() && s.conns.len() == 0
	}, lifecycleWait, time.Millisecond)
}

func newLifecycleServer() *Server {
	return New(&Options{Logger: logger, InlineClient: true})
}

// TestClientsGetByListenerWriterWaiting: GetByListener took the read lock a
// second time (through Len) while holding it; a writer waiting in between
// deadlocked both for good (upstream #488). Readers and writers race here
// until the deadline.
func TestClientsGetByListenerWriterWaiting(t *testing.T) {
	cls := NewClients()
	for i := 0; i < 8; i++ {
		cl, _, _ := newTestClient()
		cl.ID = fmt.Sprintf("c%d", i)
		cl.Net.Listener = "t1"
		cls.Add(cl)
	}
	extra, _, _ := newTestClient()
	extra.ID = "extra"

	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				_ = cls.GetByListener("t1")
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			cls.Add(extra)
			cls.Delete(extra.ID)
		}
	}()
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(lifecycleWait):
		t.Fatal("GetByListener deadlocked against Add/Delete")
	}
}

// TestServerCloseWhileConnecting: connections that arrive while Close runs
// are either served and then disconnected, or refused; Close returns, and
// the race detector sees no Add of the clients' WaitGroup concurrent with
// its Wait (upstream added from each connection's goroutine, #424).
func TestServerCloseWhileConnecting(t *testing.T) {
	for round := 0; round < 20; round++ {
		s := newLifecycleServer()
		require.NoError(t, s.AddHook(new(AllowHook), nil))
		l := &tcpListener{id: "tcp"}
		require.NoError(t, s.AddListener(l))
		require.NoError(t, s.Serve())

		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", l.Address(), time.Second)
					if err != nil {
						return
					}
					codec := newClient(c, &ops{info: new(system.Info), hooks: new(Hooks), log: logger,
						options: &Options{Capabilities: NewDefaultServerCapabilities()}})
					codec.Properties.ProtocolVersion = 4
					_ = codec.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
						Connect: packets.ConnectParams{ClientIdentifier: fmt.Sprintf("r%d-%d-%d", round, i, n), Clean: true,
							Keepalive: 30, ProtocolName: protocolName(4)}})
					_ = c.Close()
				}
			}(i)
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		closeWithin(t, s, lifecycleWait)
		close(stop)
		wg.Wait()
	}
}

// TestServerCloseStopsConnectingClient: a connection that has sent no
// CONNECT yet when Close begins is closed by it; upstream's Close waited for
// it until its keepalive or CONNECT deadline.
func TestServerCloseStopsConnectingClient(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p := dialPeer(t, addr, 4)
	require.Eventually(t, func() bool { return s.conns.len() == 1 }, lifecycleWait, time.Millisecond)
	closeWithin(t, s, 2*time.Second)
	require.Empty(t, p.expectClosed())
}

// TestDisconnectClientByVersion: MQTT 3.1.1 has no DISCONNECT from a server,
// so a 3.1.1 client is just disconnected (upstream wrote one, which clients
// report as a protocol error); MQTT 5 gets DISCONNECT with the reason.
func TestDisconnectClientByVersion(t *testing.T) {
	for _, version := range []byte{3, 4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			s := newLifecycleServer()
			addr := startTCPServer(t, s)
			p, _ := connect(t, addr, version, "dc", true, 0)
			cl, ok := s.Clients.Get("dc")
			require.True(t, ok)
			require.ErrorIs(t, s.DisconnectClient(cl, packets.ErrServerShuttingDown), packets.ErrServerShuttingDown)
			got := p.expectClosed()
			if version < 5 {
				require.Empty(t, got)
				return
			}
			require.Len(t, got, 1)
			require.Equal(t, byte(packets.Disconnect), got[0].FixedHeader.Type)
			require.Equal(t, packets.ErrServerShuttingDown.Code, got[0].ReasonCode)
		})
	}
}

// TestTakeoverRapidReconnects: a persistent session reconnected many times
// in a row, each new connection arriving while the previous one is still
// up, keeps all of its subscriptions, and delivery reaches the last
// connection. Upstream, the old connection's clean-up could run after the
// new one had inherited the session.
func TestTakeoverRapidReconnects(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			s := newLifecycleServer()
			addr := startTCPServer(t, s)
			filters := []string{"a/1", "a/2", "b/+", "c/#"}
			p, _ := connect(t, addr, version, "rr", false, 3600)
			p.subscribe(1, filters...)
			for i := 0; i < 50; i++ {
				next, ack := connect(t, addr, version, "rr", false, 3600)
				require.True(t, ack.SessionPresent, "reconnect %d: session not present", i)
				old := p.expectClosed()
				if version == 5 {
					require.Len(t, old, 1)
					require.Equal(t, packets.ErrSessionTakenOver.Code, old[0].ReasonCode)
				} else {
					require.Empty(t, old)
				}
				p = next
			}
			requireSession(t, s, "rr", filters)
			require.NoError(t, s.Publish("b/x", []byte("hello"), false, 1))
			pk := p.expect(packets.Publish)
			require.Equal(t, "b/x", pk.TopicName)
		})
	}
}

// TestTakeoverConcurrentConnects: connections with one client id arriving
// together end with exactly one of them connected, holding the complete
// session.
func TestTakeoverConcurrentConnects(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	filters := []string{"x/1", "x/2", "y/#"}
	first, _ := connect(t, addr, 5, "cc", false, 3600)
	first.subscribe(1, filters...)

	for round := 0; round < 10; round++ {
		const n = 6
		peers := make([]*peer, n)
		var wg sync.WaitGroup
		for i := range peers {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				p := dialPeer(t, addr, 5)
				p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
					Properties: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true},
					Connect: packets.ConnectParams{ClientIdentifier: "cc", Keepalive: 30,
						ProtocolName: protocolName(5)}})
				peers[i] = p
			}(i)
		}
		wg.Wait()
		// All but one are taken over: one handler is left, and its client
		// is the one in Clients, with the whole session.
		var live *Client
		require.Eventually(t, func() bool {
			ended := 0
			for _, p := range peers {
				select {
				case <-p.ended:
					ended++
				default:
				}
			}
			cl, ok := s.Clients.Get("cc")
			if ended != n-1 || !ok || cl.Closed() || s.conns.len() != 1 {
				return false
			}
			live = cl
			return true
		}, lifecycleWait, time.Millisecond)
		requireSession(t, s, "cc", filters)
		var survivor *peer
		for _, p := range peers {
			if p.conn.LocalAddr().String() == live.Net.Remote {
				survivor = p
				continue
			}
			for _, pk := range p.expectClosed() {
				if pk.FixedHeader.Type == packets.Disconnect {
					require.Equal(t, packets.ErrSessionTakenOver.Code, pk.ReasonCode)
				}
			}
		}
		require.NotNil(t, survivor)
		ack := survivor.expect(packets.Connack)
		require.True(t, ack.SessionPresent)
		require.NoError(t, s.Publish("y/z", []byte("hi"), false, 1))
		pk := survivor.expect(packets.Publish)
		require.Equal(t, "y/z", pk.TopicName)
		survivor.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
}

// requireSession checks that client id holds exactly filters, in its own
// state and in the topic index.
func requireSession(t *testing.T, s *Server, id string, filters []string) {
	t.Helper()
	cl, ok := s.Clients.Get(id)
	require.True(t, ok)
	subs := cl.State.Subscriptions.GetAll()
	require.Len(t, subs, len(filters))
	for _, f := range filters {
		require.Contains(t, subs, f)
		_, found := s.Topics.Subscribers(topicFor(f)).Subscriptions[id]
		require.True(t, found, "filter %s not in the topic index", f)
	}
}

// topicFor returns a topic that filter f matches.
func topicFor(f string) string {
	b := []byte(f)
	for i := range b {
		if b[i] == '+' || b[i] == '#' {
			b[i] = 'z'
		}
	}
	return string(b)
}

// TestResumeDoesNotResendPubrec: a QoS 2 PUBLISH from the client answered
// with PUBREC, then a reconnect: the server must not send PUBREC again
// (the client resends PUBREL [MQTT-4.4.0-1]); upstream did. PUBREL then
// completes the flow.
func TestResumeDoesNotResendPubrec(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 5, "q2", false, 3600)
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 9,
		TopicName: "q/2", Payload: []byte("x")})
	p.expect(packets.Pubrec)
	_ = p.conn.Close()

	p, ack := connect(t, addr, 5, "q2", false, 3600)
	require.True(t, ack.SessionPresent)
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	p.expect(packets.Pingresp) // nothing came before it
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 9})
	comp := p.expect(packets.Pubcomp)
	require.Equal(t, uint16(9), comp.PacketID)
}

// TestTopicAliasEndsWithConnection: a client's topic aliases belong to the
// network connection [MQTT-3.3.2-7]. After a reconnect, even to a resumed
// session, a PUBLISH with only an alias set on the previous connection gets
// DISCONNECT 0x94 [MQTT-3.3.2-8]; upstream acknowledged it and dropped the
// message. On the connection that set it the alias works.
func TestTopicAliasEndsWithConnection(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	sub, _ := connect(t, addr, 5, "alias-sub", true, 0)
	sub.subscribe(1, "al/#")

	aliased := func(topic string) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3,
			TopicName: topic, Payload: []byte("m"), Properties: packets.Properties{TopicAlias: 4, TopicAliasFlag: true}}
	}
	p, _ := connect(t, addr, 5, "alias-pub", false, 3600)
	p.send(aliased("al/one"))
	require.Equal(t, packets.CodeSuccess.Code, p.expect(packets.Puback).ReasonCode)
	p.send(aliased(""))
	require.Equal(t, packets.CodeSuccess.Code, p.expect(packets.Puback).ReasonCode)
	require.Equal(t, "al/one", sub.expect(packets.Publish).TopicName)
	require.Equal(t, "al/one", sub.expect(packets.Publish).TopicName)
	_ = p.conn.Close()

	p, ack := connect(t, addr, 5, "alias-pub", false, 3600)
	require.True(t, ack.SessionPresent)
	p.send(aliased(""))
	got := p.expectClosed()
	require.Len(t, got, 1)
	require.Equal(t, byte(packets.Disconnect), got[0].FixedHeader.Type)
	require.Equal(t, packets.ErrTopicAliasInvalid.Code, got[0].ReasonCode)
}

// TestResumeDupOnlyIfSent: messages queued for a persistent session while
// its client was away go out with DUP clear when it reconnects; those it
// was sent and did not acknowledge go out again with DUP set. Upstream set
// DUP on every message of a resumed session.
func TestResumeDupOnlyIfSent(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 5, "dup", false, 3600)
	p.subscribe(1, "d/#")
	_ = p.conn.Close()
	waitOffline(t, s, "dup")
	require.NoError(t, s.Publish("d/1", []byte("one"), false, 1))
	require.NoError(t, s.Publish("d/2", []byte("two"), false, 1))

	for _, sentBefore := range []bool{false, true} {
		p, ack := connect(t, addr, 5, "dup", false, 3600)
		require.True(t, ack.SessionPresent)
		got := map[string]bool{} // payload: DUP; mochi resends in Created order, by the second
		for range 2 {
			pk := p.expect(packets.Publish)
			got[string(pk.Payload)] = pk.FixedHeader.Dup
		}
		require.Equal(t, map[string]bool{"one": sentBefore, "two": sentBefore}, got)
		_ = p.conn.Close() // unacknowledged
	}
}

// TestResumeSendsTopicNotOldAlias: a message queued for a session while its
// client was away reaches the next connection with its topic, not with an
// outbound topic alias of the previous connection, which the new one never
// saw [MQTT-3.3.2-7]; upstream sent it with an empty topic and the old
// alias.
func TestResumeSendsTopicNotOldAlias(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	dial := func() *peer {
		p := dialPeer(t, addr, 5)
		p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Properties: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true, TopicAliasMaximum: 5},
			Connect:    packets.ConnectParams{ClientIdentifier: "oa", Keepalive: 30, ProtocolName: protocolName(5)}})
		p.expect(packets.Connack)
		return p
	}
	p := dial()
	p.subscribe(1, "oa/t")
	require.NoError(t, s.Publish("oa/t", []byte("first"), false, 1))
	pk := p.expect(packets.Publish)
	require.True(t, pk.Properties.TopicAliasFlag) // the alias is set on this connection
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	_ = p.conn.Close()
	waitOffline(t, s, "oa")
	require.NoError(t, s.Publish("oa/t", []byte("queued"), false, 1))

	p = dial()
	pk = p.expect(packets.Publish)
	require.Equal(t, "queued", string(pk.Payload))
	require.Equal(t, "oa/t", pk.TopicName)
	require.False(t, pk.Properties.TopicAliasFlag)
}

// slowCleanUp holds the first OnUnsubscribed (a connection's clean-up,
// UnsubscribeClient) for a while, widening the window in which a new
// connection of the same client id arrives.
type slowCleanUp struct {
	HookBase
	first   atomic.Bool // set by the first call; later ones pass at once
	entered chan struct{}
	done    chan struct{}
}

func (h *slowCleanUp) ID() string           { return "slow-clean-up" }
func (h *slowCleanUp) Provides(b byte) bool { return b == OnUnsubscribed }
func (h *slowCleanUp) OnUnsubscribed(*Client, packets.Packet) {
	if h.first.CompareAndSwap(false, true) {
		close(h.entered)
		time.Sleep(300 * time.Millisecond)
		close(h.done)
	}
}

// TestTakeoverDuringCleanUp: a clean-session client that reconnects while
// its old connection is being cleaned up keeps what it subscribed to on the
// new connection. Upstream, the old connection's clean-up went on after the
// new connection took the client id, and deleted the new client from
// Clients by id: nothing reached it any more.
func TestTakeoverDuringCleanUp(t *testing.T) {
	s := newLifecycleServer()
	h := &slowCleanUp{entered: make(chan struct{}), done: make(chan struct{})}
	require.NoError(t, s.AddHook(h, nil))
	addr := startTCPServer(t, s)
	old, _ := connect(t, addr, 4, "cu", true, 0)
	old.subscribe(1, "cu/#")
	_ = old.conn.Close()
	<-h.entered

	p, _ := connect(t, addr, 4, "cu", true, 0)
	p.subscribe(1, "cu/#")
	<-h.done
	// The old connection's handler has returned (ClientsConnected drops as
	// its last step).
	require.Eventually(t, func() bool { return atomic.LoadInt64(&s.Info.ClientsConnected) == 1 },
		lifecycleWait, time.Millisecond)
	require.NoError(t, s.Publish("cu/x", []byte("x"), false, 0))
	require.Equal(t, "cu/x", p.expect(packets.Publish).TopicName)
}

// stuckPublish holds every OnPublish until release closes.
type stuckPublish struct {
	HookBase
	entered chan struct{}
	release chan struct{}
	first   atomic.Bool
}

func (h *stuckPublish) ID() string           { return "stuck-publish" }
func (h *stuckPublish) Provides(b byte) bool { return b == OnPublish }
func (h *stuckPublish) OnPublish(_ *Client, pk packets.Packet) (packets.Packet, error) {
	if h.first.CompareAndSwap(false, true) {
		close(h.entered)
	}
	<-h.release
	return pk, nil
}

// TestTakeoverOfStuckConnection: a new connection waits for the previous
// connection of its client id to finish only so long (takeoverWait): one
// whose handler is stuck in a hook does not keep the client out for ever.
func TestTakeoverOfStuckConnection(t *testing.T) {
	s := newLifecycleServer()
	h := &stuckPublish{entered: make(chan struct{}), release: make(chan struct{})}
	require.NoError(t, s.AddHook(h, nil))
	addr := startTCPServer(t, s)
	t.Cleanup(func() { close(h.release) }) // before the server closes
	old, _ := connect(t, addr, 5, "stuck", false, 3600)
	old.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "s/x", Payload: []byte("x")})
	<-h.entered

	start := time.Now()
	p, ack := connect(t, addr, 5, "stuck", false, 3600)
	require.True(t, ack.SessionPresent)
	require.GreaterOrEqual(t, time.Since(start), takeoverWait)
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	p.expect(packets.Pingresp)
}

// TestLateDeliveryFollowsTheSession: a publisher that looked a client up
// just before a new connection inherited its session delivers to the old
// client object; that delivery goes to the new connection. Upstream copied
// the in-flight messages to the new connection and the late one stayed
// with the old, which nobody would send or resend: lost, and its packet id
// reused.
func TestLateDeliveryFollowsTheSession(t *testing.T) {
	s := newLifecycleServer()
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 5, "mv", false, 3600)
	p.subscribe(1, "mv/#")
	_ = p.conn.Close()
	waitOffline(t, s, "mv")
	require.NoError(t, s.Publish("mv/1", []byte("queued"), false, 1))
	old, ok := s.Clients.Get("mv")
	require.True(t, ok)

	p, ack := connect(t, addr, 5, "mv", false, 3600)
	require.True(t, ack.SessionPresent)
	require.Equal(t, "queued", string(p.expect(packets.Publish).Payload))

	late := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "mv/2", Payload: []byte("late"), Created: time.Now().Unix(), PublishID: 1 << 40}
	_, err := s.publishToClient(old, packets.Subscription{Filter: "mv/#", Qos: 1}, late)
	require.NoError(t, err)
	require.Equal(t, "late", string(p.expect(packets.Publish).Payload))
}

// publishOnConnack publishes on topic when a resumed session's CONNACK has
// been written: the client is in the index, its resend not yet done.
type publishOnConnack struct {
	HookBase
	s         *Server
	topic     string
	published chan struct{} // closed once it has published
}

func (h *publishOnConnack) ID() string           { return "publish-on-connack" }
func (h *publishOnConnack) Provides(b byte) bool { return b == OnPacketSent }
func (h *publishOnConnack) OnPacketSent(_ *Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Connack && pk.SessionPresent {
		_ = h.s.Publish(h.topic, []byte("new"), false, 1)
		close(h.published)
	}
}

// TestResumeDoesNotResendNewDeliveries: a message delivered to a resuming
// connection after it inherited its session, before the resend, is
// written once, after the resent ones. Upstream resent everything in
// flight at the time of the resend, the new message included, and wrote
// its queued delivery as well: twice in one connection.
func TestResumeDoesNotResendNewDeliveries(t *testing.T) {
	s := newLifecycleServer()
	h := &publishOnConnack{s: s, topic: "rs/new", published: make(chan struct{})}
	require.NoError(t, s.AddHook(h, nil))
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 5, "rs", false, 3600)
	p.subscribe(1, "rs/#", "barrier")
	_ = p.conn.Close()
	waitOffline(t, s, "rs")
	require.NoError(t, s.Publish("rs/old", []byte("old"), false, 1))

	p, ack := connect(t, addr, 5, "rs", false, 3600)
	require.True(t, ack.SessionPresent)
	// The client may read its CONNACK before the hook has published.
	select {
	case <-h.published:
	case <-time.After(lifecycleWait):
		t.Fatal("the hook did not publish")
	}
	require.NoError(t, s.Publish("barrier", nil, false, 0))
	var got []string
	for {
		pk := p.expect(packets.Publish)
		if pk.TopicName == "barrier" {
			break
		}
		got = append(got, string(pk.Payload))
	}
	require.Equal(t, []string{"old", "new"}, got)
}

// readRules allows everything but reading ru/secret once deny is set: ACL
// rules that change while a session is away.
type readRules struct {
	HookBase
	deny atomic.Bool
}

func (h *readRules) ID() string { return "read-rules" }
func (h *readRules) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck
}
func (h *readRules) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *readRules) OnACLCheck(_ *Client, topic string, write bool) bool {
	return write || !h.deny.Load() || topic != "ru/secret"
}

// TestResumeDropsUnreadable: a resumed session's queued messages its client
// may no longer read (the rules changed while it was away, or another
// identity took the session over) are dropped and counted, not resent.
// Upstream resent them.
func TestResumeDropsUnreadable(t *testing.T) {
	s := newLifecycleServer()
	rules := new(readRules)
	require.NoError(t, s.AddHook(rules, nil))
	addr := serveTCP(t, s)
	p, _ := connect(t, addr, 5, "ru", false, 3600)
	p.subscribe(1, "ru/#", "barrier")
	_ = p.conn.Close()
	waitOffline(t, s, "ru")
	require.NoError(t, s.Publish("ru/secret", []byte("secret"), false, 1))
	require.NoError(t, s.Publish("ru/open", []byte("open"), false, 1))
	rules.deny.Store(true)

	p, ack := connect(t, addr, 5, "ru", false, 3600)
	require.True(t, ack.SessionPresent)
	require.NoError(t, s.Publish("barrier", nil, false, 0))
	var got []string
	for {
		pk := p.expect(packets.Publish)
		if pk.TopicName == "barrier" {
			break
		}
		got = append(got, string(pk.Payload))
	}
	require.Equal(t, []string{"open"}, got)
	require.Equal(t, int64(1), atomic.LoadInt64(&s.Info.QueuedUnreadable))
	cl, ok := s.Clients.Get("ru")
	require.True(t, ok)
	require.Equal(t, 1, cl.State.Inflight.Len(), "open, not acknowledged")
	require.Equal(t, int64(1), atomic.LoadInt64(&s.Info.Inflight), "open, not acknowledged")
}

// droppedCounter counts OnQosDropped calls.
type droppedCounter struct {
	HookBase
	n atomic.Int64
}

func (h *droppedCounter) ID() string { return "dropped-counter" }
func (h *droppedCounter) Provides(b byte) bool {
	return b == OnQosDropped || b == OnConnectAuthenticate || b == OnACLCheck
}
func (h *droppedCounter) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *droppedCounter) OnACLCheck(*Client, string, bool) bool              { return true }
func (h *droppedCounter) OnQosDropped(*Client, packets.Packet)               { h.n.Add(1) }

// TestResumeKeepsInflightCount: a resumed session's queued messages stay
// counted in Info.Inflight and are not reported dropped. The flows move
// to the new client (Inflight.moveTo); upstream copied them and then
// cleared the old client, which took every inherited flow off the count
// (it read 0 after the resume, -2 once both were acknowledged) and called
// OnQosDropped for each.
func TestResumeKeepsInflightCount(t *testing.T) {
	s := newLifecycleServer()
	dropped := new(droppedCounter)
	require.NoError(t, s.AddHook(dropped, nil))
	addr := serveTCP(t, s)
	p, _ := connect(t, addr, 5, "rk", false, 3600)
	p.subscribe(1, "rk/#")
	_ = p.conn.Close()
	waitOffline(t, s, "rk")
	require.NoError(t, s.Publish("rk/1", []byte("1"), false, 1))
	require.NoError(t, s.Publish("rk/2", []byte("2"), false, 1))
	require.Equal(t, int64(2), atomic.LoadInt64(&s.Info.Inflight), "queued offline")

	p, ack := connect(t, addr, 5, "rk", false, 3600)
	require.True(t, ack.SessionPresent)
	var ids []uint16
	for range 2 {
		ids = append(ids, p.expect(packets.Publish).PacketID)
	}
	require.Equal(t, int64(2), atomic.LoadInt64(&s.Info.Inflight), "resent, not acknowledged")
	require.Zero(t, dropped.n.Load(), "nothing dropped")
	for _, id := range ids {
		p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ProtocolVersion: 5})
	}
	cl, ok := s.Clients.Get("rk")
	require.True(t, ok)
	require.Eventually(t, func() bool { return cl.State.Inflight.Len() == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, int64(0), atomic.LoadInt64(&s.Info.Inflight), "all acknowledged")
}

// retainOnSuback publishes a retained message once a SUBACK is written,
// before the engine sends the new subscription its retained messages.
type retainOnSuback struct {
	HookBase
	s *Server
}

func (h *retainOnSuback) ID() string           { return "retain-on-suback" }
func (h *retainOnSuback) Provides(b byte) bool { return b == OnPacketSent }
func (h *retainOnSuback) OnPacketSent(_ *Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Suback {
		_ = h.s.Publish("rt/x", []byte("late"), true, 1)
	}
}

// TestRetainedAfterSubackComesOnce: a message retained after the SUBACK is
// written reaches the new subscription once, as it is published, not a
// second time as a retained message. Upstream collected the retained
// messages after writing the SUBACK (seen as a session restored with the
// same message twice in a persistence test).
func TestRetainedAfterSubackComesOnce(t *testing.T) {
	s := newLifecycleServer()
	require.NoError(t, s.AddHook(&retainOnSuback{s: s}, nil))
	addr := startTCPServer(t, s)
	p, _ := connect(t, addr, 4, "rt", true, 0)
	p.subscribe(1, "rt/#", "barrier")
	// The client's own publish is handled after its SUBSCRIBE, so its copy
	// is queued behind whatever that SUBSCRIBE sent.
	p.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "barrier", ProtocolVersion: 4})
	var got []string
	for {
		pk := p.expect(packets.Publish)
		if pk.TopicName == "barrier" {
			break
		}
		got = append(got, string(pk.Payload))
	}
	require.Equal(t, []string{"late"}, got)
}
