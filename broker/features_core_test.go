package broker_test

// End-to-end tests of the features every protocol version shares: QoS
// 0/1/2, retained messages and wills, over MQTT 3.1 ("MQIsdp", level 3),
// 3.1.1 and 5.0, with real paho clients against a real Ferry.

import (
	"fmt"
	"testing"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestFeatureQoS publishes at every QoS to a subscription of every QoS, for
// each protocol version: the message arrives once, intact, at the lower of
// the two QoS levels.
func TestFeatureQoS(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	for _, ver := range versions {
		for pubQoS := byte(0); pubQoS <= 2; pubQoS++ {
			for subQoS := byte(0); subQoS <= 2; subQoS++ {
				name := fmt.Sprintf("%s/publish_qos%d/subscribe_qos%d", ver.name, pubQoS, subQoS)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					topic := "qos/" + uniq(t, "t")
					sub := connectAny(t, b, ver.v, uniq(t, "sub"), nil)
					pub := connectAny(t, b, ver.v, uniq(t, "pub"), nil)
					sub.subscribe(t, topic, subQoS)
					payload := "hello " + name
					pub.publish(t, topic, pubQoS, false, payload)
					got := sub.box().wait1(t, topic)
					if want := min(pubQoS, subQoS); got.QoS != want {
						t.Errorf("received at QoS %d, want %d", got.QoS, want)
					}
					if got.Payload != payload || got.Retain {
						t.Errorf("received payload %q retain %v, want %q retain false", got.Payload, got.Retain, payload)
					}
					barrier(t, pub, sub)
					if n := len(sub.box().on(topic)); n != 1 {
						t.Errorf("received %d copies, want 1", n)
					}
				})
			}
		}
	}
}

// TestFeatureCrossVersion checks that clients of different protocol
// versions talk to each other through Ferry.
func TestFeatureCrossVersion(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	for _, from := range versions {
		for _, to := range versions {
			if from.v == to.v {
				continue
			}
			t.Run(from.name+"_to_"+to.name, func(t *testing.T) {
				t.Parallel()
				topic := "cross/" + uniq(t, "t")
				sub := connectAny(t, b, to.v, uniq(t, "sub"), nil)
				pub := connectAny(t, b, from.v, uniq(t, "pub"), nil)
				sub.subscribe(t, topic, 2)
				pub.publish(t, topic, 2, false, "from "+from.name)
				if got := sub.box().wait1(t, topic); got.Payload != "from "+from.name || got.QoS != 2 {
					t.Errorf("received %q at QoS %d, want %q at QoS 2", got.Payload, got.QoS, "from "+from.name)
				}
			})
		}
	}
}

// TestFeatureRetained sets, replaces and clears a retained message with
// each protocol version: a new subscription gets the latest value with the
// retain flag set, a live subscriber gets it with the flag cleared, and an
// empty retained payload removes it.
func TestFeatureRetained(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			t.Parallel()
			topic := "retained/" + uniq(t, "t")
			pub := connectAny(t, b, ver.v, uniq(t, "pub"), nil)
			live := connectAny(t, b, ver.v, uniq(t, "live"), nil)
			live.subscribe(t, topic, 1)
			// mochi answers SUBACK before it looks up retained messages: let
			// the lookup finish, or "first" may also arrive as retained.
			barrier(t, live, live)

			pub.publish(t, topic, 1, true, "first")
			pub.publish(t, topic, 1, true, "second")
			// PUBACK comes before the message is forwarded: a subscription
			// made before that is done would get "second" live as well.
			barrier(t, pub, pub)
			for i, m := range live.box().waitN(t, topic, 2) {
				if m.Retain {
					t.Errorf("live message %d (%q) has the retain flag; a message forwarded to an existing subscription must not", i, m.Payload)
				}
			}

			late := connectAny(t, b, ver.v, uniq(t, "late"), nil)
			late.subscribe(t, topic, 1)
			got := late.box().wait1(t, topic)
			if got.Payload != "second" || !got.Retain {
				t.Errorf("new subscription got %q retain %v, want the latest retained %q with retain set", got.Payload, got.Retain, "second")
			}
			barrier(t, late, late)
			if n := len(late.box().on(topic)); n != 1 {
				t.Errorf("new subscription got %d retained messages, want 1", n)
			}

			pub.publish(t, topic, 1, true, "") // clear
			barrier(t, pub, pub)               // and forwarded to current subscribers
			cleared := connectAny(t, b, ver.v, uniq(t, "cleared"), nil)
			cleared.subscribe(t, topic, 1)
			barrier(t, cleared, cleared) // the retained message would come before
			if got := cleared.box().on(topic); len(got) != 0 {
				t.Errorf("after clearing, a new subscription got %+v, want nothing", got)
			}
		})
	}
}

// TestFeatureWill checks, for each protocol version, that the will is
// published when a client's connection drops and not when it disconnects
// with DISCONNECT; a retained will is also kept as the retained message.
func TestFeatureWill(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	cases := []struct {
		name     string
		retain   bool
		abnormal bool // cut the TCP connection instead of DISCONNECT
		wantWill bool
	}{
		{name: "connection_lost_publishes_will", abnormal: true, wantWill: true},
		{name: "connection_lost_publishes_retained_will", abnormal: true, retain: true, wantWill: true},
		{name: "clean_disconnect_discards_will", abnormal: false},
	}
	for _, ver := range versions {
		for _, tc := range cases {
			t.Run(ver.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				topic := "will/" + uniq(t, "t")
				watcher := connectAny(t, b, ver.v, uniq(t, "watch"), nil)
				watcher.subscribe(t, topic, 1)
				id := uniq(t, "dying")
				w := &will{topic: topic, payload: "gone: " + id, qos: 1, retain: tc.retain}
				dying := connectAny(t, b, ver.v, id, w)

				if tc.abnormal {
					dying.cut()
				} else {
					switch c := dying.(type) {
					case *client3:
						c.Disconnect(100)
					case *client5:
						c.disconnect(t)
					}
				}
				if !tc.wantWill {
					// The will is published before the broker forgets the
					// session; a barrier after that would follow it.
					waitGone(t, b, id)
					other := connectAny(t, b, ver.v, uniq(t, "other"), nil)
					barrier(t, other, watcher)
					if got := watcher.box().on(topic); len(got) != 0 {
						t.Errorf("will published after a clean DISCONNECT: %+v", got)
					}
					return
				}
				got := watcher.box().wait1(t, topic)
				if got.Payload != w.payload || got.QoS != 1 {
					t.Errorf("will received as %q QoS %d, want %q QoS 1", got.Payload, got.QoS, w.payload)
				}
				if !tc.retain {
					return
				}
				late := connectAny(t, b, ver.v, uniq(t, "late"), nil)
				late.subscribe(t, topic, 1)
				if got := late.box().wait1(t, topic); got.Payload != w.payload || !got.Retain {
					t.Errorf("retained will: new subscription got %q retain %v, want %q retained", got.Payload, got.Retain, w.payload)
				}
			})
		}
	}
}

// TestFeaturePersistentSessionV3 checks clean session off for MQTT 3.1 and
// 3.1.1: the session keeps its subscription and the QoS 1 messages
// published while the client was away; clean session on discards both.
func TestFeaturePersistentSessionV3(t *testing.T) {
	t.Parallel()
	b := testutil.StartBroker(t)
	for _, ver := range versions[:2] {
		for _, clean := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/clean_session_%v", ver.name, clean), func(t *testing.T) {
				t.Parallel()
				topic := "persist/" + uniq(t, "t")
				id := uniq(t, "s")
				persistent := func(o *paho3.ClientOptions) { o.SetCleanSession(clean) }
				s := connect3(t, b, uint(ver.v), id, persistent)
				s.sub(t, topic, 1)
				s.Disconnect(100)
				if clean {
					waitGone(t, b, id)
				} else {
					waitOffline(t, b, id)
				}
				pub := connectAny(t, b, ver.v, uniq(t, "pub"), nil)
				pub.publish(t, topic, 1, false, "while away")
				barrier(t, pub, pub) // PUBACK comes before the message is queued

				again := connect3(t, b, uint(ver.v), id, persistent)
				if present := again.present; present == clean {
					t.Errorf("CONNACK session present = %v with clean session %v", present, clean)
				}
				if clean {
					barrier(t, pub, again)
					if got := again.in.on(topic); len(got) != 0 {
						t.Errorf("clean session received %+v", got)
					}
					return
				}
				if got := again.in.wait1(t, topic); got.Payload != "while away" || got.QoS != 1 {
					t.Errorf("queued message arrived as %q QoS %d", got.Payload, got.QoS)
				}
			})
		}
	}
}
