package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge"
)

// session is one egress connection with its confirm channel and the
// channel on which the client hands over returned (mandatory, unroutable)
// messages.
type session struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns <-chan amqp.Return
}

// session returns the open session, dialing a new one when there is none
// or the old one's connection or channel closed. c.mu is held.
func (c *Connector) session(ctx context.Context) (*session, error) {
	if c.closed {
		return nil, bridge.ErrClosed
	}
	if s := c.sess; s != nil {
		if !s.conn.IsClosed() && !s.ch.IsClosed() {
			return s, nil
		}
		_ = s.close()
		c.sess = nil
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
	}
	// The client's reader sends a return, before the message's ack, on
	// this channel and blocks while it is full; Deliver reads it while it
	// waits for confirms.
	returns := ch.NotifyReturn(make(chan amqp.Return, returnBuffer))
	c.sess = &session{conn: conn, ch: ch, returns: returns}
	return c.sess, nil
}

// returnBuffer is the capacity of a session's returns channel.
const returnBuffer = 256

// close closes the connection, and with it the channel.
func (s *session) close() error {
	err := s.conn.Close()
	if errors.Is(err, amqp.ErrClosed) {
		err = nil
	}
	return err
}

// drainReturns moves the returns already handed over into into (nil:
// discards them).
func (s *session) drainReturns(into map[string]amqp.Return) {
	for {
		select {
		case r, ok := <-s.returns:
			if !ok {
				return
			}
			if into != nil {
				into[r.MessageId] = r
			}
		default:
			return
		}
	}
}

// Deliver implements bridge.Connector: it publishes the batch on the
// confirm channel, then waits for every confirm. Calls are serialized.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	pubs := make([]amqp.Publishing, len(batch))
	keys := make([]string, len(batch))
	for i := range batch {
		m := &batch[i]
		var err error
		if keys[i], err = c.routingKey(m); err != nil {
			return bridge.Permanent(fmt.Errorf("rabbitmq: routing_key: %w", err))
		}
		if pubs[i], err = c.publishing(m); err != nil {
			return bridge.Permanent(err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.session(ctx)
	if err != nil {
		return classify(err)
	}
	// Every earlier publish on s was confirmed (else s was dropped), so a
	// return still queued belongs to an earlier, failed Deliver.
	s.drainReturns(nil)
	confirms := make([]*amqp.DeferredConfirmation, len(batch))
	for i := range batch {
		confirms[i], err = s.ch.PublishWithDeferredConfirmWithContext(ctx, c.cfg.Exchange, keys[i], *c.cfg.Mandatory, false, pubs[i])
		if err != nil {
			c.drop(s)
			return fmt.Errorf("rabbitmq: publish %s (message %s): %w", keys[i], batch[i].ID, classify(err))
		}
	}
	returned := make(map[string]amqp.Return)
	returns := s.returns
	for i, dc := range confirms {
		var ok bool
	wait:
		for {
			select {
			case <-dc.Done():
				ok = dc.Acked()
				break wait
			case r, open := <-returns:
				if !open {
					returns = nil // closed with the channel; dc is nacked
					continue
				}
				returned[r.MessageId] = r
			case <-ctx.Done():
				// The outcome is unknown; a new channel starts from a
				// clean confirm sequence.
				c.drop(s)
				return bridge.Unavailable(fmt.Errorf("rabbitmq: confirm (message %s): %w", batch[i].ID, ctx.Err()))
			}
		}
		if !ok {
			if s.ch.IsClosed() || s.conn.IsClosed() {
				c.drop(s)
				return bridge.Unavailable(fmt.Errorf("rabbitmq: channel closed before the confirm of message %s", batch[i].ID))
			}
			// A nack is about this message (an internal error of its
			// queue): unknown, so it counts against max_attempts once a
			// probe shows the server up.
			return fmt.Errorf("rabbitmq: message %s nacked by the server", batch[i].ID)
		}
	}
	// A return precedes its message's ack, so every return is queued now.
	s.drainReturns(returned)
	for i := range batch {
		if r, ok := returned[batch[i].ID]; ok {
			return bridge.Permanent(fmt.Errorf("rabbitmq: message %s returned by exchange %q with routing key %q: %d %s",
				batch[i].ID, r.Exchange, r.RoutingKey, r.ReplyCode, r.ReplyText))
		}
	}
	return nil
}

// Probe implements bridge.Prober: the egress session is open, or a new one
// can be dialed (ingress: a connection can be dialed).
func (c *Connector) Probe(ctx context.Context) error {
	if c.spec.Direction == bridge.In {
		conn, err := c.dial(ctx)
		if err != nil {
			return classify(err)
		}
		_ = conn.Close()
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.session(ctx)
	return classify(err)
}

// classify marks err with its kind (bridge.KindOf). Every error the
// client reports is about the connection or the channel, and so about
// the route as a whole: a dial failure, refused credentials or vhost, a
// closed connection or channel, and the server's connection or channel
// exceptions (connection-forced, resource-error, not-found for a missing
// exchange, access-refused) make the route wait, unavailable, for the
// server or the operator to fix it. What is about one message (a nack, a
// return) is classified where it happens.
func classify(err error) error {
	if err == nil || bridge.IsPermanent(err) {
		return err
	}
	var ae *amqp.Error
	if errors.As(err, &ae) || errors.Is(err, amqp.ErrClosed) || errors.Is(err, amqp.ErrCredentials) ||
		errors.Is(err, amqp.ErrVhost) || errors.Is(err, amqp.ErrSASL) || bridge.NetworkError(err) {
		return bridge.Unavailable(err)
	}
	return err
}

// drop closes s after an error so the next Deliver redials. c.mu is held.
func (c *Connector) drop(s *session) {
	if c.sess == s {
		c.sess = nil
	}
	if err := s.close(); err != nil {
		c.log.Debug("rabbitmq: close after error", "route", c.spec.Route, "err", err)
	}
}

// routingKey renders the message's routing key.
func (c *Connector) routingKey(m *bridge.Message) (string, error) {
	if c.key == nil {
		return strings.ReplaceAll(m.Topic, "/", "."), nil
	}
	return c.key.Execute(m)
}

// publishing is the AMQP message for m: persistent, MessageId the stable
// id, headers the user properties (repeated keys as an array) and the
// topic.
func (c *Connector) publishing(m *bridge.Message) (amqp.Publishing, error) {
	body := m.Payload
	if c.spec.Payload == bridge.EnvelopeJSON {
		var err error
		if body, err = bridge.Envelope(m); err != nil {
			return amqp.Publishing{}, err
		}
	}
	h := amqp.Table{}
	for _, p := range m.UserProperties {
		switch v := h[p.Key].(type) {
		case nil:
			h[p.Key] = p.Value
		case string:
			h[p.Key] = []any{v, p.Value}
		case []any:
			h[p.Key] = append(v, p.Value)
		}
	}
	h[TopicHeader] = m.Topic
	return amqp.Publishing{
		Headers:      h,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    m.Created,
		Body:         body,
	}, nil
}
