// Package webhook is the bridge's HTTP webhook connector (config key
// "webhook"): it POSTs batches of messages as JSON, signed in the Standard
// Webhooks style.
//
// Body (Content-Type application/json), one request per batch of up to
// batch_size messages, gathered for up to linger:
//
//	{"type":"mqtt.messages","timestamp":"<first message's time>",
//	 "data":[<bridge.Envelope of each message, in order>]}
//
// Headers: webhook-id (the message's stable id for a batch of one, else
// "<first id>_<last id>"), webhook-timestamp (Unix seconds of the attempt)
// and webhook-signature "v1,<base64 HMAC-SHA256 of
// id.timestamp.body>" keyed with the secret's base64 bytes ("whsec_"
// prefix optional). A secret (or secret_file) is required; unsigned: true
// sends requests without a signature, and must be asked for. Receivers
// de-duplicate by each envelope's "id": a
// retried batch may be cut differently after a restart.
//
// Outcomes: 2xx acks the batch. 408, 429, 5xx, timeouts and transport
// errors are bridge.Unavailable: the route holds its messages and retries
// with backoff, counting no attempt. Any other status (4xx,
// unexpected 3xx: redirects are not followed) is permanent: the route
// delivers the batch's messages one by one to find the refused ones, which
// are dead-lettered with the status and the start of the response body.
//
// Deliver is safe for concurrent use; each call is one request bounded by
// timeout.
package webhook
