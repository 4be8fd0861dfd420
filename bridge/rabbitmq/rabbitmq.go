package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults and limits.
const (
	// DefaultTimeout bounds one Deliver (publishes and confirms) and a dial.
	DefaultTimeout = 5 * time.Second
	// DefaultPrefetch is the ingress channel's Qos prefetch count: how many
	// unacked deliveries RabbitMQ sends ahead.
	DefaultPrefetch = 64
	// MaxPrefetch is the largest prefetch AMQP can express.
	MaxPrefetch = 65535
	// RequeueDelay is how long the receiver waits before it nacks (with
	// requeue) a message the broker refused, so a refusing broker is not
	// handed the same message in a tight loop.
	RequeueDelay = 100 * time.Millisecond
	// TopicHeader is the AMQP header carrying the MQTT topic (egress).
	TopicHeader = "mqtt-topic"
)

// Config is the connector's section, e.g.
//
//	rabbitmq: {url: "amqp://guest:guest@127.0.0.1:5672/", exchange: telemetry, routing_key: "{{.Segment 1}}"}
type Config struct {
	// URL is the AMQP URI (amqp:// or amqps://, credentials and vhost
	// included).
	URL string `yaml:"url"`
	// Exchange is the egress exchange; "" is the default exchange, which
	// routes by queue name.
	Exchange string `yaml:"exchange"`
	// RoutingKey is a template over the message; default: the MQTT topic
	// with "/" replaced by ".".
	RoutingKey string `yaml:"routing_key"`
	// Mandatory makes RabbitMQ return messages no queue is bound for, and
	// the connector dead-letter them; default true.
	Mandatory *bool `yaml:"mandatory"`
	// Timeout bounds one Deliver and each dial; default DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// Queue is the ingress queue (it must exist).
	Queue string `yaml:"queue"`
	// Prefetch is the ingress Qos prefetch count; default DefaultPrefetch.
	Prefetch int `yaml:"prefetch"`
}

func (c Config) withDefaults() Config {
	if c.Mandatory == nil {
		t := true
		c.Mandatory = &t
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	return c
}

// Connector is the RabbitMQ connector.
type Connector struct {
	cfg  Config
	spec bridge.Spec
	key  *bridge.Template // egress routing key; nil: topic with / → .
	log  *slog.Logger

	// mu serializes Deliver (one confirm channel) and guards sess.
	mu     sync.Mutex
	sess   *session
	closed bool
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
	cfg := raw.withDefaults()
	c := &Connector{cfg: cfg, spec: spec, log: deps.Log()}
	var errs bridge.FieldErrors
	add := errs.Add
	if cfg.URL == "" {
		add("url", "must not be empty")
	} else if _, err := amqp.ParseURI(cfg.URL); err != nil {
		add("url", "%w", err)
	}
	if cfg.Timeout < time.Millisecond {
		add("timeout", "%s is less than allowed 1ms", cfg.Timeout)
	}
	if spec.Direction == bridge.In {
		if cfg.Queue == "" {
			add("queue", "must not be empty")
		}
		if cfg.Prefetch < 1 || cfg.Prefetch > MaxPrefetch {
			add("prefetch", "%d is not in [1, %d]", cfg.Prefetch, MaxPrefetch)
		}
		if raw.Exchange != "" || raw.RoutingKey != "" || raw.Mandatory != nil {
			add("exchange", "exchange, routing_key and mandatory are for egress routes")
		}
	} else {
		if raw.Queue != "" || raw.Prefetch != 0 {
			add("queue", "queue and prefetch are for ingress routes")
		}
		if cfg.RoutingKey != "" {
			t, err := bridge.ParseTemplate(cfg.RoutingKey)
			if err != nil {
				add("routing_key", "%w", err)
			}
			c.key = t
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "rabbitmq" }

// Start implements bridge.Connector. For egress it dials and opens the
// confirm channel; a server that is down is logged, not an error (Deliver
// redials), but refused credentials are. Ingress dials in Receive.
func (c *Connector) Start(ctx context.Context) error {
	if c.spec.Direction == bridge.In {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.session(ctx)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrVhost):
		return err
	case err != nil:
		c.log.Warn("rabbitmq: server not reachable, will keep trying", "route", c.spec.Route, "err", err)
	}
	return nil
}

// Close implements bridge.Connector: it closes the egress channel and
// connection (a pending Deliver fails and its batch stays in the outbox).
// Safe twice.
func (c *Connector) Close(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sess != nil {
		err := c.sess.close()
		c.sess = nil
		if err != nil {
			return fmt.Errorf("rabbitmq: close: %w", err)
		}
	}
	return nil
}

// dial opens a connection to the configured URL within the timeout.
func (c *Connector) dial(ctx context.Context) (*amqp.Connection, error) {
	timeout := c.cfg.Timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(d), time.Millisecond))
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("ferry-bridge-" + c.spec.Route)
	conn, err := amqp.DialConfig(c.cfg.URL, amqp.Config{
		Dial:       amqp.DefaultDial(timeout),
		Properties: props,
		Heartbeat:  10 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: dial: %w", err)
	}
	return conn, nil
}
