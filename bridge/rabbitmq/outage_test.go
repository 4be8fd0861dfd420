package rabbitmq_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/rabbitmq"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestOutageDeadLettersNothing runs the shared outage test with the bridge
// reaching RabbitMQ through a proxy the test cuts (the server is shared
// with other tests, and the test's own consumer stays connected), and an
// ingress route on another queue. The poison message has a routing key no
// queue is bound for: returned (mandatory), 312 NO_ROUTE.
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	uri, err := amqp.ParseURI(needServer(t))
	if err != nil {
		t.Fatal(err)
	}
	ch := client(t)
	exchange, queue := declare(t, ch, "direct", "good")
	in := name("in")
	if _, err := ch.QueueDeclare(in, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	got := consume(t, client(t), queue)
	proxy := testutil.StartProxy(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	host, port, _ := net.SplitHostPort(proxy.Addr)
	uri.Host = host
	uri.Port, _ = strconv.Atoi(port)
	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"rabbitmq": rabbitmq.New},
		To:        fmt.Sprintf(`{rabbitmq: {url: %q, exchange: %q, routing_key: "{{.Segment 1}}", timeout: 1s}}`, uri.String(), exchange),
		Topic:     "devices/good/t",
		Poison:    bridge.Message{Topic: "devices/poison/t", Payload: []byte("poison"), QoS: 1},
		Received: func(*testing.T) []string {
			var out []string
			for _, d := range got.all() {
				out = append(out, string(d.Body))
			}
			return out
		},
		Down: func(*testing.T) { proxy.Cut() },
		Up:   func(*testing.T) { proxy.Restore() },
		From: fmt.Sprintf(`{rabbitmq: {url: %q, queue: %q}}`, uri.String(), in),
		Put: func(t *testing.T, payloads []string) {
			for _, p := range payloads {
				if err := ch.PublishWithContext(context.Background(), "", in, false, false, amqp.Publishing{Body: []byte(p)}); err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
		},
	})
}
