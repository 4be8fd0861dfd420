package stomp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// ErrConnectionLost is wrapped by the error of every operation whose
	// outcome is unknown because the connection ended first: the server
	// may or may not have processed the frame.
	ErrConnectionLost = errors.New("stomp: connection lost")
	// ErrHeartbeatTimeout is the cause when the server sent nothing, not
	// even a heart-beat, for HeartBeatTolerance times its negotiated
	// interval.
	ErrHeartbeatTimeout = errors.New("stomp: heart-beat timeout: the server sent nothing")
	// ErrClosed is the cause after Close or Disconnect.
	ErrClosed = errors.New("stomp: connection closed by the client")
)

// ServerError is an ERROR frame.
type ServerError struct {
	// Message is the frame's message header: a short description.
	Message string
	// Body is the frame's body: the details (ActiveMQ repeats the message).
	Body string
	// ReceiptID is the receipt-id header: the receipt of the client frame
	// the server refused; empty when the error is about the connection.
	ReceiptID string
	// Headers are all of the frame's headers.
	Headers []Header
}

func (e *ServerError) Error() string {
	msg := "stomp: server error: " + e.Message
	if body := strings.TrimSpace(e.Body); body != "" && body != e.Message {
		if i := strings.IndexByte(body, '\n'); i >= 0 {
			body = body[:i]
		}
		msg += ": " + body
	}
	return msg
}

func serverError(f *Frame) *ServerError {
	return &ServerError{Message: f.Value("message"), Body: string(f.Body), ReceiptID: f.Value("receipt-id"), Headers: f.Headers}
}

// Defaults.
const (
	// DefaultHeartBeat is the heart-beat interval proposed in both
	// directions when Options.HeartBeat is 0.
	DefaultHeartBeat = 10 * time.Second
	// HeartBeatTolerance multiplies the server's negotiated send interval
	// to give the read timeout: a server is dead after this many intervals
	// without a byte. Not 1: ActiveMQ checks once per interval whether it
	// wrote anything during the last one, so its gaps reach two intervals.
	HeartBeatTolerance = 3
)

// Options configure Connect and Dial.
type Options struct {
	// Host is the CONNECT host header (the virtual host); default: the
	// host part of the address for Dial, "localhost" for Connect.
	Host string
	// Login and Passcode authenticate; empty Login sends neither.
	Login, Passcode string
	// HeartBeat is the interval proposed both ways; default
	// DefaultHeartBeat; negative disables heart-beats.
	HeartBeat time.Duration
	// Limits bound the frames read.
	Limits Limits
	// UseStompCommand sends STOMP instead of CONNECT (the 1.2 name).
	UseStompCommand bool
}

// Conn is a STOMP connection. See the package doc for its goroutines.
type Conn struct {
	nc   net.Conn
	rd   *Reader
	opts Options

	// Negotiated heart-beats: how often we must send, how long the server
	// may stay silent. 0 = none.
	sendEvery, readTimeout time.Duration
	server, session        string

	wmu       sync.Mutex // serializes writes
	wbuf      []byte
	lastWrite atomic.Int64 // unix nanos of the last write

	mu       sync.Mutex
	receipts map[string]chan error
	subs     map[string]*Subscription
	nextID   uint64
	err      error // why the connection ended; set once

	disconnecting atomic.Bool // DISCONNECT was sent

	done      chan struct{} // closed when the connection ended
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Dial connects to addr ("host:port") over TCP and performs the STOMP
// handshake within ctx.
func Dial(ctx context.Context, addr string, opts Options) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stomp: dial %s: %w", addr, err)
	}
	if opts.Host == "" {
		if h, _, err := net.SplitHostPort(addr); err == nil {
			opts.Host = h
		}
	}
	c, err := Connect(ctx, nc, opts)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// Connect performs the STOMP handshake on nc within ctx (CONNECT with
// accept-version 1.2 and the heart-beat proposal, then CONNECTED or an
// ERROR, a *ServerError, e.g. for bad credentials) and starts the
// connection's goroutines. On error nc is left open for the caller.
func Connect(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	if opts.HeartBeat == 0 {
		opts.HeartBeat = DefaultHeartBeat
	}
	if opts.Host == "" {
		opts.Host = "localhost"
	}
	hb := max(opts.HeartBeat, 0).Milliseconds()
	cmd := CmdConnect
	if opts.UseStompCommand {
		cmd = CmdStomp
	}
	f := &Frame{Command: cmd, Headers: []Header{
		{"accept-version", "1.2"}, {"host", opts.Host},
		{"heart-beat", fmt.Sprintf("%d,%d", hb, hb)},
	}}
	if opts.Login != "" {
		f.Headers = append(f.Headers, Header{"login", opts.Login}, Header{"passcode", opts.Passcode})
	}
	c := &Conn{
		nc: nc, opts: opts,
		receipts: map[string]chan error{}, subs: map[string]*Subscription{},
		done: make(chan struct{}),
	}
	// The handshake is bounded by ctx; after it, by heart-beats.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
	}
	c.rd = NewReader(&deadlineReader{c: c}, opts.Limits)
	b, err := AppendFrame(nil, f)
	if err != nil {
		return nil, err
	}
	if _, err := nc.Write(b); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("stomp: write %s: %w", cmd, err))
	}
	resp, err := c.rd.ReadFrame()
	if err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("stomp: read CONNECTED: %w", err))
	}
	switch resp.Command {
	case CmdConnected:
	case CmdError:
		return nil, serverError(resp)
	default:
		return nil, fmt.Errorf("%w: got %s in reply to %s", ErrProtocol, resp.Command, cmd)
	}
	if v := resp.Value("version"); v != "1.2" {
		return nil, fmt.Errorf("%w: server speaks STOMP version %q, not 1.2", ErrProtocol, v)
	}
	if !stop() {
		return nil, ctx.Err()
	}
	_ = nc.SetDeadline(time.Time{})
	c.server, c.session = resp.Value("server"), resp.Value("session")
	if err := c.negotiate(resp.Value("heart-beat")); err != nil {
		return nil, err
	}
	c.lastWrite.Store(time.Now().UnixNano())
	c.wg.Add(1)
	go c.readLoop()
	if c.sendEvery > 0 {
		c.wg.Add(1)
		go c.heartbeatLoop()
	}
	return c, nil
}

// ctxErr prefers ctx's error when ctx ended: the I/O error is its
// consequence (the deadline was forced).
func ctxErr(ctx context.Context, err error) error {
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		<-ctx.Done() // the socket's deadline may fire just before ctx's timer
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// negotiate applies the spec's rule to the server's heart-beat header
// "sx,sy": we send every max(cx, sy) when both are non-zero, and expect
// something every max(sx, cy).
func (c *Conn) negotiate(h string) error {
	if h == "" || c.opts.HeartBeat < 0 {
		return nil
	}
	a, b, ok := strings.Cut(h, ",")
	sx, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	sy, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if !ok || err1 != nil || err2 != nil || sx < 0 || sy < 0 {
		return fmt.Errorf("%w: invalid heart-beat header %q in CONNECTED", ErrProtocol, h)
	}
	cx := c.opts.HeartBeat.Milliseconds()
	if sy > 0 {
		c.sendEvery = time.Duration(max(cx, sy)) * time.Millisecond
	}
	if sx > 0 {
		c.readTimeout = HeartBeatTolerance * time.Duration(max(sx, cx)) * time.Millisecond
	}
	return nil
}

// deadlineReader extends the read deadline before every read, so the
// connection dies when the server is silent for readTimeout.
type deadlineReader struct{ c *Conn }

func (d *deadlineReader) Read(p []byte) (int, error) {
	if t := d.c.readTimeout; t > 0 {
		_ = d.c.nc.SetReadDeadline(time.Now().Add(t))
	}
	n, err := d.c.nc.Read(p)
	if ne, ok := err.(net.Error); ok && ne.Timeout() && d.c.readTimeout > 0 {
		err = fmt.Errorf("%w for %s", ErrHeartbeatTimeout, d.c.readTimeout)
	}
	return n, err
}

// Server is the CONNECTED frame's server header (e.g. "ActiveMQ/5.17.2").
func (c *Conn) Server() string { return c.server }

// HeartBeats returns the negotiated intervals: how often the client sends
// a heart-beat when idle, and how long the server may stay silent before
// the connection is considered dead (0: none).
func (c *Conn) HeartBeats() (send, read time.Duration) { return c.sendEvery, c.readTimeout }

// Done is closed when the connection has ended; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (nil while it is up).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail ends the connection with cause: every pending receipt fails with
// ErrConnectionLost wrapping cause, every subscription ends.
func (c *Conn) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	receipts, subs := c.receipts, c.subs
	c.receipts, c.subs = nil, nil
	c.mu.Unlock()
	_ = c.nc.Close()
	close(c.done) // before the receipts: whoever gets one sees Done
	lost := fmt.Errorf("%w: %w", ErrConnectionLost, cause)
	for _, ch := range receipts {
		ch <- lost
	}
	for _, s := range subs {
		s.end(lost)
	}
}

// Close closes the connection at once, without DISCONNECT: pending
// receipts fail with ErrConnectionLost, unacked messages are redelivered
// by the server. It waits for the connection's goroutines. Safe twice.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.closeOnce.Do(c.wg.Wait)
	return nil
}

// Disconnect sends DISCONNECT with a receipt and waits (within ctx) for
// the RECEIPT, which means the server processed every frame before it,
// then closes. The connection is closed whatever the outcome.
func (c *Conn) Disconnect(ctx context.Context) error {
	defer c.Close()
	c.disconnecting.Store(true) // the server closes after its receipt: not an error
	r, err := c.request(ctx, &Frame{Command: CmdDisconnect})
	if err != nil {
		return err
	}
	if err := r.Wait(ctx); err != nil {
		return fmt.Errorf("stomp: disconnect: %w", err)
	}
	return nil
}

// Receipt is a frame waiting for the server's RECEIPT.
type Receipt struct {
	id string
	ch chan error
}

// ID is the receipt header the frame was sent with.
func (r *Receipt) ID() string { return r.id }

// Wait returns nil when the RECEIPT arrived, the *ServerError when the
// server answered with an ERROR naming this receipt, an error wrapping
// ErrConnectionLost when the connection ended first, or ctx's error (the
// outcome is then unknown; the receipt is abandoned).
func (r *Receipt) Wait(ctx context.Context) error {
	select {
	case err := <-r.ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// register allocates a receipt id. c.mu is held.
func (c *Conn) register() (*Receipt, error) {
	if c.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnectionLost, c.err)
	}
	c.nextID++
	r := &Receipt{id: "r" + strconv.FormatUint(c.nextID, 10), ch: make(chan error, 1)}
	c.receipts[r.id] = r.ch
	return r, nil
}

// request sends f with a new receipt header.
func (c *Conn) request(ctx context.Context, f *Frame) (*Receipt, error) {
	rs, err := c.requests(ctx, []*Frame{f})
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// requestAfter writes frames without receipts and last with one, in one
// write.
func (c *Conn) requestAfter(ctx context.Context, frames []*Frame, last *Frame) (*Receipt, error) {
	c.mu.Lock()
	r, err := c.register()
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	last.Headers = append(last.Headers, Header{"receipt", r.id})
	if err := c.write(ctx, append(frames, last)); err != nil {
		c.mu.Lock()
		delete(c.receipts, r.id)
		c.mu.Unlock()
		return nil, err
	}
	return r, nil
}

// requests sends frames, each with a new receipt header, in one write.
func (c *Conn) requests(ctx context.Context, frames []*Frame) ([]*Receipt, error) {
	rs := make([]*Receipt, len(frames))
	c.mu.Lock()
	for i, f := range frames {
		r, err := c.register()
		if err != nil {
			for _, r := range rs[:i] {
				delete(c.receipts, r.id)
			}
			c.mu.Unlock()
			return nil, err
		}
		rs[i] = r
		f.Headers = append(f.Headers, Header{"receipt", r.id})
	}
	c.mu.Unlock()
	if err := c.write(ctx, frames); err != nil {
		c.mu.Lock()
		for _, r := range rs {
			delete(c.receipts, r.id) // nil map after fail: a no-op
		}
		c.mu.Unlock()
		return nil, err
	}
	return rs, nil
}

// write encodes frames and writes them in one call, bounded by ctx's
// deadline. A failed write ends the connection (a partial frame cannot be
// taken back).
func (c *Conn) write(ctx context.Context, frames []*Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	buf := c.wbuf[:0]
	for _, f := range frames {
		var err error
		if buf, err = AppendFrame(buf, f); err != nil {
			return err
		}
	}
	if cap(buf) <= 1<<20 {
		c.wbuf = buf
	}
	if err := c.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrConnectionLost, err)
	}
	d, _ := ctx.Deadline()
	_ = c.nc.SetWriteDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := c.nc.Write(buf)
	stop()
	c.lastWrite.Store(time.Now().UnixNano())
	if err != nil {
		err = ctxErr(ctx, fmt.Errorf("stomp: write: %w", err))
		c.fail(err)
		return fmt.Errorf("%w: %w", ErrConnectionLost, err)
	}
	return nil
}

// heartbeatLoop sends an EOL whenever nothing was written for sendEvery.
func (c *Conn) heartbeatLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.sendEvery / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, c.lastWrite.Load())) < c.sendEvery/2 {
			continue
		}
		c.wmu.Lock()
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.sendEvery))
		_, err := c.nc.Write([]byte{'\n'})
		c.lastWrite.Store(time.Now().UnixNano())
		c.wmu.Unlock()
		if err != nil {
			c.fail(fmt.Errorf("stomp: write heart-beat: %w", err))
			return
		}
	}
}

// readLoop dispatches the server's frames until the connection ends.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			if c.disconnecting.Load() {
				err = ErrClosed
			} else if errors.Is(err, io.EOF) {
				err = fmt.Errorf("stomp: server closed the connection: %w", err)
			} else {
				err = fmt.Errorf("stomp: read: %w", err)
			}
			c.fail(err)
			return
		}
		switch f.Command {
		case CmdReceipt:
			c.resolve(f.Value("receipt-id"), nil)
		case CmdError:
			se := serverError(f)
			if se.ReceiptID != "" && c.resolve(se.ReceiptID, se) {
				continue
			}
			c.fail(se)
			return
		case CmdMessage:
			c.mu.Lock()
			s := c.subs[f.Value("subscription")]
			c.mu.Unlock()
			if s != nil {
				s.deliver(f)
			}
		default:
			c.fail(fmt.Errorf("%w: unexpected %s frame from the server", ErrProtocol, f.Command))
			return
		}
	}
}

// resolve completes receipt id with err; false when no such receipt is
// pending.
func (c *Conn) resolve(id string, err error) bool {
	c.mu.Lock()
	ch, ok := c.receipts[id]
	delete(c.receipts, id)
	c.mu.Unlock()
	if ok {
		ch <- err
	}
	return ok
}
