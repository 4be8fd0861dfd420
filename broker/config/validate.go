package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/broker/connectors"
	"github.com/ferrymq/ferry/cluster"
)

// FieldError is one problem with one configuration field.
type FieldError struct {
	// File and Line locate the field in the YAML file, when known.
	File string
	Line int
	// Source names where the value came from when it was not the file: an
	// environment variable (FERRY_MQTT_MAX_QOS=5) or a flag
	// (--mqtt-addr=":99999").
	Source string
	// Path is the field's YAML path, e.g. listeners[1].addr.
	Path string
	Err  error

	// section errors (a connector's) carry yaml.v3's own location, relative
	// to the section, until annotate places them in the file.
	relLine int
	key     string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	} else if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *FieldError) Unwrap() error { return e.Err }

// Protocol bounds.
const (
	// MaxPacketSizeLimit is the largest packet MQTT can frame.
	MaxPacketSizeLimit = 268435455
	minPacketSize      = 64
)

// Validate reports every problem in c (after WithDefaults) joined into one
// error of *FieldError values; nil if c is usable.
func (c Config) Validate() error {
	v := &validator{}
	v.listeners(c.Listeners)

	m := c.MQTT
	v.intRange("mqtt.max_qos", *m.MaxQoS, 0, 2)
	v.intRange("mqtt.topic_alias_maximum", *m.TopicAliasMaximum, 0, 65535)
	v.intRange("mqtt.receive_maximum", m.ReceiveMaximum, 1, 65535)
	v.durationMin("mqtt.max_session_expiry", m.MaxSessionExpiry, 0)
	v.durationMin("mqtt.max_message_expiry", m.MaxMessageExpiry, 0)
	v.durationMin("mqtt.sys_interval", m.SysInterval, time.Second)

	l := c.Limits
	if *l.MaxPacketSize != 0 {
		v.intRange("limits.max_packet_size", *l.MaxPacketSize, minPacketSize, MaxPacketSizeLimit)
	}
	v.intRange("limits.max_connections", l.MaxConnections, 0, 1<<31-1)
	v.intRange("limits.max_connections_per_ip", l.MaxConnectionsPerIP, 0, 1<<31-1)
	if l.ConnectionRatePerIP < 0 {
		v.add("limits.connection_rate_per_ip", fmt.Errorf("%v must not be negative", l.ConnectionRatePerIP))
	}
	v.intRange("limits.max_inflight", l.MaxInflight, 1, 65535)
	v.intRange("limits.memory_window", l.MemoryWindow, 1, 65535)
	v.intRange("limits.client_writes_pending", l.ClientWritesPending, 1, 1<<20)
	switch l.OverflowPolicy {
	case "block-publisher", "drop-newest", "drop-oldest":
	default:
		v.add("limits.overflow_policy", fmt.Errorf("must be block-publisher, drop-newest or drop-oldest; got %q", l.OverflowPolicy))
	}
	v.intRange("limits.max_queued_messages", l.MaxQueuedMessages, 1, 1<<31-1)
	if l.MaxQueuedBytes < 1 {
		v.add("limits.max_queued_bytes", fmt.Errorf("%d must be at least 1", l.MaxQueuedBytes))
	}
	v.durationMin("limits.overflow_wait", l.OverflowWait, time.Millisecond)
	v.intRange("limits.read_buffer_size", l.ReadBufferSize, 256, 16<<20)
	v.intRange("limits.write_buffer_size", l.WriteBufferSize, 256, 16<<20)
	v.durationMin("limits.close_linger", l.CloseLinger, 0)
	if l.IdleParkAfter > 0 && l.IdleParkAfter < 10*time.Millisecond {
		v.add("limits.idle_park_after", fmt.Errorf("%s is less than the minimum 10ms (negative: never)", l.IdleParkAfter))
	}
	v.durationMin("limits.connect_timeout", l.ConnectTimeout, 100*time.Millisecond)
	v.durationMin("limits.write_timeout", l.WriteTimeout, 100*time.Millisecond)
	if l.ResendAfter > 0 && l.ResendAfter < 100*time.Millisecond {
		v.add("limits.resend_after", fmt.Errorf("%s is less than the minimum 100ms (negative: never)", l.ResendAfter))
	}
	if err := l.Config.Validate(); err != nil {
		v.nested("limits", err)
	}

	if err := c.Storage.Validate(); err != nil {
		v.nested("storage", err)
	}
	if err := c.Auth.Validate(); err != nil {
		v.nested("auth", err)
	}
	if len(c.Bridges) > 0 {
		if err := c.Bridges.ValidateWith(connectors.Factories()); err != nil {
			v.bridges(err)
		}
	}
	if a := *c.Admin.Addr; a != "" {
		v.hostPort("admin.addr", a)
		if c.Admin.Token == "" && !c.Admin.AllowUnauthenticated && !LoopbackAddr(a) {
			v.add("admin.token", fmt.Errorf("required because admin.addr %q is reachable from other hosts: set admin.token "+
				"(or FERRY_ADMIN_TOKEN), bind admin.addr to 127.0.0.1, or set admin.allow_unauthenticated: true if a proxy authenticates", a))
		}
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.Log.Level)); err != nil {
		v.add("log.level", fmt.Errorf("must be debug, info, warn or error; got %q", c.Log.Level))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		v.add("log.format", fmt.Errorf("must be text or json; got %q", c.Log.Format))
	}
	v.durationMin("shutdown.timeout", c.Shutdown.Timeout, 100*time.Millisecond)
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			v.cluster(err)
		}
	}
	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) add(path string, err error) {
	v.errs = append(v.errs, &FieldError{Path: path, Err: err})
}

// nested adds the problems a section's own Validate found; each of their
// texts starts with the field's path inside the section.
func (v *validator) nested(section string, err error) {
	for _, e := range flatten(err) {
		path, msg, ok := strings.Cut(e.Error(), ": ")
		if !ok || strings.ContainsAny(path, " \t") {
			v.add(section, e)
			continue
		}
		sep := "."
		if strings.HasPrefix(path, "[") {
			sep = ""
		}
		v.add(section+sep+path, errors.New(msg))
	}
}

// cluster adds the cluster section's problems, each under "cluster." at
// the path cluster.Validate gave it.
func (v *validator) cluster(err error) {
	for _, e := range flatten(err) {
		var fe *cluster.FieldError
		if !errors.As(e, &fe) {
			v.add("cluster", e)
			continue
		}
		v.add("cluster."+fe.Path, fe.Err)
	}
}

// bridges adds the bridge's problems: the routes' own and their connector
// sections'. A section is decoded by its connector, so yaml.v3's messages
// in it ("line 2: field adr not found in type redis.Config") are relative
// to the section and name Go types: they are turned into the field's path
// and an explanation, and annotate finds their line in the file.
func (v *validator) bridges(err error) {
	for _, e := range flatten(err) {
		var fe *bridge.FieldError
		if !errors.As(e, &fe) {
			v.nested("bridges", e)
			continue
		}
		path := "bridges" + fe.Path
		route := ""
		if fe.Route != "" {
			route = "route " + strconv.Quote(fe.Route) + ": "
		}
		found := false
		for _, m := range yamlMsgRe.FindAllStringSubmatch(fe.Err.Error(), -1) {
			found = true
			line, _ := strconv.Atoi(m[1])
			text, key := explainYAML(m[2])
			v.errs = append(v.errs, &FieldError{Path: path, Err: errors.New(route + text), relLine: line, key: key})
		}
		if !found {
			v.add(path, errors.New(route+fe.Err.Error()))
		}
	}
}

// flatten lists the errors joined in err, at any depth.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, flatten(e)...)
	}
	return out
}

func (v *validator) intRange(path string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(path, fmt.Errorf("%d is out of range [%d, %d]", n, lo, hi))
	}
}

func (v *validator) durationMin(path string, d, lo time.Duration) {
	if d < lo {
		v.add(path, fmt.Errorf("%s is less than the minimum %s", d, lo))
	}
}

// LoopbackAddr says whether host:port addr listens on loopback only: an
// empty or wildcard host listens on every interface, and a host name other
// than localhost may resolve to anything.
func LoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (v *validator) hostPort(path, addr string) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(path, fmt.Errorf("%q is not host:port", addr))
		return
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		v.add(path, fmt.Errorf("port %q in %q is not a number from 0 to 65535", port, addr))
	}
}

func (v *validator) listeners(ls []Listener) {
	if len(ls) == 0 {
		v.add("listeners", errors.New("at least one listener is required"))
		return
	}
	names := map[string]int{}
	for i, l := range ls {
		p := fmt.Sprintf("listeners[%d]", i)
		if j, dup := names[l.Name]; dup {
			v.add(p+".name", fmt.Errorf("%q is already the name of listeners[%d]", l.Name, j))
		}
		names[l.Name] = i
		for j, o := range ls[:i] {
			if sameAddress(l, o) {
				v.add(p+".addr", fmt.Errorf("%q is already the address of listeners[%d] (%s): two listeners cannot bind it", l.Addr, j, o.Name))
				break
			}
		}
		secure := l.Type == ListenerTLS || l.Type == ListenerWSS
		switch l.Type {
		case ListenerTCP, ListenerTLS, ListenerWS, ListenerWSS:
			if l.Addr == "" {
				v.add(p+".addr", errors.New("must not be empty"))
			} else {
				v.hostPort(p+".addr", l.Addr)
			}
		case ListenerUnix:
			if l.Addr == "" {
				v.add(p+".addr", errors.New("must be a socket path"))
			} else if fi, err := os.Stat(filepath.Dir(l.Addr)); err != nil || !fi.IsDir() {
				v.add(p+".addr", fmt.Errorf("directory of socket %q does not exist", l.Addr))
			}
		default:
			v.add(p+".type", fmt.Errorf("must be one of tcp, tls, ws, wss, unix; got %q", l.Type))
			continue
		}
		if !secure {
			for _, f := range []struct{ name, val string }{{"cert", l.Cert}, {"key", l.Key}, {"client_ca", l.ClientCA}} {
				if f.val != "" {
					v.add(p+"."+f.name, fmt.Errorf("only applies to tls and wss listeners, this one is %s", l.Type))
				}
			}
			continue
		}
		if l.Cert == "" {
			v.add(p+".cert", fmt.Errorf("a %s listener needs a certificate file", l.Type))
		}
		if l.Key == "" {
			v.add(p+".key", fmt.Errorf("a %s listener needs a key file", l.Type))
		}
		if l.Cert != "" && l.Key != "" {
			if err := fileReadable(l.Cert); err != nil {
				v.add(p+".cert", err)
			} else if err := fileReadable(l.Key); err != nil {
				v.add(p+".key", err)
			} else if _, err := tls.LoadX509KeyPair(l.Cert, l.Key); err != nil {
				v.add(p+".cert", fmt.Errorf("load %s with %s: %w", l.Cert, l.Key, err))
			}
		}
		if l.ClientCA != "" {
			if _, err := LoadCertPool(l.ClientCA); err != nil {
				v.add(p+".client_ca", err)
			}
		}
	}
}

// sameAddress reports whether two listeners would bind the same socket: the
// same unix path, or the same TCP port on the same host or on a wildcard
// host ("", 0.0.0.0, ::), which takes the port on every address. Port 0
// lets the system pick a free port each time.
func sameAddress(a, b Listener) bool {
	if (a.Type == ListenerUnix) != (b.Type == ListenerUnix) {
		return false
	}
	if a.Type == ListenerUnix {
		return a.Addr != "" && filepath.Clean(a.Addr) == filepath.Clean(b.Addr)
	}
	ah, ap, err1 := net.SplitHostPort(a.Addr)
	bh, bp, err2 := net.SplitHostPort(b.Addr)
	if err1 != nil || err2 != nil || ap != bp || ap == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" || h == "[::]" }
	return ah == bh || wild(ah) || wild(bh)
}

func fileReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// LoadCertPool reads a PEM bundle of CA certificates.
func LoadCertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
