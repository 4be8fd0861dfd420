package rabbitmq

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge"
)

// Receive implements bridge.Receiver: see the package doc. It returns
// ctx's error, or an error when the connection or channel is lost (the
// bridge calls it again with the route's backoff; RabbitMQ redelivers what
// was not acked).
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return classify(err)
	}
	defer func() { _ = conn.Close() }()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbitmq: open channel: %w", classify(err))
	}
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("rabbitmq: qos: %w", classify(err))
	}
	deliveries, err := ch.ConsumeWithContext(ctx, c.cfg.Queue, "ferry-"+c.spec.Route, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("rabbitmq: consume %s: %w", c.cfg.Queue, classify(err))
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d, ok := <-deliveries:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return bridge.Unavailable(fmt.Errorf("rabbitmq: consumer on %s: connection or channel closed", c.cfg.Queue))
			}
			if err := c.handle(ctx, h, d); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return classify(err)
			}
		}
	}
}

// handle hands one delivery to h and acks it once h accepted it; nacks
// with requeue on a handler error (after RequeueDelay), without requeue on
// a permanent one (the queue's dead-letter exchange gets it, if any).
func (c *Connector) handle(ctx context.Context, h bridge.Handler, d amqp.Delivery) error {
	err := h(ctx, deliveryMessage(c.cfg.Queue, &d))
	switch {
	case ctx.Err() != nil:
		return ctx.Err() // not acked: redelivered
	case err == nil:
		if err := d.Ack(false); err != nil {
			return fmt.Errorf("rabbitmq: ack: %w", err)
		}
	case bridge.IsPermanent(err):
		c.log.Error("rabbitmq: message refused, rejected", "route", c.spec.Route, "err", err)
		if err := d.Nack(false, false); err != nil {
			return fmt.Errorf("rabbitmq: nack: %w", err)
		}
	default:
		c.log.Warn("rabbitmq: message not accepted, requeued", "route", c.spec.Route, "err", err)
		t := time.NewTimer(RequeueDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if err := d.Nack(false, true); err != nil {
			return fmt.Errorf("rabbitmq: nack: %w", err)
		}
	}
	return nil
}

// deliveryMessage turns a delivery into an ingress message: Subject the
// routing key, Headers the AMQP headers (arrays as several values), ID
// the message id when the publisher set one.
func deliveryMessage(queue string, d *amqp.Delivery) bridge.Message {
	m := bridge.Message{Subject: d.RoutingKey, Payload: d.Body, ID: d.MessageId, Created: d.Timestamp,
		Headers: make(map[string][]string, len(d.Headers)+1)}
	if m.Subject == "" {
		m.Subject = queue
	}
	for k, v := range d.Headers {
		if list, ok := v.([]any); ok {
			for _, e := range list {
				m.Headers[k] = append(m.Headers[k], headerString(e))
			}
			continue
		}
		m.Headers[k] = []string{headerString(v)}
	}
	return m
}

// headerString formats one AMQP header value.
func headerString(v any) string {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return fmt.Sprint(v)
}
