// Package mqtt is the bridge's connector to another MQTT broker (config key
// "mqtt"), on MQTT 5 with github.com/eclipse/paho.golang's autopaho.
//
// Egress (route target): each message is published to a topic rendered
// from the route's message (a bridge.Template, e.g. "site1/{{.Topic}}"),
// one at a time in order, with the publisher's user properties plus
// "ferry-bridge-id" (the stable id). At QoS 1 (default) Deliver returns
// nil only after every PUBACK, at QoS 2 every PUBCOMP; at QoS 0 once
// written. A PUBACK reason code meaning the message can never be accepted
// (not authorized, topic name invalid, packet too large, payload format
// invalid) is permanent; the connection being down, a timeout, server busy
// or quota exceeded are bridge.Unavailable; other codes are retried.
//
// Ingress (route source): a subscription to a topic filter, renewed on each
// reconnect. The message is acknowledged (PUBACK) after the bridge handed
// it to the broker; MQTT has no negative ack, so a message the broker
// refuses is lost and counted.
//
// Start does not wait for the connection: the broker boots while the
// remote broker is down, the connector reconnects with backoff, and
// Deliver fails (the route retries) until it is up. Nothing is queued in
// the client.
package mqtt
