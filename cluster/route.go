package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A message for other nodes goes to each node with a matching subscription
// (the interest index), on subject
//
//	ferry.n.<node>.<0|1>.<origin node>.<topic tokens>
//
// QoS 0 as a core NATS message; QoS 1 and 2 through the FERRY_ROUTE stream
// (1), whose write the publisher's PUBACK/PUBREC waits for, so a message
// acknowledged is stored on a quorum of NATS servers. Each node reads its
// own subjects of the stream with one durable consumer, in order, and
// acknowledges a message once it is handed to its subscribers; a node that
// was down finds its messages waiting. Topics too long for a subject
// travel under the token "%long" (the topic is always in the message).

// maxSubjectTopic is the longest escaped topic put in a subject.
const maxSubjectTopic = 1024

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// subject returns the subject of a message for node.
func (n *Node) subject(node string, durable bool, topic string) string {
	b := make([]byte, 0, len(subjectPrefix)+len(node)+len(n.cfg.NodeID)+len(topic)+8)
	b = append(b, subjectPrefix...)
	b = append(b, node...)
	if durable {
		b = append(b, ".1."...)
	} else {
		b = append(b, ".0."...)
	}
	b = append(b, n.cfg.NodeID...)
	b = append(b, '.')
	start := len(b)
	b = appendTopic(b, topic)
	if len(b)-start > maxSubjectTopic {
		b = append(b[:start], "%long"...)
	}
	return string(b)
}

// hook is the node's MQTT hook: it sends each message published here to
// the other nodes that want it, and retained messages to the bucket.
type hook struct {
	mqtt.HookBase
	n *Node
}

// Hook returns the hook that routes messages to other nodes.
func (n *Node) Hook() mqtt.Hook { return n.hook }

// SessionHook returns the hook that keeps sessions and their queues in
// JetStream: it replaces the single node's storage hook.
func (n *Node) SessionHook() mqtt.Hook { return &sessionHook{ss: n.sessions} }

func (h *hook) ID() string { return "ferry-cluster" }

func (h *hook) Provides(b byte) bool { return b == mqtt.OnRoute || b == mqtt.OnSelectSubscribers }

// OnRoute forwards pk. Messages other nodes sent here (the relays) are not
// sent on; $SYS messages are each node's own.
func (h *hook) OnRoute(cl *mqtt.Client, pk packets.Packet, _ *mqtt.Route) error {
	n := h.n
	if cl.Net.Relay || strings.HasPrefix(pk.TopicName, mqtt.SysPrefix) || n.closed.Load() {
		return nil
	}
	var errs []error
	if pk.FixedHeader.Retain && n.srv.Options.Capabilities.RetainAvailable != 0 {
		f, err := n.retained.store(&pk)
		if err == nil {
			h.hold(cl, futureWaiter{f})
		} else {
			errs = append(errs, fmt.Errorf("retain %q: %w", pk.TopicName, err))
		}
	}
	nodes := n.interest.nodesFor(pk.TopicName)
	shares := n.shareTargets(&pk)
	if len(nodes) == 0 && len(shares) == 0 {
		n.shared.queued.Delete(pk.PublishID)
		return h.failed(cl, errs)
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer bufPool.Put(buf)
	buf.Reset()
	if err := encodeMessage(buf, &pk); err != nil {
		return fmt.Errorf("cluster: encode: %w", err)
	}
	frame := buf.Len()
	durable := pk.FixedHeader.Qos > 0
	var queued map[string][]string
	var known uint64
	if v, ok := n.shared.queued.LoadAndDelete(pk.PublishID); ok {
		qf := v.(*queuedFor)
		queued, known = qf.byNode, qf.known
	}
	send := func(node string, info routeInfo) {
		buf.Truncate(frame)
		info.Queued = queued[node]
		info.Known = known
		if len(info.Shares) > 0 || len(info.Queued) > 0 || info.Known > 0 {
			appendRouteInfo(buf, info)
		}
		subj := n.subject(node, durable, pk.TopicName)
		if !durable {
			if err := n.nc.Publish(subj, buf.Bytes()); err != nil {
				n.forwardFailed.Add(1)
				return // QoS 0: at most once
			}
			n.forwarded.Add(1)
			return
		}
		if n.batched(cl, node, buf.Bytes()) {
			return
		}
		// The frame is copied: the async publish keeps it until acked.
		f, err := n.js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: bytes.Clone(buf.Bytes())}, n.storeOpts...)
		if err != nil {
			errs = append(errs, fmt.Errorf("to node %s: %w", node, err))
			return
		}
		n.forwarded.Add(1)
		h.hold(cl, futureWaiter{f})
	}
	for node := range nodes {
		send(node, routeInfo{Shares: shares[node]})
	}
	for node, groups := range shares {
		if _, plain := nodes[node]; !plain {
			send(node, routeInfo{Shares: groups, NoPlain: true})
		}
	}
	return h.failed(cl, errs)
}

// hold makes the publisher's acknowledgement wait for w; a publisher whose
// acknowledgement the engine cannot hold (the inline client: the bridge's
// ingress) waits here.
func (h *hook) hold(cl *mqtt.Client, w mqtt.AckWaiter) {
	if !cl.HoldAck(w) {
		if err := w.Wait(); err != nil {
			h.n.forwardFailed.Add(1)
			h.n.log.Warn("cluster: message not stored", "client", cl.ID, "err", err)
		}
	}
}

// failed holds the acknowledgement on a failed write: a QoS 1/2 publish
// whose copy for another node, or whose retained message, could not be
// written is not acknowledged, and the engine closes the connection so the
// client sends it again.
func (h *hook) failed(cl *mqtt.Client, errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	h.n.forwardFailed.Add(uint64(len(errs)))
	err := fmt.Errorf("cluster: %w", errors.Join(errs...))
	h.n.log.Warn("cluster: message not sent to the cluster", "client", cl.ID, "err", err)
	h.hold(cl, errWaiter{err})
	return nil
}

// errWaiter is a write that failed before it started.
type errWaiter struct{ err error }

func (w errWaiter) Wait() error { return w.err }
func (w errWaiter) Ready() bool { return true }

// futureWaiter is a JetStream write as an AckWaiter.
type futureWaiter struct{ f jetstream.PubAckFuture }

func (w futureWaiter) Wait() error {
	select {
	case <-w.f.Ok():
		return nil
	case err := <-w.f.Err():
		return err
	}
}

// Ready peeks at the future's channels, which hold one value once it is
// done.
func (w futureWaiter) Ready() bool { return len(w.f.Ok()) > 0 || len(w.f.Err()) > 0 }

// startIntake subscribes to this node's QoS 0 subject and consumes its
// QoS 1/2 subjects of FERRY_ROUTE.
func (n *Node) startIntake(ctx context.Context) error {
	own := subjectPrefix + n.cfg.NodeID
	sub, err := n.nc.Subscribe(own+".0.>", func(m *nats.Msg) { n.deliver(0, m.Data) })
	if err != nil {
		return fmt.Errorf("cluster: subscribe %s: %w", own, err)
	}
	// Generous limits: beyond them NATS drops (QoS 0 only travels here).
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	n.stop = append(n.stop, func() { _ = sub.Unsubscribe() })

	var cons jetstream.Consumer
	err = retry(ctx, n.log, "create consumer on "+routeStream, func(ctx context.Context) error {
		var err error
		cons, err = n.js.CreateOrUpdateConsumer(ctx, routeStream, jetstream.ConsumerConfig{
			Durable:       "node-" + n.cfg.NodeID,
			FilterSubject: own + ".1.>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       30 * time.Second,
			MaxAckPending: 65536,
			Replicas:      n.cfg.Replicas,
		})
		return err
	})
	if err != nil {
		return err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := eachFrame(m.Data(), func(f []byte) { n.deliver(1, f) }); err != nil {
			n.malformed.Add(1)
			n.log.Warn("cluster: dropping the rest of a malformed batch from NATS", "err", err)
		}
		if err := m.Ack(); err != nil && n.ctx.Err() == nil {
			n.log.Debug("cluster: ack", "err", err)
		}
	}, jetstream.PullMaxMessages(1024), jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if n.ctx.Err() == nil {
				n.log.Warn("cluster: consuming "+routeStream, "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("cluster: consume %s: %w", routeStream, err)
	}
	n.stop = append(n.stop, cc.Stop)
	return nil
}

// A pull request the consumer's leader did not take (no responders: the
// consumer just created, or its leader being elected after a server
// died) is sent again only when the client misses two heartbeats; with
// the client's default (15 s) a node took nothing from FERRY_ROUTE for
// 30 s after such an error (a shared group's member on that node got no
// message for 20 s in TestClusterSharedGroup on a busy machine).
const (
	pullExpiry    = 4 * time.Second
	pullHeartbeat = time.Second
)

// deliver hands a message from another node to this node's subscribers,
// through relay client i (0: QoS 0, 1: QoS 1/2), one at a time each.
func (n *Node) deliver(i int, data []byte) {
	data, info := splitRouteInfo(data)
	pk, err := decodeMessage(data)
	if err != nil {
		n.malformed.Add(1)
		n.log.Warn("cluster: dropping a malformed message from NATS", "err", err)
		return
	}
	n.received.Add(1)
	relay := n.relay0
	if i == 1 {
		relay = n.relay1
	}
	n.shared.relay[i].Store(&info)
	defer n.shared.relay[i].Store(nil)
	if err := n.srv.InjectPacket(relay, pk); err != nil {
		n.log.Warn("cluster: delivering a message from another node", "topic", pk.TopicName, "err", err)
	}
}
