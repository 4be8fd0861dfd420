package limits

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	mochiauth "github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/mochitest"
)

// The MQTT protocol versions the tests speak: 3.1.1 and 5.
const (
	v3 byte = 4
	v5 byte = 5
)

// readTimeout bounds every wait for a packet.
const readTimeout = 5 * time.Second

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startServer runs a mochi server on 127.0.0.1:0 with mochi's AllowHook
// (these are not auth tests) and a limits hook built from cfg. It returns
// the hook and the listener's address; the server is closed when the test
// ends.
func startServer(t testing.TB, cfg Config) (*Hook, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: discardLogger()})
	if err := srv.AddHook(new(mochiauth.AllowHook), nil); err != nil {
		t.Fatalf("add allow hook: %v", err)
	}
	h, err := New(cfg, srv, discardLogger())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.AddHook(h, nil); err != nil {
		t.Fatalf("add limits hook: %v", err)
	}
	return h, mochitest.Serve(t, srv).Address()
}

// rawClient is a byte-level MQTT client: the tests must see the exact
// reason codes on the wire, and whether the broker closed the connection.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte
	nextID  uint16
}

func dial(t testing.TB, addr string, version byte) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, readTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c), version: version}
}

// encode returns pk's bytes as the client's protocol version.
func (c *rawClient) encode(pk packets.Packet) []byte {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		pk.Connect.ProtocolName = []byte("MQTT")
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	default:
		err = fmt.Errorf("cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatalf("encode: %v", err)
	}
	return buf.Bytes()
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	if _, err := c.conn.Write(c.encode(pk)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// connect sends CONNECT (clean start, keepalive 60) and returns the CONNACK.
func (c *rawClient) connect(clientID string) packets.Packet {
	c.t.Helper()
	c.sendConnect(packets.ConnectParams{ClientIdentifier: clientID})
	return c.expect(packets.Connack)
}

// sendConnect sends CONNECT with p, clean start and keepalive 60.
func (c *rawClient) sendConnect(p packets.ConnectParams) {
	c.t.Helper()
	p.Clean, p.Keepalive = true, 60
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: p})
}

// mustConnect connects and fails the test unless the CONNACK is a success.
func (c *rawClient) mustConnect(clientID string) {
	c.t.Helper()
	if ack := c.connect(clientID); ack.ReasonCode != 0 {
		c.t.Fatalf("CONNACK reason 0x%02x, want success", ack.ReasonCode)
	}
}

func (c *rawClient) id() uint16 {
	c.nextID++
	return c.nextID
}

// publish sends a PUBLISH and returns its packet id (0 for QoS 0).
func (c *rawClient) publish(topic string, qos byte, payload []byte, props packets.Properties) uint16 {
	c.t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
		Properties:  props,
	}
	if qos > 0 {
		pk.PacketID = c.id()
	}
	c.send(pk)
	return pk.PacketID
}

// subscribe sends one SUBSCRIBE with filters at QoS 0 and returns its id.
func (c *rawClient) subscribe(filters ...string) uint16 {
	c.t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    c.id(),
	}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f})
	}
	c.send(pk)
	return pk.PacketID
}

// mustSubscribe subscribes and fails the test unless every filter is granted.
func (c *rawClient) mustSubscribe(filters ...string) {
	c.t.Helper()
	id := c.subscribe(filters...)
	ack := c.expect(packets.Suback)
	if ack.PacketID != id || len(ack.ReasonCodes) != len(filters) {
		c.t.Fatalf("SUBACK id %d with %d codes, want id %d with %d", ack.PacketID, len(ack.ReasonCodes), id, len(filters))
	}
	for i, code := range ack.ReasonCodes {
		if code > 2 {
			c.t.Fatalf("SUBACK refused filter %d (%.40q): 0x%02x", i, filters[i], code)
		}
	}
}

// read returns the next packet, or an error: io.EOF or a reset when the
// broker closed the connection, a timeout when it sent nothing.
func (c *rawClient) read(timeout time.Duration) (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// expect reads the next packet and fails the test unless it has type typ.
func (c *rawClient) expect(typ byte) packets.Packet {
	c.t.Helper()
	pk, err := c.read(readTimeout)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", packets.PacketNames[typ], err)
	}
	if pk.FixedHeader.Type != typ {
		c.t.Fatalf("got %s (reason 0x%02x), want %s", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode, packets.PacketNames[typ])
	}
	return pk
}

// expectClosed fails the test unless the broker closes the connection
// without sending anything first.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	pk, err := c.read(readTimeout)
	if err == nil {
		c.t.Fatalf("got %s (reason 0x%02x), want the connection closed", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %s", readTimeout)
	}
}

// expectRefused checks how the broker ends a connection for a limit: MQTT 5
// gets DISCONNECT with code and then the close, MQTT 3 just the close.
func (c *rawClient) expectRefused(code packets.Code) {
	c.t.Helper()
	if c.version == v5 {
		if pk := c.expect(packets.Disconnect); pk.ReasonCode != code.Code {
			c.t.Fatalf("DISCONNECT reason 0x%02x, want 0x%02x (%s)", pk.ReasonCode, code.Code, code.Reason)
		}
	}
	c.expectClosed()
}

// ping checks the broker still serves this client, by a QoS 1 publish to a
// topic no one reads and its PUBACK.
func (c *rawClient) ping() {
	c.t.Helper()
	id := c.publish("ping", 1, nil, packets.Properties{})
	if ack := c.expect(packets.Puback); ack.PacketID != id || ack.ReasonCode >= 0x80 {
		c.t.Fatalf("PUBACK id %d reason 0x%02x, want id %d success", ack.PacketID, ack.ReasonCode, id)
	}
}

// eventually polls fn every 10 ms until it is true, failing the test with
// msg after timeout.
func eventually(t testing.TB, timeout time.Duration, msg string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, msg)
		}
		<-tick.C
	}
}
