// Package activemq is the bridge's ActiveMQ connector (config key
// "activemq"), over STOMP 1.2 with the client in package
// bridge/activemq/stomp (no STOMP library is a dependency).
//
// Egress (route target): each message is a SEND to destination (a
// bridge.Template, e.g. "/queue/telemetry" or "/topic/{{.Segment 1}}")
// with headers, in this order: content-length (always: bodies are bytes,
// and ActiveMQ makes a JMS BytesMessage of them), content-type
// application/json (payload: envelope only), persistent:true (unless
// persistent: false), ferry-message-id (the stable id "<route>-<seq>":
// ActiveMQ overwrites message-id with its own), mqtt-topic, one header per
// MQTT user property (a repeated key repeats; ActiveMQ keeps the first;
// names the connector sets or that change the frame's meaning, such as
// receipt or transaction, are skipped), and ferry-timestamp (accept time,
// Unix milliseconds).
//
// The RECEIPT is the ack. A batch of one is a SEND with a receipt header.
// A larger batch is one STOMP transaction written at once (pipelined):
// BEGIN, the SENDs, COMMIT with a receipt; Deliver waits, up to timeout,
// for the COMMIT's receipt, which ActiveMQ sends once every message is in
// its store, after one store sync for the whole batch (a receipt per
// persistent SEND would cost a sync each: a tenth of the throughput). An
// ERROR naming a SEND's receipt fails that message; when its text says the
// message can never be accepted (not authorized, invalid destination, ...)
// the error is bridge.Permanent and the bridge dead-letters the message
// with the ERROR's text as reason. A SEND refused inside a transaction
// makes ActiveMQ roll it back and answer with an ERROR naming no receipt,
// which ends the connection; if that refusal is permanent the error is
// bridge.Permanent, so the bridge sends the batch again one message at a
// time and dead-letters only the refused one (nothing of the rolled-back
// transaction was stored: no duplicates). A lost connection, a missed
// heart-beat or a timeout is bridge.Unavailable: the route holds its
// messages until Probe reconnects. Another ERROR is of unknown kind:
// retried with the route's backoff, counted against max_attempts while
// the server answers. A connection lost after the COMMIT
// was written leaves its outcome unknown: the retry may store the batch
// twice (consumers de-duplicate on ferry-message-id). Concurrent Delivers
// (ordering per-key) share one connection.
//
// Start connects; a server that is down is logged and not an error, an
// ERROR in reply to CONNECT (refused credentials) is. Close sends
// DISCONNECT with a receipt and waits for it.
//
// Ingress (route source): a SUBSCRIBE to destination with ack
// client-individual and activemq.prefetchSize prefetch, over its own
// connection. A MESSAGE becomes a message with the body as payload, the
// destination without /queue/ or /topic/ as subject (.Subject, .Token),
// its headers as headers (.Header "k"), and as id its ferry-message-id
// header when it has one, else ActiveMQ's message-id. It is ACKed only
// after the broker accepted it (the ACK carries no receipt: ActiveMQ would
// sync its store for each; an ACK lost with the connection means a
// redelivery, and Receive ends with DISCONNECT, whose receipt confirms
// every ACK before it). A retryable refusal is handed
// to the broker again after RetryDelay, in order; a permanent one (a topic
// that cannot be rendered) is NACKed, which ActiveMQ answers by moving the
// message to its dead-letter queue. When the connection is lost Receive
// returns an error and the bridge calls it again with the route's backoff;
// ActiveMQ redelivers what was not acked, with redelivered:true, counted in
// ferry_bridge_activemq_redelivered_total{route}.
package activemq
