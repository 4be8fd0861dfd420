package broker

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/persistence"
)

// maxHeldPacket bounds how much of one control packet conn buffers to check
// it before mochi sees it. Bigger packets stream through unchecked (mochi
// refuses them by size first unless the size limit is off).
const maxHeldPacket = 1 << 20

// ProtocolError is a packet that conn refused before mochi could decode it.
type ProtocolError struct {
	Code   packets.Code
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%s (reason code 0x%02x): %s", e.Code.Reason, e.Code.Code, e.Reason)
}

// conn wraps every accepted connection. It does three things mochi v2.7.9
// does not:
//
//   - Every control packet other than PUBLISH is decoded once under
//     recover() before mochi decodes it, so a packet that would panic mochi's
//     decoder (upstream issue #501) becomes a read error that closes this one
//     connection the normal way: will sent, hooks told.
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
	// entered is called at the first read: mochi has registered the
	// connection by then.
	entered func()

	client atomic.Pointer[mqtt.Client] // set once CONNECT is processed
	// connected is set once CONNACK accepted the client (connLogHook).
	connected atomic.Bool
	// handled is closed once mochi's handler for the connection has
	// returned: the client's clean-up is done (see protocolHook.OnSessionEstablish).
	handled chan struct{}

	// reader state, only touched by the reading goroutine
	version byte
	sc      scanner
	pending []byte
	rerr    error
	// reported is set once a refused packet has been logged and answered.
	reported bool

	mu        sync.Mutex // orders deadline changes against Close
	closed    atomic.Bool
	closeOnce sync.Once

	// Until the session is established (CONNACK written and mochi's resend
	// of the session's in-flight messages done), new PUBLISH packets are
	// held back: mochi adds the client to its index before that, so a
	// message published meanwhile would overtake the resend of older ones
	// (or even the CONNACK).
	wmu      sync.Mutex
	released bool
	held     []byte

	// Writes to a client that stopped reading (stall.go).
	stall stallState

	// Deferred acknowledgements (ackwait.go): slow is set while any are
	// registered or held; the rest is guarded by amu.
	slow     atomic.Bool
	amu      sync.Mutex
	acond    sync.Cond // L is &amu
	acks     map[uint16][]persistence.Waiter
	segs     []ackSeg
	deferred int // bytes in segs
	flushing bool
	timedOut bool
	acksDead bool // the connection failed or closed with waits pending
}

// Write writes what mochi hands it. A 3.x client's DISCONNECT packets are
// left out (see withoutV3Disconnect); an MQTT 5 client's writes are not
// scanned for them.
func (c *conn) Write(p []byte) (int, error) {
	if cl := c.client.Load(); cl == nil || cl.Properties.ProtocolVersion < 5 {
		if q, ok := withoutV3Disconnect(p); ok {
			if len(q) > 0 {
				if _, err := c.writeOut(q); err != nil {
					return 0, err
				}
			}
			return len(p), nil
		}
	}
	return c.writeOut(p)
}

// writeOut writes p as mochi handed it.
func (c *conn) writeOut(p []byte) (int, error) {
	c.wmu.Lock()
	if c.released {
		c.wmu.Unlock()
		return c.write(p)
	}
	defer c.wmu.Unlock()
	// Writes are whole packets (mochi encodes a packet, or a buffer of
	// them, before writing). Hold new PUBLISHes; pass the rest, resends
	// (DUP set) included.
	rest := p
	for len(rest) > 0 {
		n := packetLen(rest)
		if n <= 0 || n > len(rest) {
			// Not whole packets after all: keep the order, hold it all.
			c.held = append(c.held, rest...)
			return len(p), nil
		}
		pk := rest[:n]
		rest = rest[n:]
		if pk[0]>>4 == packets.Publish && pk[0]&0x08 == 0 {
			c.held = append(c.held, pk...)
			continue
		}
		if _, err := c.write(pk); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// write writes p now, or behind the acknowledgements being held.
func (c *conn) write(p []byte) (int, error) {
	if c.slow.Load() {
		return c.writeOrdered(p)
	}
	return c.writeNow(p)
}

// release ends the hold and writes what was held, in order.
func (c *conn) release() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.released {
		return
	}
	c.released = true
	if len(c.held) > 0 {
		_, _ = c.write(c.held)
		c.held = nil
	}
}

// v3Disconnect is DISCONNECT as mochi encodes it for MQTT 3.1 and 3.1.1: no
// reason code, no properties. An MQTT 5 DISCONNECT from mochi always carries
// both, so these two bytes at a packet boundary are a 3.x DISCONNECT.
var v3Disconnect = []byte{packets.Disconnect << 4, 0}

// withoutV3Disconnect returns p without its MQTT 3.x DISCONNECT packets and
// true, or p and false if it holds none. MQTT 3.1.1 has no DISCONNECT from a
// server (a client such as mosquitto_sub reports "a network protocol error"),
// but mochi's DisconnectClient writes one whatever the client's version, on
// every path that calls it (a session takeover, mochi's own receive-maximum
// and ACL refusals): for a 3.x client the connection is just closed.
func withoutV3Disconnect(p []byte) ([]byte, bool) {
	if !bytes.Contains(p, v3Disconnect) {
		return p, false
	}
	var out []byte
	found := false
	for rest := p; len(rest) > 0; {
		n := packetLen(rest)
		if n <= 0 || n > len(rest) {
			if !found {
				return p, false
			}
			return append(out, rest...), true
		}
		if n == len(v3Disconnect) && rest[0] == v3Disconnect[0] {
			if !found {
				out = append(make([]byte, 0, len(p)), p[:len(p)-len(rest)]...)
				found = true
			}
		} else if found {
			out = append(out, rest[:n]...)
		}
		rest = rest[n:]
	}
	if !found {
		return p, false
	}
	return out, true
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
	if c.entered != nil {
		c.entered()
	}
	for {
		if len(c.pending) > 0 {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			if len(c.pending) == 0 {
				c.pending = nil
			}
			return n, nil
		}
		if c.rerr != nil {
			// Raised only once mochi has taken every byte before the bad
			// packet: by then it has processed a CONNECT that came in the
			// same segment, so the client can be named and told.
			c.violation(c.rerr)
			return 0, c.rerr
		}
		n, err := c.Conn.Read(p)
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
		c.closeDeferred()
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
		// side (a takeover waits for it, see protocolHook.OnSessionEstablish).
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

// scanner follows MQTT framing across reads.
type scanner struct {
	state     int
	typ       byte
	hold      bool
	length    int
	mult      int
	hdrLen    int
	remaining int
	frame     []byte
	// Where the current packet's first byte went, so a packet refused by
	// its header alone can be taken back before mochi sees any of it.
	startW, startPending int
	startedHere          bool
}

const (
	stFirst = iota
	stLength
	stBody
)

// scan walks buf, the bytes just read. Bytes mochi may see now are moved to
// the front of buf (their count is returned) or, once order requires it,
// appended to c.pending; bytes of a control packet still being checked are
// held in c.sc.frame.
func (c *conn) scan(buf []byte) (int, error) {
	s := &c.sc
	w, i := 0, 0
	s.startedHere = false
	refuse := func(err error) (int, error) {
		if s.startedHere {
			w = s.startW
			c.pending = c.pending[:s.startPending]
		}
		return w, err
	}
	emit := func(b []byte) {
		if len(c.pending) == 0 && w+len(b) <= i {
			copy(buf[w:], b)
			w += len(b)
			return
		}
		c.pending = append(c.pending, b...)
	}
	for i < len(buf) {
		switch s.state {
		case stFirst:
			s.startW, s.startPending, s.startedHere = w, len(c.pending), true
			b := buf[i]
			i++
			s.typ = b >> 4
			s.hold = s.typ != packets.Publish
			s.length, s.mult, s.hdrLen = 0, 1, 1
			if s.hold {
				s.frame = append(s.frame[:0], b)
			} else {
				emit(buf[i-1 : i])
			}
			s.state = stLength
		case stLength:
			b := buf[i]
			i++
			s.hdrLen++
			s.length += int(b&0x7f) * s.mult
			s.mult *= 128
			if s.hold {
				s.frame = append(s.frame, b)
			} else {
				emit(buf[i-1 : i])
			}
			if b&0x80 != 0 {
				if s.hdrLen == 5 {
					return refuse(&ProtocolError{Code: packets.ErrMalformedPacket, Reason: "remaining length is longer than 4 bytes"})
				}
				continue
			}
			s.remaining = s.length
			if max := c.maxPacket(); max > 0 && s.hdrLen+s.length > max {
				return refuse(&ProtocolError{Code: packets.ErrPacketTooLarge,
					Reason: fmt.Sprintf("packet of %d bytes exceeds the maximum %d", s.hdrLen+s.length, max)})
			}
			if s.hold && s.length > maxHeldPacket {
				s.hold = false
				emit(s.frame)
			}
			if s.remaining == 0 {
				if err := c.complete(emit); err != nil {
					return w, err
				}
				continue
			}
			s.state = stBody
		case stBody:
			k := min(s.remaining, len(buf)-i)
			if s.hold {
				s.frame = append(s.frame, buf[i:i+k]...)
			} else {
				emit(buf[i : i+k])
			}
			i += k
			s.remaining -= k
			if s.remaining == 0 {
				if err := c.complete(emit); err != nil {
					return w, err
				}
			}
		}
	}
	return w, nil
}

func (c *conn) maxPacket() int {
	return *c.b.cfg.Limits.MaxPacketSize
}

// complete checks a whole held packet and releases it.
func (c *conn) complete(emit func([]byte)) error {
	s := &c.sc
	s.state = stFirst
	if !s.hold {
		return nil
	}
	if err := c.check(s.frame[0], s.frame[s.hdrLen:]); err != nil {
		return err
	}
	emit(s.frame)
	if cap(s.frame) > 64<<10 {
		s.frame = nil // don't pin one large packet's buffer for the connection's life
	}
	return nil
}

// check decodes one control packet the way mochi will, under recover. A
// decode error is left for mochi to report; only a panic is refused here.
func (c *conn) check(first byte, body []byte) (err error) {
	var fh packets.FixedHeader
	if fh.Decode(first) != nil {
		return nil
	}
	pk := packets.Packet{ProtocolVersion: c.version, FixedHeader: fh}
	defer func() {
		if r := recover(); r != nil {
			err = &ProtocolError{Code: packets.ErrMalformedPacket,
				Reason: fmt.Sprintf("malformed %s packet: %v", packets.PacketNames[fh.Type], r)}
		}
	}()
	switch fh.Type {
	case packets.Connect:
		if pk.ConnectDecode(body) == nil {
			c.version = pk.ProtocolVersion
		}
	case packets.Disconnect:
		_ = pk.DisconnectDecode(body)
	case packets.Puback:
		_ = pk.PubackDecode(body)
	case packets.Pubrec:
		_ = pk.PubrecDecode(body)
	case packets.Pubrel:
		_ = pk.PubrelDecode(body)
	case packets.Pubcomp:
		_ = pk.PubcompDecode(body)
	case packets.Subscribe:
		_ = pk.SubscribeDecode(body)
	case packets.Unsubscribe:
		_ = pk.UnsubscribeDecode(body)
	case packets.Auth:
		_ = pk.AuthDecode(body)
	}
	return nil
}
