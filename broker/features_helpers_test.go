package broker_test

// Helpers for the end-to-end feature tests (features_*_test.go): real paho
// clients, MQTT 3.1/3.1.1 through eclipse/paho.mqtt.golang and MQTT 5
// through eclipse/paho.golang, against a real Ferry broker.
//
// Absence ("X is not delivered") is never asserted by waiting a while.
// Instead a barrier message is sent after X on a path that is ordered with
// X (the same publisher connection, or the subscriber's own connection) and
// X is checked for once the barrier has arrived.

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 5 * time.Second

// flushPrefix is the topic space of barrier messages. Every helper client
// subscribes to flushPrefix+its client id at connect; inboxes keep barrier
// messages out of what tests look at.
const flushPrefix = "flush/"

var flushSeq atomic.Int64

// msg is one received PUBLISH, whichever client library received it.
type msg struct {
	Topic   string
	Payload string
	QoS     byte
	Retain  bool
	Props   *paho5.PublishProperties // MQTT 5 only
}

// inbox collects what a client receives.
type inbox struct {
	mu      sync.Mutex
	msgs    []msg
	flushed map[string]bool
}

func newInbox() *inbox { return &inbox{flushed: map[string]bool{}} }

func (in *inbox) add(m msg) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if strings.HasPrefix(m.Topic, flushPrefix) {
		in.flushed[m.Topic] = true
		return
	}
	in.msgs = append(in.msgs, m)
}

// all returns a copy of every message received so far, in order.
func (in *inbox) all() []msg {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]msg(nil), in.msgs...)
}

// on returns the messages received on topic, in order.
func (in *inbox) on(topic string) []msg {
	var out []msg
	for _, m := range in.all() {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// waitN waits until at least n messages arrived on topic and returns them.
func (in *inbox) waitN(t testing.TB, topic string, n int) []msg {
	t.Helper()
	var got []msg
	testutil.Eventually(t, waitFor, fmt.Sprintf("%d message(s) on %q", n, topic), func() bool {
		got = in.on(topic)
		return len(got) >= n
	})
	return got
}

// wait1 waits for the first message on topic.
func (in *inbox) wait1(t testing.TB, topic string) msg {
	t.Helper()
	return in.waitN(t, topic, 1)[0]
}

func (in *inbox) hasFlush(topic string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.flushed[topic]
}

// publisher is what a barrier needs from a client of either library.
type publisher interface {
	publishFlush(t testing.TB, topic string)
}

// peer is a connected test client that receives into an inbox.
type peer interface {
	publisher
	id() string
	box() *inbox
}

// barrier publishes a QoS 1 message from `from` to `to`'s flush topic and
// waits until `to` has it: everything `from` published before, and
// everything the broker queued for `to` while handling from's earlier
// packets, has been delivered by then.
func barrier(t testing.TB, from publisher, to peer) {
	t.Helper()
	topic := fmt.Sprintf("%s%s/%d", flushPrefix, to.id(), flushSeq.Add(1))
	from.publishFlush(t, topic)
	testutil.Eventually(t, waitFor, "barrier message "+topic, func() bool { return to.box().hasFlush(topic) })
}

// ---- MQTT 3.1 / 3.1.1: eclipse/paho.mqtt.golang ----

// client3 is a paho.mqtt.golang client.
type client3 struct {
	paho3.Client
	clientID string
	in       *inbox
	conn     atomic.Pointer[net.Conn] // the TCP connection, to cut it
	present  bool                     // CONNACK session present
}

func (c *client3) id() string  { return c.clientID }
func (c *client3) box() *inbox { return c.in }

// connect3 connects an MQTT 3.1 (version 3) or 3.1.1 (version 4) client
// with clean session on, changed by opts, and subscribes it to its flush
// topic. It disconnects when the test ends.
func connect3(t testing.TB, b *testutil.Broker, version uint, id string, opts ...func(*paho3.ClientOptions)) *client3 {
	t.Helper()
	c := &client3{clientID: id, in: newInbox()}
	o := paho3.NewClientOptions().AddBroker(b.URL).SetClientID(id).SetProtocolVersion(version).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetConnectTimeout(waitFor).SetKeepAlive(60 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			c.in.add(msg{Topic: m.Topic(), Payload: string(m.Payload()), QoS: m.Qos(), Retain: m.Retained()})
		}).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
			nc, err := net.DialTimeout("tcp", u.Host, waitFor)
			if err == nil {
				c.conn.Store(&nc)
			}
			return nc, err
		})
	for _, f := range opts {
		f(o)
	}
	c.Client = paho3.NewClient(o)
	tok := c.Connect()
	wait3(t, "connect "+id, tok)
	c.present = tok.(*paho3.ConnectToken).SessionPresent()
	t.Cleanup(func() {
		if c.IsConnectionOpen() {
			c.Disconnect(100)
		}
	})
	if !c.present {
		c.sub(t, flushPrefix+id+"/#", 1)
	}
	return c
}

func wait3(t testing.TB, what string, tok paho3.Token) {
	t.Helper()
	if !tok.WaitTimeout(waitFor) {
		t.Fatalf("%s: no answer within %s", what, waitFor)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// sub subscribes to filter and checks the granted QoS.
func (c *client3) sub(t testing.TB, filter string, qos byte) {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	wait3(t, "subscribe "+filter, tok)
	key := filter // paho keys results by the filter without $share/group/
	if strings.HasPrefix(key, "$share/") {
		key = strings.Join(strings.Split(key, "/")[2:], "/")
	}
	if got, ok := tok.(*paho3.SubscribeToken).Result()[key]; !ok || got != qos {
		t.Fatalf("subscribe %s: granted QoS %d, want %d", filter, got, qos)
	}
}

func (c *client3) pub(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	wait3(t, "publish "+topic, c.Publish(topic, qos, retain, payload))
}

func (c *client3) publishFlush(t testing.TB, topic string) { c.pub(t, topic, 1, false, "flush") }

// cut closes the TCP connection without DISCONNECT: an abnormal disconnect.
func (c *client3) cut() {
	if p := c.conn.Load(); p != nil {
		_ = (*p).Close()
	}
}

// ---- MQTT 5: eclipse/paho.golang ----

// client5 is a paho.golang client over a connection the test dialled.
type client5 struct {
	*paho5.Client
	clientID string
	in       *inbox
	conn     net.Conn
	ack      *paho5.Connack
}

func (c *client5) id() string  { return c.clientID }
func (c *client5) box() *inbox { return c.in }

// connect5 connects an MQTT 5 client. cp is the CONNECT (ClientID and
// keepalive are filled in; nil means clean start and nothing else); cfg, if
// not nil, adjusts the client config before it is built. It subscribes to
// its flush topic unless the session it resumed has that subscription, and
// disconnects when the test ends.
func connect5(t testing.TB, b *testutil.Broker, id string, cp *paho5.Connect, cfg func(*paho5.ClientConfig)) *client5 {
	t.Helper()
	if cp == nil {
		cp = &paho5.Connect{CleanStart: true}
	}
	cp.ClientID = id
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 60
	}
	nc, err := net.DialTimeout("tcp", b.Addr, waitFor)
	if err != nil {
		t.Fatalf("dial %s: %v", b.Addr, err)
	}
	c := &client5{clientID: id, in: newInbox(), conn: nc}
	cc := paho5.ClientConfig{
		Conn: nc,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
			func(pr paho5.PublishReceived) (bool, error) {
				p := pr.Packet
				c.in.add(msg{Topic: p.Topic, Payload: string(p.Payload), QoS: p.QoS, Retain: p.Retain, Props: p.Properties})
				return true, nil
			},
		},
	}
	if cfg != nil {
		cfg(&cc)
	}
	c.Client = paho5.NewClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c.ack, err = c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho5.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(waitFor):
			t.Errorf("client %s did not shut down", id)
		}
	})
	if !c.ack.SessionPresent {
		c.sub(t, paho5.SubscribeOptions{Topic: flushPrefix + id + "/#", QoS: 1})
	}
	return c
}

// sub subscribes with the given options, with subscription identifier id
// when id > 0, and checks every filter was granted its QoS.
func (c *client5) subID(t testing.TB, id int, subs ...paho5.SubscribeOptions) {
	t.Helper()
	s := &paho5.Subscribe{Subscriptions: subs}
	if id > 0 {
		s.Properties = &paho5.SubscribeProperties{SubscriptionIdentifier: &id}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := c.Subscribe(ctx, s)
	if err != nil {
		t.Fatalf("subscribe %+v: %v", subs, err)
	}
	for i, rc := range ack.Reasons {
		if rc != subs[i].QoS {
			t.Fatalf("subscribe %s: reason 0x%02x, want granted QoS %d", subs[i].Topic, rc, subs[i].QoS)
		}
	}
}

func (c *client5) sub(t testing.TB, subs ...paho5.SubscribeOptions) {
	t.Helper()
	c.subID(t, 0, subs...)
}

// pub publishes p and fails the test on an error or an error reason code.
func (c *client5) pub(t testing.TB, p *paho5.Publish) *paho5.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	r, err := c.Publish(ctx, p)
	if err != nil {
		t.Fatalf("publish %q: %v", p.Topic, err)
	}
	if r != nil && r.ReasonCode >= 0x80 {
		t.Fatalf("publish %q: reason 0x%02x", p.Topic, r.ReasonCode)
	}
	return r
}

func (c *client5) publishFlush(t testing.TB, topic string) {
	c.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("flush")})
}

// cut closes the TCP connection without DISCONNECT: an abnormal disconnect.
func (c *client5) cut() { _ = c.conn.Close() }

// disconnect sends DISCONNECT with reason 0 and waits for the client to stop.
func (c *client5) disconnect(t testing.TB) {
	t.Helper()
	_ = c.Disconnect(&paho5.Disconnect{})
	select {
	case <-c.Done():
	case <-time.After(waitFor):
		t.Fatalf("client %s did not shut down", c.clientID)
	}
}

// ---- broker state ----

// waitGone waits until the broker has forgotten client id: its session
// ended (and any will without delay was published on the way).
func waitGone(t testing.TB, b *testutil.Broker, id string) {
	t.Helper()
	testutil.Eventually(t, waitFor, "broker forgets client "+id, func() bool {
		_, ok := b.B.Server().Clients.Get(id)
		return !ok
	})
}

// waitOffline waits until the broker sees client id disconnected while
// keeping its session.
func waitOffline(t testing.TB, b *testutil.Broker, id string) {
	t.Helper()
	testutil.Eventually(t, waitFor, "client "+id+" offline with session kept", func() bool {
		cl, ok := b.B.Server().Clients.Get(id)
		return ok && cl.Closed()
	})
}

// waitAcked waits until the broker holds nothing in flight for client id:
// paho acknowledges a message after its handler saw it, so a test that
// disconnects right after a handler ran may otherwise take the message
// with it, unacknowledged, and get it again on resume.
func waitAcked(t testing.TB, b *testutil.Broker, id string) {
	t.Helper()
	testutil.Eventually(t, waitFor, "client "+id+" has acknowledged everything", func() bool {
		cl, ok := b.B.Server().Clients.Get(id)
		return ok && cl.State.Inflight.Len() == 0
	})
}

// uniq returns a topic level or client id unique to this test and subtest:
// a hash of the test's name, the name's end for people, and s.
func uniq(t testing.TB, s string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(t.Name()))
	n := strings.NewReplacer("/", "-", " ", "-", "#", "", "+", "").Replace(t.Name())
	if len(n) > 24 {
		n = n[len(n)-24:]
	}
	return fmt.Sprintf("%08x-%s-%s", h.Sum32(), n, s)
}

func u16(v uint16) *uint16 { return &v }
func u32(v uint32) *uint32 { return &v }

// ---- either protocol ----

// client is a connected test client of any protocol version.
type client interface {
	peer
	subscribe(t testing.TB, filter string, qos byte)
	publish(t testing.TB, topic string, qos byte, retain bool, payload string)
	cut()
}

func (c *client3) subscribe(t testing.TB, filter string, qos byte) { t.Helper(); c.sub(t, filter, qos) }
func (c *client3) publish(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	c.pub(t, topic, qos, retain, payload)
}

func (c *client5) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	c.sub(t, paho5.SubscribeOptions{Topic: filter, QoS: qos})
}

func (c *client5) publish(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	c.pub(t, &paho5.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload)})
}

// versions are the protocol levels Ferry speaks, by name.
var versions = []struct {
	name string
	v    byte
}{{"MQTT3.1", 3}, {"MQTT3.1.1", 4}, {"MQTT5", 5}}

// will is a last will for connectAny.
type will struct {
	topic, payload string
	qos            byte
	retain         bool
}

// connectAny connects a clean-session client speaking protocol level v,
// with will w if not nil.
func connectAny(t testing.TB, b *testutil.Broker, v byte, id string, w *will) client {
	t.Helper()
	if v == 5 {
		cp := &paho5.Connect{CleanStart: true}
		if w != nil {
			cp.WillMessage = &paho5.WillMessage{Topic: w.topic, Payload: []byte(w.payload), QoS: w.qos, Retain: w.retain}
		}
		return connect5(t, b, id, cp, nil)
	}
	return connect3(t, b, uint(v), id, func(o *paho3.ClientOptions) {
		if w != nil {
			o.SetWill(w.topic, w.payload, w.qos, w.retain)
		}
	})
}
