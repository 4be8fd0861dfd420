package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// HookID is the mochi hook ID of Hook.
const HookID = "ferry-auth"

// Authentication methods, as used in logs.
const (
	methodAnonymous = "anonymous"
	methodPassword  = "password"
	methodJWT       = "jwt"
	methodHTTP      = "http"
	methodTLS       = "tls"
)

// Hook is Ferry's authentication and authorization mochi hook. Add it as
// the only hook that provides OnConnectAuthenticate and OnACLCheck: mochi
// lets a client in if any hook says yes, so mochi's AllowHook beside it
// would open the broker.
//
// Its methods are safe for concurrent use. OnConnectAuthenticate may block
// the connecting client's goroutine for up to the HTTP timeout when the HTTP
// callout is configured; OnACLCheck never blocks and does not allocate in
// the steady state.
type Hook struct {
	mqtt.HookBase
	cfg     Config // defaults applied
	enabled bool
	log     *slog.Logger
	http    *httpAuth

	state    atomic.Pointer[state]
	reloadMu sync.Mutex
	// clients holds the identity of each session, by client id, from
	// CONNECT until the session ends (session.go).
	clients  sync.Map // client id -> *identity
	sessions func(clientID string) (*mqtt.Client, bool)
	stats    counters
}

// state is what Reload swaps: everything read from files.
type state struct {
	passwords *Passwords   // nil: no password file
	acl       *aclSet      // nil: no ACL; authenticated clients may do anything
	jwt       *jwtVerifier // nil: JWT not configured
}

// identity is what a client proved at CONNECT.
type identity struct {
	cl       *mqtt.Client // guards against a later client with the same id; nil when restored from storage
	username string       // "" for anonymous clients
	clientID string
	cn       string // verified client certificate's common name, if any
	method   string
	claims   map[string]any            // JWT claims, for %{claim:NAME}
	acl      atomic.Pointer[clientACL] // rules resolved for this client; rebuilt after Reload
}

// New builds the hook from cfg, loading every file it names. A bad file
// yields an error naming the field, the file and the line. A nil logger
// discards logs.
func New(cfg Config, logger *slog.Logger) (*Hook, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg = cfg.withDefaults()
	st, err := load(cfg)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	h := &Hook{cfg: cfg, enabled: cfg.Enabled(), log: logger}
	h.state.Store(st)
	if cfg.HTTP.URL != "" {
		h.http = newHTTPAuth(cfg.HTTP)
		if u, _ := url.Parse(cfg.HTTP.URL); u != nil && u.Scheme == "http" && !isLoopback(u.Hostname()) {
			logger.Warn("auth: the HTTP callout sends passwords in clear text; use https", "url", u.Redacted())
		}
	}
	if !h.enabled {
		logger.Warn("auth: no authentication configured: every client may connect, publish and subscribe")
	}
	return h, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ID returns HookID.
func (h *Hook) ID() string { return HookID }

// Provides reports the events the hook handles: OnConnectAuthenticate,
// OnACLCheck, OnDisconnect and OnClientExpired.
func (h *Hook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect || b == mqtt.OnClientExpired
}

// Stop releases the HTTP callout's idle connections. mochi calls it when
// the server closes.
func (h *Hook) Stop() error {
	if h.http != nil {
		h.http.client.CloseIdleConnections()
	}
	return nil
}

// Reload re-reads the password file, the ACL file and the JWT key files. If
// any is bad, it returns the error and keeps the rules in force. New rules
// apply to connected clients from their next ACL check; connected clients
// are not re-authenticated.
func (h *Hook) Reload() error {
	h.reloadMu.Lock()
	defer h.reloadMu.Unlock()
	st, err := load(h.cfg)
	if err != nil {
		h.log.Error("auth: reload refused, previous rules stay", "err", err)
		return fmt.Errorf("auth: reload: %w", err)
	}
	h.state.Store(st)
	h.log.Info("auth: reloaded")
	return nil
}

// connectionStater is implemented by *tls.Conn and by Ferry's connection
// wrapper on TLS listeners.
type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

// verifiedCert returns the client certificate of a TLS connection if it was
// verified against the listener's client CA, else nil.
func verifiedCert(c net.Conn) *x509.Certificate {
	cs, ok := c.(connectionStater)
	if !ok {
		return nil
	}
	st := cs.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return nil
	}
	return st.VerifiedChains[0][0]
}

func certName(c *x509.Certificate, field string) string {
	switch field {
	case TLSUsernameCN:
		return c.Subject.CommonName
	case TLSUsernameSANDNS:
		if len(c.DNSNames) > 0 {
			return c.DNSNames[0]
		}
	case TLSUsernameSANEmail:
		if len(c.EmailAddresses) > 0 {
			return c.EmailAddresses[0]
		}
	}
	return ""
}

// OnConnectAuthenticate decides whether a client may connect. In order:
//
//  1. With tls_username set and a verified client certificate, the
//     certificate alone authenticates; its field is the user name.
//  2. A client with neither user name nor password is anonymous: allowed
//     only with allow_anonymous.
//  3. Otherwise the password file, then JWT (when the password looks like a
//     JWT), then the HTTP callout are tried; the first that accepts wins.
//     Credentials no method accepts are refused, even with allow_anonymous.
//
// A client whose will message it could not publish is refused too, because
// mochi publishes wills without an ACL check. So is a client whose client id
// names a session of another identity (see session.go), with CONNACK 0x87
// (MQTT 3: 0x05), unless allow_session_takeover is set.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if !h.enabled {
		return true
	}
	id, tried := h.authenticate(cl, pk)
	if id == nil {
		h.stats.refused.Add(1)
		for _, m := range tried {
			h.stats.method(m).failure.Add(1)
		}
		// The broker logs the refusal at info with the user name tried;
		// which methods were tried is detail.
		h.log.Debug("auth: connection refused", "client_id", cl.ID, "remote", cl.Net.Remote, "tried", strings.Join(tried, ","))
		return false
	}
	if pk.Connect.WillFlag && (isSysTopic(pk.Connect.WillTopic) || !h.allowed(id, pk.Connect.WillTopic, true)) {
		h.stats.refused.Add(1)
		h.stats.aclPublish.Add(1)
		h.log.Info("auth: connection refused: will topic not allowed", "client_id", cl.ID, "topic", pk.Connect.WillTopic)
		return false
	}
	if !h.cfg.AllowSessionTakeover {
		if owner := h.sessionOwner(cl.ID); owner != nil && owner.username != id.username {
			h.stats.refused.Add(1)
			h.stats.takeover.Add(1)
			h.log.Info("auth: connection refused: the client id's session belongs to another identity",
				"client_id", cl.ID, "remote", cl.Net.Remote, "method", id.method)
			h.refuseTakeover(cl)
			return false
		}
	}
	h.stats.method(id.method).success.Add(1)
	h.clients.Store(cl.ID, id)
	h.log.Debug("auth: connected", "client_id", cl.ID, "method", id.method)
	return true
}

// authenticate returns the client's identity, or nil and the methods tried.
func (h *Hook) authenticate(cl *mqtt.Client, pk packets.Packet) (*identity, []string) {
	id := &identity{cl: cl, clientID: cl.ID}
	cert := verifiedCert(cl.Net.Conn)
	if cert != nil {
		id.cn = cert.Subject.CommonName
	}
	if h.cfg.TLSUsername != "" && cert != nil {
		id.username, id.method = certName(cert, h.cfg.TLSUsername), methodTLS
		if id.username == "" {
			return nil, []string{methodTLS}
		}
		return id, nil
	}
	user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
	if (user == "" && pass == "") || !h.cfg.hasCredentialMethod() {
		// Without any credential method a user name cannot be verified, so
		// it is ignored: the client is anonymous.
		id.method = methodAnonymous
		if !h.cfg.AllowAnonymous {
			return nil, []string{methodAnonymous}
		}
		return id, nil
	}
	st := h.state.Load()
	var tried []string
	if st.passwords != nil && user != "" {
		tried = append(tried, methodPassword)
		if st.passwords.Check(user, pass) {
			id.username, id.method = user, methodPassword
			return id, nil
		}
	}
	if st.jwt != nil && looksLikeJWT(pass) {
		tried = append(tried, methodJWT)
		name, claims, err := st.jwt.verify(pass)
		if err == nil {
			id.username, id.method, id.claims = name, methodJWT, claims
			return id, nil
		}
		h.log.Debug("auth: jwt refused", "client_id", cl.ID, "err", err)
	}
	if h.http != nil {
		tried = append(tried, methodHTTP)
		req := httpRequest{ClientID: cl.ID, Username: user, Password: pass, RemoteAddr: cl.Net.Remote}
		if cert != nil {
			req.TLSSubject = cert.Subject.String()
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.HTTP.Timeout)
		ok, err := h.http.check(ctx, req)
		cancel()
		if err != nil {
			// Fail closed: an unreachable endpoint lets nobody in by HTTP.
			h.log.Warn("auth: http callout failed", "client_id", cl.ID, "err", err)
		}
		if ok {
			id.username, id.method = user, methodHTTP
			return id, nil
		}
	}
	return nil, tried
}

// OnDisconnect forgets the client's identity when its session ends with
// the connection. A persistent session keeps it: its owner, and the rules
// its queued messages are checked against.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.IsTakenOver() {
		return
	}
	if v, ok := h.clients.Load(cl.ID); ok && v.(*identity).cl == cl {
		h.clients.CompareAndDelete(cl.ID, v)
	}
}

// OnACLCheck decides whether the client may publish to topic (write) or
// subscribe to the filter or receive a message on the topic (!write). mochi
// calls it with write false both for SUBSCRIBE filters and for every message
// delivered, so a subscription that is only partly readable is granted and
// the unreadable messages are dropped at delivery. Publishing to $SYS is
// always denied. Clients this hook did not authenticate are denied.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true // the broker's own inline client
	}
	if write && isSysTopic(topic) {
		h.stats.aclPublish.Add(1)
		return false
	}
	if !h.enabled {
		return true
	}
	id := h.identityOf(cl, write)
	if id == nil {
		h.deny(cl, topic, write)
		return false
	}
	if !h.allowed(id, topic, write) {
		h.deny(cl, topic, write)
		return false
	}
	return true
}

func (h *Hook) deny(cl *mqtt.Client, topic string, write bool) {
	switch {
	case write:
		h.stats.aclPublish.Add(1)
	case isFilter(topic):
		h.stats.aclSubscribe.Add(1)
	default:
		h.stats.aclRead.Add(1)
	}
	// Enabled first: building the attributes would allocate on the hot path.
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("auth: acl denied", "client_id", cl.ID, "topic", topic, "write", write)
	}
}

// isSysTopic matches what mochi refuses to let clients publish to: any
// topic starting with "$SYS", in any case.
func isSysTopic(t string) bool {
	return len(t) >= 4 && strings.EqualFold(t[:4], "$SYS")
}

func isFilter(s string) bool {
	return strings.HasPrefix(s, "$share/") || strings.ContainsAny(s, "+#")
}

// allowed evaluates the ACL for one identity.
func (h *Hook) allowed(id *identity, topic string, write bool) bool {
	set := h.state.Load().acl
	if set == nil {
		return true
	}
	ca := id.acl.Load()
	if ca == nil || ca.set != set {
		// First check, or the rules were reloaded: resolve them for this
		// client once; later checks reuse the result.
		ca = set.resolve(id)
		id.acl.Store(ca)
	}
	if write {
		return ca.allowTopic(topic, accessWrite)
	}
	f, ok := stripShare(topic)
	if !ok {
		return false
	}
	if strings.ContainsAny(f, "+#") {
		return ca.allowSubscribe(f)
	}
	return ca.allowTopic(f, accessRead)
}

var _ mqtt.Hook = (*Hook)(nil)
