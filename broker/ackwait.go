package broker

import (
	"encoding/binary"
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/persistence"
)

// Deferred acknowledgements.
//
// mochi reads a connection's packets one after the other and writes a QoS 1
// PUBLISH's PUBACK right after the OnPublish hooks return. If those hooks
// waited for their records to be fsynced, a publisher could never have more
// than one message in the store's group commit, and ten publishers would
// share at most ten messages per fsync, whatever their in-flight windows.
// Instead the hooks queue their writes and register the waits here; the
// reader goes on with the next packet, and the connection holds the PUBACK
// (and everything written to the client after it, to keep the order) until
// the waits are done. The message is fanned out to subscribers meanwhile:
// for QoS 1 that is allowed (a crash before the fsync loses the PUBACK, the
// publisher sends the message again: a duplicate, never a loss). QoS 2 is
// not deferred: exactly once needs the records durable before anyone sees
// the message.

// maxDeferredBytes bounds what one connection holds behind unfinished
// waits; beyond it writers wait, and so does the reader of a publisher that
// does not wait for its acknowledgements.
const maxDeferredBytes = 1 << 20

// ackSeg is a run of bytes to write once waits are done.
type ackSeg struct {
	waits []persistence.Waiter
	buf   []byte
}

// ackDeferrer returns the connection that can hold pk's acknowledgement, or
// nil when the caller must wait itself: QoS 0 and 2, the inline client.
func ackDeferrer(cl *mqtt.Client, pk packets.Packet) *conn {
	if pk.FixedHeader.Qos != 1 || cl.Net.Inline {
		return nil
	}
	c, _ := cl.Net.Conn.(*conn)
	return c
}

// deferAck is the persistence hook's way to the connection (see
// persistence.Hook.SetAckDeferrer).
func deferAck(cl *mqtt.Client, pk packets.Packet, w persistence.Waiter) bool {
	c := ackDeferrer(cl, pk)
	if c == nil {
		return false
	}
	c.DeferAck(pk.PacketID, w)
	return true
}

// DeferAck holds the acknowledgement of the client's packet id pid until
// w's Wait has returned; it runs on another goroutine. If it fails, the
// acknowledgement is never sent and the connection is closed: the client
// sends the message again after reconnecting.
func (c *conn) DeferAck(pid uint16, w persistence.Waiter) {
	c.amu.Lock()
	if c.acks == nil {
		c.acks = make(map[uint16][]persistence.Waiter)
	}
	c.acks[pid] = append(c.acks[pid], w)
	c.slow.Store(true)
	c.amu.Unlock()
}

// writeOrdered is write while acknowledgements are deferred: a PUBACK or
// PUBREC with waits starts a held segment, and what follows a held segment
// joins the queue.
func (c *conn) writeOrdered(p []byte) (int, error) {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.acksDead {
		return 0, net.ErrClosed
	}
	total := len(p)
	for len(p) > 0 {
		n, hdr := packetHeader(p)
		if n <= 0 || n > len(p) {
			n, hdr = len(p), 0 // not a whole packet: keep it in order, unparsed
		}
		pk := p[:n]
		p = p[n:]
		var waits []persistence.Waiter
		if t := pk[0] >> 4; hdr > 0 && (t == packets.Puback || t == packets.Pubrec) && n >= hdr+2 {
			pid := binary.BigEndian.Uint16(pk[hdr:])
			if w, ok := c.acks[pid]; ok {
				waits = w
				delete(c.acks, pid)
			}
		}
		if waits == nil && len(c.segs) == 0 {
			if _, err := c.writeNow(pk); err != nil {
				c.updateSlow()
				return 0, err
			}
			continue
		}
		if waits != nil || len(c.segs) == 0 {
			c.segs = append(c.segs, ackSeg{waits: waits})
		}
		last := &c.segs[len(c.segs)-1]
		last.buf = append(last.buf, pk...)
		c.deferred += n
	}
	if len(c.segs) > 0 && !c.flushing {
		c.flushing = true
		c.b.wg.Add(1)
		go c.flushDeferred()
	}
	for c.deferred > maxDeferredBytes && c.flushing && !c.closed.Load() {
		c.acond.Wait()
	}
	c.updateSlow()
	return total, nil
}

// flushDeferred writes the held segments in order, each once its waits are
// done.
func (c *conn) flushDeferred() {
	defer c.b.wg.Done()
	c.amu.Lock()
	for len(c.segs) > 0 {
		if waits := c.segs[0].waits; len(waits) > 0 {
			c.segs[0].waits = nil // taken: Close must not run them again
			c.amu.Unlock()
			err := waitAll(waits)
			c.amu.Lock()
			if len(c.segs) == 0 {
				break // dropped by Close meanwhile
			}
			if err != nil {
				id := ""
				if cl := c.client.Load(); cl != nil {
					id = cl.ID
				}
				c.b.log.Error("closing connection: storing a message failed, its PUBACK is not sent; the client will resend it",
					"client_id", id, "err", err)
				c.dropDeferred()
				c.amu.Unlock()
				_ = c.Close()
				return
			}
		}
		buf := c.segs[0].buf
		c.segs[0] = ackSeg{}
		c.segs = c.segs[1:]
		// The acknowledgements behind it were mostly in the same commit:
		// take those already done into the same write (one syscall for a
		// publisher's window instead of one per PUBACK).
		for len(c.segs) > 0 && ready(c.segs[0].waits) {
			if err := waitAll(c.segs[0].waits); err != nil {
				// Write what is good; the next round fails this one.
				c.segs[0].waits = []persistence.Waiter{failed{err}}
				break
			}
			buf = append(buf, c.segs[0].buf...)
			c.segs[0] = ackSeg{}
			c.segs = c.segs[1:]
		}
		c.deferred -= len(buf)
		if _, err := c.writeNow(buf); err != nil {
			c.dropDeferred()
			break
		}
		c.acond.Broadcast()
	}
	c.flushing = false
	c.updateSlow()
	c.acond.Broadcast()
	c.amu.Unlock()
}

// dropDeferred forgets what is held: the connection is gone. The waits
// not run yet still run, on their own goroutine: a hook may settle its
// bookkeeping in them, and they must run exactly once. Callers hold amu.
func (c *conn) dropDeferred() {
	var orphans []persistence.Waiter
	for _, ws := range c.acks {
		orphans = append(orphans, ws...)
	}
	for _, sg := range c.segs {
		orphans = append(orphans, sg.waits...)
	}
	c.acks, c.segs, c.deferred = nil, nil, 0
	c.flushing = false
	c.acksDead = true // nothing more may pass: an acknowledgement would skip its wait
	c.updateSlow()
	c.acond.Broadcast()
	if len(orphans) > 0 {
		c.b.wg.Add(1)
		go func() {
			defer c.b.wg.Done()
			_ = waitAll(orphans)
		}()
	}
}

// updateSlow says whether writes must take the ordered path. Callers hold
// amu.
func (c *conn) updateSlow() {
	c.slow.Store(len(c.acks) > 0 || len(c.segs) > 0 || c.acksDead)
}

// drainDeferred waits, up to d, until what is held has been written: a
// DISCONNECT queued behind a PUBACK must go out before the FIN.
func (c *conn) drainDeferred(d time.Duration) {
	if !c.slow.Load() {
		return
	}
	c.amu.Lock()
	defer c.amu.Unlock()
	if !c.flushing {
		return
	}
	t := time.AfterFunc(d, func() {
		c.amu.Lock()
		c.timedOut = true
		c.acond.Broadcast()
		c.amu.Unlock()
	})
	defer t.Stop()
	for c.flushing && !c.timedOut {
		c.acond.Wait()
	}
}

// closeDeferred runs, at Close, the waits of acknowledgements never written
// (mochi refused the publish after a hook registered, or the connection
// died first).
func (c *conn) closeDeferred() {
	c.drainDeferred(time.Second)
	c.amu.Lock()
	if len(c.acks) > 0 || len(c.segs) > 0 {
		c.dropDeferred()
	}
	c.amu.Unlock()
}

// waitAll waits for every w and returns the first error.
func waitAll(ws []persistence.Waiter) error {
	var err error
	for _, w := range ws {
		if werr := w.Wait(); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// ready says whether every w is done.
func ready(ws []persistence.Waiter) bool {
	for _, w := range ws {
		if !w.Ready() {
			return false
		}
	}
	return true
}

// failed is a Waiter whose write already failed.
type failed struct{ err error }

func (f failed) Wait() error { return f.err }
func (f failed) Ready() bool { return true }
