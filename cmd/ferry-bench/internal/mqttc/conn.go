package mqttc

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Buffer sizes: large enough that a busy publisher hands the kernel tens of
// small messages per write syscall.
const (
	readBufSize  = 64 << 10
	writeBufSize = 64 << 10
	// DefaultMaxPacket bounds the packets Conn accepts from the server.
	DefaultMaxPacket = 16 << 20
)

// Reader reads whole packets from a stream, reusing one body buffer.
type Reader struct {
	r   *bufio.Reader
	buf []byte
	// Max is the largest remaining length accepted.
	Max int
}

// NewReader returns a Reader over r with a DefaultMaxPacket limit.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, readBufSize), Max: DefaultMaxPacket}
}

// Next returns the next packet's fixed-header byte and body. The body is
// valid until the following call.
func (r *Reader) Next() (byte, []byte, error) {
	h, err := r.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, errLongVarint
		}
		c, err := r.r.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		n += int(c&0x7f) * mul
		if c&0x80 == 0 {
			break
		}
		mul <<= 7
	}
	if n > r.Max {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	body := r.buf[:n]
	if _, err := io.ReadFull(r.r, body); err != nil {
		return 0, nil, noEOF(err)
	}
	return h, body, nil
}

// Buffered is the number of bytes already read from the stream and not yet
// returned as packets.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// noEOF turns an EOF inside a packet into ErrUnexpectedEOF: the stream ended
// mid-packet, which is not a clean close.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Conn is one MQTT client connection. Read must be called from one goroutine
// at a time; the Write methods may be called concurrently with each other
// and with Read. Writes are buffered until Flush or until the buffer fills.
type Conn struct {
	nc      net.Conn
	rd      *Reader
	version byte

	mu      sync.Mutex
	w       *bufio.Writer
	scratch []byte
}

// DialOptions say where and how to connect.
type DialOptions struct {
	Addr string
	// TLS, when non-nil, wraps the connection in TLS.
	TLS *tls.Config
	// Timeout bounds dial plus CONNECT/CONNACK; 0 means 10 s.
	Timeout time.Duration
	// SendBuffer, when positive, sets the socket's SO_SNDBUF, bounding how
	// much the kernel queues for a broker that reads slower than we write.
	SendBuffer int
	// BufferSize, when positive, is the size of the connection's read and
	// write buffers; 0 means 64 KiB each, sized for throughput. Thousands
	// of mostly silent connections want a few KiB.
	BufferSize int
}

// Dial connects, sends c and waits for a successful CONNACK. It returns the
// CONNACK's session-present flag.
func Dial(ctx context.Context, o DialOptions, c *Connect) (*Conn, bool, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return nil, false, fmt.Errorf("mqttc: dial %s: %w", o.Addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		// Nagle would add latency to the latency scenario; batching is done
		// by our own buffered writer instead.
		_ = tc.SetNoDelay(true)
		if o.SendBuffer > 0 {
			_ = tc.SetWriteBuffer(o.SendBuffer)
		}
	}
	if o.TLS != nil {
		tc := tls.Client(nc, o.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, false, fmt.Errorf("mqttc: tls handshake %s: %w", o.Addr, err)
		}
		nc = tc
	}
	cn := newConn(nc, c.Version, o.BufferSize)
	sp, err := cn.handshake(ctx, c)
	if err != nil {
		_ = nc.Close()
		return nil, false, err
	}
	return cn, sp, nil
}

// NewConn wraps an established stream speaking protocol version v.
func NewConn(nc net.Conn, v byte) *Conn { return newConn(nc, v, 0) }

// newConn is NewConn with read and write buffers of size bytes each (0:
// the 64 KiB defaults).
func newConn(nc net.Conn, v byte, size int) *Conn {
	rsize, wsize := readBufSize, writeBufSize
	if size > 0 {
		rsize, wsize = size, size
	}
	return &Conn{
		nc:      nc,
		rd:      &Reader{r: bufio.NewReaderSize(nc, rsize), Max: DefaultMaxPacket},
		version: v,
		w:       bufio.NewWriterSize(nc, wsize),
		scratch: make([]byte, 0, 256),
	}
}

func (c *Conn) handshake(ctx context.Context, cp *Connect) (bool, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetDeadline(dl)
		defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	}
	c.mu.Lock()
	c.scratch = AppendConnect(c.scratch[:0], cp)
	_, err := c.w.Write(c.scratch)
	if err == nil {
		err = c.w.Flush()
	}
	c.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("mqttc: send connect: %w", err)
	}
	p, err := c.Read()
	if err != nil {
		return false, fmt.Errorf("mqttc: read connack: %w", err)
	}
	if p.Type != CONNACK {
		return false, fmt.Errorf("%w: type %d before CONNACK", ErrUnexpected, p.Type)
	}
	if p.Reason != 0 {
		return false, fmt.Errorf("%w: reason %#x", ErrConnRefused, p.Reason)
	}
	return p.SessionPresent, nil
}

// Version is the protocol version the connection speaks.
func (c *Conn) Version() byte { return c.version }

// Read returns the next packet. Its byte slices are valid until the next
// Read.
func (c *Conn) Read() (Packet, error) {
	h, body, err := c.rd.Next()
	if err != nil {
		return Packet{}, err
	}
	return Decode(h, body, c.version)
}

// ReadBuffered reports whether a packet may already be waiting in the read
// buffer; when it is false, the reader is about to block, the moment to
// flush pending acks.
func (c *Conn) ReadBuffered() bool { return c.rd.Buffered() > 0 }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

func (c *Conn) write(enc func([]byte) []byte) error {
	c.mu.Lock()
	c.scratch = enc(c.scratch[:0])
	_, err := c.w.Write(c.scratch)
	c.mu.Unlock()
	return err
}

// WritePublish buffers p.
func (c *Conn) WritePublish(p *Publish) error {
	c.mu.Lock()
	c.scratch = AppendPublish(c.scratch[:0], p, c.version)
	_, err := c.w.Write(c.scratch)
	c.mu.Unlock()
	return err
}

// WriteBatch writes b, a run of already-encoded packets, straight to the
// network after flushing anything buffered, and returns how many bytes of b
// the kernel took: all of them unless err is set. A caller that encodes its
// own batches thus knows exactly which packets were sent; after an error
// the stream may end mid-packet and the connection must be closed.
func (c *Conn) WriteBatch(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	return c.nc.Write(b)
}

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// WriteAck buffers a PUBACK, PUBREC, PUBREL or PUBCOMP.
func (c *Conn) WriteAck(typ byte, id uint16) error {
	c.mu.Lock()
	c.scratch = AppendAck(c.scratch[:0], typ, id)
	_, err := c.w.Write(c.scratch)
	c.mu.Unlock()
	return err
}

// WriteSubscribe buffers a SUBSCRIBE.
func (c *Conn) WriteSubscribe(id uint16, subs []Subscription) error {
	return c.write(func(b []byte) []byte { return AppendSubscribe(b, id, subs, c.version) })
}

// WritePing buffers a PINGREQ.
func (c *Conn) WritePing() error { return c.write(AppendPingreq) }

// Flush writes buffered packets to the network.
func (c *Conn) Flush() error {
	c.mu.Lock()
	err := c.w.Flush()
	c.mu.Unlock()
	return err
}

// Disconnect flushes, sends DISCONNECT and closes the connection.
func (c *Conn) Disconnect() error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	err := c.write(AppendDisconnect)
	if err == nil {
		err = c.Flush()
	}
	if cerr := c.nc.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the connection without DISCONNECT.
func (c *Conn) Close() error { return c.nc.Close() }

// Subscribe sends SUBSCRIBE and waits for its SUBACK, acknowledging and
// otherwise ignoring any PUBLISH that arrives first (left over from a
// persistent session). It must be called before a read loop starts.
func (c *Conn) Subscribe(ctx context.Context, id uint16, subs []Subscription) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetReadDeadline(dl)
		defer func() { _ = c.nc.SetReadDeadline(time.Time{}) }()
	}
	if err := c.WriteSubscribe(id, subs); err != nil {
		return fmt.Errorf("mqttc: subscribe: %w", err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("mqttc: subscribe: %w", err)
	}
	for {
		p, err := c.Read()
		if err != nil {
			return fmt.Errorf("mqttc: read suback: %w", err)
		}
		switch p.Type {
		case SUBACK:
			if p.PacketID != id {
				return fmt.Errorf("%w: suback id %d, want %d", ErrProtocol, p.PacketID, id)
			}
			for i, g := range p.Granted {
				if g >= 0x80 {
					return fmt.Errorf("%w: %s: reason %#x", ErrSubRejected, subs[min(i, len(subs)-1)].Filter, g)
				}
			}
			return nil
		case PUBLISH:
			if err := c.AckIncoming(&p); err != nil {
				return err
			}
		case PUBREL:
			if err := c.WriteAck(PUBCOMP, p.PacketID); err != nil {
				return err
			}
		}
	}
}

// AckIncoming buffers the acknowledgement an incoming PUBLISH needs: PUBACK
// at QoS 1, PUBREC at QoS 2, nothing at QoS 0.
func (c *Conn) AckIncoming(p *Packet) error {
	switch p.QoS {
	case 1:
		return c.WriteAck(PUBACK, p.PacketID)
	case 2:
		return c.WriteAck(PUBREC, p.PacketID)
	}
	return nil
}
