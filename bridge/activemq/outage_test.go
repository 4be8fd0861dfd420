package activemq_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq"
	"github.com/ferrymq/ferry/bridge/activemq/stomp"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestOutageDeadLettersNothing runs the shared outage test with the bridge
// reaching ActiveMQ through a proxy the test cuts (the broker is shared
// with other tests; the test's own consumer stays connected), and an
// ingress route on another queue. The poison message goes to
// restricted.>, which the ferry user may not write (ERROR "not
// authorized").
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	addr := needServer(t)
	good, in := queue("good"), queue("in")
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := c.Subscribe(ctx, "/queue/"+good, stomp.AckAuto, 256)
	if err != nil {
		t.Fatal(err)
	}
	var got bridgerun.Payloads
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			got.Add(string(m.Body))
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	proxy := testutil.StartProxy(t, addr)
	pass := passcodeFile(t)
	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"activemq": activemq.New},
		To: fmt.Sprintf(`{activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/{{.Segment 1}}", timeout: 1s, heart_beat: 1s}}`,
			proxy.Addr, pass),
		Topic:    "devices/" + good + "/t",
		Poison:   bridge.Message{Topic: "devices/restricted.x/t", Payload: []byte("poison"), QoS: 1},
		Received: got.Received,
		Down:     func(*testing.T) { proxy.Cut() },
		Up:       func(*testing.T) { proxy.Restore() },
		From: fmt.Sprintf(`{activemq: {addr: %q, login: ferry, passcode_file: %q, destination: "/queue/%s", timeout: 1s, heart_beat: 1s}}`,
			proxy.Addr, pass, in),
		Put: func(t *testing.T, payloads []string) {
			msgs := make([]stomp.Message, len(payloads))
			for i, p := range payloads {
				msgs[i] = stomp.Message{Body: []byte(p)}
			}
			send(t, c, in, msgs...)
		},
	})
}
