package activemq

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq/stomp"
)

// Receive implements bridge.Receiver: see the package doc. It returns
// ctx's error, or an error when the connection is lost (the bridge calls
// it again with the route's backoff; ActiveMQ redelivers what was not
// acked).
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return bridge.Unavailable(err)
	}
	defer func() {
		// DISCONNECT so ActiveMQ releases the unacked prefetch at once.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
		defer cancel()
		_ = conn.Disconnect(dctx)
	}()
	sctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	sub, err := conn.Subscribe(sctx, c.cfg.Destination, stomp.AckClientIndividual, c.cfg.Prefetch,
		stomp.Header{Key: "activemq.prefetchSize", Value: strconv.Itoa(c.cfg.Prefetch)})
	cancel()
	if err != nil {
		return c.stop(ctx, fmt.Errorf("activemq: %w", err))
	}
	for {
		f, err := sub.Next(ctx)
		if err != nil {
			return c.stop(ctx, fmt.Errorf("activemq: receive from %s: %w", c.cfg.Destination, err))
		}
		if err := c.handle(ctx, conn, h, f); err != nil {
			return c.stop(ctx, err)
		}
	}
}

// stop returns ctx's error when ctx ended (err is its consequence), else
// err classified (a lost connection: unavailable).
func (c *Connector) stop(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return classify(err, false)
}

// handle hands one message to h until the broker accepts it, then ACKs
// it. A retryable refusal is handed again after RetryDelay (in order: the
// next message waits); a permanent one is NACKed, which makes ActiveMQ
// move it to its dead-letter queue (ActiveMQ.DLQ unless configured
// otherwise). It returns an error only when the connection failed.
func (c *Connector) handle(ctx context.Context, conn *stomp.Conn, h bridge.Handler, f *stomp.Frame) error {
	if f.Value("redelivered") == "true" {
		c.redelivered.Inc()
	}
	m := frameMessage(f)
	for {
		err := h(ctx, m)
		if ctx.Err() != nil {
			return ctx.Err() // not acked: redelivered
		}
		if err == nil {
			return c.settle(ctx, conn.Ack, f)
		}
		if bridge.IsPermanent(err) {
			c.log.Error("activemq: message refused, nacked (to the dead-letter queue)", "route", c.spec.Route, "err", err)
			return c.settle(ctx, conn.Nack, f)
		}
		c.log.Warn("activemq: message not accepted, will hand it over again", "route", c.spec.Route, "err", err)
		t := time.NewTimer(RetryDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-conn.Done():
			t.Stop()
			return fmt.Errorf("activemq: %w: %w", stomp.ErrConnectionLost, conn.Err())
		case <-t.C:
		}
	}
}

// settle ACKs or NACKs f within timeout.
func (c *Connector) settle(ctx context.Context, fn func(context.Context, *stomp.Frame) error, f *stomp.Frame) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := fn(ctx, f); err != nil {
		return fmt.Errorf("activemq: %w", err)
	}
	return nil
}

// frameMessage turns a MESSAGE frame into an ingress message: the body as
// payload, the destination without its /queue/ or /topic/ prefix as
// subject, every header as a header, ID the ferry-message-id header when
// the message came from a Ferry egress route, else ActiveMQ's message-id.
func frameMessage(f *stomp.Frame) bridge.Message {
	m := bridge.Message{Payload: f.Body, Headers: make(map[string][]string, len(f.Headers))}
	for _, h := range f.Headers {
		m.Headers[h.Key] = append(m.Headers[h.Key], h.Value)
	}
	dest := f.Value("destination")
	for _, p := range []string{"/queue/", "/topic/", "/temp-queue/", "/temp-topic/"} {
		if s, ok := strings.CutPrefix(dest, p); ok {
			dest = s
			break
		}
	}
	m.Subject = dest
	m.ID = f.Value(IDHeader)
	if m.ID == "" {
		m.ID = f.Value("message-id")
	}
	if ms, err := strconv.ParseInt(f.Value("timestamp"), 10, 64); err == nil && ms > 0 {
		m.Created = time.UnixMilli(ms)
	}
	return m
}
