package limits

import "sync/atomic"

// Stats are counters since the hook was created, by reason, for metrics.
type Stats struct {
	// RefusedBusy counts CONNECTs refused by the overload guard.
	RefusedBusy uint64
	// RefusedClientID counts CONNECTs refused for the client identifier's
	// length or pattern.
	RefusedClientID uint64
	// Throttled counts PUBLISH packets the hook delayed to keep a client to
	// its rate.
	Throttled uint64
	// RateDisconnects counts clients disconnected for their publish rate.
	RateDisconnects uint64
	// TopicTooLong and TopicTooDeep count clients disconnected for a topic
	// name (PUBLISH) or filter (SUBSCRIBE), or refused at CONNECT for a will
	// topic, over MaxTopicLength or MaxTopicLevels.
	TopicTooLong, TopicTooDeep uint64
	// TooManySubscriptions counts clients disconnected for a SUBSCRIBE that
	// would take them over MaxSubscriptions.
	TooManySubscriptions uint64
	// PublishWildcard counts clients disconnected for '+' or '#' in a
	// PUBLISH topic name, or refused for one in a will topic.
	PublishWildcard uint64
}

type counters struct {
	refusedBusy, refusedClientID            atomic.Uint64
	throttled, rateDisconnects              atomic.Uint64
	topicTooLong, topicTooDeep, tooManySubs atomic.Uint64
	publishWildcard                         atomic.Uint64
}

// topic counts a topic violation.
func (c *counters) topic(v violation) {
	switch v {
	case topicTooLong:
		c.topicTooLong.Add(1)
	case topicTooDeep:
		c.topicTooDeep.Add(1)
	case topicWildcard:
		c.publishWildcard.Add(1)
	}
}

// Stats returns a snapshot of the counters. Each counter is read
// atomically, but not all of them at the same instant.
func (h *Hook) Stats() Stats {
	c := &h.stats
	return Stats{
		RefusedBusy:          c.refusedBusy.Load(),
		RefusedClientID:      c.refusedClientID.Load(),
		Throttled:            c.throttled.Load(),
		RateDisconnects:      c.rateDisconnects.Load(),
		TopicTooLong:         c.topicTooLong.Load(),
		TopicTooDeep:         c.topicTooDeep.Load(),
		TooManySubscriptions: c.tooManySubs.Load(),
		PublishWildcard:      c.publishWildcard.Load(),
	}
}
