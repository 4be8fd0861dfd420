package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/nats-io/nats.go"
)

// A publisher's QoS 1/2 messages for one node are written to FERRY_ROUTE
// together: one stream message per node for the run of PUBLISHes in the
// publisher's read buffer (the engine's AtReadEnd), instead of one each.
// A replicated write costs a round of the servers' consensus whatever its
// size, so this is what makes cross-node QoS 1 throughput a fraction of
// same-node's and not a small one. The PUBACKs of the run wait for the
// one write.
//
// A batch is the byte batchMagic, then each frame (with its route info)
// as a uvarint length and the bytes.
const batchMagic = 'B'

// Bounds of one batch: beyond them it is written at once and a new one
// starts.
const (
	batchMaxMessages = 512
	batchMaxBytes    = 512 << 10
)

// batchWaiter is the acknowledgement of a batch's write, shared by the
// PUBACKs of its messages: Wait may be called once per message.
type batchWaiter struct {
	done chan struct{}
	err  error
}

func newBatchWaiter() *batchWaiter { return &batchWaiter{done: make(chan struct{})} }

func (w *batchWaiter) Wait() error { <-w.done; return w.err }

func (w *batchWaiter) Ready() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *batchWaiter) finish(err error) {
	w.err = err
	close(w.done)
}

// nodeBatch is one node's batch of a publisher's run.
type nodeBatch struct {
	subject string
	buf     bytes.Buffer
	count   int
	w       *batchWaiter
}

// clientBatches are a publisher's batches, by node; its reader alone uses
// them.
type clientBatches struct {
	nodes map[string]*nodeBatch
}

// batched adds frame for node to cl's batch and holds the PUBACK for it.
// It reports false when cl's reader cannot batch (the inline client):
// the caller writes the frame on its own.
func (n *Node) batched(cl *mqtt.Client, node string, frame []byte) bool {
	v, ok := n.batches.Load(cl)
	if !ok {
		cb := &clientBatches{nodes: map[string]*nodeBatch{}}
		if !cl.AtReadEnd(func() { n.flushBatches(cl, cb) }) {
			return false
		}
		n.batches.Store(cl, cb)
		v = cb
	}
	cb := v.(*clientBatches)
	b := cb.nodes[node]
	if b == nil {
		b = &nodeBatch{subject: subjectPrefix + node + ".1." + n.cfg.NodeID + ".%batch", w: newBatchWaiter()}
		b.buf.WriteByte(batchMagic)
		cb.nodes[node] = b
	}
	var l [binary.MaxVarintLen64]byte
	b.buf.Write(l[:binary.PutUvarint(l[:], uint64(len(frame)))])
	b.buf.Write(frame)
	b.count++
	n.forwarded.Add(1)
	if !cl.HoldAck(b.w) {
		// Not a QoS 1/2 PUBLISH being read after all: write it now.
		delete(cb.nodes, node)
		n.writeBatch(b)
		if err := b.w.Wait(); err != nil {
			n.log.Warn("cluster: message not stored", "client", cl.ID, "err", err)
		}
		return true
	}
	if b.count >= batchMaxMessages || b.buf.Len() >= batchMaxBytes {
		delete(cb.nodes, node)
		n.writeBatch(b)
	}
	return true
}

// flushBatches writes what cl's run left in its batches.
func (n *Node) flushBatches(cl *mqtt.Client, cb *clientBatches) {
	n.batches.Delete(cl)
	for node, b := range cb.nodes {
		delete(cb.nodes, node)
		n.writeBatch(b)
	}
}

// writeBatch writes b to FERRY_ROUTE and finishes its waiter when stored.
func (n *Node) writeBatch(b *nodeBatch) {
	f, err := n.js.PublishMsgAsync(&nats.Msg{Subject: b.subject, Data: b.buf.Bytes()}, n.storeOpts...)
	if err != nil {
		n.forwardFailed.Add(uint64(b.count))
		b.w.finish(fmt.Errorf("cluster: write to %s: %w", b.subject, err))
		return
	}
	go func() {
		select {
		case <-f.Ok():
			b.w.finish(nil)
		case err := <-f.Err():
			n.forwardFailed.Add(uint64(b.count))
			b.w.finish(fmt.Errorf("cluster: write to %s: %w", b.subject, err))
		}
	}()
}

var errBatch = errors.New("cluster: malformed batch")

// eachFrame calls f with each frame of a stream message: a batch, or a
// single frame.
func eachFrame(data []byte, f func([]byte)) error {
	if len(data) == 0 || data[0] != batchMagic {
		f(data)
		return nil
	}
	data = data[1:]
	for len(data) > 0 {
		l, n := binary.Uvarint(data)
		if n <= 0 || l > uint64(len(data)-n) {
			return errBatch
		}
		f(data[n : n+int(l)])
		data = data[n+int(l):]
	}
	return nil
}
