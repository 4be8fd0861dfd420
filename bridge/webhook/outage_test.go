package webhook_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	"github.com/ferrymq/ferry/bridge/webhook"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestOutageDeadLettersNothing runs the shared outage test with the
// endpoint behind a proxy that the test cuts (connections refused and
// reset). The poison message is one the endpoint answers 400 for.
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	rc, srv := newReceiver(t)
	rc.setStatus(func(b batchBody) int {
		for _, e := range b.Data {
			if payloadOf(t, e) == "poison" {
				return http.StatusBadRequest
			}
		}
		return http.StatusOK
	})
	proxy := testutil.StartProxy(t, srv.Listener.Addr().String())
	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"webhook": webhook.New},
		To:        fmt.Sprintf(`{webhook: {url: "http://%s/hook", secret: %q, timeout: 500ms}}`, proxy.Addr, secret),
		Topic:     "devices/d1/t",
		Poison:    bridge.Message{Topic: "devices/d1/t", Payload: []byte("poison"), QoS: 1},
		Received: func(t *testing.T) []string {
			var out []string
			for _, e := range rc.accepted() {
				out = append(out, payloadOf(t, e))
			}
			return out
		},
		Down: func(*testing.T) { proxy.Cut() },
		Up:   func(*testing.T) { proxy.Restore() },
	})
}

// payloadOf decodes an envelope's payload (base64: the test's payloads
// are not JSON).
func payloadOf(t *testing.T, e envelope) string {
	var s string
	if err := json.Unmarshal(e.Payload, &s); err != nil {
		t.Errorf("payload %s: %v", e.Payload, err)
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Errorf("payload %s: %v", s, err)
	}
	return string(b)
}
