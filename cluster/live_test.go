package cluster

import (
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestPersistentLiveAcrossNodes: a connected persistent subscriber gets
// what is published on another node while it is connected.
func TestPersistentLiveAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 3)
	got := make(chan string, 100)
	o := paho.NewClientOptions().AddBroker("tcp://" + nodes[1].addr).SetClientID("live").SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(true)
	sub := paho.NewClient(o)
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("live/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(nodes[0].node.sessions.persistentFor("live/x")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node 0 never saw the persistent subscription")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pub := connectClient(t, nodes[0].addr, "live-pub", true)
	for i := range 20 {
		if tok := pub.Publish("live/x", 1, false, strconv.Itoa(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	for i := range 20 {
		select {
		case m := <-got:
			if m != strconv.Itoa(i) {
				t.Fatalf("message %d is %q", i, m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 20", i)
		}
	}
}
