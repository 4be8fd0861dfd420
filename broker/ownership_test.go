package broker_test

// Sessions belong to the identity that created them (issue 12, item 6):
// another user connecting under a session's client id is refused, and
// neither takes over the connection nor the stored session; the owner
// survives a restart; queued messages are re-checked against the ACL when
// a session resumes.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

const ownersACL = `user alice
topic readwrite devices/alice/#

user bob
topic readwrite devices/bob/#

user dave
topic readwrite devices/#

user watcher
topic readwrite #
`

// refusedCode is the CONNACK reason a client of protocol version v gets
// for another identity's client id: 0x87 not authorized (MQTT 3: 0x05).
func refusedCode(v byte) byte {
	if v == 5 {
		return packets.ErrNotAuthorized.Code
	}
	return packets.Err3NotAuthorized.Code
}

func rawSubscribe(t *testing.T, c *testutil.Raw, filter string, qos byte) {
	t.Helper()
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	if ack := c.Expect(packets.Suback); len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != qos {
		t.Fatalf("subscribe %s: SUBACK %v, want granted QoS %d", filter, ack.ReasonCodes, qos)
	}
}

// rawPublish publishes at QoS 1 and waits for the PUBACK, whose reason
// code it returns.
func rawPublish(t *testing.T, c *testutil.Raw, id uint16, topic, payload string) byte {
	t.Helper()
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id,
		TopicName: topic, Payload: []byte(payload)})
	return c.Expect(packets.Puback).ReasonCode
}

// expectPayloads reads PUBLISH packets until it has len(want) and checks
// their payloads, in order; it acknowledges them when ack is set.
func expectPayloads(t *testing.T, c *testutil.Raw, ack bool, want ...string) []packets.Packet {
	t.Helper()
	var got []packets.Packet
	for range want {
		pk, err := c.Read(5 * time.Second)
		if err != nil || pk.FixedHeader.Type != packets.Publish {
			seen := make([]string, len(got))
			for i, g := range got {
				seen[i] = string(g.Payload)
			}
			t.Fatalf("want PUBLISH of %q, got %s (err %v) after %q", want, packets.PacketNames[pk.FixedHeader.Type], err, seen)
		}
		got = append(got, pk)
		if ack {
			c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: got[len(got)-1].PacketID})
		}
	}
	for i, pk := range got {
		if string(pk.Payload) != want[i] {
			t.Fatalf("message %d: %s %q, want %q", i, pk.TopicName, pk.Payload, want[i])
		}
	}
	return got
}

// expectAlive pings c and fails unless the answer is a PINGRESP: nothing
// else was sent to it (no DISCONNECT, no message) before.
func expectAlive(t *testing.T, c *testutil.Raw, who string) {
	t.Helper()
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	pk, err := c.Read(5 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("%s: %s (reason 0x%02x, err %v) instead of PINGRESP: its connection was disturbed", who,
			packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode, err)
	}
}

// expectRefused checks that a CONNECT as user under id is refused with
// refusedCode, without a session, and that the connection is then closed.
func expectRefused(t *testing.T, addr string, v byte, id, user, pass string, persist bool) {
	t.Helper()
	c, ack := dialSession(t, addr, v, id, user, pass, persist)
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != refusedCode(v) || ack.SessionPresent {
		t.Fatalf("%s as %s (persistent %v): %s reason 0x%02x session present %v, want CONNACK 0x%02x without session",
			user, id, persist, packets.PacketNames[ack.FixedHeader.Type], ack.ReasonCode, ack.SessionPresent, refusedCode(v))
	}
	c.ExpectClosed(5 * time.Second)
}

// TestSessionBelongsToItsIdentity is item 6 of issue 12: alice connecting
// with bob's client id got bob's session and his unacknowledged messages on
// devices/bob/..., which her ACL does not let her read.
func TestSessionBelongsToItsIdentity(t *testing.T) {
	b, _ := startWithACL(t, ownersACL)
	watcher, code := dialAs(t, b.Addr, 5, "watcher", "watcher", "watch-all")
	if code != 0 {
		t.Fatalf("watcher refused: 0x%02x", code)
	}
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("mqtt%d", v), func(t *testing.T) {
			id := fmt.Sprintf("bob-v%d", v)
			bob, ack := dialSession(t, b.Addr, v, id, "bob", "hunter2", true)
			if ack.ReasonCode != 0 {
				t.Fatalf("bob refused: 0x%02x", ack.ReasonCode)
			}
			rawSubscribe(t, bob, "devices/bob/#", 1)
			rawPublish(t, watcher, 1, "devices/bob/1", "one")
			rawPublish(t, watcher, 2, "devices/bob/2", "two")
			expectPayloads(t, bob, false, "one", "two") // left unacknowledged

			// While bob is connected: refused, with or without a session
			// of her own, and bob's connection is untouched.
			expectRefused(t, b.Addr, v, id, "alice", "secret", true)
			expectRefused(t, b.Addr, v, id, "alice", "secret", false)
			expectAlive(t, bob, "bob")

			// A client id that merely starts with bob's is another session.
			other, ack := dialSession(t, b.Addr, v, id+"-w", "alice", "secret", true)
			if ack.ReasonCode != 0 || ack.SessionPresent {
				t.Fatalf("alice as %s-w: reason 0x%02x session present %v", id, ack.ReasonCode, ack.SessionPresent)
			}
			expectAlive(t, bob, "bob after alice connected as "+id+"-w")
			_ = other.Conn.Close()

			// While bob is offline: his session stays his.
			_ = bob.Conn.Close()
			waitOffline(t, b, id)
			rawPublish(t, watcher, 3, "devices/bob/3", "three") // queued for him while offline
			expectRefused(t, b.Addr, v, id, "alice", "secret", true)
			expectRefused(t, b.Addr, v, id, "alice", "secret", false)

			bob, ack = dialSession(t, b.Addr, v, id, "bob", "hunter2", true)
			if ack.ReasonCode != 0 || !ack.SessionPresent {
				t.Fatalf("bob back: reason 0x%02x session present %v, want his session", ack.ReasonCode, ack.SessionPresent)
			}
			for _, pk := range expectPayloads(t, bob, true, "one", "two", "three")[:2] {
				if !pk.FixedHeader.Dup {
					t.Errorf("resent %s without DUP", pk.TopicName)
				}
			}
			expectAlive(t, bob, "bob with nothing more queued")
		})
	}
	if n := metric(t, b, `ferry_acl_denied_total{action="session_takeover"}`); n != 8 {
		t.Errorf("ferry_acl_denied_total{action=\"session_takeover\"} = %v, want 8", n)
	}
}

// TestSessionOwnerSurvivesRestart: the owner is stored with the session.
func TestSessionOwnerSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() *testutil.Broker {
		b, _ := startWithACL(t, ownersACL, func(c *config.Config) { c.Storage.Dir = dir })
		return b
	}
	b := start()
	bob, ack := dialSession(t, b.Addr, 4, "bob", "bob", "hunter2", true)
	if ack.ReasonCode != 0 {
		t.Fatalf("bob refused: 0x%02x", ack.ReasonCode)
	}
	rawSubscribe(t, bob, "devices/bob/#", 1)
	watcher, _ := dialAs(t, b.Addr, 5, "watcher", "watcher", "watch-all")
	rawPublish(t, watcher, 1, "devices/bob/1", "one")
	expectPayloads(t, bob, false, "one")
	_ = bob.Conn.Close()
	waitOffline(t, b, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.B.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	b = start()
	for _, v := range []byte{4, 5} {
		expectRefused(t, b.Addr, v, "bob", "alice", "secret", true)
	}
	bob, ack = dialSession(t, b.Addr, 4, "bob", "bob", "hunter2", true)
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("bob after the restart: reason 0x%02x session present %v", ack.ReasonCode, ack.SessionPresent)
	}
	expectPayloads(t, bob, true, "one")
}

// TestQueuedMessagesRecheckedOnResume: what a session may no longer read
// when it resumes is dropped and counted, whether it was in flight (in
// mochi's memory) or spilled to the store (beyond the memory window of
// max_inflight/2 = 2): after the ACL was reloaded, and after another
// identity took the session over where allow_session_takeover permits it.
func TestQueuedMessagesRecheckedOnResume(t *testing.T) {
	for _, tc := range []struct {
		name, user, pass string
		reload           bool
	}{
		{"acl reloaded", "bob", "hunter2", true},
		{"taken over by another identity", "alice", "secret", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, acl := startWithACL(t, ownersACL, func(c *config.Config) {
				c.Auth.AllowSessionTakeover = true
				c.Limits.MaxInflight = 4
			})
			watcher, _ := dialAs(t, b.Addr, 5, "watcher", "watcher", "watch-all")
			bob, _ := dialSession(t, b.Addr, 4, "bob", "bob", "hunter2", true)
			rawSubscribe(t, bob, "devices/#", 1) // reads only what the ACL allows: devices/bob/#
			rawPublish(t, watcher, 1, "devices/bob/1", "one")
			expectPayloads(t, bob, false, "one") // in flight, unacknowledged
			_ = bob.Conn.Close()
			waitOffline(t, b, "bob")
			for i := range 6 {
				rawPublish(t, watcher, uint16(2+i), fmt.Sprintf("devices/bob/%d", 2+i), "queued")
			}
			if tc.reload {
				// bob may now read devices/bob/ok only.
				narrowed := strings.Replace(ownersACL, "topic readwrite devices/bob/#", "topic readwrite devices/bob/ok", 1)
				if err := os.WriteFile(acl, []byte(narrowed), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := b.B.Reload(); err != nil {
					t.Fatal(err)
				}
			}
			c, ack := dialSession(t, b.Addr, 4, "bob", tc.user, tc.pass, true)
			if ack.ReasonCode != 0 || !ack.SessionPresent {
				t.Fatalf("%s resuming bob: reason 0x%02x session present %v", tc.user, ack.ReasonCode, ack.SessionPresent)
			}
			// Barrier: a message the client may read, queued after the rest.
			rawPublish(t, watcher, 100, "devices/"+tc.user+"/ok", "readable")
			if got := c.Expect(packets.Publish); string(got.Payload) != "readable" {
				t.Fatalf("%s resuming bob's session received %s %q, which it may not read", tc.user, got.TopicName, got.Payload)
			}
			testutil.Eventually(t, waitFor, "7 queued messages counted as dropped", func() bool {
				return metric(t, b, `ferry_acl_denied_total{action="queued"}`) == 7
			})
		})
	}
}
