package broker_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// closedByBroker reports whether the broker closed c within timeout.
func closedByBroker(c net.Conn, timeout time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !os.IsTimeout(err)
}

func TestPerIPConnectionLimit(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.MaxConnectionsPerIP = 3 })
	var held []*testutil.Raw
	for i := range 3 {
		r := testutil.DialRaw(t, b.Addr, 4)
		r.Connect(fmt.Sprintf("ip-%d", i), packets.Properties{})
		held = append(held, r)
	}
	extra, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedByBroker(extra, 5*time.Second) {
		t.Fatal("a 4th connection from the same IP was not closed")
	}
	_ = held[0].Conn.Close()
	testutil.Eventually(t, 5*time.Second, "a slot frees when a connection closes", func() bool {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			return false
		}
		defer c.Close()
		connect := testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: "ip-new", Clean: true, Keepalive: 30}}, 4)
		if _, err := c.Write(connect); err != nil {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 4)
		n, _ := io.ReadFull(c, buf)
		return n == 4 && buf[0] == 0x20
	})
}

func TestPerIPConnectionRate(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.ConnectionRatePerIP = 5 })
	conns := make([]net.Conn, 0, 20)
	for range 20 {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	admitted := 0
	for _, c := range conns {
		if !closedByBroker(c, 200*time.Millisecond) {
			admitted++
		}
	}
	// 5 at once, plus what the bucket refilled while the test dialled.
	if admitted < 5 || admitted > 12 {
		t.Fatalf("%d of 20 rapid connections admitted at 5/s", admitted)
	}
}

// TestSilentSocketFlood: 1,000 sockets that never send CONNECT are all
// closed after the connect timeout, and the goroutines they cost return.
func TestSilentSocketFlood(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.ConnectTimeout = time.Second })
	before := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, 1000)
	for range 1000 {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !closedByBroker(c, 10*time.Second) {
				mu.Lock()
				open++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if open > 0 {
		t.Fatalf("%d of 1000 silent sockets still open after %s", open, time.Since(start))
	}
	t.Logf("1000 silent sockets closed within %s", time.Since(start))
	for _, c := range conns {
		c.Close()
	}
	testutil.Eventually(t, 10*time.Second, "goroutines back to the level before the flood", func() bool {
		return runtime.NumGoroutine() <= before+20
	})
	ok := testutil.DialRaw(t, b.Addr, 5)
	ok.Connect("after-flood", packets.Properties{})
}

// TestConnectFlood: many clients connecting at once, each with its own id,
// then leaving; the broker serves them all and is still there.
func TestConnectFlood(t *testing.T) {
	b := testutil.StartBroker(t)
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", b.Addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			connect, err := testutil.EncodePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{ClientIdentifier: fmt.Sprintf("flood-%d", i), Clean: true, Keepalive: 30}}, 4)
			if err != nil {
				errs <- err
				return
			}
			if _, err := c.Write(connect); err != nil {
				errs <- err
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 || buf[3] != 0 {
				errs <- fmt.Errorf("client %d: CONNACK %x %v", i, buf, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ok := testutil.DialRaw(t, b.Addr, 5)
	ok.Connect("after-flood", packets.Properties{})
}

// TestHostilePackets: what a hostile or broken client sends ends its own
// connection with the right reason, and the broker keeps serving others.
func TestHostilePackets(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.MaxSubscriptions = 100 })
	many := make(packets.Subscriptions, 0, 1000)
	for i := range 1000 {
		many = append(many, packets.Subscription{Filter: fmt.Sprintf("flood/%d", i), Qos: 0})
	}
	for _, tc := range []struct {
		name string
		send []byte
		want byte // DISCONNECT reason; 0 = just closed
	}{
		{"wildcard in a PUBLISH topic", testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: 1, TopicName: "a/+/b"}, 5), packets.ErrTopicNameInvalid.Code},
		{"invalid UTF-8 in a topic", []byte{0x30, 0x05, 0x00, 0x02, 0xff, 0xfe, 0x00}, 0},
		{"1,000 subscriptions in one SUBSCRIBE", testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			PacketID: 1, Filters: many}, 5), packets.ErrQuotaExceeded.Code},
		{"topic 200 levels deep", testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName: deepTopic(200)}, 5), packets.ErrTopicNameInvalid.Code},
		{"unknown packet type 0", []byte{0x00, 0x00}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testutil.DialRaw(t, b.Addr, 5)
			c.Connect("", packets.Properties{})
			c.SendBytes(tc.send)
			for {
				pk, err := c.Read(5 * time.Second)
				if err != nil {
					if tc.want != 0 {
						t.Fatalf("closed without DISCONNECT 0x%02x: %v", tc.want, err)
					}
					if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("connection still open")
					}
					break
				}
				if pk.FixedHeader.Type == packets.Disconnect {
					if pk.ReasonCode != tc.want && tc.want != 0 {
						t.Fatalf("DISCONNECT 0x%02x, want 0x%02x", pk.ReasonCode, tc.want)
					}
					c.ExpectClosed(5 * time.Second)
					break
				}
			}
		})
	}
	ok := testutil.DialRaw(t, b.Addr, 5)
	ok.Connect("still-served", packets.Properties{})
	ok.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	ok.Expect(packets.Pingresp)
}

func deepTopic(levels int) string {
	b := make([]byte, 0, 2*levels)
	for i := range levels {
		if i > 0 {
			b = append(b, '/')
		}
		b = append(b, 'x')
	}
	return string(b)
}

// TestMaxConnections: above limits.max_connections a client gets CONNACK
// 0x89 server busy (MQTT 3: 0x03 server unavailable); one leaving frees a
// place.
func TestMaxConnections(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Limits.MaxConnections = 2 })
	first := testutil.DialRaw(t, b.Addr, 5)
	first.Connect("c1", packets.Properties{})
	second := testutil.DialRaw(t, b.Addr, 4)
	second.Connect("c2", packets.Properties{})
	for _, tc := range []struct {
		v    byte
		want byte
	}{{5, packets.ErrServerBusy.Code}, {4, 0x03}} {
		over := testutil.DialRaw(t, b.Addr, tc.v)
		over.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: "c3", Clean: true, Keepalive: 30}})
		if ack := over.Expect(packets.Connack); ack.ReasonCode != tc.want {
			t.Fatalf("v%d over the limit: CONNACK 0x%02x, want 0x%02x", tc.v, ack.ReasonCode, tc.want)
		}
	}
	_ = first.Conn.Close()
	testutil.Eventually(t, 5*time.Second, "a place frees when a client leaves", func() bool {
		c := testutil.DialRaw(t, b.Addr, 5)
		defer c.Conn.Close()
		c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: "c4", Clean: true, Keepalive: 30}})
		pk, err := c.Read(time.Second)
		return err == nil && pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0
	})
}

// TestMalformedFloodLogIsBounded: clients sending the engine's catalogue of
// malformed packets and protocol errors, one connection each, cost the log
// one short line per refused connection at most, rate-limited, with a count
// of those not logged: never a dump of the packet (upstream mochi logged
// whole packets, lines of 2 KB and more under a fuzzer), and no second line
// from Ferry for the same connection.
func TestMalformedFloodLogIsBounded(t *testing.T) {
	logs, logger := testutil.NewLog(slog.LevelInfo)
	b := testutil.StartBrokerWith(t, []broker.Option{broker.WithLogger(logger)})
	before := len(strings.Split(logs.String(), "\n"))

	var cases []packets.TMalformedCase
	for _, tc := range packets.TMalformedPackets {
		if tc.Code == packets.ErrMalformedPacket.Code || tc.Code == packets.ErrProtocolViolation.Code {
			cases = append(cases, tc)
		}
	}
	const n = 200
	pad := make([]byte, 3000) // a big PUBLISH refused after decoding, as a fuzzer sends them
	big := testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a",
		Payload: pad, Properties: packets.Properties{SubscriptionIdentifier: []int{1}}}, 5)
	for i := range n {
		tc := packets.TMalformedCase{Raw: big, Version: 5}
		if i%4 != 0 {
			tc = cases[i%len(cases)]
		}
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		send := tc.Raw
		if tc.Raw[0]>>4 != packets.Connect {
			send = append(testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{ClientIdentifier: fmt.Sprintf("bad-%d", i), Clean: true, Keepalive: 30}}, tc.Version), send...)
		}
		if _, err := c.Write(send); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil { // CONNACK, DISCONNECT, then the close
			t.Fatalf("%s: %v", tc.Desc, err)
		}
		_ = c.Close()
	}

	var refused, counted, longest int
	var other []string
	testutil.Eventually(t, 10*time.Second, "every refusal logged or counted", func() bool {
		refused, counted, longest, other = 0, 0, 0, nil
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		for _, l := range lines[before-1:] {
			longest = max(longest, len(l))
			switch {
			case strings.Contains(l, mqtt.LogRefusedMessage):
				refused++
			case strings.Contains(l, mqtt.LogSuppressedMessage):
				var k int
				if i := strings.Index(l, "count="); i >= 0 {
					_, _ = fmt.Sscanf(l[i+len("count="):], "%d", &k)
				}
				counted += k
			case strings.Contains(l, "client connected"):
			default:
				other = append(other, l)
			}
		}
		return refused+counted == n
	})
	// Every refused connection is counted, logged or not.
	if got := metric(t, b, `ferry_messages_dropped_total{reason="malformed_packet"}`); got != n {
		t.Errorf("malformed_packet counted %v times for %d refused connections", got, n)
	}
	if longest > 1024 {
		t.Errorf("a log line of %d bytes", longest)
	}
	if len(other) > 0 {
		t.Errorf("%d other lines, first: %s", len(other), other[0])
	}
	t.Logf("%d refused connections: %d lines, %d counted, longest line %d bytes", n, refused, counted, longest)
}
