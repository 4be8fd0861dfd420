package activemq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq/stomp"
)

// Deliver implements bridge.Connector. One message is a SEND with a
// receipt. A batch is one transaction in one write (BEGIN, the SENDs,
// COMMIT with a receipt): ActiveMQ then syncs its store once per batch,
// not once per message. A refused SEND rolls the whole transaction back
// and ends the connection (an ERROR without receipt-id); when that ERROR
// is a permanent refusal the error is bridge.Permanent, so the bridge
// sends the batch again one message at a time and only the refused one is
// dead-lettered. Concurrent calls share the connection.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	msgs := make([]stomp.Message, len(batch))
	for i := range batch {
		var err error
		if msgs[i], err = c.message(&batch[i]); err != nil {
			return bridge.Permanent(err)
		}
	}
	conn, err := c.session(ctx)
	if err != nil {
		return bridge.Unavailable(err)
	}
	if len(msgs) == 1 {
		receipts, err := conn.SendAll(ctx, msgs)
		if err == nil {
			err = receipts[0].Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("activemq: send to %s (message %s): %w", msgs[0].Destination, batch[0].ID, classify(err, false))
		}
		return nil
	}
	commit, err := conn.SendTx(ctx, msgs)
	if err == nil {
		err = commit.Wait(ctx)
	}
	if err != nil {
		// ActiveMQ answers a refused transacted SEND with an ERROR naming
		// no receipt, which may arrive after the COMMIT's ERROR: start the
		// one-by-one retry on a fresh connection.
		c.drop(conn)
		return fmt.Errorf("activemq: send %d messages (%s..%s) in a transaction: %w", len(msgs), batch[0].ID, batch[len(batch)-1].ID, classify(err, true))
	}
	return nil
}

// drop closes conn, the session, after an error so the next Deliver
// reconnects.
func (c *Connector) drop(conn *stomp.Conn) {
	c.mu.Lock()
	if c.sess == conn {
		c.sess = nil
	}
	c.mu.Unlock()
	_ = conn.Close()
}

// message is the SEND for m: see the package doc for its headers.
func (c *Connector) message(m *bridge.Message) (stomp.Message, error) {
	dest, err := c.dest.Execute(m)
	if err != nil {
		return stomp.Message{}, fmt.Errorf("activemq: destination: %w", err)
	}
	if dest == "" {
		return stomp.Message{}, errors.New("activemq: rendered destination is empty")
	}
	body := m.Payload
	h := make([]stomp.Header, 0, 4+len(m.UserProperties))
	if c.spec.Payload == bridge.EnvelopeJSON {
		if body, err = bridge.Envelope(m); err != nil {
			return stomp.Message{}, fmt.Errorf("activemq: envelope: %w", err)
		}
		h = append(h, stomp.Header{Key: "content-type", Value: "application/json"})
	}
	if *c.cfg.Persistent {
		h = append(h, stomp.Header{Key: "persistent", Value: "true"})
	}
	h = append(h, stomp.Header{Key: IDHeader, Value: m.ID}, stomp.Header{Key: TopicHeader, Value: m.Topic})
	for _, p := range m.UserProperties {
		if p.Key == "" || reservedHeaders[p.Key] {
			continue
		}
		h = append(h, stomp.Header{Key: p.Key, Value: p.Value})
	}
	if !m.Created.IsZero() {
		h = append(h, stomp.Header{Key: "ferry-timestamp", Value: strconv.FormatInt(m.Created.UnixMilli(), 10)})
	}
	return stomp.Message{Destination: dest, Headers: h, Body: body}, nil
}

// permanentMarkers are texts of ActiveMQ ERROR frames (message header or
// body) that refuse a SEND for good: retrying the same message cannot
// succeed. Any other ERROR in reply to a SEND is retried (an I/O error of
// the store, a resource limit), and dead-lettered only after max_attempts.
var permanentMarkers = []string{
	"not authorized",           // authorizationPlugin: "User x is not authorized to write to: queue://y"
	"Illegal destination",      // STOMP destination naming
	"InvalidDestination",       // javax.jms.InvalidDestinationException
	"MessageFormatException",   // a header or body ActiveMQ cannot convert
	"maximum frame size",       // the transport's maxFrameSize
	"exceeds the maximum",      // idem, other wording
	"Destination does not exi", // "Destination does not exist" (no auto-create)
}

// classify marks err with its kind (bridge.KindOf). An ERROR frame that
// refuses a message for good is permanent, also (inTx) when it ended the
// connection after refusing a SEND of the transaction: the caller then
// learns which message by sending them one by one. A lost connection, a
// missed heart-beat, a timeout or a network error mean the server is
// unavailable; another ERROR (an I/O error of the store, a resource limit)
// is of unknown kind: it counts against max_attempts once a probe shows
// the server up.
func classify(err error, inTx bool) error {
	var se *stomp.ServerError
	if errors.As(err, &se) && (inTx || !errors.Is(err, stomp.ErrConnectionLost)) {
		for _, m := range permanentMarkers {
			if strings.Contains(se.Message, m) || strings.Contains(se.Body, m) {
				return bridge.Permanent(err)
			}
		}
	}
	if errors.Is(err, stomp.ErrConnectionLost) || errors.Is(err, stomp.ErrHeartbeatTimeout) || errors.Is(err, stomp.ErrClosed) ||
		bridge.NetworkError(err) {
		return bridge.Unavailable(err)
	}
	return err
}

// Probe implements bridge.Prober: the egress session is connected, or a
// new one connects (ingress: a connection can be made, then closed).
func (c *Connector) Probe(ctx context.Context) error {
	if c.spec.Direction == bridge.In {
		conn, err := c.dial(ctx)
		if err != nil {
			return bridge.Unavailable(err)
		}
		_ = conn.Close()
		return nil
	}
	if _, err := c.session(ctx); err != nil {
		return bridge.Unavailable(err)
	}
	return nil
}
