package auth

import "sync/atomic"

// Stats are counters since the hook was created, for metrics.
type Stats struct {
	// Per authentication method: Success counts connections it accepted;
	// Failure counts refused connections in which it was tried.
	Anonymous, Password, JWT, HTTP, TLS MethodStats
	// Refused counts refused connections, whatever the reason.
	Refused uint64
	// TakeoverRefused counts connections refused because their client id
	// names a session of another identity.
	TakeoverRefused uint64
	// ACLDenied counts denied ACL checks.
	ACLDenied ACLStats
}

// MethodStats counts the outcomes of one authentication method.
type MethodStats struct {
	Success, Failure uint64
}

// ACLStats counts ACL denials. mochi checks SUBSCRIBE filters and delivered
// messages through the same call, so Subscribe counts denied wildcard or
// shared subscriptions, and Read counts denied deliveries and denied
// subscriptions to a single topic.
type ACLStats struct {
	Publish, Subscribe, Read uint64
}

type methodCounters struct {
	success, failure atomic.Uint64
}

type counters struct {
	anonymous, password, jwt, http, tls methodCounters
	refused, takeover                   atomic.Uint64
	aclPublish, aclSubscribe, aclRead   atomic.Uint64
}

func (c *counters) method(m string) *methodCounters {
	switch m {
	case methodPassword:
		return &c.password
	case methodJWT:
		return &c.jwt
	case methodHTTP:
		return &c.http
	case methodTLS:
		return &c.tls
	}
	return &c.anonymous
}

// Stats returns a snapshot of the counters. Each counter is read
// atomically, but not all of them at the same instant.
func (h *Hook) Stats() Stats {
	c := &h.stats
	m := func(mc *methodCounters) MethodStats {
		return MethodStats{Success: mc.success.Load(), Failure: mc.failure.Load()}
	}
	return Stats{
		Anonymous: m(&c.anonymous), Password: m(&c.password), JWT: m(&c.jwt),
		HTTP: m(&c.http), TLS: m(&c.tls),
		Refused: c.refused.Load(), TakeoverRefused: c.takeover.Load(),
		ACLDenied: ACLStats{
			Publish: c.aclPublish.Load(), Subscribe: c.aclSubscribe.Load(), Read: c.aclRead.Load(),
		},
	}
}
