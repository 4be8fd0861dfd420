package auth

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestSessionOwnership(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: discardLogger()})
	login := func(user, pass string) packets.Packet {
		return packets.Packet{Connect: packets.ConnectParams{Username: []byte(user), Password: []byte(pass)}}
	}
	alice, bob := login("alice", "secret"), login("bob", "hunter2")
	// session returns mochi's client for an existing session of id "x":
	// open (connected) or closed, persistent or ending with its connection.
	session := func(open, persistent bool) *mqtt.Client {
		cl := srv.NewClient(nil, "t", "x", false)
		cl.Properties.ProtocolVersion = 4
		cl.Properties.Clean = !persistent
		if !open {
			cl.Stop(nil)
		}
		return cl
	}
	// bobs returns a setup: bob authenticated on a session of id "x".
	bobs := func(open, persistent bool) func(h *Hook) *mqtt.Client {
		return func(h *Hook) *mqtt.Client {
			cl := session(open, persistent)
			h.OnConnectAuthenticate(cl, bob)
			if !open {
				h.OnDisconnect(cl, nil, !persistent)
			}
			return cl
		}
	}
	for _, tc := range []struct {
		name     string
		takeover bool
		setup    func(h *Hook) *mqtt.Client // returns mochi's client under "x", nil: none
		login    packets.Packet
		want     bool
	}{
		{"another identity, connected", false, bobs(true, false), alice, false},
		{"another identity, offline persistent", false, bobs(false, true), alice, false},
		{"same identity", false, bobs(true, true), bob, true},
		{"another identity, takeover allowed", true, bobs(true, true), alice, true},
		{"clean session closed, its handler still running", false, func(h *Hook) *mqtt.Client {
			cl := session(false, false)
			h.OnConnectAuthenticate(cl, bob)
			return cl
		}, alice, true},
		{"clean session ended", false, bobs(false, false), alice, true},
		{"session gone without a hook call", false, func(h *Hook) *mqtt.Client {
			h.OnConnectAuthenticate(session(false, true), bob)
			return nil
		}, alice, true},
		{"session expired", false, func(h *Hook) *mqtt.Client {
			cl := session(false, true)
			h.OnConnectAuthenticate(cl, bob)
			h.OnClientExpired(cl)
			h.sessions = func(string) (*mqtt.Client, bool) { return nil, false }
			return nil
		}, alice, true},
		{"restored from storage", false, func(h *Hook) *mqtt.Client {
			h.Restored("x", "bob")
			return session(false, true)
		}, alice, false},
		{"restored from storage, owner back", false, func(h *Hook) *mqtt.Client {
			h.Restored("x", "bob")
			return session(false, true)
		}, bob, true},
		{"stored without an owner: its user name owns it", false, func(*Hook) *mqtt.Client {
			cl := session(false, true)
			cl.Properties.Username = []byte("bob")
			return cl
		}, alice, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", AllowSessionTakeover: tc.takeover}, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			var existing *mqtt.Client
			h.SetSessions(func(id string) (*mqtt.Client, bool) { return existing, existing != nil && id == "x" })
			existing = tc.setup(h)
			cl := srv.NewClient(nil, "t", "x", false)
			if got := h.OnConnectAuthenticate(cl, tc.login); got != tc.want {
				t.Fatalf("connect as %s: %v, want %v", tc.login.Connect.Username, got, tc.want)
			}
			if !tc.want && !cl.Closed() {
				t.Error("refused connection left open")
			}
			owner, ok := h.Owner(cl)
			if tc.want && (!ok || owner != string(tc.login.Connect.Username)) {
				t.Errorf("owner %q %v after connecting as %s", owner, ok, tc.login.Connect.Username)
			}
		})
	}
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd"}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	h.OnConnectAuthenticate(session(true, true), alice)
	h.OnConnectAuthenticate(srv.NewClient(nil, "t", "x", false), bob)
	if s := h.Stats(); s.TakeoverRefused != 1 || s.Refused != 1 {
		t.Errorf("stats %+v: want one refusal, counted as a takeover", s)
	}
}

// TestMayReadRestoredSession: a session restored from storage is checked
// against its owner's rules until the owner reconnects; MayRead counts
// nothing.
func TestMayReadRestoredSession(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd",
		ACL: []ACLRule{{Users: []string{"bob"}, Allow: ACLAccess{Subscribe: []string{"devices/bob/#"}}}}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	h.Restored("x", "bob")
	cl := &mqtt.Client{ID: "x"}
	if !h.MayRead(cl, "devices/bob/1") || h.MayRead(cl, "devices/alice/1") {
		t.Error("restored session not checked against its owner's rules")
	}
	if h.MayRead(&mqtt.Client{ID: "y"}, "devices/bob/1") {
		t.Error("unknown client may read")
	}
	if s := h.Stats(); s.ACLDenied.Read != 0 {
		t.Errorf("MayRead counted %d denials", s.ACLDenied.Read)
	}
}

// TestDeliveryToReplacedConnection: a message fanned out to a session's old
// client while the session reconnects (mochi acknowledges a QoS 1 publish
// before it fans out, so a publish to an offline session can meet its
// reconnect) is checked against the session's owner, not denied because a
// new connection now holds the client id: denying it lost an acknowledged
// message. The old connection may publish nothing more, and a clean
// session's old connection, whose session ends with it, receives nothing.
func TestDeliveryToReplacedConnection(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: discardLogger()})
	bob := packets.Packet{Connect: packets.ConnectParams{Username: []byte("bob"), Password: []byte("hunter2")}}
	for _, tc := range []struct {
		name       string
		persistent bool
		topic      string
		write      bool
		want       bool
	}{
		{"persistent: delivery", true, "devices/bob/1", false, true},
		{"persistent: delivery the owner may not read", true, "devices/alice/1", false, false},
		{"persistent: publish from the old connection", true, "devices/bob/1", true, false},
		{"clean: delivery", false, "devices/bob/1", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd",
				ACL: []ACLRule{{Users: []string{"bob"}, Allow: ACLAccess{Publish: []string{"devices/bob/#"}, Subscribe: []string{"devices/bob/#"}}}}},
				discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			old := srv.NewClient(nil, "t", "x", false)
			old.Properties.ProtocolVersion, old.Properties.Clean = 4, !tc.persistent
			if !h.OnConnectAuthenticate(old, bob) {
				t.Fatal("bob refused")
			}
			old.Stop(nil)
			reconnect := srv.NewClient(nil, "t", "x", false)
			if !h.OnConnectAuthenticate(reconnect, bob) {
				t.Fatal("bob refused on reconnect")
			}
			if got := h.OnACLCheck(old, tc.topic, tc.write); got != tc.want {
				t.Errorf("OnACLCheck(old connection, %s, write %v) = %v, want %v", tc.topic, tc.write, got, tc.want)
			}
			if !tc.write {
				if got := h.MayRead(old, tc.topic); got != tc.want {
					t.Errorf("MayRead(old connection, %s) = %v, want %v", tc.topic, got, tc.want)
				}
			}
		})
	}
}
