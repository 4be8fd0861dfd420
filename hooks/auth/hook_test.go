package auth

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/mochitest"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eventually polls fn until it returns true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, msg string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startBroker runs a mochi server on 127.0.0.1:0 with only this hook (no
// AllowHook) and stops it when the test ends.
func startBroker(t *testing.T, h *Hook) string {
	t.Helper()
	s := mqtt.New(&mqtt.Options{Logger: discardLogger()})
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return mochitest.Serve(t, s).Address()
}

// connect connects a paho client (MQTT 3.1.1) and disconnects it when the
// test ends.
func connect(t *testing.T, addr, clientID, user, pass string) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).SetOrderMatters(true).SetProtocolVersion(4)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, os.ErrDeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func mustConnect(t *testing.T, addr, clientID, user, pass string) paho.Client {
	t.Helper()
	c, err := connect(t, addr, clientID, user, pass)
	if err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	return c
}

// inbox collects the topics a client receives.
type inbox struct {
	mu     sync.Mutex
	topics []string
}

func (b *inbox) handler(_ paho.Client, m paho.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.topics = append(b.topics, m.Topic())
}

func (b *inbox) snapshot() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.topics...)
}

func (b *inbox) has(topic string) bool {
	for _, tp := range b.snapshot() {
		if tp == topic {
			return true
		}
	}
	return false
}

func subscribe(t *testing.T, c paho.Client, filter string, b *inbox) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, b.handler)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("subscribe %s: timeout", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func publish(t *testing.T, c paho.Client, topic string, qos byte) {
	t.Helper()
	tok := c.Publish(topic, qos, false, "x")
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// The ACL of the end-to-end test, in Mosquitto's format.
const e2eACL = `# Anonymous clients get nothing.
user alice
topic readwrite allowed
topic read a/+

user watcher
topic readwrite #

# Patterns apply to every user.
pattern write devices/%u/#
`

func TestHookEndToEnd(t *testing.T) {
	dir := t.TempDir()
	aclPath := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclPath, []byte(e2eACL), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", ACLFile: aclPath}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr := startBroker(t, h)

	if _, err := connect(t, addr, "anon", "", ""); err == nil {
		t.Error("anonymous client connected")
	}
	if _, err := connect(t, addr, "wrong", "alice", "wrong"); err == nil {
		t.Error("wrong password connected")
	}
	if _, err := connect(t, addr, "nouser", "mallory", "secret"); err == nil {
		t.Error("unknown user connected")
	}
	if st := h.Stats(); st.Refused != 3 || st.Password.Failure != 2 || st.Anonymous.Failure != 1 {
		t.Errorf("stats after refusals: %+v", st)
	}

	var watched inbox
	watcher := mustConnect(t, addr, "watcher", "watcher", "watch-all")
	if code := subscribe(t, watcher, "#", &watched); code != 1 {
		t.Fatalf("watcher SUBACK %#x", code)
	}
	alice := mustConnect(t, addr, "alice-1", "alice", "secret")

	// alice publishes what she may and may not; QoS 0 so that denied
	// publishes are dropped without closing her connection.
	for _, tp := range []string{"devices/bob/x", "allowed/secret", "a/b", "$SYS/x", "devices/alice/x"} {
		publish(t, alice, tp, 0)
	}
	publish(t, alice, "allowed", 1) // marker: everything before it is processed
	eventually(t, 5*time.Second, "watcher receives allowed", func() bool { return watched.has("allowed") })
	got := watched.snapshot()
	want := []string{"devices/alice/x", "allowed"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("watcher received %q, want %q", got, want)
	}

	// alice subscribes to a/#: granted, but only a/+ is delivered.
	var aliceIn inbox
	if code := subscribe(t, alice, "a/#", &aliceIn); code != 1 {
		t.Fatalf("alice a/# SUBACK %#x, want granted QoS 1", code)
	}
	if code := subscribe(t, alice, "secret/#", &aliceIn); code != 0x80 {
		t.Errorf("alice secret/# SUBACK %#x, want 0x80", code)
	}
	for _, tp := range []string{"a/b/c", "a", "a/b"} {
		publish(t, watcher, tp, 1)
	}
	eventually(t, 5*time.Second, "alice receives a/b", func() bool { return aliceIn.has("a/b") })
	if got := aliceIn.snapshot(); len(got) != 1 {
		t.Errorf("alice received %q, want only a/b", got)
	}
	st := h.Stats()
	// $SYS/x never reaches the hook: mochi drops it first.
	if st.ACLDenied.Publish != 3 || st.ACLDenied.Subscribe != 1 || st.ACLDenied.Read < 2 {
		t.Errorf("acl stats: %+v", st.ACLDenied)
	}
	if st.Password.Success != 2 {
		t.Errorf("password successes %d, want 2", st.Password.Success)
	}

	// Disconnected clients are forgotten.
	alice.Disconnect(100)
	eventually(t, 5*time.Second, "alice's identity removed", func() bool {
		_, ok := h.clients.Load("alice-1")
		return !ok
	})
}

func TestHookDeniesQoS1PublishByDisconnecting(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", ACL: []ACLRule{
		{Users: []string{"alice"}, Allow: ACLAccess{Publish: []string{"ok"}}},
	}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr := startBroker(t, h)
	alice := mustConnect(t, addr, "a", "alice", "secret")
	alice.Publish("not-ok", 1, false, "x")
	// mochi disconnects an MQTT 3 client whose QoS 1 publish is denied.
	eventually(t, 5*time.Second, "alice disconnected", func() bool { return !alice.IsConnectionOpen() })
}

func TestHookWillTopicChecked(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", ACL: []ACLRule{
		{Users: []string{"alice"}, Allow: ACLAccess{Publish: []string{"wills/alice"}}},
	}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr := startBroker(t, h)
	dial := func(will string) error {
		o := paho.NewClientOptions().AddBroker("tcp://"+addr).SetClientID("w").
			SetUsername("alice").SetPassword("secret").SetAutoReconnect(false).
			SetWill(will, "gone", 0, false).SetProtocolVersion(4)
		c := paho.NewClient(o)
		tok := c.Connect()
		tok.WaitTimeout(5 * time.Second)
		if tok.Error() == nil {
			c.Disconnect(100)
		}
		return tok.Error()
	}
	if err := dial("wills/alice"); err != nil {
		t.Errorf("allowed will refused: %v", err)
	}
	if err := dial("$SYS/alice"); err == nil {
		t.Error("will to $SYS was accepted")
	}
	if err := dial("wills/bob"); err == nil {
		t.Error("will to a topic alice may not publish was accepted")
	}
}

func TestHookReload(t *testing.T) {
	dir := t.TempDir()
	aclPath := filepath.Join(dir, "acl")
	pwPath := filepath.Join(dir, "passwd")
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(aclPath, "user alice\ntopic read one\n")
	if err := SetPassword(pwPath, "alice", "pw1"); err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{PasswordFile: pwPath, ACLFile: aclPath}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	id := &identity{username: "alice", clientID: "c"}
	if !h.allowed(id, "one", false) || h.allowed(id, "two", false) {
		t.Fatal("initial rules wrong")
	}

	write(aclPath, "user alice\ntopic read two\nbogus line\n")
	err = h.Reload()
	if err == nil || !contains(err.Error(), "acl_file: "+aclPath+":3: unknown keyword \"bogus\"") {
		t.Fatalf("Reload error = %v", err)
	}
	if !h.allowed(id, "one", false) {
		t.Error("old rules not kept after a bad reload")
	}

	write(aclPath, "user alice\ntopic read two\n")
	if err := SetPassword(pwPath, "alice", "pw2"); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if h.allowed(id, "one", false) || !h.allowed(id, "two", false) {
		t.Error("new rules not applied to a connected client")
	}
	if st := h.state.Load(); !st.passwords.Check("alice", "pw2") || st.passwords.Check("alice", "pw1") {
		t.Error("password file not reloaded")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestHookIdentityLifecycle(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd"}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	login := packets.Packet{Connect: packets.ConnectParams{Username: []byte("alice"), Password: []byte("secret")}}
	old, taker := &mqtt.Client{ID: "x"}, &mqtt.Client{ID: "x"}
	if !h.OnConnectAuthenticate(old, login) || !h.OnConnectAuthenticate(taker, login) {
		t.Fatal("refused")
	}
	// The session is taken over: the old connection's late OnDisconnect
	// must not drop the new one's identity.
	h.OnDisconnect(old, nil, false)
	if !h.OnACLCheck(taker, "t", true) {
		t.Error("new connection lost its identity")
	}
	if h.OnACLCheck(old, "t", true) {
		t.Error("taken-over connection still authorized")
	}
	// A persistent session keeps its identity while offline: messages
	// queued for it are checked against its owner's rules.
	h.OnDisconnect(taker, nil, false)
	if !h.OnACLCheck(taker, "t", true) {
		t.Error("offline persistent session lost its identity")
	}
	h.OnDisconnect(taker, nil, true)
	if h.OnACLCheck(taker, "t", true) {
		t.Error("client whose session ended still authorized")
	}
	// A client some other hook let in is denied everything.
	if h.OnACLCheck(&mqtt.Client{ID: "stranger"}, "t", false) {
		t.Error("client not authenticated by this hook was authorized")
	}
	if h.OnACLCheck(taker, "$SYS/broker/x", true) || h.OnACLCheck(taker, "$sys/x", true) {
		t.Error("publish to $SYS allowed")
	}
}

func TestHookDisabled(t *testing.T) {
	h, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := &mqtt.Client{ID: "a"}
	if !h.OnConnectAuthenticate(cl, packets.Packet{}) || !h.OnACLCheck(cl, "any/topic", true) || !h.OnACLCheck(cl, "#", false) {
		t.Error("disabled hook denied something")
	}
	if h.OnACLCheck(cl, "$SYS/x", true) {
		t.Error("disabled hook allowed publishing to $SYS")
	}
}

func TestHookAnonymous(t *testing.T) {
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", AllowAnonymous: true, ACL: []ACLRule{
		{Anonymous: true, Allow: ACLAccess{Subscribe: []string{"public/#"}}},
		{Users: []string{"alice"}, Allow: ACLAccess{Subscribe: []string{"#"}}},
	}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	anon := &mqtt.Client{ID: "anon"}
	if !h.OnConnectAuthenticate(anon, packets.Packet{}) {
		t.Fatal("anonymous refused with allow_anonymous")
	}
	if !h.OnACLCheck(anon, "public/x", false) || h.OnACLCheck(anon, "private/x", false) {
		t.Error("anonymous rules wrong")
	}
	// Credentials that fail are refused, not downgraded to anonymous.
	bad := packets.Packet{Connect: packets.ConnectParams{Username: []byte("alice"), Password: []byte("nope")}}
	if h.OnConnectAuthenticate(&mqtt.Client{ID: "b"}, bad) {
		t.Error("wrong password accepted as anonymous")
	}
}
