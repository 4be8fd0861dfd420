package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ProtocolError is a packet that conn refused by its fixed header, before
// mochi read any of it.
type ProtocolError struct {
	Code   packets.Code
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%s (reason code 0x%02x): %s", e.Code.Reason, e.Code.Code, e.Reason)
}

// conn wraps every accepted connection. It does two things mochi does not
// (packets are decoded once, by mochi, whose decoder turns every malformed
// packet into an error, never a panic):
//
//   - Packets over the size limit are answered with DISCONNECT 0x95 (MQTT 5)
//     before the connection closes, instead of a bare close.
//   - Close is a lingering close: FIN after the last write, then the
//     client's remaining bytes are read and dropped for a short while, so the
//     kernel does not answer the client's next write with RST and destroy
//     the DISCONNECT the client has not read yet.
//
// Reads happen on mochi's single reader goroutine; Close may come from any.
type conn struct {
	net.Conn
	b        *Broker
	listener string
	ip       string // remote IP, when per-IP limits are on
	tlsState func() *tls.ConnectionState

	client atomic.Pointer[mqtt.Client] // set once CONNECT is processed
	// connected is set once CONNACK accepted the client (connLogHook).
	connected atomic.Bool
	// handled is closed once mochi's handler for the connection has
	// returned: the client's clean-up is done.
	handled chan struct{}

	// reader state, only touched by the reading goroutine
	sc   scanner
	rerr error
	// reported is set once a refused packet has been logged and answered.
	reported bool

	// bytesIn and bytesOut count what crossed the socket, since when the
	// session was established, in Unix nanoseconds (admin API).
	bytesIn, bytesOut atomic.Uint64
	since             atomic.Int64

	mu        sync.Mutex // orders deadline changes against Close
	closed    atomic.Bool
	closeOnce sync.Once

	// Writes to a client that stopped reading (stall.go).
	stall stallState
}

// Write writes p as the engine handed it. Until a session is established
// (CONNACK and the resend of its in-flight messages written) the engine
// itself holds new deliveries back (outqueue.go's pause).
func (c *conn) Write(p []byte) (int, error) { return c.write(p) }

// write writes p now, counted.
func (c *conn) write(p []byte) (int, error) {
	c.bytesOut.Add(uint64(len(p)))
	return c.writeNow(p)
}

// packetLen is the length of the MQTT packet at the start of b, 0 if b does
// not hold its whole header.
func packetLen(b []byte) int {
	n, _ := packetHeader(b)
	return n
}

// packetHeader is packetLen and the length of the packet's fixed header
// (0, 0 if b does not hold the whole header).
func packetHeader(b []byte) (total, header int) {
	n, mult := 0, 1
	for i := 1; i < len(b) && i <= 4; i++ {
		n += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return 1 + i + n, 1 + i
		}
		mult *= 128
	}
	return 0, 0
}

func (c *conn) Read(p []byte) (int, error) {
	for {
		if c.rerr != nil {
			// Raised only once mochi has taken every byte before the bad
			// packet: by then it has processed a CONNECT that came in the
			// same segment, so the client can be named and told.
			c.violation(c.rerr)
			return 0, c.rerr
		}
		n, err := c.Conn.Read(p)
		c.bytesIn.Add(uint64(n))
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		out, perr := c.scan(p[:n])
		if perr != nil {
			c.rerr = perr
		} else if err != nil {
			c.rerr = err
		}
		if out > 0 {
			return out, nil
		}
	}
}

// violation logs a refused packet and, for an MQTT 5 client, sends the
// DISCONNECT with its reason code before the read error ends the session.
func (c *conn) violation(err error) {
	var pe *ProtocolError
	if !errors.As(err, &pe) || c.reported {
		return
	}
	c.reported = true
	cl := c.client.Load()
	id := ""
	if cl != nil {
		id = cl.ID
	}
	c.b.log.Warn("closing connection: bad packet", "client_id", id, "remote", c.RemoteAddr().String(),
		"listener", c.listener, "reason", pe.Error())
	c.b.metrics.CountMalformed()
	if cl != nil && cl.Properties.ProtocolVersion == 5 {
		_ = c.b.mochi.DisconnectClient(cl, pe.Code)
	}
}

// TLSConnectionState returns the TLS state of a tls or wss connection, nil
// otherwise.
func (c *conn) TLSConnectionState() *tls.ConnectionState {
	if c.tlsState == nil {
		return nil
	}
	return c.tlsState()
}

// ConnectionState is TLSConnectionState for code that expects *tls.Conn's
// method; the zero value on a plain connection.
func (c *conn) ConnectionState() tls.ConnectionState {
	if s := c.TLSConnectionState(); s != nil {
		return *s
	}
	return tls.ConnectionState{}
}

func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// Close sends FIN and drains the connection in the background for up to the
// configured linger, then closes it. Safe to call more than once.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed.Store(true)
		c.cutStalled()
		cw, ok := c.Conn.(interface{ CloseWrite() error })
		linger := c.b.cfg.Limits.CloseLinger
		if !ok || linger <= 0 || cw.CloseWrite() != nil {
			c.mu.Unlock()
			_ = c.Conn.Close()
			c.b.untrack(c)
			return
		}
		// A deadline in the past wakes mochi's reader, which then sees
		// closed: its handler must end now, not when the client closes its
		// side (a takeover waits for it: mochi's Server.takeOver).
		_ = c.Conn.SetReadDeadline(time.Now())
		c.mu.Unlock()
		c.b.wg.Add(1)
		go func() {
			defer c.b.wg.Done()
			defer c.b.untrack(c)
			defer c.Conn.Close()
			// The drain's deadline must not be set before the reader
			// woke: it would sleep on.
			t := time.NewTimer(linger)
			select {
			case <-c.handled:
			case <-t.C:
			}
			t.Stop()
			_ = c.Conn.SetReadDeadline(time.Now().Add(linger))
			buf := make([]byte, 512)
			for {
				if _, err := c.Conn.Read(buf); err != nil {
					return
				}
			}
		}()
	})
	return nil
}

// kill closes the socket at once, for a shutdown whose time is up.
func (c *conn) kill() {
	c.closed.Store(true)
	_ = c.Conn.Close()
}

// scanner follows MQTT framing across reads, to refuse a packet over the
// size limit by its fixed header alone.
type scanner struct {
	state     int
	length    int
	mult      int
	hdrLen    int
	remaining int
}

const (
	stFirst = iota
	stLength
	stBody
	// stPass: the framing was lost (a remaining length longer than four
	// bytes); mochi's decoder refuses that packet, so the rest just passes.
	stPass
)

// scan follows the packets in buf, the bytes just read, and returns how many
// of them mochi may read: all of them, or those before a packet over the
// size limit, with the error that refuses it.
func (c *conn) scan(buf []byte) (int, error) {
	s := &c.sc
	start := 0 // where the packet being scanned starts in buf (0: in an earlier read)
	for i := 0; i < len(buf); {
		switch s.state {
		case stFirst:
			start = i
			i++
			s.length, s.mult, s.hdrLen = 0, 1, 1
			s.state = stLength
		case stLength:
			b := buf[i]
			i++
			s.hdrLen++
			s.length += int(b&0x7f) * s.mult
			s.mult *= 128
			if b&0x80 != 0 {
				if s.hdrLen == 5 {
					s.state = stPass
				}
				continue
			}
			if max := c.maxPacket(); max > 0 && s.hdrLen+s.length > max {
				// Nothing of this packet reaches mochi, unless an earlier
				// read already handed it the start of the header.
				return start, &ProtocolError{Code: packets.ErrPacketTooLarge,
					Reason: fmt.Sprintf("packet of %d bytes exceeds the maximum %d", s.hdrLen+s.length, max)}
			}
			s.remaining = s.length
			s.state = stBody
			if s.remaining == 0 {
				s.state = stFirst
			}
		case stBody:
			k := min(s.remaining, len(buf)-i)
			i += k
			s.remaining -= k
			if s.remaining == 0 {
				s.state = stFirst
			}
		case stPass:
			return len(buf), nil
		}
	}
	return len(buf), nil
}

func (c *conn) maxPacket() int {
	return *c.b.cfg.Limits.MaxPacketSize
}
