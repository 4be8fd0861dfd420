package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// Defaults of Config.
const (
	// DefaultReplicas is how many JetStream servers keep each session,
	// queue and retained message.
	DefaultReplicas = 3
	// MaxReplicas is JetStream's own limit.
	MaxReplicas = 5
	// DefaultStartTimeout bounds how long Start waits for NATS and for
	// JetStream to have a quorum before it fails.
	DefaultStartTimeout = 30 * time.Second
)

// Config is the cluster: section. A Ferry without it is a single node on
// Badger; with it, the node shares sessions, queues, retained messages and
// routing with the other nodes through NATS JetStream. See docs/cluster.md.
type Config struct {
	// NodeID names this node; unique in the cluster. Default: the host
	// name.
	NodeID string `yaml:"node_id"`
	// Replicas is the JetStream replication of sessions, queues and
	// retained messages (1-5). Default 3.
	Replicas int `yaml:"replicas"`
	// NATS is where the cluster's NATS is: a URL, or a server embedded in
	// this node.
	NATS NATS `yaml:"nats"`
	// StartTimeout bounds the wait at start for NATS and a JetStream
	// quorum. Default 30s.
	StartTimeout time.Duration `yaml:"start_timeout"`
}

// NATS is either URL (an existing NATS cluster with JetStream) or
// Embedded (a NATS server inside this node); exactly one.
type NATS struct {
	// URL lists the servers of an existing NATS cluster, comma separated.
	URL string `yaml:"url"`
	// Embedded runs a NATS server with JetStream inside this node.
	Embedded *Embedded `yaml:"embedded"`
	// CredsFile is a NATS credentials file for URL. Optional.
	CredsFile string `yaml:"creds_file"`
}

// Embedded is the NATS server a node runs itself.
type Embedded struct {
	// ClientAddr is host:port for NATS clients (and this node). Default
	// 127.0.0.1:4222.
	ClientAddr string `yaml:"client_addr"`
	// ClusterAddr is host:port for the routes of the other nodes' servers.
	ClusterAddr string `yaml:"cluster_addr"`
	// Routes are the other nodes' cluster addresses, as nats://host:port.
	Routes []string `yaml:"routes"`
	// StoreDir holds JetStream's data. Default <storage.dir>/nats.
	StoreDir string `yaml:"store_dir"`
}

// DefaultEmbeddedClientAddr is Embedded.ClientAddr's default.
const DefaultEmbeddedClientAddr = "127.0.0.1:4222"

// WithDefaults fills unset fields; dataDir is storage.dir.
func (c Config) WithDefaults(dataDir string) Config {
	if c.NodeID == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeID = nodeIDFromHost(h)
		}
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if e := c.NATS.Embedded; e != nil {
		cp := *e
		if cp.ClientAddr == "" {
			cp.ClientAddr = DefaultEmbeddedClientAddr
		}
		if cp.StoreDir == "" && dataDir != "" {
			cp.StoreDir = dataDir + string(os.PathSeparator) + "nats"
		}
		c.NATS.Embedded = &cp
	}
	return c
}

// nodeIDFromHost makes a node id of a host name: its first label (a host
// named ip-10-0-0-1.ec2.internal is node ip-10-0-0-1), with any character
// a node id may not hold replaced by '-'.
func nodeIDFromHost(h string) string {
	h, _, _ = strings.Cut(h, ".")
	b := []byte(h)
	for i, c := range b {
		if !(c == '-' || c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// nodeIDRe is what a node id may be: it is a NATS subject token and a
// JetStream server name.
var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// FieldError is one problem with one field, Path relative to cluster:.
type FieldError struct {
	Path string
	Err  error
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Validate reports every problem (after WithDefaults), joined; nil if c is
// usable.
func (c Config) Validate() error {
	var errs []error
	add := func(path string, err error) { errs = append(errs, &FieldError{Path: path, Err: err}) }
	if !nodeIDRe.MatchString(c.NodeID) {
		add("node_id", fmt.Errorf("%q must be 1-64 letters, digits, '-' or '_' (it names the node in NATS subjects)", c.NodeID))
	}
	if c.Replicas < 1 || c.Replicas > MaxReplicas {
		add("replicas", fmt.Errorf("%d must be 1-%d", c.Replicas, MaxReplicas))
	}
	if c.StartTimeout < time.Second {
		add("start_timeout", fmt.Errorf("%s is less than the minimum 1s", c.StartTimeout))
	}
	switch n := c.NATS; {
	case n.URL == "" && n.Embedded == nil:
		add("nats", errors.New("set nats.url (an existing NATS cluster) or nats.embedded (a NATS server in this node)"))
	case n.URL != "" && n.Embedded != nil:
		add("nats", errors.New("nats.url and nats.embedded are exclusive: set one"))
	case n.URL != "":
		for _, u := range strings.Split(n.URL, ",") {
			if err := checkURL(strings.TrimSpace(u), "nats", "tls", "ws", "wss"); err != nil {
				add("nats.url", err)
			}
		}
	default:
		e := n.Embedded
		if err := checkHostPort(e.ClientAddr); err != nil {
			add("nats.embedded.client_addr", err)
		}
		if e.ClusterAddr != "" {
			if err := checkHostPort(e.ClusterAddr); err != nil {
				add("nats.embedded.cluster_addr", err)
			}
		} else if len(e.Routes) > 0 {
			add("nats.embedded.cluster_addr", errors.New("required with routes: the other nodes' servers connect to it"))
		}
		if e.ClusterAddr == "" && c.Replicas > 1 {
			add("replicas", fmt.Errorf("%d needs as many JetStream servers, but nats.embedded has no cluster_addr: a lone server keeps 1 replica (set replicas: 1)", c.Replicas))
		}
		for i, r := range e.Routes {
			if err := checkURL(r, "nats", "nats-route", "tls"); err != nil {
				add(fmt.Sprintf("nats.embedded.routes[%d]", i), err)
			}
		}
		if e.StoreDir == "" {
			add("nats.embedded.store_dir", errors.New("required (default <storage.dir>/nats)"))
		}
	}
	if n := c.NATS; n.CredsFile != "" {
		if _, err := os.Stat(n.CredsFile); err != nil {
			add("nats.creds_file", err)
		}
	}
	return errors.Join(errs...)
}

func checkHostPort(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	return nil
}

func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			if u.Host == "" {
				return fmt.Errorf("%q has no host", s)
			}
			return nil
		}
	}
	return fmt.Errorf("%q: scheme must be one of %s", s, strings.Join(schemes, ", "))
}
