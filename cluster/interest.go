package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go/jetstream"
)

// interestLinger is how long a filter that lost its last subscriber here
// stays in the bucket: a client that unsubscribes and subscribes again, or
// another that subscribes as one leaves, is not left without messages
// while the other nodes learn of the change twice. Messages sent here
// meanwhile find no subscriber and are dropped.
const interestLinger = 5 * time.Second

// interest keeps the interest bucket true to this node's subscriptions,
// and an index of every other node's, which says where a message goes.
//
// A node's entry per filter is "<node>.<hash of filter>" -> filter, written
// when the filter gains its first subscriber here and deleted when it
// loses its last (TopicsIndex.SetInterest). Every node watches the bucket.
type interest struct {
	n    *Node
	kick chan struct{}

	mu        sync.Mutex
	want      map[string]struct{}  // this node's filters, as the topic index says
	goneAt    map[string]time.Time // filters no longer wanted, since when
	published map[string]string    // key -> filter in the bucket for this node

	rmu        sync.RWMutex
	remote     *mqtt.TopicsIndex // other nodes' filters; the "client" is the node id
	remoteKeys map[string]string // key -> filter, for deletes

	seen sync.Map // node -> time.Time it was last a member (sweepDead)
}

func newInterest(n *Node) *interest {
	return &interest{n: n, kick: make(chan struct{}, 1), want: map[string]struct{}{}, goneAt: map[string]time.Time{},
		published: map[string]string{}, remote: mqtt.NewTopicsIndex(), remoteKeys: map[string]string{}}
}

// local says whether filter stays with its node: $SYS is each node's own.
func local(filter string) bool {
	return strings.HasPrefix(filter, mqtt.SysPrefix)
}

// changed is the topic index's InterestFunc: under its lock, so it only
// records the change and wakes the writer.
func (in *interest) changed(filter string, added bool) {
	if local(filter) {
		return
	}
	in.mu.Lock()
	if added {
		in.want[filter] = struct{}{}
		delete(in.goneAt, filter)
	} else {
		delete(in.want, filter)
		in.goneAt[filter] = time.Now()
	}
	in.mu.Unlock()
	select {
	case in.kick <- struct{}{}:
	default:
	}
}

func (in *interest) key(filter string) string {
	h := sha256.Sum256([]byte(filter))
	return in.n.cfg.NodeID + "." + hex.EncodeToString(h[:12])
}

// start reads what a previous run of this node left in the bucket (the
// writer deletes what is no longer wanted), loads the other nodes'
// filters, and starts the writer.
func (in *interest) start(ctx context.Context) error {
	kv := in.n.interestKV
	lister, err := kv.ListKeysFiltered(ctx, in.n.cfg.NodeID+".>")
	if err != nil {
		return fmt.Errorf("cluster: list %s: %w", interestBucket, err)
	}
	for k := range lister.Keys() {
		in.published[k] = ""
	}
	_ = lister.Stop()

	w, err := kv.WatchAll(in.n.ctx)
	if err != nil {
		return fmt.Errorf("cluster: watch %s: %w", interestBucket, err)
	}
	for initial := true; initial; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("cluster: watch %s ended", interestBucket)
			}
			if e == nil {
				initial = false
				continue
			}
			in.apply(e)
		case <-ctx.Done():
			_ = w.Stop()
			return fmt.Errorf("cluster: load %s: %w", interestBucket, ctx.Err())
		}
	}
	in.n.wg.Add(2)
	go func() {
		defer in.n.wg.Done()
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					in.apply(e)
				}
			case <-in.n.ctx.Done():
				return
			}
		}
	}()
	go in.write()
	return nil
}

// apply takes another node's entry into the index.
func (in *interest) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	node, _, ok := strings.Cut(key, ".")
	if !ok || node == in.n.cfg.NodeID {
		return
	}
	in.rmu.Lock()
	defer in.rmu.Unlock()
	if old, had := in.remoteKeys[key]; had {
		in.remote.Unsubscribe(old, node)
		delete(in.remoteKeys, key)
	}
	if e.Operation() == jetstream.KeyValuePut {
		filter := string(e.Value())
		if !mqtt.IsValidFilter(filter, false) {
			in.n.log.Warn("cluster: ignoring an invalid filter in the interest bucket", "key", key, "filter", filter)
			return
		}
		in.remote.Subscribe(node, packets.Subscription{Filter: filter})
		in.remoteKeys[key] = filter
	}
}

// nodesFor returns the other nodes with a subscription matching topic.
// The map is shared with the index's cache: do not change it.
func (in *interest) nodesFor(topic string) map[string]packets.Subscription {
	in.rmu.RLock()
	defer in.rmu.RUnlock()
	return in.remote.SubscribersReadOnly(topic).Subscriptions
}

// write keeps the bucket equal to want, retrying what fails (NATS away)
// every second.
func (in *interest) write() {
	defer in.n.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		in.sync()
		select {
		case <-in.n.ctx.Done():
			return
		case <-in.kick:
		case <-t.C:
		}
	}
}

func (in *interest) sync() {
	in.mu.Lock()
	var puts map[string]string
	var dels []string
	for f := range in.want {
		k := in.key(f)
		if in.published[k] != f {
			if puts == nil {
				puts = map[string]string{}
			}
			puts[k] = f
		}
	}
	now := time.Now()
	for f, gone := range in.goneAt {
		if now.Sub(gone) >= interestLinger {
			if _, pub := in.published[in.key(f)]; !pub {
				delete(in.goneAt, f) // never written: nothing to delete
			}
		}
	}
	for k, f := range in.published {
		if _, ok := in.want[f]; ok && f != "" {
			continue
		}
		if gone, ok := in.goneAt[f]; ok && now.Sub(gone) < interestLinger {
			continue // it may come back at once: a client resubscribing, reconnecting
		}
		if puts[k] == "" {
			dels = append(dels, k)
		}
	}
	in.mu.Unlock()

	kv := in.n.interestKV
	for k, f := range puts {
		ctx, cancel := context.WithTimeout(in.n.ctx, 2*time.Second)
		_, err := kv.Put(ctx, k, []byte(f))
		cancel()
		if err != nil {
			in.failed("put", f, err)
			continue
		}
		in.mu.Lock()
		in.published[k] = f
		in.mu.Unlock()
	}
	for _, k := range dels {
		ctx, cancel := context.WithTimeout(in.n.ctx, 2*time.Second)
		err := kv.Delete(ctx, k)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			in.failed("delete", k, err)
			continue
		}
		in.mu.Lock()
		delete(in.goneAt, in.published[k])
		delete(in.published, k)
		in.mu.Unlock()
	}
}

func (in *interest) failed(op, what string, err error) {
	if in.n.ctx.Err() == nil {
		in.n.log.Warn("cluster: interest not written; retrying", "op", op, "filter", what, "err", err)
	}
}

// deadInterestAfter is how long a node may be gone before the other
// nodes delete its interest: until then, messages for it wait in
// FERRY_ROUTE for its restart.
const deadInterestAfter = time.Minute

// sweepDead deletes the interest of nodes gone for deadInterestAfter, so
// that messages stop being stored for a node that is not coming back. A
// node that comes back writes its interest again.
func (in *interest) sweepDead(now time.Time) {
	in.rmu.RLock()
	byNode := map[string][]string{}
	for key := range in.remoteKeys {
		node, _, _ := strings.Cut(key, ".")
		byNode[node] = append(byNode[node], key)
	}
	in.rmu.RUnlock()
	for node, keys := range byNode {
		if in.n.isMember(node) {
			in.seen.Store(node, now)
			continue
		}
		since := in.n.started
		if v, ok := in.seen.Load(node); ok {
			since = v.(time.Time)
		}
		if now.Sub(since) < deadInterestAfter {
			continue
		}
		in.n.log.Info("cluster: deleting the interest of a node gone", "node", node, "since", since, "filters", len(keys))
		for _, k := range keys {
			ctx, cancel := context.WithTimeout(in.n.ctx, 2*time.Second)
			err := in.n.interestKV.Delete(ctx, k)
			cancel()
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				in.failed("delete", k, err)
				break
			}
		}
	}
}
