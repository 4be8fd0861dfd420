package nats_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bnats "github.com/ferrymq/ferry/bridge/nats"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestOutageDeadLettersNothing runs the shared outage test on core NATS
// and on JetStream, the bridge reaching the server through a proxy that
// the test cuts (the test's own subscriber stays connected). The poison
// message is over the server's max_payload (core) or the stream's
// max_msg_size (JetStream).
func TestOutageDeadLettersNothing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		jetstream bool
		poison    []byte
	}{
		{"core", false, bytes.Repeat([]byte("x"), 1<<20+1)},
		{"jetstream", true, bytes.Repeat([]byte("x"), 2048)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bridgetest.NoLeaks(t)
			ns := runServer(t)
			nc, js := ns.client(t)
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}, MaxMsgSize: 1024}); err != nil {
				t.Fatal(err)
			}
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.>"}}); err != nil {
				t.Fatal(err)
			}
			var got bridgerun.Payloads
			sub, err := nc.Subscribe("out.good", func(m *nats.Msg) { got.Add(string(m.Data)) })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Unsubscribe() })
			proxy := testutil.StartProxy(t, fmt.Sprintf("127.0.0.1:%d", ns.port))
			url := "nats://" + proxy.Addr
			be := bridgerun.Backend{
				Factories: map[string]bridge.Factory{"nats": bnats.New},
				To:        fmt.Sprintf(`{nats: {url: %q, subject: "out.{{.Segment 1}}", jetstream: %v, timeout: 500ms}}`, url, tc.jetstream),
				Topic:     "devices/good/t",
				Poison:    bridge.Message{Topic: "devices/poison/t", Payload: tc.poison, QoS: 1},
				Received:  got.Received,
				Down:      func(*testing.T) { proxy.Cut() },
				Up:        func(*testing.T) { proxy.Restore() },
			}
			if tc.jetstream {
				// Core NATS loses what is published while the bridge's
				// subscription reconnects: only JetStream ingress is tested.
				be.From = fmt.Sprintf(`{nats: {url: %q, subject: "in.>", jetstream: true, stream: IN}}`, url)
				be.Put = func(t *testing.T, payloads []string) {
					for _, p := range payloads {
						pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
						_, err := js.Publish(pctx, "in.x", []byte(p))
						cancel()
						if err != nil {
							t.Fatalf("publish: %v", err)
						}
					}
				}
			}
			bridgerun.Outage(t, be)
			if tc.jetstream {
				s, err := js.Stream(ctx, "OUT")
				if err != nil {
					t.Fatal(err)
				}
				info, err := s.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if info.State.Msgs != 150 {
					t.Fatalf("stream OUT holds %d messages, want 150 (de-duplicated by Nats-Msg-Id)", info.State.Msgs)
				}
			}
		})
	}
}
