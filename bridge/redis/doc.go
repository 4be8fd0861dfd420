// Package redis is the bridge's Redis connector (config key "redis").
//
// Egress (route target), mode "stream" (default): each message becomes one
// XADD to a stream whose name is rendered from the message (a
// bridge.Template, e.g. "telemetry:{{.Segment 1}}"), optionally trimmed
// with MAXLEN ~ N. A batch is sent as one pipeline, in order; Deliver
// returns nil only after every XADD was answered with an entry id. Entry
// fields, in this order:
//
//	payload    the payload bytes unchanged (the JSON envelope with payload: envelope)
//	topic      the MQTT topic
//	client_id  the publisher's client id ("" when unknown)
//	qos        "0", "1" or "2"
//	id         the message's stable id (bridge.Message.ID, "<route>-<seq>")
//	prop.<k>   one field per MQTT user property k (repeated keys repeat)
//
// Redis streams do not de-duplicate: a batch retried after a connection
// error, or re-sent one message at a time after a refused message, may add
// entries twice; consumers de-duplicate on the id field. Connection errors,
// timeouts and transient replies (LOADING, BUSY, READONLY, MASTERDOWN,
// TRYAGAIN, OOM) are bridge.Unavailable (the route holds its messages and
// probes with PING); any other error reply (WRONGTYPE, ...) is
// bridge.Permanent and dead-letters the message.
//
// Egress, mode "publish": PUBLISH of the payload to a channel template.
// Redis pub/sub has no persistence: a message with no subscriber at that
// moment is lost although Deliver returned nil. The bridge.Spec does not
// tell the connector the route's delivery, so this is not refused on an
// at-least-once route; configure such routes with delivery: at-most-once.
//
// Ingress (route source): a consumer group (group, default
// "ferry-<route>") on one stream, created with MKSTREAM if missing. The
// connector reads with XREADGROUP BLOCK and hands each entry to the
// bridge; the entry is XACKed only after the broker accepted it. A
// refused entry stays pending; entries pending longer than claim_idle (its
// own, or those left by a crashed consumer) are taken over with XAUTOCLAIM
// every claim_idle/2 and handed over again. An entry the bridge refuses
// permanently (e.g. a topic that cannot be rendered) is logged and XACKed.
// Redeliveries break the stream's order.
//
// Start pings the server; if it is down Start logs and returns nil, so the
// broker boots during a backend outage. The client reconnects on demand;
// nothing is buffered by it, so Deliver fails (and the route retries)
// until Redis is back. The client's own command retries are disabled: the
// route's backoff is the only retry loop.
//
// The connector holds one connection pool. Deliver is safe for concurrent
// use; Receive is called once.
package redis
