package broker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The ACL, in Mosquitto's format, plus a watcher allowed everything.
const mosquittoACL = `user alice
topic readwrite allowed
topic read a/+

user watcher
topic readwrite #

pattern write devices/%u/#
`

func startSecured(t *testing.T) (*testutil.Broker, string) {
	t.Helper()
	return startWithACL(t, mosquittoACL)
}

// startWithACL starts a broker with the test password file (alice/secret,
// bob/hunter2, watcher/watch-all, dave) and acl as its Mosquitto ACL file,
// whose path it returns; mutate changes the config further.
func startWithACL(t *testing.T, acl string, mutate ...func(*config.Config)) (*testutil.Broker, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(path, []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	b := testutil.StartBroker(t, append([]func(*config.Config){func(c *config.Config) {
		c.Auth.PasswordFile = filepath.Join("..", "hooks", "auth", "testdata", "mosquitto.passwd")
		c.Auth.ACLFile = path
	}}, mutate...)...)
	return b, path
}

// dialAs connects with credentials and returns the client and the CONNACK
// reason code.
func dialAs(t *testing.T, addr string, v byte, id, user, pass string) (*testutil.Raw, byte) {
	t.Helper()
	c, ack := dialSession(t, addr, v, id, user, pass, false)
	if ack.FixedHeader.Type != packets.Connack {
		return c, 0xff
	}
	return c, ack.ReasonCode
}

// dialSession connects with credentials (none when user is ""), resuming or
// creating a persistent session when persist is set (clean start off; MQTT
// 5: session expiry 300 s), and returns the client and what it read first:
// the CONNACK, or a zero packet if the connection closed.
func dialSession(t *testing.T, addr string, v byte, id, user, pass string, persist bool) (*testutil.Raw, packets.Packet) {
	t.Helper()
	c := testutil.DialRaw(t, addr, v)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ClientIdentifier: id, Clean: !persist, Keepalive: 60}}
	if persist && v == 5 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	if user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(pass)
	}
	c.Send(pk)
	ack, err := c.Read(5 * time.Second)
	if err != nil {
		return c, packets.Packet{}
	}
	return c, ack
}

// TestMosquittoPasswordAndACLFiles is the security issue's scenario through
// Ferry: a password file made by mosquitto_passwd and a Mosquitto ACL file.
func TestMosquittoPasswordAndACLFiles(t *testing.T) {
	b, _ := startSecured(t)
	for _, tc := range []struct {
		name, user, pass string
		v                byte
	}{
		{"anonymous v3", "", "", 4},
		{"anonymous v5", "", "", 5},
		{"wrong password", "alice", "wrong", 4},
		{"unknown user", "mallory", "secret", 5},
	} {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			if _, code := dialAs(t, b.Addr, tc.v, "x", tc.user, tc.pass); code == 0 {
				t.Fatal("connected")
			}
		})
	}

	watcher, code := dialAs(t, b.Addr, 5, "watcher", "watcher", "watch-all")
	if code != 0 {
		t.Fatalf("watcher refused: 0x%02x", code)
	}
	watcher.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "#", Qos: 1}}})
	watcher.Expect(packets.Suback)

	for _, v := range []byte{4, 5} {
		alice, code := dialAs(t, b.Addr, v, "alice", "alice", "secret")
		if code != 0 {
			t.Fatalf("alice refused: 0x%02x", code)
		}
		for i, tc := range []struct {
			topic   string
			allowed bool
		}{
			{"devices/alice/x", true}, {"allowed", true},
			{"devices/bob/x", false}, {"allowed/secret", false}, {"a/b", false},
		} {
			alice.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1),
				TopicName: tc.topic, Payload: []byte{v}})
			ack := alice.Expect(packets.Puback) // MQTT 3: acknowledged and dropped, the connection stays
			if v == 5 && !tc.allowed && ack.ReasonCode != packets.ErrNotAuthorized.Code {
				t.Errorf("v5 %s: PUBACK 0x%02x, want 0x87", tc.topic, ack.ReasonCode)
			}
			if tc.allowed {
				got := watcher.Expect(packets.Publish)
				if got.TopicName != tc.topic {
					t.Errorf("v%d: watcher got %s, want %s (a denied publish was delivered)", v, got.TopicName, tc.topic)
				}
				watcher.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: got.PacketID})
			}
		}
		// alice may read a/+ but not a/b/c, through a subscription to a/#.
		alice.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 100,
			Filters: packets.Subscriptions{{Filter: "a/#", Qos: 0}}})
		alice.Expect(packets.Suback)
		for _, topic := range []string{"a/b/c", "a/b"} {
			watcher.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: []byte("w")})
		}
		if got := alice.Expect(packets.Publish); got.TopicName != "a/b" {
			t.Fatalf("v%d: alice subscribed to a/# received %s", v, got.TopicName)
		}
		// The watcher's own copies of a/b/c and a/b.
		for range 2 {
			watcher.Expect(packets.Publish)
		}
		_ = alice.Conn.Close()
	}
}

// TestReloadKeepsConnectionsAndRefusesBadFiles: a reload applies new rules
// to connected clients; a broken file is refused and the old rules stay.
func TestReloadKeepsConnectionsAndRefusesBadFiles(t *testing.T) {
	b, acl := startSecured(t)
	alice, code := dialAs(t, b.Addr, 5, "alice", "alice", "secret")
	if code != 0 {
		t.Fatal("alice refused")
	}
	pub := func(id uint16, topic string) byte {
		alice.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: topic})
		return alice.Expect(packets.Puback).ReasonCode
	}
	if pub(1, "news") != packets.ErrNotAuthorized.Code {
		t.Fatal("alice may publish to news before the reload")
	}
	if err := os.WriteFile(acl, []byte(mosquittoACL+"\nuser alice\ntopic write news\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.B.Reload(); err != nil {
		t.Fatal(err)
	}
	if pub(2, "news") != 0 {
		t.Fatal("the reloaded rule does not apply to the connected client")
	}
	if err := os.WriteFile(acl, []byte("user alice\ntopic sideways news\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := b.B.Reload()
	if err == nil || !strings.Contains(err.Error(), acl) {
		t.Fatalf("a broken ACL file was accepted on reload: %v", err)
	}
	if pub(3, "news") != 0 {
		t.Fatal("after a refused reload the previous rules are not in force")
	}
}
