// Package admin is Ferry's operator HTTP endpoint: liveness, readiness,
// Prometheus metrics, the web dashboard (ui.go) and, when enabled, pprof.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is the admin endpoint's configuration.
type Config struct {
	// Addr is host:port to listen on.
	Addr string
	// Token, when set, is required as a bearer token on every path except
	// /healthz and /readyz, which orchestrators probe without credentials.
	Token string
	// Pprof mounts net/http/pprof under /debug/pprof/.
	Pprof bool
}

// Server serves the admin endpoint.
type Server struct {
	cfg   Config
	ready func() error
	mux   *http.ServeMux
	// patterns are those mounted with Handle.
	patterns []string
	hs       *http.Server
	ln       net.Listener
	log      *slog.Logger
}

// New builds the endpoint; ready reports why the broker is not ready (nil
// when it is); metrics are gathered from g.
func New(cfg Config, ready func() error, g prometheus.Gatherer, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, ready: ready, mux: http.NewServeMux(), log: log}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	ui := uiHandler() // the dashboard; its API calls carry the token
	s.mux.Handle("GET /{$}", ui)
	s.mux.Handle("GET /ui/", ui)
	s.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if cfg.Pprof {
		s.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		s.Handle("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
		s.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		s.Handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
		s.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	}
	return s
}

// Handle mounts h at pattern behind the bearer token, if one is configured.
// Call it before Start.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.patterns = append(s.patterns, pattern)
	s.mux.Handle(pattern, s.authorize(h))
}

// Patterns lists the patterns mounted with Handle, in order: what the
// OpenAPI document is checked against.
func (s *Server) Patterns() []string { return append([]string(nil), s.patterns...) }

// Problem is an RFC 9457 problem object, the body of every API error.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Param names the query parameter, path segment or body field at fault.
	Param string `json:"param,omitempty"`
}

// WriteProblem answers with a problem object (application/problem+json).
func WriteProblem(w http.ResponseWriter, status int, param, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: "about:blank", Title: http.StatusText(status), Status: status,
		Detail: detail, Param: param})
}

func (s *Server) authorize(h http.Handler) http.Handler {
	if s.cfg.Token == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
			WriteProblem(w, http.StatusUnauthorized, "Authorization", "a valid \"Authorization: Bearer TOKEN\" header (admin.token) is required")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Start listens and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	if s.cfg.Token == "" && !loopback(ln.Addr()) {
		s.log.Warn("admin endpoint has no token and is reachable beyond this host; set admin.token",
			"addr", ln.Addr().String())
	}
	s.hs = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	go func() {
		if err := s.hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin endpoint stopped", "err", err)
		}
	}()
	s.log.Info("admin listening", "addr", ln.Addr().String())
	return nil
}

func loopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// Addr is the bound address, "" before Start.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops the endpoint, waiting for requests in progress until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.hs == nil {
		return nil
	}
	if err := s.hs.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}
