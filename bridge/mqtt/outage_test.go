package mqtt_test

import (
	"fmt"
	"testing"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/internal/bridgerun"
	"github.com/ferrymq/ferry/bridge/internal/bridgetest"
	bmqtt "github.com/ferrymq/ferry/bridge/mqtt"
)

// TestOutageDeadLettersNothing runs the shared outage test with the remote
// broker stopped and restarted on the same port. The poison message goes
// to a topic the remote broker refuses (PUBACK 0x87 not authorized).
func TestOutageDeadLettersNothing(t *testing.T) {
	bridgetest.NoLeaks(t)
	r := startRemote(t)
	bridgerun.Outage(t, bridgerun.Backend{
		Factories: map[string]bridge.Factory{"mqtt": bmqtt.New},
		To:        fmt.Sprintf(`{mqtt: {url: "mqtt://%s", topic: "site1/{{.Topic}}", timeout: 500ms}}`, r.addr),
		Topic:     "devices/good/t",
		Poison:    bridge.Message{Topic: "devices/poison/t", Payload: []byte("poison"), QoS: 1},
		Received: func(*testing.T) []string {
			var out []string
			for _, pk := range r.received() {
				if pk.TopicName == "site1/devices/good/t" {
					out = append(out, string(pk.Payload))
				}
			}
			return out
		},
		Down: func(*testing.T) { r.stop() },
		Up:   func(*testing.T) { r.start() },
	})
}
