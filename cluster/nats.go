package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterName is the NATS cluster name of embedded servers: nodes of one
// Ferry cluster route only to servers that share it.
const clusterName = "ferry"

// startEmbedded starts this node's NATS server and waits until it takes
// client connections.
func startEmbedded(cfg Config, log *slog.Logger) (*natsserver.Server, error) {
	e := cfg.NATS.Embedded
	host, port, err := splitHostPort(e.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: nats.embedded.client_addr: %w", err)
	}
	opts := &natsserver.Options{
		ServerName: cfg.NodeID,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   e.StoreDir,
		NoSigs:     true,
		// A client (this node, or a tool) may stay away for up to a few
		// seconds without being cut: a node paused by its host is declared
		// dead by its membership, not by NATS's pings.
		PingInterval: 2 * time.Second,
		MaxPingsOut:  3,
	}
	if e.ClusterAddr != "" {
		ch, cp, err := splitHostPort(e.ClusterAddr)
		if err != nil {
			return nil, fmt.Errorf("cluster: nats.embedded.cluster_addr: %w", err)
		}
		opts.Cluster = natsserver.ClusterOpts{Name: clusterName, Host: ch, Port: cp}
		opts.Routes = natsserver.RoutesFromStr(strings.Join(e.Routes, ","))
	}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded NATS: %w", err)
	}
	ns.SetLoggerV2(natsLogger{log.With("component", "nats")}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(cfg.StartTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("cluster: embedded NATS did not accept connections on %s within %s (is the port free?)", e.ClientAddr, cfg.StartTimeout)
	}
	return ns, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, port, nil
}

// connect opens the node's NATS connection: in-process to its embedded
// server, or to url. It keeps reconnecting for ever once connected; the
// node reports not ready meanwhile.
func connect(cfg Config, ns *natsserver.Server, log *slog.Logger, onState func()) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("ferry-" + cfg.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.PingInterval(2 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS disconnected", "err", err)
			onState()
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("NATS reconnected", "server", c.ConnectedUrlRedacted())
			onState()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("NATS error", "subject", subj, "err", err)
		}),
	}
	url := cfg.NATS.URL
	if ns != nil {
		opts = append(opts, nats.InProcessServer(ns))
		url = ns.ClientURL()
	}
	if cfg.NATS.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: NATS at %s unreachable: %w", url, err)
	}
	return nc, nil
}

// waitJetStream waits until JetStream answers: with a cluster, until its
// servers have elected a meta leader, which needs a quorum of them.
func waitJetStream(ctx context.Context, js jetstream.JetStream) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("cluster: JetStream is not enabled on the NATS server: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: JetStream not ready (no quorum of NATS servers?): %w", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// retry runs f until it succeeds or ctx ends: creating a replicated
// stream fails until enough servers have joined.
func retry(ctx context.Context, log *slog.Logger, what string, f func(context.Context) error) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		t0 := time.Now()
		last = f(actx)
		cancel()
		if last == nil {
			return nil
		}
		log.Debug("cluster: retrying", "what", what, "err", last, "took", time.Since(t0))
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %s: %w", what, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// natsLogger sends the embedded server's log to slog.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any)  {}
