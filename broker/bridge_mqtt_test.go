package broker_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// startMosquitto runs a real Mosquitto on a free loopback port for the
// test and returns its address.
func startMosquitto(t *testing.T) string {
	t.Helper()
	bin := testutil.NeedCommand(t, "mosquitto", "mosquitto")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	l.Close()
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\npersistence false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.Eventually(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// TestMQTTBridgeToFerryAndMosquitto: the MQTT connector carries devices'
// messages to another broker, a second Ferry and a real Mosquitto, with
// the topic remapped, and brings the remote broker's commands back.
func TestMQTTBridgeToFerryAndMosquitto(t *testing.T) {
	for _, remote := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"ferry", func(t *testing.T) string { return testutil.StartBroker(t).Addr }},
		{"mosquitto", startMosquitto},
	} {
		t.Run(remote.name, func(t *testing.T) {
			raddr := remote.addr(t)
			local := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: up
    from: "devices/#"
    to: {mqtt: {url: "mqtt://%s", topic: "site1/{{.Topic}}", qos: 1}}
  - name: down
    direction: in
    from: {mqtt: {url: "mqtt://%s", topic: "cloud/commands/#", qos: 1}}
    to: {topic: "devices/{{.Token 2}}/commands", qos: 1}
`, raddr, raddr)))

			cloud := testutil.DialRaw(t, raddr, 4)
			cloud.Connect("cloud-app", packets.Properties{})
			cloud.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "site1/#", Qos: 1}}})
			cloud.Expect(packets.Suback)

			dev := testutil.DialRaw(t, local.Addr, 4)
			dev.Connect("d9", packets.Properties{})
			dev.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
				Filters: packets.Subscriptions{{Filter: "devices/d9/commands", Qos: 1}}})
			dev.Expect(packets.Suback)
			for i := range 10 {
				publishQoS1(t, dev, uint16(i+2), "devices/d9/telemetry", fmt.Sprintf("m%d", i))
			}
			for i := range 10 {
				pk := cloud.Expect(packets.Publish)
				if pk.TopicName != "site1/devices/d9/telemetry" || string(pk.Payload) != fmt.Sprintf("m%d", i) {
					t.Fatalf("remote got %s %q, want site1/devices/d9/telemetry m%d (in order)", pk.TopicName, pk.Payload, i)
				}
				cloud.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}

			// Down: the ingress subscription may take a moment to be made.
			testutil.Eventually(t, 10*time.Second, "a cloud command reaches the device", func() bool {
				cloud.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "cloud/commands/d9",
					Payload: []byte("reboot")})
				for {
					pk, err := dev.Read(300 * time.Millisecond)
					if err != nil {
						return false
					}
					if pk.FixedHeader.Type == packets.Publish && pk.TopicName == "devices/d9/commands" && string(pk.Payload) == "reboot" {
						return true
					}
				}
			})
		})
	}
}
