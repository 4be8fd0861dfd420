// Package kafka is the bridge's Kafka connector (config key "kafka"),
// built on franz-go (kgo).
//
// Egress (route target): each message becomes one record on the topic
// rendered from the message (a bridge.Template), keyed by the key
// template (default "{{.ClientID}}"; an empty key sends no key). Headers,
// in this order:
//
//	ferry-message-id  the message's stable id (bridge.Message.ID, "<route>-<seq>")
//	mqtt-topic        the MQTT topic
//	<k>               one header per MQTT user property k (repeated keys repeat)
//
// The value is the payload, or the JSON envelope with payload: envelope.
// The producer is idempotent (franz-go's default) with acks=all. Deliver
// produces the batch in order (records with one key go to one partition
// and keep their order) and returns nil only when every record's produce
// was acknowledged. Within one Deliver the client retries retriable errors
// itself with the same idempotent sequence numbers, so the broker drops
// duplicates; when timeout passes, Deliver returns a plain error
// (timeouts, brokers unreachable, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS,
// ...) as bridge.Unavailable: the route holds its messages and probes the
// cluster. A record that was sent but
// not answered cannot be failed safely by an idempotent producer: it stays
// in flight in the client, and the retried Deliver waits for that record
// (tracked by message id) instead of producing it again. A
// non-retriable broker error (MESSAGE_TOO_LARGE, INVALID_TOPIC_EXCEPTION,
// INVALID_RECORD, ...), a topic that is not a legal Kafka name or a
// template that cannot be rendered is bridge.Permanent and dead-letters the
// message; authorization errors are bridge.Unavailable (an operator fixes
// them for the whole route). A batch retried by the route is produced again as new
// records: a retry after a lost acknowledgement, or the one-by-one retry
// after a permanent refusal, can store a record twice; consumers
// de-duplicate on ferry-message-id.
//
// Ingress (route source): a consumer group (group, default
// "ferry-<route>") on topic and topics. Each record is handed to the
// bridge with Subject = the record's topic, Payload = its value, Headers =
// its headers plus its key as "kafka-key", ID "<topic>-<partition>-<offset>".
// Offsets are committed only for records the broker accepted: auto-commit
// covers marked records only, a record is marked after the handler
// returned nil, and the marks are committed synchronously after each poll
// (at most max_poll_records records) and when the consumer stops.
// Rebalances wait until the poll's records are handled and committed. A
// record the broker refuses stops the consumer: what was accepted is
// committed, the member leaves the group and Receive returns the error; the
// bridge calls Receive again after the route's backoff and the new member
// resumes at the refused record (other partitions' uncommitted records are
// fetched again too). A record refused permanently (e.g. a topic that
// cannot be rendered) is logged, committed and dropped. A group without
// committed offsets starts at start_offset (default earliest, so nothing
// produced before the group's first commit is skipped).
//
// Start pings the brokers (egress); if they are down Start logs and returns
// nil so the broker boots during a backend outage; the client reconnects
// on demand. Deliver is safe for concurrent use; Receive is called once at
// a time and owns its consumer.
package kafka
