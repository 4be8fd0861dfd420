package activemq_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/activemq/stomp"
)

// TestClient: the STOMP client against the real server: a refused login, a SEND the
// authorization plugin refuses (an ERROR surfaced as *stomp.ServerError while
// the connection stays up), a round trip with client-individual ACK and
// NACK, and DISCONNECT with receipt.
func TestClient(t *testing.T) {
	addr := needServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := stomp.Dial(ctx, addr, stomp.Options{Login: "ferry", Passcode: "wrong"}); err == nil || !errors.As(err, new(*stomp.ServerError)) {
		t.Fatalf("dial with a wrong passcode: %v", err)
	}
	c, err := stomp.Dial(ctx, addr, stomp.Options{Login: "ferry", Passcode: "ferry", HeartBeat: time.Second, UseStompCommand: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.HasPrefix(c.Server(), "ActiveMQ/") {
		t.Fatalf("server %q", c.Server())
	}
	err = c.Send(ctx, stomp.Message{Destination: "/queue/restricted.stomp", Body: []byte("x")})
	var se *stomp.ServerError
	if !errors.As(err, &se) || errors.Is(err, stomp.ErrConnectionLost) || !strings.Contains(se.Message, "not authorized") {
		t.Fatalf("send to a restricted queue: %v", err)
	}
	queue := fmt.Sprintf("/queue/ferry.stomp.%d.%d", os.Getpid(), time.Now().UnixNano())
	body := []byte("a\x00b") // NUL: content-length matters
	if err := c.Send(ctx, stomp.Message{Destination: queue, Body: body, Headers: []stomp.Header{{Key: "k:x", Value: "v\nw"}, {Key: "persistent", Value: "true"}}}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, queue, stomp.AckClientIndividual, 4)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != string(body) || m.Value("k:x") != "v\nw" || m.Value("persistent") != "true" || m.Value("subscription") != sub.ID() {
		t.Fatalf("message %+v", m)
	}
	if err := c.Ack(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(ctx); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	if !errors.Is(c.Err(), stomp.ErrClosed) {
		t.Fatalf("Err() after disconnect = %v", c.Err())
	}
	// Acked: a new consumer gets nothing.
	c2, err := stomp.Dial(ctx, addr, stomp.Options{Login: "ferry", Passcode: "ferry"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	sub2, err := c2.Subscribe(ctx, queue, stomp.AckClientIndividual, 4)
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	if m, err := sub2.Next(short); err == nil {
		t.Fatalf("acked message delivered again: %+v", m)
	}
}
