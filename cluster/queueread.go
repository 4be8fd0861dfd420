package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// queued is one message read from a session's queue.
type queued struct {
	seq  uint64
	data []byte
}

// errQueueRead is a read of a queue that NATS answered with an error
// status (not "nothing there").
var errQueueRead = errors.New("cluster: queue read refused")

// queueReadMaxBytes bounds the payload one batched read brings.
const queueReadMaxBytes = 1 << 20

// readQueue reads up to limit messages of subject in FERRY_QUEUE, in order,
// from sequence from on, in one request: a batched direct get, answered
// by any replica that is current (nats-server 2.11 and later), or one
// message from a server that does not batch (2.9 and 2.10 answer the same
// request with the first message only). end says that the queue holds
// nothing beyond what was returned (when it was read).
//
// One request per message (the JetStream GetMsg API, next by subject) fed
// a persistent session about 200 messages a second on a busy 2-CPU
// machine, slower than a publisher stores them: the end of a 20,000
// message stream was still queued a minute after it was acknowledged.
func (n *Node) readQueue(ctx context.Context, subject string, from uint64, limit int) (msgs []queued, end bool, err error) {
	req, _ := json.Marshal(struct {
		Seq      uint64 `json:"seq"`
		NextFor  string `json:"next_by_subj"`
		Batch    int    `json:"batch,omitempty"`
		MaxBytes int    `json:"max_bytes,omitempty"`
	}{Seq: max(from, 1), NextFor: subject, Batch: limit, MaxBytes: queueReadMaxBytes})
	token := strconv.FormatUint(n.replies.next.Add(1), 36)
	ch := make(chan *nats.Msg, limit+2) // the messages, an end of batch, one spare
	n.replies.mu.Lock()
	n.replies.waiting[token] = ch
	n.replies.mu.Unlock()
	defer func() {
		n.replies.mu.Lock()
		delete(n.replies.waiting, token)
		n.replies.mu.Unlock()
	}()
	if err := n.nc.PublishRequest(directGetPrefix+queueStream, n.replies.prefix+token, req); err != nil {
		return nil, false, fmt.Errorf("cluster: read %s: %w", subject, err)
	}
	var out []queued
	for len(out) < limit {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-ctx.Done():
			return out, false, fmt.Errorf("cluster: read %s: %w", subject, ctx.Err())
		}
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			switch m.Header.Get("Status") {
			case "204", "404": // end of the batch; nothing (more) stored
				return out, true, nil
			default:
				return out, false, fmt.Errorf("%w: %s %s %s", errQueueRead, subject, m.Header.Get("Status"), m.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(m.Header.Get(nats.JSSequence), 10, 64)
		if err != nil || m.Header.Get(nats.JSSubject) != subject {
			return out, false, fmt.Errorf("%w: %s: an answer without its sequence or with subject %q", errQueueRead, subject, m.Header.Get(nats.JSSubject))
		}
		out = append(out, queued{seq: seq, data: m.Data})
		if m.Header.Get(numPendingHeader) == "" {
			return out, false, nil // a server that does not batch: one message per request
		}
	}
	return out, false, nil
}

// replies hands the answers of queue reads, several messages each, to the
// read waiting for them, through one subscription of the node: a
// subscription per read was a SUB and an UNSUB sent to every NATS server,
// and made delivering one message to each of 10,000 sessions 3.5 times
// slower than one GetMsg each.
type replies struct {
	prefix  string // <inbox>. ; a read's answers come to prefix + its token
	next    atomic.Uint64
	mu      sync.Mutex
	waiting map[string]chan *nats.Msg
}

// startReplies subscribes to the node's reply inbox.
func (n *Node) startReplies() error {
	r := &replies{prefix: nats.NewInbox() + ".", waiting: map[string]chan *nats.Msg{}}
	sub, err := n.nc.Subscribe(r.prefix+"*", func(m *nats.Msg) {
		r.mu.Lock()
		ch := r.waiting[m.Subject[len(r.prefix):]]
		r.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default: // more than asked for: the read has what it wanted
			}
		}
	})
	if err != nil {
		return fmt.Errorf("cluster: subscribe to replies: %w", err)
	}
	n.replies = r
	n.stop = append(n.stop, func() { _ = sub.Unsubscribe() })
	return nil
}

// numPendingHeader is on every message of a batched answer.
const numPendingHeader = "Nats-Num-Pending"

// directGetPrefix is the subject of a stream's direct get, before the
// stream's name.
const directGetPrefix = "$JS.API.DIRECT.GET."
