package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// retained keeps every node's retained messages equal to the retained
// bucket. A node that retains a message writes it to the bucket (before
// the publisher's acknowledgement) and sets it locally at once; every node,
// the writer included, then applies the bucket's updates in the bucket's
// order, so two nodes retaining on one topic at once end with the same,
// last written, message.
type retained struct {
	n *Node

	mu     sync.Mutex
	hashed map[string]string // key -> topic, for topics too long to be a key
}

func newRetained(n *Node) *retained { return &retained{n: n, hashed: map[string]string{}} }

// maxKeyTopic is the longest topic whose key is the topic itself (base64):
// a longer one is keyed by its hash, which keeps the subject short.
const maxKeyTopic = 512

// key is the bucket key of topic: "t." and the topic in URL base64, or
// "h." and its SHA-256 when the topic is long.
func retainedKey(topic string) string {
	if len(topic) <= maxKeyTopic {
		return "t." + base64.RawURLEncoding.EncodeToString([]byte(topic))
	}
	h := sha256.Sum256([]byte(topic))
	return "h." + hex.EncodeToString(h[:])
}

// store writes pk (a retained PUBLISH; an empty payload clears the topic)
// to the bucket: a KV put is a publish on the bucket's subject, so it goes
// out asynchronously like any other message, and the returned future says
// when it is stored.
func (r *retained) store(pk *packets.Packet) (jetstream.PubAckFuture, error) {
	subject := "$KV." + retainedBucket + "." + retainedKey(pk.TopicName)
	m := nats.NewMsg(subject)
	if len(pk.Payload) == 0 {
		m.Header.Set("KV-Operation", "DEL")
		m.Data = []byte(pk.TopicName)
	} else {
		var buf bytes.Buffer
		if err := encodeMessage(&buf, pk); err != nil {
			return nil, err
		}
		m.Data = buf.Bytes()
	}
	return r.n.js.PublishMsgAsync(m, r.n.storeOpts...)
}

// start loads the bucket into the topic index and follows it.
func (r *retained) start(ctx context.Context) error {
	w, err := r.n.retainedKV.WatchAll(r.n.ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", retainedBucket, err)
	}
	for initial := true; initial; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("cluster: watch %s ended", retainedBucket)
			}
			if e == nil {
				initial = false
				continue
			}
			r.apply(e)
		case <-ctx.Done():
			_ = w.Stop()
			return fmt.Errorf("cluster: load %s: %w", retainedBucket, ctx.Err())
		}
	}
	r.n.wg.Add(1)
	go func() {
		defer r.n.wg.Done()
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					r.apply(e)
				}
			case <-r.n.ctx.Done():
				return
			}
		}
	}()
	return nil
}

// apply sets or clears one retained message in the topic index.
func (r *retained) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	var pk packets.Packet
	if e.Operation() == jetstream.KeyValuePut {
		var err error
		if pk, err = decodeMessage(e.Value()); err != nil {
			r.n.malformed.Add(1)
			r.n.log.Warn("cluster: ignoring a malformed retained message", "key", key, "err", err)
			return
		}
		pk.FixedHeader.Retain = true
		if key[0] == 'h' {
			r.mu.Lock()
			r.hashed[key] = pk.TopicName
			r.mu.Unlock()
		}
	} else {
		topic, ok := r.topicOf(key, e.Value())
		if !ok {
			return
		}
		pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	}
	r.n.srv.Topics.RetainMessage(pk)
	atomic.StoreInt64(&r.n.srv.Info.Retained, int64(r.n.srv.Topics.Retained.Len()))
	r.n.retainedSynced.Add(1)
}

// topicOf is the topic of a delete marker's key.
func (r *retained) topicOf(key string, value []byte) (string, bool) {
	if len(key) > 2 && key[:2] == "t." {
		b, err := base64.RawURLEncoding.DecodeString(key[2:])
		return string(b), err == nil
	}
	if len(value) > 0 {
		return string(value), true // our own markers carry the topic
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.hashed[key]
	delete(r.hashed, key)
	return t, ok
}

// DeleteRetained clears topic's retained message on every node, as an
// empty retained publish would, without delivering anything.
func (n *Node) DeleteRetained(ctx context.Context, topic string) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	f, err := n.retained.store(&pk)
	if err != nil {
		return fmt.Errorf("cluster: delete retained %q: %w", topic, err)
	}
	select {
	case <-f.Ok():
		n.srv.Topics.RetainMessage(pk)
		return nil
	case err := <-f.Err():
		return fmt.Errorf("cluster: delete retained %q: %w", topic, err)
	case <-ctx.Done():
		return fmt.Errorf("cluster: delete retained %q: %w", topic, ctx.Err())
	}
}
