package main

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// clusterModes are the two ways nodes reach NATS: each runs its own
// server (routed to the others'), or all use an external three-server
// nats-server cluster (Debian's package).
var clusterModes = []struct {
	name     string
	external bool
}{{"embedded", false}, {"external", true}}

func startTestCluster(t *testing.T, external bool) *testutil.FerryCluster {
	t.Helper()
	bin := testutil.BuildFerry(t)
	o := testutil.FerryClusterOptions{Nodes: 3}
	if external {
		o.External = testutil.StartNATSCluster(t, 3)
	}
	return testutil.StartFerryCluster(t, bin, o)
}

func clusterClient(t *testing.T, addr, id string, clean bool, onMsg paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true).SetDefaultPublishHandler(onMsg)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", id, addr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func waitTok(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// clusterMetric reads one metric's value (the first line starting with name)
// from a node's /metrics.
func clusterMetric(t *testing.T, admin, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return l[strings.LastIndexByte(l, ' ')+1:]
		}
	}
	return ""
}

// TestClusterRoutesAndRetains runs three ferry processes, with NATS
// embedded and with an external nats-server cluster: QoS 1 and 2 messages
// published on one node reach a subscriber on another in order, a
// retained message set on one node is seen from the others (by
// mosquitto_sub), and every node counts three members.
func TestClusterRoutesAndRetains(t *testing.T) {
	for _, mode := range clusterModes {
		t.Run(mode.name, func(t *testing.T) {
			c := startTestCluster(t, mode.external)
			for i := range c.Len() {
				testutil.Eventually(t, 15*time.Second, "node "+c.ID(i)+" sees 3 members", func() bool {
					return clusterMetric(t, c.AdminAddr(i), "ferry_cluster_nodes") == "3"
				})
			}

			for _, qos := range []byte{1, 2} {
				topic := fmt.Sprintf("cl/%s/q%d", mode.name, qos)
				got := make(chan string, 1000)
				sub := clusterClient(t, c.MQTTAddr(1), fmt.Sprintf("sub-%s-%d", mode.name, qos), true, nil)
				waitTok(t, sub.Subscribe(topic, qos, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }), "subscribe")
				pub := clusterClient(t, c.MQTTAddr(0), fmt.Sprintf("pub-%s-%d", mode.name, qos), true, nil)
				// The subscription reaches the other nodes shortly after
				// its SUBACK: probe until one message goes through.
				testutil.Eventually(t, 10*time.Second, "first message across nodes", func() bool {
					waitTok(t, pub.Publish(topic, qos, false, "probe"), "probe")
					select {
					case <-got:
						return true
					case <-time.After(100 * time.Millisecond):
						return false
					}
				})
				time.Sleep(200 * time.Millisecond)
			drain:
				for {
					select {
					case <-got:
					default:
						break drain
					}
				}
				const count = 300
				for i := range count {
					waitTok(t, pub.Publish(topic, qos, false, strconv.Itoa(i)), "publish")
				}
				for i := range count {
					select {
					case m := <-got:
						if m != strconv.Itoa(i) {
							t.Fatalf("qos %d: message %d is %q", qos, i, m)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("qos %d: %d of %d messages", qos, i, count)
					}
				}
			}

			// Retained on node 0, read with mosquitto_sub on nodes 1 and 2.
			pubBin := testutil.NeedCommand(t, "mosquitto_pub", "mosquitto-clients")
			subBin := testutil.NeedCommand(t, "mosquitto_sub", "mosquitto-clients")
			host, port := splitAddr(t, c.MQTTAddr(0))
			if out, err := exec.Command(pubBin, "-h", host, "-p", port, "-q", "1", "-r", "-t", "cl/ret", "-m", "kept").CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub: %v %s", err, out)
			}
			for i := 1; i < c.Len(); i++ {
				host, port := splitAddr(t, c.MQTTAddr(i))
				testutil.Eventually(t, 10*time.Second, "retained on node "+c.ID(i), func() bool {
					out, err := exec.Command(subBin, "-h", host, "-p", port, "-t", "cl/ret", "-C", "1", "-W", "2").Output()
					return err == nil && strings.TrimSpace(string(out)) == "kept"
				})
			}
		})
	}
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("address %q", addr)
	}
	return addr[:i], addr[i+1:]
}

// TestClusterWillWhenNodeKilled: the wills of clients connected to a node
// killed with SIGKILL are published by another node, once each: a client
// whose session ends with its connection at once, and a persistent MQTT 5
// session's will after its delay.
func TestClusterWillWhenNodeKilled(t *testing.T) {
	c := startTestCluster(t, false)
	got := make(chan string, 10)
	sub := clusterClient(t, c.MQTTAddr(1), "will-watcher", true, nil)
	waitTok(t, sub.Subscribe("lwt/#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() + "=" + string(m.Payload()) }), "subscribe")

	dial := func(id string, clean bool, expiry, delay uint32, topic string) {
		r := testutil.DialRaw(t, c.MQTTAddr(0), 5)
		r.Send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 60, WillFlag: true, WillQos: 1,
				WillTopic: topic, WillPayload: []byte("gone"), WillProperties: packets.Properties{WillDelayInterval: delay}},
			Properties: packets.Properties{SessionExpiryInterval: expiry, SessionExpiryIntervalFlag: expiry > 0},
		})
		if ack := r.Expect(packets.Connack); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK 0x%02x", ack.ReasonCode)
		}
	}
	dial("lwt-now", true, 0, 0, "lwt/now")
	dial("lwt-later", true, 300, 3, "lwt/later")
	// The sessions are in every node's view before the kill.
	time.Sleep(time.Second)
	killed := time.Now()
	c.Kill(0)

	want := map[string]bool{"lwt/now=gone": false, "lwt/later=gone": false}
	deadline := time.After(30 * time.Second)
	for n := 0; n < len(want); n++ {
		select {
		case m := <-got:
			seen, ok := want[m]
			if !ok || seen {
				t.Fatalf("unexpected or repeated will %q", m)
			}
			want[m] = true
			t.Logf("%s after %s", m, time.Since(killed).Round(100*time.Millisecond))
			if m == "lwt/later=gone" && time.Since(killed) < 3*time.Second {
				t.Fatalf("the delayed will came %s after the kill, before its delay of 3 s", time.Since(killed))
			}
		case <-deadline:
			t.Fatalf("wills after the kill: %v", want)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("a will came twice: %q", m)
	case <-time.After(3 * time.Second):
	}
}

// TestClusterSharedGroup: a shared group with a member on each of three
// ferry processes (MQTT 3.1.1 members by paho, one by mosquitto_sub)
// gets each QoS 1 message exactly once, spread over the nodes.
func TestClusterSharedGroup(t *testing.T) {
	c := startTestCluster(t, false)
	var mu sync.Mutex
	counts := map[string]int{}
	perNode := map[int]int{}
	for i := range c.Len() {
		m := clusterClient(t, c.MQTTAddr(i), "member-"+strconv.Itoa(i), true, nil)
		waitTok(t, m.Subscribe("$share/workers/jobs/#", 1, func(_ paho.Client, msg paho.Message) {
			mu.Lock()
			counts[string(msg.Payload())]++
			perNode[i]++
			mu.Unlock()
		}), "subscribe")
	}
	pub := clusterClient(t, c.MQTTAddr(0), "jobs-pub", true, nil)
	// Every node's member is known everywhere once a burst reaches all
	// three; until then a message may go to fewer members, never twice.
	testutil.Eventually(t, 20*time.Second, "every member gets messages", func() bool {
		for i := range 9 {
			waitTok(t, pub.Publish("jobs/warmup", 1, false, "w"+strconv.Itoa(i)), "publish")
		}
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		return perNode[0] > 0 && perNode[1] > 0 && perNode[2] > 0
	})
	mu.Lock()
	clear(counts)
	clear(perNode)
	mu.Unlock()
	const count = 600
	for i := range count {
		waitTok(t, pub.Publish("jobs/"+strconv.Itoa(i%7), 1, false, strconv.Itoa(i)), "publish")
	}
	testutil.Eventually(t, 20*time.Second, "the group gets every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(counts) == count
	})
	time.Sleep(time.Second) // duplicates, if any, arrive
	mu.Lock()
	defer mu.Unlock()
	for m, n := range counts {
		if n != 1 {
			t.Fatalf("message %s reached the group %d times", m, n)
		}
	}
	for i := range c.Len() {
		if perNode[i] < count/10 {
			t.Fatalf("the member on node %d got %d of %d: %v", i, perNode[i], count, perNode)
		}
	}
	t.Logf("per node: %v", perNode)
}
