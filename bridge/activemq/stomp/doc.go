// Package stomp is a small STOMP 1.2 client: the frame codec (Reader,
// AppendFrame) and a connection (Conn) with receipts, pipelined SENDs,
// subscriptions with client-individual acknowledgement, and heart-beats.
//
// SendAll pipelines SENDs, each with its own receipt; SendTx wraps a batch
// in a transaction whose COMMIT alone carries a receipt, which lets
// ActiveMQ store the batch with one sync.
//
// It is written for Ferry's ActiveMQ connector and tested against ActiveMQ
// 5.17, but speaks plain STOMP 1.2 (https://stomp.github.io/stomp-specification-1.2.html):
//
//   - Header values and keys are escaped (\r \n \c \\) in every frame but
//     CONNECT and CONNECTED; an undefined escape is a protocol error.
//   - Every SEND carries content-length, so bodies may hold NUL bytes.
//   - End-of-lines between frames are heart-beats, in both directions.
//   - Frame, line and header-count limits (Limits) bound what a peer can
//     make the Reader allocate; errors name the limit.
//
// Concurrency: a Conn's methods are safe for concurrent use. One reader
// goroutine per Conn dispatches RECEIPT, ERROR and MESSAGE frames; one
// heart-beat goroutine sends EOLs when the connection is otherwise idle.
// Both are owned by the Conn: Close waits for them.
//
// Errors: an ERROR frame is a *ServerError carrying its message header and
// body. An ERROR whose receipt-id names a frame the client sent fails that
// frame only (ActiveMQ keeps the connection open after refusing one SEND);
// any other ERROR, a protocol error, a missed heart-beat or a closed socket
// ends the connection, and every frame still waiting for its receipt fails
// with an error wrapping ErrConnectionLost (its outcome is unknown).
package stomp
