package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults and modes.
const (
	// DefaultTimeout bounds one Deliver (the whole pipeline) and a dial.
	DefaultTimeout = 5 * time.Second
	// DefaultClaimIdle is how long an ingress entry stays pending before
	// XAUTOCLAIM takes it over.
	DefaultClaimIdle = 30 * time.Second
	// DefaultCount is the most entries one XREADGROUP returns.
	DefaultCount = 10
	// DefaultBlock is how long one XREADGROUP waits for new entries.
	DefaultBlock = time.Second
	// DefaultStartID is where a new consumer group starts: "$" = entries
	// added after its creation; "0" = the whole stream.
	DefaultStartID = "$"

	// ModeStream adds stream entries (XADD).
	ModeStream = "stream"
	// ModePublish publishes to a pub/sub channel (PUBLISH), at most once.
	ModePublish = "publish"
)

// Config is the connector's section, e.g.
//
//	redis: {addr: "127.0.0.1:6379", stream: "telemetry:{{.Segment 1}}", maxlen: 100000}
type Config struct {
	// Addr is the server's host:port.
	Addr string `yaml:"addr"`
	// PasswordFile names a file holding the password (trailing newline
	// ignored); read by Start. Empty: no AUTH.
	PasswordFile string `yaml:"password_file"`
	// Username for ACL AUTH; empty: the default user.
	Username string `yaml:"username"`
	// DB is the database number (default 0).
	DB int `yaml:"db"`
	// Mode is "stream" (default) or "publish" (egress only).
	Mode string `yaml:"mode"`
	// Stream is a template over the message (egress) or the stream's
	// name (ingress).
	Stream string `yaml:"stream"`
	// Channel is the PUBLISH channel template (mode publish).
	Channel string `yaml:"channel"`
	// MaxLen, when > 0, trims the stream with MAXLEN ~ MaxLen on each XADD.
	MaxLen int64 `yaml:"maxlen"`
	// Timeout bounds one Deliver and each dial; default DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// Group is the ingress consumer group; default "ferry-<route>".
	Group string `yaml:"group"`
	// Consumer is the ingress consumer name, unique per Ferry instance;
	// default "ferry-<hostname>".
	Consumer string `yaml:"consumer"`
	// StartID is where a new group starts reading; default "$".
	StartID string `yaml:"start_id"`
	// Count is the most entries per read; default DefaultCount.
	Count int64 `yaml:"count"`
	// Block is how long a read waits; default DefaultBlock.
	Block time.Duration `yaml:"block"`
	// ClaimIdle is how long an entry stays pending before it is claimed
	// again; default DefaultClaimIdle.
	ClaimIdle time.Duration `yaml:"claim_idle"`
}

func (c Config) withDefaults(route string) Config {
	if c.Mode == "" {
		c.Mode = ModeStream
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ClaimIdle == 0 {
		c.ClaimIdle = DefaultClaimIdle
	}
	if c.Count == 0 {
		c.Count = DefaultCount
	}
	if c.Block == 0 {
		c.Block = DefaultBlock
	}
	if c.StartID == "" {
		c.StartID = DefaultStartID
	}
	if c.Group == "" {
		c.Group = "ferry-" + route
	}
	if c.Consumer == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "local"
		}
		c.Consumer = "ferry-" + host
	}
	return c
}

// Connector is the Redis connector.
type Connector struct {
	cfg    Config
	spec   bridge.Spec
	target *bridge.Template // egress: stream or channel
	log    *slog.Logger

	mu     sync.Mutex
	client *goredis.Client
}

var (
	_ bridge.Connector = (*Connector)(nil)
	_ bridge.Receiver  = (*Connector)(nil)
	_ bridge.Prober    = (*Connector)(nil)
	_ bridge.Factory   = New
)

// New is the connector's bridge.Factory: it decodes and validates the
// section; no I/O.
func New(spec bridge.Spec, deps bridge.Deps) (bridge.Connector, error) {
	var raw Config
	if err := spec.Decode(&raw); err != nil {
		return nil, err
	}
	cfg := raw.withDefaults(spec.Route)
	c := &Connector{cfg: cfg, spec: spec, log: deps.Log()}
	var errs bridge.FieldErrors
	add := errs.Add
	if cfg.Addr == "" {
		add("addr", "must not be empty")
	}
	if cfg.DB < 0 {
		add("db", "%d is less than allowed 0", cfg.DB)
	}
	if cfg.MaxLen < 0 {
		add("maxlen", "%d is less than allowed 0", cfg.MaxLen)
	}
	if cfg.Count < 1 {
		add("count", "%d is less than allowed 1", cfg.Count)
	}
	for _, b := range []struct {
		path string
		d    time.Duration
	}{{"timeout", cfg.Timeout}, {"block", cfg.Block}, {"claim_idle", cfg.ClaimIdle}} {
		if b.d < time.Millisecond {
			add(b.path, "%s is less than allowed 1ms", b.d)
		}
	}
	switch cfg.Mode {
	case ModeStream:
		if cfg.Stream == "" {
			add("stream", "must not be empty")
		}
		if cfg.Channel != "" {
			add("channel", "is for mode %q", ModePublish)
		}
	case ModePublish:
		if spec.Direction == bridge.In {
			add("mode", "%q is egress only", ModePublish)
		}
		if cfg.Channel == "" {
			add("channel", "must not be empty")
		}
		if cfg.Stream != "" || cfg.MaxLen != 0 {
			add("stream", "stream and maxlen are for mode %q", ModeStream)
		}
	default:
		add("mode", "%q is not %q or %q", cfg.Mode, ModeStream, ModePublish)
	}
	if spec.Direction == bridge.In {
		if strings.Contains(cfg.Stream, "{{") {
			add("stream", "an ingress stream is a name, not a template")
		}
		if cfg.MaxLen != 0 {
			add("maxlen", "is for egress routes")
		}
	} else {
		text := cfg.Stream
		path := "stream"
		if cfg.Mode == ModePublish {
			text, path = cfg.Channel, "channel"
		}
		if text != "" {
			t, err := bridge.ParseTemplate(text)
			if err != nil {
				add(path, "%w", err)
			}
			c.target = t
		}
		if raw.Group != "" || raw.Consumer != "" || raw.StartID != "" {
			add("group", "group, consumer and start_id are for ingress routes")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "redis" }

// Start implements bridge.Connector: it reads the password file, creates
// the client and pings the server. A server that is down is logged, not an
// error.
func (c *Connector) Start(ctx context.Context) error {
	opts := &goredis.Options{
		Addr:                  c.cfg.Addr,
		Username:              c.cfg.Username,
		DB:                    c.cfg.DB,
		ClientName:            "ferry-bridge-" + c.spec.Route,
		DialTimeout:           c.cfg.Timeout,
		ReadTimeout:           c.cfg.Timeout,
		WriteTimeout:          c.cfg.Timeout,
		ContextTimeoutEnabled: true,
		// The route's backoff is the only retry loop: a pipeline retried
		// inside the client would add entries twice without telling us.
		MaxRetries:      -1,
		DisableIdentity: true,
	}
	if c.cfg.PasswordFile != "" {
		b, err := os.ReadFile(c.cfg.PasswordFile)
		if err != nil {
			return fmt.Errorf("redis: password_file: %w", err)
		}
		opts.Password = strings.TrimRight(string(b), "\r\n")
	}
	// go-redis has one logger for the process; setting it is atomic.
	goredis.SetLogger(quietLog{})
	client := goredis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err := client.Ping(pctx).Err()
	cancel()
	if ctx.Err() != nil {
		_ = client.Close()
		return ctx.Err()
	}
	if err != nil {
		if isReply(err) && !transient(err) {
			// NOAUTH, WRONGPASS, bad DB: retrying cannot fix it.
			_ = client.Close()
			return fmt.Errorf("redis: ping %s: %w", c.cfg.Addr, err)
		}
		c.log.Warn("redis: server not reachable, will keep trying", "addr", c.cfg.Addr, "err", err)
	}
	c.mu.Lock()
	c.client = client
	c.mu.Unlock()
	return nil
}

// Close implements bridge.Connector: it closes the client (a pending
// Deliver fails and its batch stays in the outbox). Safe twice.
func (c *Connector) Close(context.Context) error {
	c.mu.Lock()
	client := c.client
	c.client = nil
	c.mu.Unlock()
	if client != nil {
		if err := client.Close(); err != nil {
			return fmt.Errorf("redis: close: %w", err)
		}
	}
	return nil
}

func (c *Connector) conn() (*goredis.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil, errors.New("redis: not started")
	}
	return c.client, nil
}

// isReply reports whether err is an error reply from the server (as
// opposed to a network error or timeout).
func isReply(err error) bool {
	var re goredis.Error
	return errors.As(err, &re) && !errors.Is(err, goredis.Nil)
}

// transientPrefixes are error replies that may go away by themselves.
var transientPrefixes = []string{"LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "OOM", "CLUSTERDOWN", "NOREPLICAS"}

func transient(err error) bool {
	for _, p := range transientPrefixes {
		if goredis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// classify marks err with its kind (bridge.KindOf): an error reply that
// retrying cannot fix (WRONGTYPE, ERR ...) is permanent; a transient reply
// (LOADING, READONLY, MASTERDOWN, ...), a connection error, a timeout, a
// pool timeout or a closed client mean Redis is unavailable.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case isReply(err) && !transient(err):
		return bridge.Permanent(err)
	case isReply(err), bridge.NetworkError(err), errors.Is(err, goredis.ErrPoolTimeout),
		errors.Is(err, goredis.ErrClosed), errors.Is(err, goredis.ErrPoolExhausted):
		return bridge.Unavailable(err)
	}
	return err
}

// Probe implements bridge.Prober: a PING within timeout.
func (c *Connector) Probe(ctx context.Context) error {
	client, err := c.conn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: ping %s: %w", c.cfg.Addr, classify(err))
	}
	return nil
}

// quietLog is go-redis's logger: it would print a line to stderr for
// every failed dial during an outage ("pool.go: ... failed to dial"); the
// route logs the outage once instead.
type quietLog struct{}

func (quietLog) Printf(context.Context, string, ...any) {}

// Deliver implements bridge.Connector.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	client, err := c.conn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	targets := make([]string, len(batch))
	payloads := make([][]byte, len(batch))
	for i := range batch {
		m := &batch[i]
		if targets[i], err = c.target.Execute(m); err != nil {
			return bridge.Permanent(fmt.Errorf("redis: %s: %w", c.targetField(), err))
		}
		if targets[i] == "" {
			return bridge.Permanent(fmt.Errorf("redis: rendered %s is empty", c.targetField()))
		}
		payloads[i] = m.Payload
		if c.spec.Payload == bridge.EnvelopeJSON {
			if payloads[i], err = bridge.Envelope(m); err != nil {
				return bridge.Permanent(err)
			}
		}
	}
	pipe := client.Pipeline()
	cmds := make([]goredis.Cmder, len(batch))
	for i := range batch {
		if c.cfg.Mode == ModePublish {
			cmds[i] = pipe.Publish(ctx, targets[i], payloads[i])
			continue
		}
		cmds[i] = pipe.XAdd(ctx, &goredis.XAddArgs{
			Stream: targets[i],
			MaxLen: c.cfg.MaxLen,
			Approx: c.cfg.MaxLen > 0,
			Values: entryFields(&batch[i], payloads[i]),
		})
	}
	_, execErr := pipe.Exec(ctx)
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return fmt.Errorf("redis: %s %s (message %s): %w", c.command(), targets[i], batch[i].ID, classify(err))
		}
	}
	if execErr != nil {
		return fmt.Errorf("redis: pipeline: %w", classify(execErr))
	}
	return nil
}

func (c *Connector) targetField() string {
	if c.cfg.Mode == ModePublish {
		return "channel"
	}
	return "stream"
}

func (c *Connector) command() string {
	if c.cfg.Mode == ModePublish {
		return "PUBLISH"
	}
	return "XADD"
}

// entryFields is a message's stream entry: see the package doc.
func entryFields(m *bridge.Message, payload []byte) []any {
	v := make([]any, 0, 10+2*len(m.UserProperties))
	v = append(v, "payload", payload, "topic", m.Topic, "client_id", m.ClientID,
		"qos", strconv.Itoa(int(m.QoS)), "id", m.ID)
	for _, p := range m.UserProperties {
		v = append(v, "prop."+p.Key, p.Value)
	}
	return v
}
