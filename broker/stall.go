package broker

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A stalled subscriber.
//
// mochi writes to a client while holding the client's lock, and every
// publisher delivering to that client takes the same lock (for a packet
// id) before any hook can intervene. A write that blocks because the client
// stopped reading therefore holds every publisher to it, and their PUBACKs,
// until limits.write_timeout (30 s) closes the connection. So a write waits
// only as long as a publisher may be held, limits.overflow_wait (5 s) under
// block-publisher, dropPolicyWriteWait under the drop policies; then the
// connection is stalled: what the client has not taken is written by a
// goroutine of its own, still bounded by write_timeout, and later writes
// join it without waiting. Beyond maxStalledBytes the overflow policy is
// applied to the stalled subscriber: its new PUBLISH packets are not
// written until the stall ends. A QoS 0 message and a QoS 1/2 message of a session that ends
// with the connection are dropped and counted (client_queue_full); a QoS
// 1/2 message of a persistent session stays in its in-flight window and is
// resent when the session resumes: a client that starts reading again is
// disconnected once it has taken what was queued, so that it gets those
// messages before newer ones.
// Other packets (acknowledgements of the client's own publishes, PINGRESP)
// are always queued, up to twice the bound. While a connection is stalled
// the persistence hook spills the new messages of its persistent session
// to the store and feeds it nothing (stalled): they follow, in order, once
// the client takes what it was sent.

// maxStalledBytes bounds what a stalled connection holds for its client.
const maxStalledBytes = 1 << 20

// dropPolicyWriteWait is how long a write may hold publishers under the
// drop policies, which never make a publisher wait for a subscriber: long
// enough for a client that is merely slow to take what the socket holds.
const dropPolicyWriteWait = 50 * time.Millisecond

// stallState is a connection's stalled writes; guarded by its mu, which
// is also held during a write on the direct path, to keep the order.
type stallState struct {
	mu     sync.Mutex
	active bool        // a flusher owns the socket; writes append to buf
	on     atomic.Bool // active, for readers without mu (stalled)
	since  time.Time   // when the write that stalled began
	buf    []byte      // bytes after those the flusher is writing
	err    error       // the flusher failed: the connection is gone
	// shedding: a PUBLISH was not written; none after it is either, until
	// the stall ends, so that what the client gets keeps its order.
	shedding bool
	// owed: one of them belongs to a persistent session, which resends it
	// only when it resumes.
	owed bool
}

// errStalledTooLong is returned for writes to a stalled connection whose
// backlog of control packets exceeds twice maxStalledBytes.
var errStalledTooLong = errors.New("broker: client not reading: stalled writes over the bound")

// writeNow writes p now or, when the connection is stalled, queues it
// behind what the client has not taken yet.
func (c *conn) writeNow(p []byte) (int, error) {
	s := &c.stall
	s.mu.Lock()
	if s.active {
		stuck, err := c.queueStalledLocked(p)
		s.mu.Unlock()
		if stuck {
			c.notReading()
		}
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	wt := c.b.cfg.Limits.WriteTimeout
	wait := c.b.stallWait()
	start := time.Now()
	stalls := wait > 0 && (wt <= 0 || wait < wt)
	switch {
	case stalls:
		_ = c.Conn.SetWriteDeadline(start.Add(wait))
	case wt > 0:
		_ = c.Conn.SetWriteDeadline(start.Add(wt))
	}
	n, err := c.Conn.Write(p)
	if err == nil || c.closed.Load() || !isTimeout(err) {
		s.mu.Unlock()
		return n, err
	}
	if !stalls {
		s.mu.Unlock()
		c.notReading()
		return n, err
	}
	// The client took nothing for overflow_wait: stop holding publishers.
	if f := c.b.flow; f != nil {
		f.timedOut.Add(1)
	}
	s.active, s.since = true, start
	s.on.Store(true)
	s.buf = append(s.buf[:0], p[n:]...)
	c.b.wg.Add(1)
	go c.flushStalled()
	s.mu.Unlock()
	return len(p), nil
}

// stalled says whether cl's connection is stalled: the persistence hook
// then spills the messages of cl's persistent session to the store instead
// of handing them to mochi, and feeds it nothing from there.
func stalled(cl *mqtt.Client) bool {
	c, ok := cl.Net.Conn.(*conn)
	return ok && c.stall.on.Load()
}

// stallWait is how long one write may hold the publishers of its client.
func (b *Broker) stallWait() time.Duration {
	if b.cfg.Limits.OverflowPolicy == OverflowBlockPublisher {
		return b.cfg.Limits.OverflowWait
	}
	return dropPolicyWriteWait
}

// queueStalledLocked appends p to the stalled backlog, applying the
// overflow policy to PUBLISH packets beyond maxStalledBytes. stuck: the
// backlog is over its hard bound; the caller closes the connection.
func (c *conn) queueStalledLocked(p []byte) (stuck bool, err error) {
	s := &c.stall
	if s.err != nil {
		return false, s.err
	}
	if !s.shedding && len(s.buf)+len(p) <= maxStalledBytes {
		s.buf = append(s.buf, p...)
		return false, nil
	}
	for rest := p; len(rest) > 0; {
		n := packetLen(rest)
		if n <= 0 || n > len(rest) {
			n = len(rest) // not whole packets: keep them, in order
		} else if rest[0]>>4 == packets.Publish && (s.shedding || len(s.buf)+n > maxStalledBytes) {
			s.shedding = true
			if c.dropStalledPublish(rest[:n]) {
				s.owed = true
			}
			rest = rest[n:]
			continue
		}
		if len(s.buf)+n > 2*maxStalledBytes {
			s.err = errStalledTooLong
			return true, s.err
		}
		s.buf = append(s.buf, rest[:n]...)
		rest = rest[n:]
	}
	return false, nil
}

// dropStalledPublish does not write the PUBLISH packet pk to the stalled
// client (see the comment at the top of this file). owed: it stays in the
// in-flight window of a persistent session.
func (c *conn) dropStalledPublish(pk []byte) (owed bool) {
	cl := c.client.Load()
	qos := (pk[0] >> 1) & 3
	if qos > 0 {
		if cl == nil || !endsWithConnection(cl) {
			return true // resent from the in-flight window when the session resumes
		}
		pid, ok := publishPacketID(pk)
		if !ok {
			return false
		}
		// As mochi does for a message dropped on a full outbound queue.
		if cl.State.Inflight.Delete(pid) {
			atomic.AddInt64(&c.b.mochi.Info.Inflight, -1)
			cl.State.Inflight.IncreaseSendQuota()
		}
	}
	c.b.metrics.OnPublishDropped(cl, packets.Packet{})
	return false
}

// publishPacketID is the packet id of an encoded QoS 1/2 PUBLISH.
func publishPacketID(pk []byte) (uint16, bool) {
	_, hdr := packetHeader(pk)
	if hdr == 0 || len(pk) < hdr+2 {
		return 0, false
	}
	at := hdr + 2 + int(binary.BigEndian.Uint16(pk[hdr:])) // after the topic
	if len(pk) < at+2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(pk[at:]), true
}

// flushStalled writes the stalled backlog until it is empty, each write
// bounded by write_timeout (the first from when the write stalled).
func (c *conn) flushStalled() {
	defer c.b.wg.Done()
	s := &c.stall
	wt := c.b.cfg.Limits.WriteTimeout
	deadline := s.since.Add(wt)
	var out []byte
	for {
		s.mu.Lock()
		if len(s.buf) == 0 || c.closed.Load() {
			owed := s.owed
			s.active, s.buf, s.shedding, s.owed = false, nil, false, false
			s.on.Store(false)
			s.mu.Unlock()
			if owed && !c.closed.Load() {
				// The client reads again, but messages of its persistent
				// session it was not sent would come after newer ones:
				// they are resent, in order, when the session resumes.
				c.b.log.Info("closing connection: it stopped reading and messages were held back; they follow when it reconnects",
					"client_id", c.clientID(), "remote", c.RemoteAddr().String(), "listener", c.listener)
				c.end(errHeldBack)
			}
			return
		}
		out, s.buf = s.buf, out[:0]
		s.mu.Unlock()
		if wt > 0 {
			_ = c.Conn.SetWriteDeadline(deadline)
		}
		if _, err := c.Conn.Write(out); err != nil {
			s.mu.Lock()
			s.err, s.buf = err, nil
			s.mu.Unlock()
			if isTimeout(err) && !c.closed.Load() {
				c.notReading()
			}
			return
		}
		deadline = time.Now().Add(wt)
	}
}

// cutStalled ends, when the connection closes, a stalled write the client
// would otherwise hold until write_timeout (and a shutdown with it).
func (c *conn) cutStalled() {
	c.stall.mu.Lock()
	active := c.stall.active
	c.stall.mu.Unlock()
	if active {
		_ = c.Conn.SetWriteDeadline(time.Now())
	}
}

// notReading closes a connection whose client took nothing for
// write_timeout. A persistent session keeps its messages.
func (c *conn) notReading() {
	c.b.log.Warn("closing connection: client not reading", "client_id", c.clientID(), "remote", c.RemoteAddr().String(),
		"listener", c.listener, "write_timeout", c.b.cfg.Limits.WriteTimeout.String())
	c.b.writeTimeouts.Add(1)
	c.end(errNotReading)
}

var (
	errNotReading = errors.New("client not reading (limits.write_timeout)")
	errHeldBack   = errors.New("client stopped reading while messages were held back")
)

// end closes the connection through the engine once a client is attached:
// the engine then ends its session, also while the connection is parked,
// which a socket closed under it would not tell it.
func (c *conn) end(cause error) {
	if cl := c.client.Load(); cl != nil {
		cl.Stop(cause)
		return
	}
	_ = c.Close()
}

// clientID is the connection's client id, "" before its CONNECT.
func (c *conn) clientID() string {
	if cl := c.client.Load(); cl != nil {
		return cl.ID
	}
	return ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
