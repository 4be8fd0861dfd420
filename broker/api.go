package broker

import (
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/broker/admin"
	"github.com/ferrymq/ferry/broker/config"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// The admin REST API (/api/v1 on the admin listener). Every route is a row
// of apiRoutes: the mux is built from it, and TestOpenAPIMatchesRoutes
// checks it against the embedded OpenAPI document, so neither can drift
// from the other. Handlers return an error; an *apiError becomes a problem
// object with its status and the parameter at fault, anything else a 500.

// API paging bounds.
const (
	// DefaultAPILimit is a list's page size when limit is not given.
	DefaultAPILimit = 100
	// MaxAPILimit is the largest page a list returns.
	MaxAPILimit = 1000
)

//go:embed openapi.json
var openAPIDoc []byte

// apiRoute is one endpoint of the admin API.
type apiRoute struct {
	method, path string
	handle       func(b *Broker, w http.ResponseWriter, r *http.Request) error
}

// apiRoutes is the admin API, in the order of the OpenAPI document.
func apiRoutes() []apiRoute {
	return []apiRoute{
		{"GET", "/api/v1/openapi.json", (*Broker).apiOpenAPI},
		{"GET", "/api/v1/info", (*Broker).apiInfo},
		{"GET", "/api/v1/stats", (*Broker).apiStats},
		{"GET", "/api/v1/config", (*Broker).apiConfig},
		{"POST", "/api/v1/reload", (*Broker).apiReload},
		{"GET", "/api/v1/clients", (*Broker).apiClients},
		{"GET", "/api/v1/clients/{id}", (*Broker).apiClient},
		{"POST", "/api/v1/clients/{id}/disconnect", (*Broker).apiDisconnect},
		{"POST", "/api/v1/clients/{id}/subscriptions", (*Broker).apiSubscribe},
		{"DELETE", "/api/v1/clients/{id}/subscriptions", (*Broker).apiUnsubscribe},
		{"GET", "/api/v1/sessions", (*Broker).apiSessions},
		{"GET", "/api/v1/subscriptions", (*Broker).apiSubscriptions},
		{"GET", "/api/v1/retained", (*Broker).apiRetainedList},
		{"DELETE", "/api/v1/retained", (*Broker).apiRetainedDelete},
		{"GET", "/api/v1/retained/message", (*Broker).apiRetainedGet},
		{"POST", "/api/v1/publish", (*Broker).apiPublish},
		{"GET", "/api/v1/bridges", (*Broker).apiBridges},
		{"POST", "/api/v1/bridges/{route}/pause", (*Broker).apiBridgePause},
		{"POST", "/api/v1/bridges/{route}/resume", (*Broker).apiBridgeResume},
		{"GET", "/api/v1/bridges/{route}/deadletters", (*Broker).apiDeadLetters},
		{"DELETE", "/api/v1/bridges/{route}/deadletters", (*Broker).apiDeadLettersPurge},
		{"POST", "/api/v1/bridges/{route}/deadletters/replay", (*Broker).apiDeadLettersReplay},
	}
}

// mountAPI adds the API to the admin endpoint, behind its token.
func (b *Broker) mountAPI() {
	if b.admin == nil {
		return
	}
	for _, rt := range apiRoutes() {
		h := rt.handle
		b.admin.Handle(rt.method+" "+rt.path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := h(b, w, r); err != nil {
				b.apiFail(w, r, err)
			}
		}))
	}
	// Anything else under /api/v1/ is a JSON 404 rather than the mux's
	// text one; a known path with another method stays the mux's 405.
	b.admin.Handle("/api/v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.WriteProblem(w, http.StatusNotFound, "", "no such API endpoint: "+r.URL.Path+" (see /api/v1/openapi.json)")
	}))
}

// apiError is an API error with its HTTP status and the parameter at fault.
type apiError struct {
	status int
	param  string
	detail string
}

func (e *apiError) Error() string { return e.detail }

// badParam is a 400 naming param; the detail starts with it.
func badParam(param, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, param: param, detail: param + ": " + fmt.Sprintf(format, args...)}
}

// notFound is a 404 naming the parameter that named what is missing.
func notFound(param, format string, args ...any) error {
	return &apiError{status: http.StatusNotFound, param: param, detail: fmt.Sprintf(format, args...)}
}

func (b *Broker) apiFail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		admin.WriteProblem(w, ae.status, ae.param, ae.detail)
		return
	}
	b.log.Error("admin API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	admin.WriteProblem(w, http.StatusInternalServerError, "", err.Error())
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// readBody decodes an optional JSON body into v (an absent or empty body
// leaves v as it is), refusing unknown fields and bodies over max bytes.
func readBody(w http.ResponseWriter, r *http.Request, max int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, max))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return badParam("body", "%v", err)
	}
	return nil
}

// list is a page of a list endpoint.
type list[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}

// page is a list request's limit and the key its cursor resumes after.
type page struct {
	limit int
	kind  string // the list the cursor belongs to
	after string // "" = from the start
}

// pageOf reads limit and cursor. A cursor is opaque to clients: the list's
// kind and the last key of the previous page, base64url-encoded. Lists are
// ordered by key, so a page resumes after that key even if items came or
// went in between.
func pageOf(r *http.Request, kind string) (page, error) {
	p := page{limit: DefaultAPILimit, kind: kind}
	q := r.URL.Query()
	if s, ok := q["limit"]; ok && s[0] != "" {
		n, err := strconv.Atoi(s[0])
		if err != nil || n < 1 || n > MaxAPILimit {
			return p, badParam("limit", "must be 1-%d, got %q", MaxAPILimit, s[0])
		}
		p.limit = n
	}
	if c := q.Get("cursor"); c != "" {
		raw, err := base64.RawURLEncoding.DecodeString(c)
		k, after, ok := strings.Cut(string(raw), ":")
		if err != nil || !ok || k != kind {
			return p, badParam("cursor", "%q is not a cursor of this list; pass next_cursor from the previous page", c)
		}
		p.after = after
	}
	return p, nil
}

// paginate returns the page of items (sorted by key) after p's cursor and
// the cursor of the next page ("" at the end).
func paginate[T any](items []T, key func(T) string, p page) list[T] {
	start := 0
	if p.after != "" {
		start, _ = slices.BinarySearchFunc(items, p.after, func(it T, k string) int { return strings.Compare(key(it), k) })
		if start < len(items) && key(items[start]) == p.after {
			start++
		}
	}
	end := min(start+p.limit, len(items))
	out := list[T]{Items: items[start:end]}
	if out.Items == nil {
		out.Items = []T{}
	}
	if end < len(items) {
		out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(p.kind + ":" + key(items[end-1])))
	}
	return out
}

// validFilter is mqtt.IsValidFilter plus the wildcard rules it lets pass
// (MQTT-4.7.1-1, -2): # only as the whole last level, + only as a whole
// level.
func validFilter(f string) bool {
	if !mqtt.IsValidFilter(f, false) {
		return false
	}
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		_, f, _ = strings.Cut(rest, "/")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if (strings.Contains(l, "#") && (l != "#" || i != len(levels)-1)) || (strings.Contains(l, "+") && l != "+") {
			return false
		}
	}
	return true
}

// boolParam reads an optional true/false query parameter.
func boolParam(r *http.Request, name string) (*bool, error) {
	s, ok := r.URL.Query()[name]
	if !ok || s[0] == "" {
		return nil, nil
	}
	v, err := strconv.ParseBool(s[0])
	if err != nil {
		return nil, badParam(name, "must be true or false, got %q", s[0])
	}
	return &v, nil
}

// rfc3339 formats t in UTC, nil when t is zero (JSON null).
func rfc3339(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func (b *Broker) apiOpenAPI(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDoc)
	return err
}

type listenerJSON struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Addr string `json:"addr"`
}

type websocketJSON struct {
	Addr string `json:"addr"`
	Path string `json:"path"`
	TLS  bool   `json:"tls"`
}

type infoJSON struct {
	Version   string         `json:"version"`
	Node      string         `json:"node"`
	StartedAt *string        `json:"started_at"`
	Listeners []listenerJSON `json:"listeners"`
	// Websocket is the first ws or wss listener, for browser clients
	// (the dashboard's live view); null without one.
	Websocket *websocketJSON `json:"websocket"`
}

func (b *Broker) apiInfo(w http.ResponseWriter, _ *http.Request) error {
	node, _ := os.Hostname()
	out := infoJSON{Version: Version(), Node: node, Listeners: []listenerJSON{},
		StartedAt: rfc3339(time.Unix(atomic.LoadInt64(&b.mochi.Info.Started), 0))}
	for _, l := range b.listeners {
		out.Listeners = append(out.Listeners, listenerJSON{ID: l.cfg.Name, Type: l.cfg.Type, Addr: l.Address()})
		if out.Websocket == nil && (l.cfg.Type == config.ListenerWS || l.cfg.Type == config.ListenerWSS) {
			path := l.cfg.Path
			if path == "" {
				path = "/"
			}
			out.Websocket = &websocketJSON{Addr: l.Address(), Path: path, TLS: l.cfg.Type == config.ListenerWSS}
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

type storageJSON struct {
	SizeBytes int64 `json:"size_bytes"`
	FreeBytes int64 `json:"free_bytes"`
}

type statsJSON struct {
	Connections   int64             `json:"connections"`
	Sessions      int64             `json:"sessions"`
	Subscriptions int64             `json:"subscriptions"`
	Retained      int64             `json:"retained"`
	MessagesIn    uint64            `json:"messages_in"`
	MessagesOut   uint64            `json:"messages_out"`
	BytesIn       uint64            `json:"bytes_in"`
	BytesOut      uint64            `json:"bytes_out"`
	Drops         map[string]uint64 `json:"drops"`
	Storage       storageJSON       `json:"storage"`
	UptimeSeconds int64             `json:"uptime_seconds"`
}

// apiStats reads the broker's totals from the metrics hook, so the API and
// /metrics never disagree: drops carry ferry_messages_dropped_total's
// reasons.
func (b *Broker) apiStats(w http.ResponseWriter, _ *http.Request) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(b.metrics); err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	out := statsJSON{Drops: map[string]uint64{}}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			switch mf.GetName() {
			case "ferry_connections":
				out.Connections = int64(v)
			case "ferry_sessions":
				out.Sessions = int64(v)
			case "ferry_subscriptions":
				out.Subscriptions = int64(v)
			case "ferry_retained_messages":
				out.Retained = int64(v)
			case "ferry_messages_received_total":
				out.MessagesIn += uint64(v)
			case "ferry_messages_sent_total":
				out.MessagesOut += uint64(v)
			case "ferry_received_bytes_total":
				out.BytesIn = uint64(v)
			case "ferry_sent_bytes_total":
				out.BytesOut = uint64(v)
			case "ferry_messages_dropped_total":
				for _, l := range m.GetLabel() {
					if l.GetName() == "reason" {
						out.Drops[l.GetValue()] = uint64(v)
					}
				}
			}
		}
	}
	if st := b.store.Load(); st != nil {
		size, err := st.Size()
		if err != nil {
			return err
		}
		out.Storage = storageJSON{SizeBytes: size, FreeBytes: st.Stats().FreeBytes}
	}
	if started := atomic.LoadInt64(&b.mochi.Info.Started); started > 0 {
		out.UptimeSeconds = time.Now().Unix() - started
	}
	return writeJSON(w, http.StatusOK, out)
}

func (b *Broker) apiReload(w http.ResponseWriter, _ *http.Request) error {
	if err := b.Reload(); err != nil {
		return &apiError{status: http.StatusUnprocessableEntity, detail: "reload refused, previous rules stay: " + err.Error()}
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"reloaded": true})
}
