package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/bridge"
)

// Receive implements bridge.Receiver: see the package doc. It returns
// ctx's error, or the first Redis error (the bridge restarts it with
// backoff).
func (c *Connector) Receive(ctx context.Context, h bridge.Handler) error {
	client, err := c.conn()
	if err != nil {
		return err
	}
	stream, group := c.cfg.Stream, c.cfg.Group
	err = client.XGroupCreateMkStream(ctx, stream, group, c.cfg.StartID).Err()
	if err != nil && !goredis.HasErrorPrefix(err, "BUSYGROUP") {
		return c.stop(ctx, fmt.Errorf("redis: create group %s on %s: %w", group, stream, err))
	}
	// First the entries this consumer read before a restart and never
	// acked, then new ones; pending ones go through XAUTOCLAIM.
	if err := c.readPending(ctx, client, h); err != nil {
		return c.stop(ctx, err)
	}
	interval := c.cfg.ClaimIdle / 2
	nextClaim := time.Now().Add(interval)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !time.Now().Before(nextClaim) {
			if err := c.claim(ctx, client, h); err != nil {
				return c.stop(ctx, err)
			}
			nextClaim = time.Now().Add(interval)
		}
		block := min(c.cfg.Block, max(time.Until(nextClaim), time.Millisecond))
		res, err := client.XReadGroup(ctx, &goredis.XReadGroupArgs{
			Group: group, Consumer: c.cfg.Consumer, Streams: []string{stream, ">"},
			Count: c.cfg.Count, Block: block,
		}).Result()
		if errors.Is(err, goredis.Nil) {
			continue
		}
		if err != nil {
			return c.stop(ctx, fmt.Errorf("redis: XREADGROUP %s: %w", stream, err))
		}
		for _, s := range res {
			for _, e := range s.Messages {
				if err := c.handle(ctx, client, h, e); err != nil {
					return c.stop(ctx, err)
				}
			}
		}
	}
}

// stop returns ctx's error when ctx ended (the error is its consequence),
// else err.
func (c *Connector) stop(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil && !bridge.IsPermanent(err) && !bridge.IsUnavailable(err) {
		err = classify(err)
	}
	return err
}

// readPending hands over the entries pending for this consumer.
func (c *Connector) readPending(ctx context.Context, client *goredis.Client, h bridge.Handler) error {
	start := "0"
	for {
		res, err := client.XReadGroup(ctx, &goredis.XReadGroupArgs{
			Group: c.cfg.Group, Consumer: c.cfg.Consumer, Streams: []string{c.cfg.Stream, start},
			Count: c.cfg.Count,
		}).Result()
		if errors.Is(err, goredis.Nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("redis: XREADGROUP %s pending: %w", c.cfg.Stream, err)
		}
		n := 0
		for _, s := range res {
			for _, e := range s.Messages {
				n++
				start = e.ID
				if err := c.handle(ctx, client, h, e); err != nil {
					return err
				}
			}
		}
		if n == 0 {
			return nil
		}
	}
}

// claim takes over every entry pending longer than claim_idle and hands
// it over.
func (c *Connector) claim(ctx context.Context, client *goredis.Client, h bridge.Handler) error {
	start := "0-0"
	for {
		msgs, next, err := client.XAutoClaim(ctx, &goredis.XAutoClaimArgs{
			Stream: c.cfg.Stream, Group: c.cfg.Group, Consumer: c.cfg.Consumer,
			MinIdle: c.cfg.ClaimIdle, Start: start, Count: c.cfg.Count,
		}).Result()
		if err != nil {
			return fmt.Errorf("redis: XAUTOCLAIM %s: %w", c.cfg.Stream, err)
		}
		for _, e := range msgs {
			c.log.Info("redis: claimed pending entry", "stream", c.cfg.Stream, "entry", e.ID)
			if err := c.handle(ctx, client, h, e); err != nil {
				return err
			}
		}
		if next == "0-0" || next == "" {
			return nil
		}
		start = next
	}
}

// handle hands one entry to h and XACKs it once h accepted it (or refused
// it permanently). A Redis error is returned; a handler error is not.
func (c *Connector) handle(ctx context.Context, client *goredis.Client, h bridge.Handler, e goredis.XMessage) error {
	m := entryMessage(c.cfg.Stream, e)
	err := h(ctx, m)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err == nil:
	case bridge.IsPermanent(err):
		c.log.Error("redis: entry refused, acked and dropped", "stream", c.cfg.Stream, "entry", e.ID, "err", err)
	default:
		// Left pending: claimed again after claim_idle.
		c.log.Warn("redis: entry not accepted, left pending", "stream", c.cfg.Stream, "entry", e.ID, "err", err)
		return nil
	}
	if err := client.XAck(ctx, c.cfg.Stream, c.cfg.Group, e.ID).Err(); err != nil {
		return fmt.Errorf("redis: XACK %s %s: %w", c.cfg.Stream, e.ID, err)
	}
	return nil
}

// entryMessage turns a stream entry into an ingress message: Payload from
// the payload field, the other fields as Headers, ID "<stream>-<entry id>".
func entryMessage(stream string, e goredis.XMessage) bridge.Message {
	m := bridge.Message{Subject: stream, ID: stream + "-" + e.ID, Headers: make(map[string][]string, len(e.Values))}
	if ms, _, ok := cutID(e.ID); ok {
		m.Created = time.UnixMilli(ms)
	}
	for k, v := range e.Values {
		s := fmt.Sprint(v)
		if k == "payload" {
			m.Payload = []byte(s)
			continue
		}
		m.Headers[k] = []string{s}
	}
	return m
}

// cutID splits an entry id "<ms>-<seq>" and returns its milliseconds.
func cutID(id string) (ms int64, seq string, ok bool) {
	var n int64
	for i := 0; i < len(id); i++ {
		if id[i] == '-' {
			return n, id[i+1:], i > 0
		}
		if id[i] < '0' || id[i] > '9' {
			return 0, "", false
		}
		n = n*10 + int64(id[i]-'0')
	}
	return 0, "", false
}
