package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/bridge"
)

// Receive implements bridge.Receiver: see the package doc. Each call owns
// one consumer-group client, closed (after committing what the broker
// accepted) before it returns. It returns ctx's error, a fetch error, or
// the error of a record the broker did not accept; the bridge calls it
// again after its backoff, and the new consumer resumes at the committed
// offset, i.e. at that record.
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	start := kgo.NewOffset().AtStart()
	if c.cfg.StartOffset == StartLatest {
		start = kgo.NewOffset().AtEnd()
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.cfg.Brokers...),
		kgo.ClientID("ferry-bridge-"+c.spec.Route),
		kgo.ConsumerGroup(c.cfg.Group),
		kgo.ConsumeTopics(c.cfg.allTopics()...),
		kgo.ConsumeResetOffset(start),
		// Only records marked after the broker accepted them are ever
		// committed (periodically, on revoke, and after each poll below).
		kgo.AutoCommitMarks(),
		// No rebalance between a poll and its commit: the commit is for
		// partitions this member still owns.
		kgo.BlockRebalanceOnPoll(),
		kgo.WithLogger(logger{c.log}),
	)
	if err != nil {
		return fmt.Errorf("kafka: consumer: %w", err)
	}
	defer c.closeConsumer(cl)
	for {
		fetches := cl.PollRecords(ctx, c.cfg.MaxPollRecords)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if fetches.IsClientClosed() {
			return errors.New("kafka: consumer closed")
		}
		var fetchErr error
		fetches.EachError(func(topic string, p int32, err error) {
			var loss *kgo.ErrDataLoss
			if errors.As(err, &loss) {
				// Informational: the consumer already reset its offset.
				c.log.Warn("kafka: data loss detected", "topic", topic, "partition", p, "err", err)
				return
			}
			if fetchErr == nil {
				fetchErr = fmt.Errorf("kafka: fetch %s[%d]: %w", topic, p, classify(err))
			}
		})
		handleErr := c.handle(ctx, cl, fetches, h)
		commitErr := c.commit(ctx, cl)
		cl.AllowRebalance()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case handleErr != nil:
			return handleErr
		case bridge.IsUnavailable(commitErr), commitErr == nil && bridge.IsUnavailable(fetchErr):
			// The cluster is away: the client reconnects by itself, and
			// this member stays in the group. A new one would wait for
			// the old one's session timeout (45 s) before it got the
			// partitions; the marks are committed after the next poll.
			c.log.Debug("kafka: cluster unavailable, consumer waits", "err", errors.Join(commitErr, fetchErr))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(unavailablePause):
			}
		case commitErr != nil:
			return commitErr
		case fetchErr != nil:
			return fetchErr
		}
	}
}

// unavailablePause is how long the consumer waits before it polls again
// after the cluster answered with an unavailable error.
const unavailablePause = 250 * time.Millisecond

// handle hands the polled records to h in order, marking each one the
// broker accepted (or refused permanently) for commit. At the first record
// refused otherwise it stops and returns the refusal: that record and
// every later one of this poll stay unmarked, so they are fetched again.
func (c *Connector) handle(ctx context.Context, cl *kgo.Client, fetches kgo.Fetches, h bridge.Handler) error {
	for it := fetches.RecordIter(); !it.Done(); {
		r := it.Next()
		m := recordMessage(r)
		err := h(ctx, m)
		switch {
		case err == nil:
			// Accepted: committed even when ctx ended meanwhile.
		case ctx.Err() != nil:
			return ctx.Err()
		case bridge.IsPermanent(err):
			c.log.Error("kafka: record refused, committed and dropped", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
		default:
			c.log.Warn("kafka: record not accepted, will be fetched again", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
			return fmt.Errorf("kafka: record %s not accepted: %w", m.ID, err)
		}
		cl.MarkCommitRecords(r)
	}
	return nil
}

// commit commits the marked offsets synchronously; it runs also when ctx
// ended, bounded by the timeout, so accepted records are not handed again.
func (c *Connector) commit(ctx context.Context, cl *kgo.Client) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
	defer cancel()
	if err := cl.CommitMarkedOffsets(cctx); err != nil {
		return fmt.Errorf("kafka: commit group %s: %w", c.cfg.Group, classify(err))
	}
	return nil
}

// closeConsumer leaves the group (bounded by the timeout; leaving commits
// the marked offsets once more) and closes the client.
func (c *Connector) closeConsumer(cl *kgo.Client) {
	cl.AllowRebalance()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	if err := cl.LeaveGroupContext(ctx); err != nil {
		c.log.Warn("kafka: leave group", "group", c.cfg.Group, "err", err)
	}
	cl.Close()
}

// recordMessage turns a record into an ingress message: Subject is the
// record's topic, Payload its value, Headers its headers (and the key as
// KeyHeader), ID "<topic>-<partition>-<offset>".
func recordMessage(r *kgo.Record) bridge.Message {
	m := bridge.Message{
		Subject: r.Topic,
		Payload: r.Value,
		ID:      r.Topic + "-" + strconv.FormatInt(int64(r.Partition), 10) + "-" + strconv.FormatInt(r.Offset, 10),
		Created: r.Timestamp,
		Headers: make(map[string][]string, len(r.Headers)+1),
	}
	if r.Key != nil {
		m.Headers[KeyHeader] = []string{string(r.Key)}
	}
	for _, hd := range r.Headers {
		m.Headers[hd.Key] = append(m.Headers[hd.Key], string(hd.Value))
	}
	return m
}
