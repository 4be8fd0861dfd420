// Package rabbitmq is the bridge's RabbitMQ (AMQP 0-9-1) connector (config
// key "rabbitmq"), built on github.com/rabbitmq/amqp091-go.
//
// Egress (route target): each message is published to exchange (default:
// the default exchange) with a routing key rendered from the message (a
// bridge.Template; default: the MQTT topic with "/" replaced by "."),
// persistent (delivery mode 2), MessageId the stable message id
// ("<route>-<seq>"), Timestamp the bridge's accept time, and headers: one
// per MQTT user property (a repeated key becomes an array) plus
// "mqtt-topic". With payload: envelope the body is the JSON envelope.
//
// The channel is in confirm mode. Deliver publishes the whole batch, then
// waits (up to timeout) for every confirm, and returns nil only when all
// are acks. A nack is retryable. With mandatory (default true) a message
// no queue is bound for is returned by RabbitMQ before its ack; Deliver
// then returns a bridge.Permanent error with the reply code and text
// (312 NO_ROUTE), so the bridge retries the batch one message at a time
// and dead-letters only the unroutable ones; the others of that batch may
// reach their queues twice. Consumers de-duplicate on MessageId. A
// persistent message is confirmed once a durable queue has it on disk.
//
// Start dials; a server that is down is logged and not an error, refused
// credentials or vhost are. When the connection or channel is lost, a
// failed publish or an unknown confirm outcome drops the session; the next
// Deliver (paced by the route's backoff) redials. Nothing is buffered in
// the client: the outbox holds the messages until RabbitMQ is back. Deliver
// calls on one connector are serialized on its one channel (per-key lanes
// do not publish in parallel); Close waits for a Deliver in progress, which
// is bounded by timeout.
//
// Ingress (route source): a consumer on queue (which must exist) over its
// own connection, with Qos(prefetch). A delivery becomes a message with the
// body as payload, the routing key as subject (.Subject; the queue's name
// when empty), the AMQP headers as headers (.Header "k"), and the AMQP
// MessageId as id. It is acked only after the broker accepted it; a
// refused one is nacked with requeue after RequeueDelay and handed again
// (by RabbitMQ, possibly out of order); one refused permanently (e.g. a
// topic that cannot be rendered) is nacked without requeue, so it goes to
// the queue's dead-letter exchange if one is configured, else is dropped.
// When the connection or channel is lost Receive returns an error and the
// bridge calls it again with the route's backoff; RabbitMQ redelivers what
// was not acked.
package rabbitmq
