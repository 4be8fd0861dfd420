// Package nats is the bridge's NATS connector (config key "nats").
//
// Egress (route target): each message is published to a subject rendered
// from the route's message (a bridge.Template, e.g.
// "telemetry.{{.Segment 1}}"), with headers Nats-Msg-Id (the message's
// stable id), Ferry-Topic, Ferry-Client-Id and the MQTT user properties.
// Core NATS: Deliver publishes the batch, then flushes (a PING/PONG round
// trip), so nil means the server has read every message; core NATS has no
// further ack and no de-duplication. JetStream (jetstream: true): Deliver
// publishes the batch asynchronously and returns nil only after every
// PubAck arrived; the stream de-duplicates redeliveries by Nats-Msg-Id
// within its duplicate window, so a retried batch is stored once.
//
// Ingress (route source): a core subscription to a subject (messages the
// broker refuses are lost and counted: core NATS cannot redeliver), or a
// JetStream durable pull consumer on a stream, whose messages are acked
// only after the broker accepted them, nak'ed with a delay otherwise (and
// terminated when the bridge reports a permanent error).
//
// Start connects once; if the server is down it keeps reconnecting in the
// background and returns nil, so the broker boots during a backend outage;
// Deliver fails (and the route retries) until the connection is up.
// Publishes are never buffered by the client while disconnected.
//
// The connector holds one connection. Deliver is safe for concurrent use.
package nats
