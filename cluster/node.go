// Package cluster makes Ferry nodes one broker over NATS JetStream: a
// message published on any node reaches the matching subscribers on every
// node, and retained messages are the same everywhere. NATS runs embedded
// in each node (clustered through routes) or is an existing cluster
// reached by URL. Nothing here is a consensus protocol of Ferry's own:
// what must survive a node is written to replicated JetStream streams and
// key-value buckets. See docs/cluster.md.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream names. Buckets and streams are shared by every node.
const (
	interestBucket = "ferry_interest" // node.filterhash -> filter: which node subscribes to what
	retainedBucket = "ferry_retained" // topic -> retained message
	nodesBucket    = "ferry_nodes"    // node -> heartbeat; entries expire with the node
	routeStream    = "FERRY_ROUTE"    // QoS 1/2 messages on their way to a node

	subjectPrefix = "ferry.n." // ferry.n.<node>.<0|1>.<origin>.<topic tokens>
)

// Timings.
const (
	heartbeatEvery = time.Second
	// nodeTTL is how long a node's heartbeat lasts in the nodes bucket:
	// a node silent for longer is no longer a member.
	nodeTTL = 5 * time.Second
	// routeMaxAge bounds how long a message waits in FERRY_ROUTE for a
	// node that is down.
	routeMaxAge = time.Hour
	// publishTimeout bounds a JetStream write: a publisher whose message
	// could not be stored in time loses its connection without an
	// acknowledgement and sends the message again.
	publishTimeout = 5 * time.Second
	// A write no stream took (no responders: its leader being elected) is
	// not sent again: the publisher loses its connection without an
	// acknowledgement and sends it again, with the messages after it.
	// Sent again by the client library (by default twice, 250 ms apart),
	// it was stored after newer messages of the same publisher that the
	// new leader took at once, and a subscriber got them out of order
	// with no resend to explain it (TestClusterRollingRestart).
	storeRetryAttempts = 0
	// maxPendingWrites bounds the JetStream writes in flight per node;
	// beyond it publishers wait (back-pressure).
	maxPendingWrites = 8192
)

// Stats are the node's counters since it started.
type Stats struct {
	// Forwarded and Received count messages sent to and taken from other
	// nodes, one per node.
	Forwarded, Received uint64
	// ForwardFailed counts messages a write to NATS failed for.
	ForwardFailed uint64
	// Malformed counts frames from NATS that did not decode.
	Malformed uint64
	// RetainedSynced counts retained messages set or cleared from the bucket.
	RetainedSynced uint64
	// Queued counts messages appended to persistent sessions' queues.
	Queued uint64
}

// Member is a node of the cluster as its last heartbeat shows it.
type Member struct {
	ID          string    `json:"id"`
	Connections int64     `json:"connections"`
	Started     time.Time `json:"started"`
	Seen        time.Time `json:"-"`
}

// Node is this Ferry's membership of the cluster.
type Node struct {
	cfg Config
	log *slog.Logger
	srv *mqtt.Server

	ns *natsserver.Server // nil when NATS is reached by URL
	nc *nats.Conn
	js jetstream.JetStream

	interestKV jetstream.KeyValue
	retainedKV jetstream.KeyValue
	nodesKV    jetstream.KeyValue

	relay0, relay1 *mqtt.Client // inject other nodes' messages: QoS 0, QoS 1/2
	willClient     *mqtt.Client // publishes wills, as a client of this node

	interest *interest
	retained *retained
	sessions *sessions
	hook     *hook
	shared   *shared

	// QueueLimit bounds the messages queued for one persistent session
	// (limits.max_queued_messages); the oldest are dropped beyond it. Set
	// before Start; 0: unbounded.
	QueueLimit int64

	members  atomic.Pointer[map[string]Member]
	lastBeat atomic.Int64 // unix nanos of the last heartbeat written
	replies  *replies     // answers of queue reads (readQueue)
	// beatFailed is when a heartbeat of this node was last not stored
	// (unix nanos; 0: never).
	beatFailed atomic.Int64
	// storeOpts are the options of every replicated write a publisher's
	// acknowledgement waits for (storeRetryAttempts).
	storeOpts []jetstream.PublishOpt
	beatError atomic.Pointer[string]
	started   time.Time

	forwarded, received, forwardFailed, malformed, retainedSynced, queued atomic.Uint64

	batches sync.Map // *mqtt.Client -> *clientBatches, during a publisher's run (batch.go)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stop   []func()
	closed atomic.Bool
}

// New prepares a node for srv; cfg must have its defaults and be valid.
// Start connects it.
func New(cfg Config, srv *mqtt.Server, log *slog.Logger) *Node {
	n := &Node{cfg: cfg, log: log, srv: srv,
		storeOpts: []jetstream.PublishOpt{jetstream.WithRetryAttempts(storeRetryAttempts)}}
	n.relay0 = srv.NewClient(nil, mqtt.LocalListener, "ferry-cluster-relay-0", true)
	n.relay1 = srv.NewClient(nil, mqtt.LocalListener, "ferry-cluster-relay-1", true)
	for _, cl := range []*mqtt.Client{n.relay0, n.relay1} {
		cl.Net.Relay = true
		cl.Properties.ProtocolVersion = 5
	}
	n.willClient = srv.NewClient(nil, mqtt.LocalListener, "ferry-cluster-will", true)
	n.willClient.Properties.ProtocolVersion = 5
	srv.SetWillPublisher(n.engineWill)
	n.interest = newInterest(n)
	n.retained = newRetained(n)
	n.sessions = newSessions(n)
	n.hook = &hook{n: n}
	n.shared = &shared{n: n}
	empty := map[string]Member{}
	n.members.Store(&empty)
	srv.Topics.SetInterest(n.interest.changed)
	return n
}

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Start starts the embedded NATS server (if any), connects, creates the
// cluster's buckets and streams, loads the retained messages and the
// other nodes' subscriptions, and starts taking messages. It must be
// called before the MQTT server serves; it fails, naming what is wrong,
// when NATS or a JetStream quorum is not there within cfg.StartTimeout.
func (n *Node) Start(ctx context.Context) error {
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.started = time.Now()
	ctx, cancel := context.WithTimeout(ctx, n.cfg.StartTimeout)
	defer cancel()
	err := n.start(ctx)
	if err != nil {
		n.Close()
		if ctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (after %s)", err, n.cfg.StartTimeout)
		}
	}
	return err
}

func (n *Node) start(ctx context.Context) error {
	if n.cfg.NATS.Embedded != nil {
		ns, err := startEmbedded(n.cfg, n.log)
		if err != nil {
			return err
		}
		n.ns = ns
	}
	nc, err := connect(n.cfg, n.ns, n.log, func() {})
	if err != nil {
		return err
	}
	n.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPendingWrites),
		jetstream.WithPublishAsyncTimeout(publishTimeout), jetstream.WithPublishAsyncAckHandler(n.stored))
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.js = js
	if err := waitJetStream(ctx, js); err != nil {
		return err
	}
	if err := n.createResources(ctx); err != nil {
		return err
	}
	// The buckets may have no leader yet right after creation (seen on a
	// busy machine: no response from stream), like a cluster re-electing.
	if err := retry(ctx, n.log, "first heartbeat", n.beat); err != nil {
		return err
	}
	if err := n.watchMembers(ctx); err != nil {
		return err
	}
	if err := n.retained.start(ctx); err != nil {
		return err
	}
	if err := n.sessions.start(ctx); err != nil {
		return err
	}
	if err := n.sessions.serveRelease(); err != nil {
		return err
	}
	if err := n.servePing(); err != nil {
		return err
	}
	if err := n.startReplies(); err != nil {
		return err
	}
	if err := n.interest.start(ctx); err != nil {
		return err
	}
	if err := n.startIntake(ctx); err != nil {
		return err
	}
	n.wg.Add(1)
	go n.heartbeats()
	n.log.Info("cluster node started", "node", n.cfg.NodeID, "replicas", n.cfg.Replicas, "nats", n.nc.ConnectedUrlRedacted(), "members", len(n.Members()))
	return nil
}

// createResources creates (or checks) the cluster's buckets and stream,
// all at once: each replicated one answers once its servers have elected
// a leader, which takes NATS seconds.
func (n *Node) createResources(ctx context.Context) error {
	r := n.cfg.Replicas
	kv := func(cfg jetstream.KeyValueConfig, out *jetstream.KeyValue) func() error {
		return func() error {
			return retry(ctx, n.log, fmt.Sprintf("create bucket %s (replicas %d)", cfg.Bucket, r), func(ctx context.Context) error {
				b, err := n.js.CreateOrUpdateKeyValue(ctx, cfg)
				*out = b
				return err
			})
		}
	}
	steps := []func() error{
		kv(jetstream.KeyValueConfig{Bucket: interestBucket, History: 1, Replicas: r, Storage: jetstream.FileStorage}, &n.interestKV),
		kv(jetstream.KeyValueConfig{Bucket: retainedBucket, History: 1, Replicas: r, Storage: jetstream.FileStorage}, &n.retainedKV),
		kv(jetstream.KeyValueConfig{Bucket: nodesBucket, History: 1, Replicas: r, Storage: jetstream.FileStorage, TTL: nodeTTL}, &n.nodesKV),
		kv(jetstream.KeyValueConfig{Bucket: sessionsBucket, History: 1, Replicas: r, Storage: jetstream.FileStorage}, &n.sessions.kv),
		func() error {
			return retry(ctx, n.log, fmt.Sprintf("create stream %s (replicas %d)", queueStream, r), func(ctx context.Context) error {
				st, err := n.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
					Name:              queueStream,
					Subjects:          []string{queuePrefix + ">"},
					Retention:         jetstream.LimitsPolicy,
					Storage:           jetstream.FileStorage,
					Replicas:          r,
					MaxMsgsPerSubject: n.QueueLimit,
					Discard:           jetstream.DiscardOld,
					// Queues are read with batched direct gets (readQueue).
					AllowDirect: true,
				})
				n.sessions.stream = st
				return err
			})
		},
		func() error {
			return retry(ctx, n.log, fmt.Sprintf("create stream %s (replicas %d)", routeStream, r), func(ctx context.Context) error {
				_, err := n.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
					Name:      routeStream,
					Subjects:  []string{subjectPrefix + "*.1.>"},
					Retention: jetstream.WorkQueuePolicy,
					Storage:   jetstream.FileStorage,
					Replicas:  r,
					MaxAge:    routeMaxAge,
					Discard:   jetstream.DiscardOld,
				})
				return err
			})
		},
	}
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, f := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stored is told of every asynchronous JetStream write that is stored: an
// append to a session's queue wakes the session's node.
func (n *Node) stored(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	if key, ok := strings.CutPrefix(m.Subject, queuePrefix); ok {
		var seq []byte
		if ack != nil {
			seq = strconv.AppendUint(nil, ack.Sequence, 10)
		}
		_ = n.nc.Publish(wakePrefix+key, seq)
	}
}

// Ready reports why the node cannot serve as part of the cluster, or nil:
// NATS unreachable, or JetStream not taking the node's heartbeats.
func (n *Node) Ready() error {
	if n.nc == nil {
		return errors.New("cluster: not started")
	}
	if st := n.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("cluster: NATS %s", st)
	}
	if last := n.lastBeat.Load(); time.Since(time.Unix(0, last)) > nodeTTL {
		why := "no heartbeat stored"
		if e := n.beatError.Load(); e != nil {
			why = *e
		}
		return fmt.Errorf("cluster: JetStream not storing heartbeats for %s: %s", time.Since(time.Unix(0, last)).Round(time.Second), why)
	}
	return nil
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{Forwarded: n.forwarded.Load(), Received: n.received.Load(), ForwardFailed: n.forwardFailed.Load(),
		Malformed: n.malformed.Load(), RetainedSynced: n.retainedSynced.Load(), Queued: n.queued.Load()}
}

// Close stops taking and sending messages, leaves the membership and
// closes NATS (and the embedded server). The node's subscriptions stay in
// the interest bucket: messages for it wait in FERRY_ROUTE while it
// restarts. Safe to call more than once.
func (n *Node) Close() {
	if !n.closed.CompareAndSwap(false, true) {
		return
	}
	if n.cancel != nil {
		n.cancel()
	}
	for i := len(n.stop) - 1; i >= 0; i-- {
		n.stop[i]()
	}
	n.wg.Wait()
	if n.nc != nil {
		if n.nodesKV != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = n.nodesKV.Delete(ctx, n.cfg.NodeID)
			cancel()
		}
		_ = n.nc.FlushTimeout(time.Second)
		n.nc.Close()
	}
	if n.ns != nil {
		n.ns.Shutdown()
		n.ns.WaitForShutdown()
	}
}
