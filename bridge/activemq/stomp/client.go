package stomp

import (
	"context"
	"fmt"
	"strconv"
	"sync"
)

// Message is one SEND.
type Message struct {
	// Destination is the destination header, e.g. "/queue/telemetry".
	Destination string
	// Headers are sent after destination and content-length, which they
	// cannot override (the first occurrence of a header counts).
	Headers []Header
	Body    []byte
}

// SendAll writes one SEND per message, each with content-length and its
// own receipt header, in one write, and returns their receipts in order:
// many SENDs are outstanding at once, so a batch costs one round trip.
// The server processes them in order. ctx bounds the write only; wait for
// each Receipt to know the server has the message.
func (c *Conn) SendAll(ctx context.Context, msgs []Message) ([]*Receipt, error) {
	frames := make([]*Frame, len(msgs))
	for i, m := range msgs {
		frames[i] = sendFrame(m)
	}
	return c.requests(ctx, frames)
}

// SendTx sends msgs in one transaction, in one write: BEGIN, one SEND per
// message, then COMMIT; only the COMMIT carries a receipt, which it
// returns. When it arrives the server has all the messages; a server that
// stores messages on commit (ActiveMQ) syncs its store once per batch
// instead of once per persistent message with a receipt: ten times the
// throughput. A SEND the server refuses is answered by an ERROR that names
// no receipt, which ends the connection (the server, ActiveMQ at least,
// rolls the transaction back: nothing of it is stored), so the receipt
// fails with ErrConnectionLost wrapping that *ServerError; send the
// messages one by one with SendAll to learn which one is refused.
func (c *Conn) SendTx(ctx context.Context, msgs []Message) (*Receipt, error) {
	c.mu.Lock()
	c.nextID++
	tx := "t" + strconv.FormatUint(c.nextID, 10)
	c.mu.Unlock()
	frames := make([]*Frame, 0, len(msgs)+1)
	frames = append(frames, &Frame{Command: CmdBegin, Headers: []Header{{"transaction", tx}}})
	for _, m := range msgs {
		f := sendFrame(m)
		f.Headers = append(f.Headers, Header{"transaction", tx})
		frames = append(frames, f)
	}
	return c.requestAfter(ctx, frames, &Frame{Command: CmdCommit, Headers: []Header{{"transaction", tx}}})
}

// sendFrame is the SEND frame for m, without receipt.
func sendFrame(m Message) *Frame {
	h := make([]Header, 0, len(m.Headers)+4)
	h = append(h, Header{"destination", m.Destination}, Header{"content-length", strconv.Itoa(len(m.Body))})
	h = append(h, m.Headers...)
	return &Frame{Command: CmdSend, Headers: h, Body: m.Body}
}

// Send sends one message and waits for its receipt.
func (c *Conn) Send(ctx context.Context, m Message) error {
	rs, err := c.SendAll(ctx, []Message{m})
	if err != nil {
		return err
	}
	return rs[0].Wait(ctx)
}

// AckMode is a SUBSCRIBE ack header.
type AckMode string

// Ack modes.
const (
	// AckAuto: the server considers a message acknowledged once sent.
	AckAuto AckMode = "auto"
	// AckClient: an ACK acknowledges the message and all before it.
	AckClient AckMode = "client"
	// AckClientIndividual: an ACK or NACK concerns one message.
	AckClientIndividual AckMode = "client-individual"
)

// Subscription receives the MESSAGE frames of one SUBSCRIBE.
type Subscription struct {
	c    *Conn
	id   string
	ch   chan *Frame
	done chan struct{}
	once sync.Once
	err  error // set before done is closed
}

// Subscribe subscribes to dest with the ack mode and extra headers (e.g.
// ActiveMQ's activemq.prefetchSize) and waits for the server's receipt.
// buffer is how many MESSAGE frames are held for Next; when it is full the
// connection's reader waits, which also delays receipts: keep the server's
// prefetch at most buffer.
func (c *Conn) Subscribe(ctx context.Context, dest string, ack AckMode, buffer int, headers ...Header) (*Subscription, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrConnectionLost, c.err)
	}
	c.nextID++
	s := &Subscription{c: c, id: "s" + strconv.FormatUint(c.nextID, 10), ch: make(chan *Frame, max(buffer, 1)), done: make(chan struct{})}
	c.subs[s.id] = s
	c.mu.Unlock()
	h := append([]Header{{"id", s.id}, {"destination", dest}, {"ack", string(ack)}}, headers...)
	r, err := c.request(ctx, &Frame{Command: CmdSubscribe, Headers: h})
	if err == nil {
		err = r.Wait(ctx)
	}
	if err != nil {
		c.mu.Lock()
		delete(c.subs, s.id)
		c.mu.Unlock()
		return nil, fmt.Errorf("stomp: subscribe %s: %w", dest, err)
	}
	return s, nil
}

// ID is the subscription's id header.
func (s *Subscription) ID() string { return s.id }

// deliver hands f to Next; called by the reader.
func (s *Subscription) deliver(f *Frame) {
	select {
	case s.ch <- f:
	case <-s.done:
	case <-s.c.done:
	}
}

func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.done)
	})
}

// Next returns the next MESSAGE frame, or the error that ended the
// subscription (wrapping ErrConnectionLost when the connection did), or
// ctx's error.
func (s *Subscription) Next(ctx context.Context) (*Frame, error) {
	select {
	case f := <-s.ch:
		return f, nil
	case <-s.done:
		return nil, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Unsubscribe sends UNSUBSCRIBE and waits for its receipt.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	s.c.mu.Lock()
	delete(s.c.subs, s.id)
	s.c.mu.Unlock()
	s.end(fmt.Errorf("stomp: subscription %s ended by the client", s.id))
	r, err := s.c.request(ctx, &Frame{Command: CmdUnsubscribe, Headers: []Header{{"id", s.id}}})
	if err == nil {
		err = r.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("stomp: unsubscribe: %w", err)
	}
	return nil
}

// Ack acknowledges msg (by its ack header, as STOMP 1.2 requires). It
// returns once the ACK is written: it carries no receipt, because ActiveMQ
// answers an ACK's receipt only after its store synced, which would cost a
// disk sync per message. If the connection drops before the server read
// the ACK, the server redelivers msg: at least once either way.
func (c *Conn) Ack(ctx context.Context, msg *Frame) error {
	return c.ackNack(ctx, CmdAck, msg)
}

// Nack tells the server the client did not consume msg; what happens
// next is the server's policy (ActiveMQ: its dead-letter queue). Like Ack
// it returns once the NACK is written.
func (c *Conn) Nack(ctx context.Context, msg *Frame) error {
	return c.ackNack(ctx, CmdNack, msg)
}

func (c *Conn) ackNack(ctx context.Context, cmd string, msg *Frame) error {
	id, ok := msg.Get("ack")
	if !ok {
		return fmt.Errorf("stomp: %s: the message has no ack header (subscription not in a client ack mode)", cmd)
	}
	if err := c.write(ctx, []*Frame{{Command: cmd, Headers: []Header{{"id", id}}}}); err != nil {
		return fmt.Errorf("stomp: %s %s: %w", cmd, id, err)
	}
	return nil
}
