package broker

import (
	"net"
	"sync"
	"time"
)

// ipLimiter bounds connections per remote IP address: how many at once and
// how fast new ones may come. It is checked at accept, before any TLS or
// MQTT work is done for the connection.
type ipLimiter struct {
	maxConns int     // 0 = no limit
	rate     float64 // new connections per second; 0 = no limit
	burst    float64

	mu  sync.Mutex
	ips map[string]*ipState
}

type ipState struct {
	conns  int
	tokens float64
	last   time.Time
}

// Refusal reasons, the label of ferry_connections_refused_total.
const (
	refusedPerIP     = "per_ip_connections"
	refusedPerIPRate = "per_ip_rate"
)

func newIPLimiter(maxConns int, rate float64) *ipLimiter {
	if maxConns <= 0 && rate <= 0 {
		return nil
	}
	return &ipLimiter{maxConns: maxConns, rate: rate, burst: max(1, rate), ips: map[string]*ipState{}}
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// admit counts a new connection from ip, or returns why it is refused.
func (l *ipLimiter) admit(ip string, now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.ips[ip]
	if st == nil {
		if len(l.ips) >= 1<<16 {
			l.sweep(now)
		}
		st = &ipState{tokens: l.burst, last: now}
		l.ips[ip] = st
	}
	if l.maxConns > 0 && st.conns >= l.maxConns {
		return refusedPerIP
	}
	if l.rate > 0 {
		st.tokens = min(l.burst, st.tokens+now.Sub(st.last).Seconds()*l.rate)
		st.last = now
		if st.tokens < 1 {
			return refusedPerIPRate
		}
		st.tokens--
	}
	st.conns++
	return ""
}

// release uncounts a connection admitted from ip.
func (l *ipLimiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.ips[ip]; st != nil && st.conns > 0 {
		st.conns--
	}
}

// sweep forgets addresses with no connection whose rate bucket has refilled.
func (l *ipLimiter) sweep(now time.Time) {
	for ip, st := range l.ips {
		if st.conns == 0 && (l.rate <= 0 || now.Sub(st.last).Seconds()*l.rate >= l.burst) {
			delete(l.ips, ip)
		}
	}
}
