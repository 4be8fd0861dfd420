// Package load runs ferry-bench's load scenarios against an MQTT broker and
// measures throughput, loss, duplicates, reordering and latency exactly.
//
// Every payload starts with a Header (run nonce, publisher id, sequence,
// send time); receivers track per-publisher sequence sets, so loss, dupes
// and out-of-order deliveries are counted message by message, and one-way
// latency uses the shared machine clock. Run blocks until the scenario
// finishes or ctx ends; it stops every connection and goroutine it started
// before returning.
package load

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// Scenario names.
const (
	FanIn   = "fan-in"
	Pairs   = "pairs"
	FanOut  = "fan-out"
	Latency = "latency"
	Idle    = "idle"
	ReqResp = "reqresp"
	Storm   = "storm"
)

// Scenarios lists every scenario name.
var Scenarios = []string{FanIn, Pairs, FanOut, Latency, Idle, ReqResp, Storm}

// Defaults applied by Config.withDefaults.
const (
	DefaultDuration           = 10 * time.Second
	DefaultDrain              = 3 * time.Second
	DefaultPayload            = 64
	DefaultInflight           = 64
	DefaultLatencyRate        = 2000
	DefaultIdleClients        = 1000
	DefaultStormClients       = 10000
	DefaultMoveTimeout        = 60 * time.Second
	DefaultCheckWait          = 10 * time.Second
	DefaultCheckRounds        = 1
	DefaultCheckInterval      = 10 * time.Second
	DefaultConnectConcurrency = 64
	DefaultOutstanding        = 1
	DefaultSessionExpiry      = 3600
	DefaultKeepAlive          = 60
)

// Config describes one scenario run. Zero fields take the defaults above or
// the per-scenario defaults documented on each field.
type Config struct {
	Scenario string
	// Addr is the broker's host:port. Publishers (and requesters, idle
	// connections, the storm's sessions before they move) connect here.
	Addr string
	// SubAddr is where subscribers connect (fan-in's, fan-out's and
	// pairs' subscribers, the latency receiver, the reqresp responder);
	// default Addr. Another node of a cluster makes every message cross
	// between nodes.
	SubAddr string
	// Label names the broker in results (e.g. "mosquitto"); optional.
	Label string
	// Tag names the benchmark case in results (e.g. "fan-in QoS0 64B");
	// optional, used to group runs when summarizing.
	Tag string
	// TLS, when non-nil, makes every connection use TLS.
	TLS *tls.Config
	// Version is mqttc.V311 (default) or mqttc.V5. ReqResp forces V5.
	Version byte
	QoS     byte
	// PayloadSize is the PUBLISH payload size in bytes, at least HeaderSize.
	PayloadSize int
	// Publishers: fan-in 10, pairs 100 (the pair count), fan-out 1,
	// latency 1, reqresp 10 (requesters).
	Publishers int
	// Subscribers: fan-out 100; fixed at 1 for fan-in and latency, equal
	// to Publishers for pairs.
	Subscribers int
	// Clients is the idle scenario's connection count (default 1000) and
	// the storm's session count (default 10000).
	Clients int
	// MoveAddrs are the addresses the storm's sessions reconnect to,
	// client i to MoveAddrs[i%len]; default Addr.
	MoveAddrs []string
	// KillPID, when positive, makes the storm send SIGKILL to this
	// process (the broker node the sessions are on) once every session is
	// set up, and wait until each connection has seen it go, instead of
	// closing the connections itself.
	KillPID int
	// MoveConcurrency bounds the storm's reconnections under way at once;
	// 0 means all at once.
	MoveConcurrency int
	// MoveTimeout bounds the storm's reconnection phase (a client that
	// has no CONNACK by then counts as lost), each subscription's SUBACK,
	// and the wait for the check messages' acks; default 60 s.
	MoveTimeout time.Duration
	// CheckWait ends the storm's wait for its check messages when none
	// has arrived for this long (MoveTimeout bounds it in any case);
	// default 10 s: a cluster that just lost a node may stall for seconds
	// while it elects new leaders, then deliver.
	CheckWait time.Duration
	// CheckRounds is how many times the storm publishes one message to
	// every session after the move (default 1), CheckInterval apart
	// (default 10 s): a later round shows whether the sessions still get
	// their messages once the cluster has settled.
	CheckRounds   int
	CheckInterval time.Duration
	// Duration bounds the send phase (default 10 s) unless Count is set;
	// for idle it is how long the connections are held.
	Duration time.Duration
	// Count, when positive, is the number of messages per publisher.
	Count int
	// Rate is the total target publish rate in msg/s; 0 means as fast as
	// possible (latency defaults to 2000).
	Rate float64
	// Inflight bounds unacknowledged QoS 1/2 publishes per publisher.
	Inflight int
	// Outstanding bounds requests awaiting a response per requester.
	Outstanding int
	// AckDelay, when positive, lets subscribers' QoS 1/2 acks wait up to
	// this long to be written together; 0 writes them as soon as the read
	// buffer is empty.
	AckDelay time.Duration
	// Drain is how long to wait after the send phase for acks and
	// deliveries still under way.
	Drain time.Duration
	// Persistent connects with clean=false (and a session expiry in MQTT
	// 5) using stable client ids built from ClientPrefix.
	Persistent    bool
	SessionExpiry uint32
	ClientPrefix  string
	// TopicPrefix prefixes every topic; default bench/<nonce>.
	TopicPrefix string
	// KeepAlive in seconds is sent in CONNECT and honoured with PINGREQs;
	// default 60.
	KeepAlive uint16
	// SendBuffer, when positive, is each connection's SO_SNDBUF in bytes.
	// Small values keep a QoS 0 publisher from queueing megabytes in the
	// kernel that a saturated broker reads long after the run ended.
	SendBuffer int
	// BrokerPID, when positive, is the broker process whose CPU use is
	// reported, and whose VmRSS the idle scenario reports.
	BrokerPID int
	// OtherBrokerPIDs are more broker processes (a cluster's other
	// nodes) whose CPU use is added to BrokerPID's.
	OtherBrokerPIDs    []int
	ConnectConcurrency int
	// Progress receives a progress line every ProgressEvery; nil disables.
	Progress      io.Writer
	ProgressEvery time.Duration
	Logger        *slog.Logger
}

var errConfig = errors.New("load: invalid config")

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Version == 0 {
		c.Version = mqttc.V311
	}
	if c.Scenario == ReqResp {
		c.Version = mqttc.V5
	}
	if c.SubAddr == "" {
		c.SubAddr = c.Addr
	}
	if c.Scenario == Storm {
		// The scenario is about sessions that outlive their connection.
		c.Persistent = true
		c.QoS = 1
		def(&c.Clients, DefaultStormClients)
		if len(c.MoveAddrs) == 0 && c.Addr != "" {
			c.MoveAddrs = []string{c.Addr}
		}
		if c.MoveTimeout == 0 {
			c.MoveTimeout = DefaultMoveTimeout
		}
		if c.CheckWait == 0 {
			c.CheckWait = DefaultCheckWait
		}
		def(&c.CheckRounds, DefaultCheckRounds)
		if c.CheckInterval == 0 {
			c.CheckInterval = DefaultCheckInterval
		}
	}
	def(&c.PayloadSize, DefaultPayload)
	if c.PayloadSize < HeaderSize {
		c.PayloadSize = HeaderSize
	}
	def(&c.Inflight, DefaultInflight)
	def(&c.Outstanding, DefaultOutstanding)
	def(&c.ConnectConcurrency, DefaultConnectConcurrency)
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Drain == 0 {
		c.Drain = DefaultDrain
	}
	if c.SessionExpiry == 0 && c.Persistent {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch c.Scenario {
	case FanIn:
		def(&c.Publishers, 10)
		c.Subscribers = 1
	case Pairs:
		def(&c.Publishers, 100)
		c.Subscribers = c.Publishers
	case FanOut:
		def(&c.Publishers, 1)
		def(&c.Subscribers, 100)
	case Latency:
		def(&c.Publishers, 1)
		c.Subscribers = 1
		if c.Rate == 0 {
			c.Rate = DefaultLatencyRate
		}
	case ReqResp:
		def(&c.Publishers, 10)
		c.Subscribers = 1
	case Idle:
		def(&c.Clients, DefaultIdleClients)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{errConfig}, a...)...))
	}
	known := false
	for _, s := range Scenarios {
		known = known || s == c.Scenario
	}
	if !known {
		bad("scenario %q: want one of %v", c.Scenario, Scenarios)
	}
	if c.Addr == "" {
		bad("broker address is empty")
	}
	if c.Version != mqttc.V311 && c.Version != mqttc.V5 {
		bad("mqtt version %d: want 4 (3.1.1) or 5", c.Version)
	}
	if c.QoS > 2 {
		bad("qos %d: want 0, 1 or 2", c.QoS)
	}
	if c.Inflight < 1 || c.Inflight > 65000 {
		bad("inflight %d: want 1..65000", c.Inflight)
	}
	if c.Publishers < 0 || c.Subscribers < 0 || c.Clients < 0 || c.Count < 0 || c.Rate < 0 {
		bad("negative counts")
	}
	if c.PayloadSize > 1<<20 {
		bad("payload %d bytes: at most 1 MiB", c.PayloadSize)
	}
	if c.Scenario == Storm {
		if c.Clients < 1 {
			bad("storm: clients %d: want at least 1", c.Clients)
		}
		for _, a := range c.MoveAddrs {
			if a == "" {
				bad("storm: empty move address in %q", c.MoveAddrs)
			} else if c.KillPID > 0 && a == c.Addr {
				bad("storm: move address %s is the address of the node -kill-pid %d kills", a, c.KillPID)
			}
		}
		if c.MoveConcurrency < 0 || c.MoveTimeout < 0 || c.CheckWait < 0 || c.CheckInterval < 0 {
			bad("storm: negative move concurrency, move timeout, check wait or check interval")
		}
		if c.CheckRounds < 1 || c.CheckRounds > 100 {
			bad("storm: check rounds %d: want 1..100", c.CheckRounds)
		}
	}
	if c.KillPID < 0 {
		bad("kill pid %d", c.KillPID)
	}
	if c.Scenario == ReqResp && c.QoS > 0 && c.Publishers*c.Outstanding > 1000 {
		// The single responder publishes every response; most brokers
		// cap unacked inbound QoS>0 publishes per client near 1024 and
		// disconnect a client that exceeds it.
		bad("reqresp: publishers %d x outstanding %d exceeds 1000 at qos>0", c.Publishers, c.Outstanding)
	}
	return errors.Join(errs...)
}

func (c Config) connect(id string, clean bool) *mqttc.Connect {
	cp := &mqttc.Connect{Version: c.Version, ClientID: id, Clean: clean, KeepAlive: c.KeepAlive}
	if c.Version == mqttc.V5 {
		cp.ReceiveMaximum = 65535
		if !clean {
			cp.SessionExpiry = c.SessionExpiry
		}
	}
	return cp
}

// dialOptions are the options to connect to addr. A TLS configuration
// without a server name (and not skipping verification) verifies the
// certificate against addr's host, as tls.Dial would.
func (c Config) dialOptions(addr string) mqttc.DialOptions {
	tc := c.TLS
	if tc != nil && tc.ServerName == "" && !tc.InsecureSkipVerify {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tc = tc.Clone()
			tc.ServerName = host
		}
	}
	return mqttc.DialOptions{Addr: addr, TLS: tc, SendBuffer: c.SendBuffer}
}
