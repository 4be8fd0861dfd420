// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// wirePacket is one packet read back from the server: its type and body.
type wirePacket struct {
	typ  byte
	body []byte
}

// readWire splits what the server wrote into packets.
func readWire(t *testing.T, b []byte) []wirePacket {
	t.Helper()
	var out []wirePacket
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		first, _ := r.ReadByte()
		n, _, err := packets.DecodeLength(r)
		require.NoError(t, err, "server wrote %x", b)
		body := make([]byte, n)
		_, err = io.ReadFull(r, body)
		require.NoError(t, err, "server wrote %x", b)
		out = append(out, wirePacket{typ: first >> 4, body: body})
	}
	return out
}

// exchange runs one connection through s: it writes each of in, in order,
// then reads what the server writes until it closes the connection, and
// returns that and the handler's error.
func exchange(t *testing.T, s *Server, in ...[]byte) ([]byte, error) {
	t.Helper()
	r, w := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.EstablishConnection("tcp", r) }()
	go func() {
		for _, b := range in {
			if _, err := w.Write(b); err != nil {
				return
			}
		}
	}()
	_ = w.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(w)
	_ = w.Close()
	select {
	case err := <-done:
		return got, err
	case <-time.After(10 * time.Second):
		t.Fatal("connection handler did not end")
		return nil, nil
	}
}

// connectFor is a CONNECT the server accepts, in the given version.
func connectFor(version byte) []byte {
	if version == 5 {
		return packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt5).RawBytes
	}
	return packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt311).RawBytes
}

// TestServerRefusesMalformedPackets writes each packet of the shared
// catalogue to a server: it never panics (upstream #501 killed the
// process), an MQTT 5 client is told the reason code the spec prescribes in
// a DISCONNECT (a CONNACK for its CONNECT), and an MQTT 3.1.1 client's
// connection is closed with no packet, as 3.1.1 has no such codes.
func TestServerRefusesMalformedPackets(t *testing.T) {
	for _, tc := range packets.TMalformedPackets {
		t.Run(tc.Desc, func(t *testing.T) {
			s := newServer()
			defer s.Close()
			isConnect := tc.Raw[0]>>4 == packets.Connect
			var got []byte
			var err error
			if isConnect {
				got, err = exchange(t, s, tc.Raw)
			} else {
				got, err = exchange(t, s, connectFor(tc.Version), tc.Raw)
			}
			require.Error(t, err)
			pks := readWire(t, got)
			if !isConnect {
				require.NotEmpty(t, pks, "no CONNACK")
				require.Equal(t, packets.Connack, pks[0].typ)
				require.Equal(t, byte(0), pks[0].body[1], "CONNECT refused")
				pks = pks[1:]
			}
			if tc.Version < 5 {
				require.Empty(t, pks, "MQTT 3.1.1 client got %v", pks)
				return
			}
			require.Len(t, pks, 1, "want one packet with reason code 0x%02x", tc.Code)
			want := packets.Disconnect
			if isConnect {
				want = packets.Connack
			}
			require.Equal(t, want, pks[0].typ)
			code := pks[0].body[0]
			if isConnect {
				code = pks[0].body[1]
			}
			require.Equal(t, tc.Code, code, "reason code 0x%02x, want 0x%02x", code, tc.Code)
		})
	}
}

// TestServerConnackCodesFor311: an MQTT 3.1.1 client refused at CONNECT gets
// a 3.1.1 return code or no CONNACK, never an MQTT 5 reason code such as
// 0x82; a CONNECT naming a version the server does not speak gets 0x01.
func TestServerConnackCodesFor311(t *testing.T) {
	head := func(version, flags byte) []byte {
		return []byte{0, 4, 'M', 'Q', 'T', 'T', version, flags, 0, 60}
	}
	frame := func(parts ...[]byte) []byte {
		body := bytes.Join(parts, nil)
		return append([]byte{packets.Connect << 4, byte(len(body))}, body...)
	}
	for _, tc := range []struct {
		desc string
		raw  []byte
		want []byte // the CONNACK, nil for none
	}{
		{"reserved flag set: not a conforming CONNECT", frame(head(4, 0x03), []byte{0, 1, 'c'}), nil},
		{"will retain without will", frame(head(4, 0x22), []byte{0, 1, 'c'}), nil},
		{"empty client id without clean session", frame(head(4, 0x00), []byte{0, 0}), []byte{0x20, 2, 0, 0x02}},
		{"protocol level 6", frame(head(6, 0x02), []byte{0, 1, 'c'}), []byte{0x20, 2, 0, 0x01}},
		{"protocol level 3 under the name MQTT", frame(head(3, 0x02), []byte{0, 1, 'c'}), []byte{0x20, 2, 0, 0x01}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := newServer()
			defer s.Close()
			got, err := exchange(t, s, tc.raw)
			require.Error(t, err)
			require.Equal(t, tc.want, nilIfEmpty(got), "CONNACK %x", got)
		})
	}
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// syncBuffer is a bytes.Buffer safe for the log handler and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// TestServerRefusalLogIsBoundedAndThrottled: 300 connections refused for
// bad packets, some after CONNECT with 4 KB in the packet, produce at most
// the burst plus the rate of refusal lines, each short, and one line
// counting the rest; every refusal is accounted for.
func TestServerRefusalLogIsBoundedAndThrottled(t *testing.T) {
	var buf syncBuffer
	s := newServer()
	s.Log = slog.New(slog.NewTextHandler(&buf, nil))
	defer s.Close()

	big := bytes.Repeat([]byte("x"), 4096)
	bad := [][]byte{
		// A PUBLISH with a Subscription Identifier: refused after decoding.
		append([]byte{packets.Publish << 4, 0x88, 0x20, 0, 1, 'a', 2, 0x0b, 1}, big[:4096-2]...),
		// Upstream #501.
		{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61},
	}
	bad[0][1], bad[0][2] = byte((4096+4)%128)|0x80, byte((4096+4)/128)
	const n = 300
	start := time.Now()
	for i := range n {
		if i%3 == 2 {
			_, _ = exchange(t, s, append([]byte{packets.Connect << 4, 3}, 0, 4, 'M')) // truncated CONNECT
			continue
		}
		_, _ = exchange(t, s, connectFor(5), bad[i%2])
	}
	elapsed := time.Since(start)

	var refused, suppressed, longest int
	count := func() bool {
		refused, suppressed = 0, 0
		for _, l := range buf.lines() {
			longest = max(longest, len(l))
			switch {
			case strings.Contains(l, "refused bad packet"):
				refused++
			case strings.Contains(l, "refused connections not logged"):
				var k int
				if i := strings.Index(l, "count="); i >= 0 {
					_, _ = fmt.Sscanf(l[i+len("count="):], "%d", &k)
				}
				suppressed += k
			}
		}
		return refused+suppressed == n
	}
	// The suppressed count is reported a second after the first suppression.
	require.Eventually(t, count, 5*time.Second, 20*time.Millisecond, "refusals neither logged nor counted")
	require.Less(t, longest, 1024, "a log line of %d bytes", longest)
	var sawHead bool
	for _, l := range buf.lines() {
		if strings.Contains(l, "packet=Subscribe") {
			require.Contains(t, l, "head=000100000161", "the #501 SUBSCRIBE's bytes")
			sawHead = true
		}
		if strings.Contains(l, "packet=Connect") || strings.Contains(l, "packet=Publish") {
			require.NotContains(t, l, "head=", "a CONNECT's or PUBLISH's bytes logged")
		}
	}
	require.True(t, sawHead, "no refusal line for the #501 SUBSCRIBE")
	require.LessOrEqual(t, float64(refused), refusalLogBurst+refusalLogRate*elapsed.Seconds()+1)
	t.Logf("%d refusals in %s: %d lines, %d counted on summary lines; longest line %d bytes; first: %s",
		n, elapsed, refused, suppressed, longest, buf.lines()[0])
}
