package broker_test

// The ACL where mochi applied it too late (issue 12, items 7 and 8): a
// shared-group member that may not read a message swallowed its share,
// and topic aliases were checked before they were resolved.

import (
	"context"
	"fmt"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestSharedGroupSkipsMembersThatMayNotRead is item 7: dave (ops, reads
// devices/#) and alice (no read on devices/bob/...) share $share/g; of 40
// messages on devices/bob/shared dave got 29 and alice, picked for the
// rest, none. Every message must reach dave; a group where no member may
// read one (alice alone in $share/h) drops it and counts it. Persistent
// members exercise the storage hook's own choice of members.
func TestSharedGroupSkipsMembersThatMayNotRead(t *testing.T) {
	const n = 40
	for _, persist := range []bool{false, true} {
		t.Run(fmt.Sprintf("persistent=%v", persist), func(t *testing.T) {
			b, _ := startWithACL(t, ownersACL)
			watcher, _ := dialAs(t, b.Addr, 5, "watcher", "watcher", "watch-all")
			ops, ack := dialSession(t, b.Addr, 4, "ops", "dave", "pä:ss wörd$", persist)
			if ack.ReasonCode != 0 {
				t.Fatalf("dave refused: 0x%02x", ack.ReasonCode)
			}
			rawSubscribe(t, ops, "$share/g/devices/#", 1)
			alice, _ := dialSession(t, b.Addr, 5, "alice", "alice", "secret", persist)
			rawSubscribe(t, alice, "$share/g/devices/#", 1)
			rawSubscribe(t, alice, "$share/h/devices/#", 1)
			rawSubscribe(t, alice, "devices/alice/barrier", 1)

			for i := range n {
				rawPublish(t, watcher, uint16(i+1), "devices/bob/shared", fmt.Sprint(i))
			}
			rawPublish(t, watcher, n+1, "devices/alice/barrier", "barrier")

			// alice's own subscription gets the barrier after anything
			// the groups gave her before it.
			if got := alice.Expect(packets.Publish); got.TopicName != "devices/alice/barrier" {
				t.Fatalf("alice, who may not read devices/bob/..., received %s %q", got.TopicName, got.Payload)
			}
			got := 0
			for got < n {
				pk := ops.Expect(packets.Publish)
				ops.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				if pk.TopicName == "devices/bob/shared" {
					if string(pk.Payload) != fmt.Sprint(got) {
						t.Fatalf("dave's message %d is %q", got, pk.Payload)
					}
					got++
				}
			}
			if v := metric(t, b, `ferry_acl_denied_total{action="shared_no_reader"}`); v != n {
				t.Errorf("ferry_acl_denied_total{action=\"shared_no_reader\"} = %v, want %d (group h, per message)", v, n)
			}
		})
	}
}

// TestTopicAliasCheckedAfterResolving is item 8 with paho's MQTT 5 client:
// once any ACL existed, a PUBLISH reusing an alias registered on an allowed
// topic got 0x87, because mochi checked the ACL on the empty topic. An
// alias registered on a denied topic stays denied.
func TestTopicAliasCheckedAfterResolving(t *testing.T) {
	b, _ := startWithACL(t, ownersACL+"\npattern readwrite flush/%c/#\n")
	as := func(user, pass string) *paho5.Connect {
		return &paho5.Connect{CleanStart: true, Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true}
	}
	watcher := connect5(t, b, "watcher", as("watcher", "watch-all"), nil)
	watcher.sub(t, paho5.SubscribeOptions{Topic: "devices/#", QoS: 1})
	alice := connect5(t, b, "alice", as("alice", "secret"), nil)
	send := func(topic string, alias uint16, payload string) byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		r, err := alice.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(payload),
			Properties: &paho5.PublishProperties{TopicAlias: u16(alias)}})
		if r == nil {
			t.Fatalf("publish %q alias %d: %v", topic, alias, err)
		}
		return r.ReasonCode
	}
	for _, tc := range []struct {
		topic   string
		alias   uint16
		payload string
		want    byte
	}{
		{"devices/alice/a", 1, "sets alias 1", 0},
		{"", 1, "alias 1 only", 0},
		{"devices/bob/x", 2, "sets alias 2 on a denied topic", packets.ErrNotAuthorized.Code},
		{"", 2, "alias 2 only", packets.ErrNotAuthorized.Code},
		{"devices/alice/b", 1, "remaps alias 1", 0},
		{"", 1, "remapped alias 1 only", 0},
	} {
		if got := send(tc.topic, tc.alias, tc.payload); got != tc.want {
			t.Errorf("PUBLISH %q with alias %d (%s): reason 0x%02x, want 0x%02x", tc.topic, tc.alias, tc.payload, got, tc.want)
		}
	}
	alice.publishFlush(t, "devices/alice/end")
	watcher.in.waitN(t, "devices/alice/end", 1)
	if got := watcher.in.on("devices/bob/x"); len(got) != 0 {
		t.Errorf("denied messages delivered: %+v", got)
	}
	for topic, want := range map[string][]string{
		"devices/alice/a": {"sets alias 1", "alias 1 only"},
		"devices/alice/b": {"remaps alias 1", "remapped alias 1 only"},
	} {
		got := watcher.in.on(topic)
		if len(got) != len(want) {
			t.Fatalf("on %s the watcher got %+v, want %q", topic, got, want)
		}
		for i := range want {
			if got[i].Payload != want[i] {
				t.Errorf("on %s message %d is %q, want %q", topic, i, got[i].Payload, want[i])
			}
		}
	}
}

// TestUnknownTopicAliasDisconnects: a PUBLISH with an empty topic and an
// alias the connection never set is a protocol error [MQTT-3.3.2-8]:
// DISCONNECT 0x94, with or without auth, at any QoS; mochi acknowledged it
// with 0x00 and discarded the message. Aliases do not outlive the
// connection [MQTT-3.3.2-7].
func TestUnknownTopicAliasDisconnects(t *testing.T) {
	open := testutil.StartBroker(t)
	secured, _ := startWithACL(t, ownersACL)
	for _, tc := range []struct {
		name      string
		b         *testutil.Broker
		user, pwd string
		set       bool // set the alias on an earlier connection of the same client id
		qos       byte
	}{
		{"no auth qos0", open, "", "", false, 0},
		{"no auth qos1", open, "", "", false, 1},
		{"no auth set on the previous connection", open, "", "", true, 1},
		{"acl qos1", secured, "alice", "secret", false, 1},
		{"acl qos2", secured, "alice", "secret", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := uniq(t, "alias")
			if tc.set {
				c, code := dialAs(t, tc.b.Addr, 5, id, tc.user, tc.pwd)
				if code != 0 {
					t.Fatalf("refused: 0x%02x", code)
				}
				c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1,
					TopicName: "devices/alice/x", Properties: packets.Properties{TopicAlias: 3, TopicAliasFlag: true}})
				c.Expect(packets.Puback)
				_ = c.Conn.Close()
			}
			c, code := dialAs(t, tc.b.Addr, 5, id, tc.user, tc.pwd)
			if code != 0 {
				t.Fatalf("refused: 0x%02x", code)
			}
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: tc.qos},
				Payload: []byte("x"), Properties: packets.Properties{TopicAlias: 3, TopicAliasFlag: true}}
			if tc.qos > 0 {
				pk.PacketID = 7
			}
			c.Send(pk)
			got, err := c.Read(waitFor)
			if err != nil || got.FixedHeader.Type != packets.Disconnect || got.ReasonCode != packets.ErrTopicAliasInvalid.Code {
				t.Fatalf("got %s reason 0x%02x (err %v), want DISCONNECT 0x94", packets.PacketNames[got.FixedHeader.Type], got.ReasonCode, err)
			}
			c.ExpectClosed(waitFor)
		})
	}
}
