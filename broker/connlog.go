package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
)

// connLogHook logs each client's connection and its end at info, as
// Mosquitto does by default: who (client id, username), where from (remote
// address, listener), which protocol, and why the connection ended. These
// lines are what an operator reads to tell a device that never arrived from
// one that was refused or keeps dropping. Refused connections are logged by
// serveConn, which sees mochi's verdict. A connection ended for a malformed
// packet or a protocol error is logged by mochi alone (refusedBadPacket).
type connLogHook struct {
	mqtt.HookBase
	log       *slog.Logger
	malformed func() // counts a connection ended for a bad packet
}

func (*connLogHook) ID() string { return "ferry-connlog" }

func (*connLogHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

// OnSessionEstablished runs once CONNACK has been sent.
func (h *connLogHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if c, ok := cl.Net.Conn.(*conn); ok {
		c.since.Store(time.Now().UnixNano())
		c.connected.Store(true)
	}
	h.log.Info("client connected", "client_id", cl.ID, "username", string(cl.Properties.Username),
		"listener", cl.Net.Listener, "remote", cl.Net.Remote, "protocol", protocolName(cl.Properties.ProtocolVersion),
		"clean", pk.Connect.Clean, "keepalive", cl.State.Keepalive)
}

// OnDisconnect runs when an established connection ends, for any reason.
func (h *connLogHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if refusedBadPacket(cl.StopCause(), err) {
		h.malformed()
		return
	}
	h.log.Info("client disconnected", "client_id", cl.ID, "username", string(cl.Properties.Username),
		"listener", cl.Net.Listener, "remote", cl.Net.Remote, "protocol", protocolName(cl.Properties.ProtocolVersion),
		"reason", endReason(cl.StopCause(), err))
}

// logConnectEnd logs a connection whose client was never connected:
// refused at CONNECT (bad credentials, a bad client id, server full) or gone
// before it. err is what mochi's handler returned.
func (b *Broker) logConnectEnd(c *conn, listenerName string, err error) {
	remote := c.RemoteAddr().String()
	cl := c.client.Load()
	if cl == nil || c.connected.Load() {
		if err != nil && cl == nil && refusedBadPacket(nil, err) {
			b.metrics.CountMalformed() // a CONNECT that did not decode
		} else if err != nil && cl == nil {
			b.log.Debug("connection ended before CONNECT", "listener", listenerName, "remote", remote, "err", err)
		}
		return
	}
	if refusedBadPacket(cl.StopCause(), err) {
		b.metrics.CountMalformed()
		return
	}
	b.log.Info("connection refused", "client_id", cl.ID, "username", string(cl.Properties.Username),
		"listener", listenerName, "remote", remote, "protocol", protocolName(cl.Properties.ProtocolVersion),
		"reason", endReason(cl.StopCause(), err))
}

// refusedBadPacket reports whether a connection ended for a malformed packet
// or a protocol error: mochi logs those itself, on one bounded line,
// rate-limited, so a client (or a fuzzer) sending garbage cannot flood the
// log. cause and err are as for endReason.
func refusedBadPacket(cause, err error) bool {
	if cause == nil {
		cause = err
	}
	return mqtt.BadPacket(cause)
}

// protocolName is the MQTT version as users know it.
func protocolName(v byte) string {
	switch v {
	case 3:
		return "3.1"
	case 4:
		return "3.1.1"
	case 5:
		return "5"
	}
	return "unknown"
}

// endReason says in words why a connection ended: the cause it was stopped
// with if any, else the error that ended its reading.
func endReason(cause, err error) string {
	if cause == nil {
		cause = err
	}
	var code packets.Code
	var ne net.Error
	switch {
	case cause == nil:
		return "closed"
	case errors.Is(cause, packets.CodeDisconnect):
		return "client sent DISCONNECT"
	case errors.Is(cause, packets.CodeDisconnectWillMessage):
		return "client sent DISCONNECT with will message"
	case errors.As(cause, &code):
		return code.Reason
	case errors.Is(cause, io.EOF), errors.Is(cause, io.ErrUnexpectedEOF):
		return "connection closed by client"
	case errors.As(cause, &ne) && ne.Timeout():
		return "keepalive timeout"
	}
	return cause.Error()
}

// handshake completes the TLS handshake of a tls listener's connection
// before mochi reads from it, so a failure is logged as one (a client
// without the right certificate, a plain-text client on the TLS port).
// limits.connect_timeout bounds it, and a shutdown ends it.
func (b *Broker) handshake(tc *tls.Conn, l *listener) bool {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Limits.ConnectTimeout)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-b.quit:
			cancel()
		case <-done:
		}
	}()
	err := tc.HandshakeContext(ctx)
	if err == nil {
		return true
	}
	l.handshakeFailed(tc.RemoteAddr().String(), err)
	return false
}

// handshakeFailed counts a failed TLS handshake and logs it: at info when
// the client took part in it, at debug when the connection closed before
// saying anything (load balancer health checks and port scanners do that
// all day).
func (l *listener) handshakeFailed(remote string, err error) {
	lvl := slog.LevelInfo
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		strings.HasSuffix(err.Error(), "EOF") {
		lvl = slog.LevelDebug
	} else {
		l.handshakeFailures.Add(1)
	}
	l.b.log.Log(context.Background(), lvl, "TLS handshake failed", "listener", l.cfg.Name, "remote", remote, "err", err)
}

// httpErrorLog is the ErrorLog of a ws/wss listener's HTTP server: its TLS
// handshake failures are logged as the tls listener's are, the rest of
// net/http's chatter at debug.
func (l *listener) httpErrorLog() *log.Logger {
	return log.New(httpLogWriter{l: l}, "", 0)
}

type httpLogWriter struct{ l *listener }

const httpHandshakePrefix = "http: TLS handshake error from "

func (w httpLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(msg, httpHandshakePrefix); ok {
		if remote, reason, ok := strings.Cut(rest, ": "); ok {
			w.l.handshakeFailed(remote, errors.New(reason))
			return len(p), nil
		}
	}
	w.l.b.log.Debug(msg, "listener", w.l.cfg.Name)
	return len(p), nil
}

// listenerCollector exports each listener's connections: what
// listeners[].name labels.
type listenerCollector struct{ b *Broker }

var (
	descListenerConns = prometheus.NewDesc("ferry_listener_connections",
		"Open network connections per listener: connected clients and sockets not yet through CONNECT.", []string{"listener", "type"}, nil)
	descListenerAccepted = prometheus.NewDesc("ferry_listener_accepted_total",
		"Connections accepted per listener, refused ones included.", []string{"listener", "type"}, nil)
	descListenerTLSFailed = prometheus.NewDesc("ferry_listener_tls_handshake_failures_total",
		"TLS handshakes that failed per tls or wss listener (not counting connections closed before a word).", []string{"listener", "type"}, nil)
)

func (listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descListenerConns
	ch <- descListenerAccepted
	ch <- descListenerTLSFailed
}

func (c listenerCollector) Collect(ch chan<- prometheus.Metric) {
	open := map[string]int{}
	c.b.connsMu.Lock()
	for cn := range c.b.conns {
		open[cn.listener]++
	}
	c.b.connsMu.Unlock()
	for _, l := range c.b.listeners {
		name, typ := l.cfg.Name, l.cfg.Type
		ch <- prometheus.MustNewConstMetric(descListenerConns, prometheus.GaugeValue, float64(open[name]), name, typ)
		ch <- prometheus.MustNewConstMetric(descListenerAccepted, prometheus.CounterValue, float64(l.accepted.Load()), name, typ)
		if typ == config.ListenerTLS || typ == config.ListenerWSS {
			ch <- prometheus.MustNewConstMetric(descListenerTLSFailed, prometheus.CounterValue, float64(l.handshakeFailures.Load()), name, typ)
		}
	}
}
