// Package config holds Ferry's one configuration: the YAML file, FERRY_*
// environment overrides and command-line flags, merged in that order of
// precedence (flag over env over file over built-in default) and validated
// before anything listens.
//
// Every field has a default, so the zero file (or no file) is a working
// broker: MQTT on :1883, WebSocket on :8083, admin on 127.0.0.1:8080, data in
// ./data.
//
// Load reports every problem at once, each a *FieldError naming the field's
// YAML path and where the bad value came from: the file and line, or the
// environment variable or flag that set it. Relative paths of the files the
// file names are relative to the file's directory.
package config

import (
	"log/slog"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/hooks/auth"
	"github.com/ferrymq/ferry/hooks/limits"
	"github.com/ferrymq/ferry/persistence"
)

// Defaults. Each is the value a field takes when the file, the environment
// and the flags leave it unset.
const (
	DefaultMQTTAddr        = ":1883"
	DefaultWSAddr          = ":8083"
	DefaultAdminAddr       = "127.0.0.1:8080"
	DefaultDataDir         = "./data"
	DefaultShutdownTimeout = 5 * time.Second
	DefaultSysInterval     = 10 * time.Second
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"

	// DefaultMaxPacketSize is advertised in CONNACK; larger packets are
	// refused with reason 0x95. 1 MiB, as EMQX; Mosquitto's is unlimited.
	DefaultMaxPacketSize = 1 << 20
	// DefaultTopicAliasMaximum is the number of inbound topic aliases a
	// client may use; advertised in CONNACK.
	DefaultTopicAliasMaximum = 1024
	// DefaultReceiveMaximum is how many QoS 1/2 publishes a client may have
	// unacknowledged towards Ferry.
	DefaultReceiveMaximum = 1024
	// DefaultMaxInflight bounds the QoS 1/2 messages mochi holds in memory
	// per session (in flight, or queued in RAM for a session without
	// storage). Offline persistent sessions keep at most min(memory_window, max_inflight/2)
	// of them in memory; the rest of their queue is in the store (see
	// DefaultMaxQueuedMessages).
	DefaultMaxInflight = 10000
	// DefaultMaxQueuedMessages bounds everything queued for one persistent
	// session (in flight or not yet sent), in the store. 100,000 rather than
	// Mosquitto's 1,000 or EMQX's 1,000: the queue costs disk, not RAM
	// (about 24 bytes of memory per queued message), and a day-long outage
	// of a device reporting once a second fits in it.
	DefaultMaxQueuedMessages = 100000
	// DefaultMaxQueuedBytes bounds the topic and payload bytes queued for
	// one persistent session: 64 MiB.
	DefaultMaxQueuedBytes = 64 << 20
	// DefaultClientWritesPending sizes each client's outbound queue.
	DefaultClientWritesPending = 8192
	// DefaultReadBufferSize and DefaultWriteBufferSize size each
	// connection's buffers.
	DefaultReadBufferSize  = 2048
	DefaultWriteBufferSize = 2048
	// DefaultCloseLinger is how long a connection the broker closes is
	// drained, so the client can read the DISCONNECT it was sent.
	DefaultCloseLinger = 2 * time.Second
	// DefaultIdleParkAfter is how long a connection stays silent before
	// it is parked (no goroutine, no read buffer) until it is readable.
	DefaultIdleParkAfter = time.Second
	// DefaultOverflowWait bounds how long a publisher waits for a full
	// subscriber under the block-publisher overflow policy.
	DefaultOverflowWait = 5 * time.Second
	// DefaultResendAfter is how long an MQTT 3.1.1 connection with
	// unacknowledged messages stays quiet before they are resent.
	DefaultResendAfter = 30 * time.Second
	// DefaultWriteTimeout closes connections whose client stopped reading.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultConnectTimeout closes sockets that never complete CONNECT.
	DefaultConnectTimeout = 10 * time.Second
)

// Listener types.
const (
	ListenerTCP  = "tcp"
	ListenerTLS  = "tls"
	ListenerWS   = "ws"
	ListenerWSS  = "wss"
	ListenerUnix = "unix"
)

// Config is the whole of Ferry's configuration.
type Config struct {
	// Listeners are the MQTT endpoints. Default: tcp on :1883 and ws on :8083.
	Listeners []Listener `yaml:"listeners"`
	// MQTT holds protocol features and their limits as advertised in CONNACK.
	MQTT MQTT `yaml:"mqtt"`
	// Limits bound what one client may cost.
	Limits Limits `yaml:"limits"`
	// Storage is the Badger data directory and its durability; see
	// docs/persistence.md.
	Storage persistence.Config `yaml:"storage"`
	// Auth is authentication and authorization; see docs/security.md. With
	// none configured Ferry lets every client in and logs a warning.
	Auth auth.Config `yaml:"auth"`
	// Bridges are the routes between MQTT topics and backends; see
	// docs/bridges.md.
	Bridges bridge.Routes `yaml:"bridges"`
	// BridgeIdentity is the client id under which ingress routes publish
	// into the broker. Default "ferry-bridge".
	BridgeIdentity string `yaml:"bridge_identity"`
	// Admin is the HTTP listener for health, readiness, metrics and pprof.
	Admin Admin `yaml:"admin"`
	// Log sets the log level and format.
	Log Log `yaml:"log"`
	// Shutdown bounds the graceful drain on SIGINT/SIGTERM.
	Shutdown Shutdown `yaml:"shutdown"`
	// Cluster, when set, makes this node one of a cluster sharing
	// sessions, queues, retained messages and routing through NATS
	// JetStream; see docs/cluster.md. Nil (no cluster section, no
	// FERRY_CLUSTER_* variable, no --node-id) is a single node on Badger.
	// WithDefaults fills it with storage.dir known (the embedded NATS
	// server's store_dir defaults to <storage.dir>/nats).
	Cluster *cluster.Config `yaml:"cluster"`
}

// Listener is one MQTT endpoint.
type Listener struct {
	// Name identifies the listener in logs and metrics. Default: type and
	// position, e.g. "tcp0".
	Name string `yaml:"name"`
	// Type is tcp, tls, ws, wss or unix.
	Type string `yaml:"type"`
	// Addr is host:port, or a socket path for unix.
	Addr string `yaml:"addr"`
	// Path is the HTTP path of a ws/wss listener. Default "/" accepts any.
	Path string `yaml:"path"`
	// Cert and Key are PEM files for tls and wss.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ClientCA, when set, makes the listener mutual TLS: clients must
	// present a certificate signed by this CA.
	ClientCA string `yaml:"client_ca"`

	// from names the flag or variable that set Addr, for error messages.
	from string
}

// MQTT holds the protocol features Ferry offers. What is switched off here is
// advertised as unavailable in CONNACK and refused with the reason code the
// MQTT 5 specification gives, not silently downgraded.
type MQTT struct {
	// MaxQoS is the highest QoS accepted (0, 1 or 2). Default 2.
	MaxQoS *int `yaml:"max_qos"`
	// RetainAvailable allows retained messages. Default true.
	RetainAvailable *bool `yaml:"retain_available"`
	// WildcardSubscriptions allows + and # in subscriptions. Default true.
	WildcardSubscriptions *bool `yaml:"wildcard_subscriptions"`
	// SharedSubscriptions allows $share/group/filter. Default true.
	SharedSubscriptions *bool `yaml:"shared_subscriptions"`
	// SubscriptionIdentifiers allows MQTT 5 subscription ids. Default true.
	SubscriptionIdentifiers *bool `yaml:"subscription_identifiers"`
	// TopicAliasMaximum is the inbound topic alias limit. 0 disables
	// aliases. Default 1024.
	TopicAliasMaximum *int `yaml:"topic_alias_maximum"`
	// ReceiveMaximum is how many unacknowledged QoS 1/2 publishes a client
	// may send. Default 1024.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxSessionExpiry caps the session expiry a client asks for. 0 means no
	// cap.
	MaxSessionExpiry time.Duration `yaml:"max_session_expiry"`
	// MaxMessageExpiry caps the message expiry a publisher asks for.
	// Messages without an expiry (retained ones included) never expire.
	// 0 means no cap.
	MaxMessageExpiry time.Duration `yaml:"max_message_expiry"`
	// SysInterval is how often $SYS topics are republished. Default 10s.
	SysInterval time.Duration `yaml:"sys_interval"`
}

// Limits bound what one client may cost. The per-message limits (topic
// size, subscriptions, publish rate, client ids, overload guard) are the
// limits hook's own configuration, inlined here.
type Limits struct {
	limits.Config `yaml:",inline"`

	// MaxPacketSize is the largest packet accepted, in bytes, advertised in
	// CONNACK. 0 means the protocol maximum. Default 1 MiB.
	MaxPacketSize *int `yaml:"max_packet_size"`
	// MaxConnections is the most clients connected at once. 0 = no limit.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP is the most connections from one IP address at
	// once; more are closed at accept. 0 = no limit.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ConnectionRatePerIP is how many new connections per second one IP
	// address may open (token bucket, burst the same); more are closed at
	// accept. 0 = no limit.
	ConnectionRatePerIP float64 `yaml:"connection_rate_per_ip"`
	// MaxInflight bounds the QoS 1/2 messages held in memory per session:
	// unacknowledged, or queued for a session that is not persistent.
	// Default 10000, at most 65535. A persistent session keeps at most
	// min(MemoryWindow, MaxInflight/2) in memory while offline
	// (MaxInflight/2 while connected) and the rest of its queue in the
	// store, bounded by MaxQueuedMessages and MaxQueuedBytes.
	MaxInflight int `yaml:"max_inflight"`
	// MemoryWindow is how many queued messages of an offline persistent
	// session stay in memory (capped at MaxInflight/2); the rest waits in
	// the store. Smaller saves RAM per offline session; larger saves
	// reading back from the store when it reconnects. Default 1000.
	MemoryWindow int `yaml:"memory_window"`
	// MaxQueuedMessages bounds the QoS 1/2 messages queued for one
	// persistent session, in flight or waiting, in memory or in the store.
	// Beyond it OverflowPolicy applies. Default 100000.
	MaxQueuedMessages int `yaml:"max_queued_messages"`
	// MaxQueuedBytes bounds the topic and payload bytes of those messages.
	// Default 64 MiB.
	MaxQueuedBytes int64 `yaml:"max_queued_bytes"`
	// ClientWritesPending sizes each client's outbound queue. Default 8192.
	ClientWritesPending int `yaml:"client_writes_pending"`
	// OverflowPolicy is what happens to a QoS 1/2 message for a subscriber
	// whose queue is full: block-publisher (default: the publisher's PUBACK
	// waits, up to OverflowWait), drop-newest (the new message is dropped
	// for that subscriber) or drop-oldest (the oldest message queued for
	// that subscriber and not yet sent to it is dropped to make room).
	// Every drop is counted by reason. For a persistent session that is
	// offline, block-publisher acts as drop-newest (waiting could last
	// forever); drop-oldest needs a persistent session (other sessions have
	// no queue Ferry can reach into: drop-newest). QoS 0 messages are never
	// waited for: dropped and counted. See docs/persistence.md.
	OverflowPolicy string `yaml:"overflow_policy"`
	// OverflowWait bounds how long block-publisher holds a publisher,
	// including behind a subscriber that stopped reading (whose new
	// messages are then queued up to 1 MiB, and beyond dropped and
	// counted, or kept by a persistent session). Default 5s.
	OverflowWait time.Duration `yaml:"overflow_wait"`
	// ReadBufferSize and WriteBufferSize size each connection's buffers.
	ReadBufferSize  int `yaml:"read_buffer_size"`
	WriteBufferSize int `yaml:"write_buffer_size"`
	// CloseLinger is how long a closed connection is drained so the client
	// can read the broker's DISCONNECT. Default 2s.
	CloseLinger time.Duration `yaml:"close_linger"`
	// IdleParkAfter parks a plain TCP or Unix-socket connection whose
	// client has sent nothing for this long: it keeps no goroutine or read
	// buffer until the socket is readable again, so an idle device costs a
	// few KB. Linux only. Default 1s; negative: never.
	IdleParkAfter time.Duration `yaml:"idle_park_after"`
	// ResendAfter resends the unacknowledged QoS 1/2 messages of a
	// connected MQTT 3.1.1 client whose connection has been quiet this long
	// (MQTT 5 forbids it). Default 30s; negative: never.
	ResendAfter time.Duration `yaml:"resend_after"`
	// WriteTimeout closes a connection whose client has not taken a
	// packet for this long (a client that stops reading would otherwise
	// stall every publisher sending to it). Default 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// ConnectTimeout closes a connection that has not completed CONNECT
	// (TLS handshake included) in this time. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// Admin is the HTTP listener for operators.
type Admin struct {
	// Addr is host:port; empty string disables it. Default 127.0.0.1:8080.
	Addr *string `yaml:"addr"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" on every
	// path but /healthz, /readyz and the dashboard's static files. It is
	// required when Addr is not a loopback address, unless
	// AllowUnauthenticated.
	Token string `yaml:"token"`
	// AllowUnauthenticated lets the admin endpoint listen beyond loopback
	// without a token, for a network where something else guards it (a
	// reverse proxy that authenticates). Default false: Ferry refuses to
	// start rather than expose the API (kick clients, publish, read the
	// configuration) to anyone who can reach the port.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
	// Pprof mounts /debug/pprof/. Default false.
	Pprof bool `yaml:"pprof"`
}

// Log sets logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Shutdown bounds the graceful drain.
type Shutdown struct {
	// Timeout is how long a graceful shutdown may take before connections
	// are cut. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
}

// Default returns the configuration Ferry runs on when nothing is set.
func Default() Config {
	var c Config
	return c.WithDefaults()
}

// WithDefaults returns a copy of c with every unset field given its default.
func (c Config) WithDefaults() Config {
	if c.Listeners == nil {
		c.Listeners = []Listener{
			{Type: ListenerTCP, Addr: DefaultMQTTAddr},
			{Type: ListenerWS, Addr: DefaultWSAddr},
		}
	} else {
		c.Listeners = append([]Listener(nil), c.Listeners...)
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Name == "" {
			l.Name = l.Type + itoa(i)
		}
		if (l.Type == ListenerWS || l.Type == ListenerWSS) && l.Path == "" {
			l.Path = "/"
		}
	}
	m := &c.MQTT
	m.MaxQoS = intOr(m.MaxQoS, 2)
	m.RetainAvailable = boolOr(m.RetainAvailable, true)
	m.WildcardSubscriptions = boolOr(m.WildcardSubscriptions, true)
	m.SharedSubscriptions = boolOr(m.SharedSubscriptions, true)
	m.SubscriptionIdentifiers = boolOr(m.SubscriptionIdentifiers, true)
	m.TopicAliasMaximum = intOr(m.TopicAliasMaximum, DefaultTopicAliasMaximum)
	if m.ReceiveMaximum == 0 {
		m.ReceiveMaximum = DefaultReceiveMaximum
	}
	if m.SysInterval == 0 {
		m.SysInterval = DefaultSysInterval
	}
	l := &c.Limits
	l.MaxPacketSize = intOr(l.MaxPacketSize, DefaultMaxPacketSize)
	if l.MaxInflight == 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.MemoryWindow == 0 {
		l.MemoryWindow = persistence.DefaultMemoryWindow
	}
	if l.ClientWritesPending == 0 {
		l.ClientWritesPending = DefaultClientWritesPending
	}
	if l.MaxQueuedMessages == 0 {
		l.MaxQueuedMessages = DefaultMaxQueuedMessages
	}
	if l.MaxQueuedBytes == 0 {
		l.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if l.OverflowPolicy == "" {
		l.OverflowPolicy = "block-publisher"
	}
	if l.OverflowWait == 0 {
		l.OverflowWait = DefaultOverflowWait
	}
	if l.ReadBufferSize == 0 {
		l.ReadBufferSize = DefaultReadBufferSize
	}
	if l.WriteBufferSize == 0 {
		l.WriteBufferSize = DefaultWriteBufferSize
	}
	if l.CloseLinger == 0 {
		l.CloseLinger = DefaultCloseLinger
	}
	if l.IdleParkAfter == 0 {
		l.IdleParkAfter = DefaultIdleParkAfter
	}
	if l.ResendAfter == 0 {
		l.ResendAfter = DefaultResendAfter
	}
	if l.WriteTimeout == 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.ConnectTimeout == 0 {
		l.ConnectTimeout = DefaultConnectTimeout
	}
	l.Config = l.Config.WithDefaults()
	if c.Storage.Dir == "" {
		c.Storage.Dir = DefaultDataDir
	}
	c.Storage = c.Storage.WithDefaults()
	if c.Admin.Addr == nil {
		a := DefaultAdminAddr
		c.Admin.Addr = &a
	} else {
		a := *c.Admin.Addr
		c.Admin.Addr = &a
	}
	for i := range c.Bridges {
		c.Bridges[i] = c.Bridges[i].WithDefaults()
	}
	if c.BridgeIdentity == "" {
		c.BridgeIdentity = "ferry-bridge"
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Shutdown.Timeout == 0 {
		c.Shutdown.Timeout = DefaultShutdownTimeout
	}
	if c.Cluster != nil {
		cl := c.Cluster.WithDefaults(c.Storage.Dir)
		c.Cluster = &cl
	}
	return c
}

// SlogLevel returns the configured log level; Validate has checked it.
func (l Log) SlogLevel() slog.Level {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(l.Level))
	return lv
}

func intOr(p *int, d int) *int {
	if p == nil {
		return &d
	}
	v := *p
	return &v
}

func boolOr(p *bool, d bool) *bool {
	if p == nil {
		return &d
	}
	v := *p
	return &v
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}
