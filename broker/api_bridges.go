package broker

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/bridge"
	mqtt "github.com/mochi-mqtt/server/v2"
	"gopkg.in/yaml.v3"
)

// Bridges, dead letters, publish and the effective configuration of the
// admin API.

type bridgeJSON struct {
	Route       string  `json:"route"`
	Direction   string  `json:"direction"`
	Connector   string  `json:"connector"`
	State       string  `json:"state"`
	Reason      string  `json:"reason"`
	Since       *string `json:"since"`
	Delivered   uint64  `json:"delivered"`
	Failed      uint64  `json:"failed"`
	Dead        uint64  `json:"dead"`
	LagMessages int64   `json:"lag_messages"`
	LagSeconds  float64 `json:"lag_seconds"`
	OutboxBytes int64   `json:"outbox_bytes"`
}

// apiBridges lists every route's state; the list is the configuration's,
// short enough to need no paging.
func (b *Broker) apiBridges(w http.ResponseWriter, _ *http.Request) error {
	out := list[bridgeJSON]{Items: []bridgeJSON{}}
	if b.bridge != nil {
		for _, s := range b.bridge.Status() {
			out.Items = append(out.Items, bridgeJSON{Route: s.Route, Direction: string(s.Direction), Connector: s.Connector,
				State: s.State, Reason: s.Reason, Since: rfc3339(s.Since), Delivered: s.Delivered, Failed: s.Failed,
				Dead: s.Dead, LagMessages: s.LagMessages, LagSeconds: s.LagSeconds, OutboxBytes: s.OutboxBytes})
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// bridgeErr maps the bridge's errors on a route named in the path.
func bridgeErr(route string, err error) error {
	switch {
	case errors.Is(err, bridge.ErrUnknownRoute):
		return notFound("route", "no bridge route %q", route)
	case errors.Is(err, bridge.ErrNoDeadLetters):
		return &apiError{status: http.StatusConflict, param: "route", detail: err.Error()}
	}
	return err
}

// routeOf is the bridge route named by the path, checked to exist.
func (b *Broker) routeOf(r *http.Request) (string, error) {
	route := r.PathValue("route")
	if b.bridge == nil {
		return route, notFound("route", "no bridge route %q: no bridges are configured", route)
	}
	return route, nil
}

func (b *Broker) apiBridgePause(w http.ResponseWriter, r *http.Request) error {
	return b.routeDo(w, r, func(route string) error { return b.bridge.Pause(route) })
}

func (b *Broker) apiBridgeResume(w http.ResponseWriter, r *http.Request) error {
	return b.routeDo(w, r, func(route string) error { return b.bridge.Resume(route) })
}

// routeDo applies fn to the path's route and answers 204.
func (b *Broker) routeDo(w http.ResponseWriter, r *http.Request, fn func(route string) error) error {
	route, err := b.routeOf(r)
	if err != nil {
		return err
	}
	if err := fn(route); err != nil {
		return bridgeErr(route, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type deadLetterJSON struct {
	Seq      uint64 `json:"seq"`
	ID       string `json:"id"`
	Topic    string `json:"topic"`
	ClientID string `json:"client_id"`
	Created  string `json:"created"`
	Reason   string `json:"reason"`
	Payload  []byte `json:"payload"`
}

// apiDeadLetters lists a route's dead letters:
// ?after=SEQ&limit=N, a JSON array in seq order (what `ferry dlq list`
// reads); the next page starts after the last seq.
func (b *Broker) apiDeadLetters(w http.ResponseWriter, r *http.Request) error {
	route, err := b.routeOf(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return badParam("after", "must be a sequence number, got %q", s)
		}
	}
	p, err := pageOf(r, "deadletters")
	if err != nil {
		return err
	}
	dls, err := b.bridge.DeadLetters(route, after, p.limit)
	if err != nil {
		return bridgeErr(route, err)
	}
	out := make([]deadLetterJSON, 0, len(dls))
	for _, d := range dls {
		out = append(out, deadLetterJSON{Seq: d.Seq, ID: d.ID, Topic: d.Topic, ClientID: d.ClientID,
			Created: d.Created.UTC().Format("2006-01-02T15:04:05.000Z"), Reason: d.Reason, Payload: d.Payload})
	}
	return writeJSON(w, http.StatusOK, out)
}

// seqsRequest is the optional body of replay and purge: the dead letters'
// seqs, none for all of them.
type seqsRequest struct {
	Seqs []uint64 `json:"seqs"`
}

// apiDeadLettersReplay puts dead letters back at the end of the outbox.
func (b *Broker) apiDeadLettersReplay(w http.ResponseWriter, r *http.Request) error {
	return b.deadLettersDo(w, r, "replayed", func(route string, seqs []uint64) (int, error) {
		return b.bridge.Replay(r.Context(), route, seqs)
	})
}

// apiDeadLettersPurge deletes a route's dead letters for good.
func (b *Broker) apiDeadLettersPurge(w http.ResponseWriter, r *http.Request) error {
	return b.deadLettersDo(w, r, "purged", func(route string, seqs []uint64) (int, error) {
		return b.bridge.PurgeDeadLetters(r.Context(), route, seqs)
	})
}

// deadLettersDo applies fn to the dead letters of the path's route that
// the body names (all when it names none) and answers {key: how many}.
func (b *Broker) deadLettersDo(w http.ResponseWriter, r *http.Request, key string, fn func(route string, seqs []uint64) (int, error)) error {
	route, err := b.routeOf(r)
	if err != nil {
		return err
	}
	var req seqsRequest
	if err := readBody(w, r, 1<<20, &req); err != nil {
		return err
	}
	n, err := fn(route, req.Seqs)
	if err != nil {
		return bridgeErr(route, err)
	}
	return writeJSON(w, http.StatusOK, map[string]int{key: n})
}

// publishRequest is the body of POST /api/v1/publish.
type publishRequest struct {
	Topic string `json:"topic"`
	// Payload is the message as text; PayloadBase64 as base64 for binary
	// payloads. At most one.
	Payload        *string           `json:"payload"`
	PayloadBase64  []byte            `json:"payload_base64"`
	QoS            byte              `json:"qos"`
	Retain         bool              `json:"retain"`
	UserProperties map[string]string `json:"user_properties"`
}

// apiPublish lets services without MQTT send to devices:
//
//	POST /api/v1/publish  {"topic": "devices/d1/commands", "payload": "reboot", "qos": 1}
//
// The message is published as the bridge identity (bridge_identity); the
// admin token guards the endpoint like the rest of the API.
func (b *Broker) apiPublish(w http.ResponseWriter, r *http.Request) error {
	var req publishRequest
	if err := readBody(w, r, int64(*b.cfg.Limits.MaxPacketSize)+4096, &req); err != nil {
		return err
	}
	var payload []byte
	switch {
	case req.Payload != nil && req.PayloadBase64 != nil:
		return badParam("payload", "payload and payload_base64 are exclusive")
	case req.Payload != nil:
		payload = []byte(*req.Payload)
	default:
		payload = req.PayloadBase64
	}
	if req.QoS > 2 {
		return badParam("qos", "must be 0, 1 or 2")
	}
	if req.Topic == "" || !mqtt.IsValidFilter(req.Topic, true) {
		return badParam("topic", "%q is not a valid topic name", req.Topic)
	}
	m := bridge.Message{Topic: req.Topic, Payload: payload, QoS: req.QoS, Retain: req.Retain}
	for k, v := range req.UserProperties {
		m.UserProperties = append(m.UserProperties, bridge.Property{Key: k, Value: v})
	}
	if err := b.publisher.Publish(r.Context(), m); err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, errDenied) {
			code = http.StatusForbidden
		}
		return &apiError{status: code, param: "topic", detail: err.Error()}
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"published": true})
}

// Redacted replaces secrets in GET /api/v1/config.
const Redacted = "REDACTED"

// apiConfig answers the effective configuration (file, environment and
// flags merged, defaults applied) as JSON with the YAML file's names, its
// secrets replaced by Redacted.
func (b *Broker) apiConfig(w http.ResponseWriter, _ *http.Request) error {
	raw, err := yaml.Marshal(b.cfg)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return writeJSON(w, http.StatusOK, redact("", tree))
}

// secretKey says whether a setting named key holds a secret. Paths to
// files holding secrets (password_file, secret_file) are not secrets.
func secretKey(key string) bool {
	k := strings.ToLower(key)
	if strings.HasSuffix(k, "_file") || strings.HasSuffix(k, "_files") {
		return false
	}
	for _, s := range []string{"token", "password", "passwd", "passcode", "secret", "credential", "api_key", "apikey",
		"private_key", "authorization", "sasl"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// redact returns v with the values of secret keys, every HTTP header value
// (headers carry API keys under any name) and the passwords of URLs (DSN
// credentials) replaced by Redacted.
func redact(key string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			switch {
			case e == nil || e == "":
				out[k] = e
			case secretKey(k) || strings.EqualFold(key, "headers"):
				out[k] = Redacted
			default:
				out[k] = redact(k, e)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = redact(key, e)
		}
		return out
	case string:
		if strings.Contains(t, ",") {
			// A list of URLs (cluster.nats.url): each may hold a password.
			parts := strings.Split(t, ",")
			for i, p := range parts {
				parts[i] = redactURL(p)
			}
			return strings.Join(parts, ",")
		}
		return redactURL(t)
	}
	return v
}

// redactURL replaces the password of s, if it is a URL with one.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Redacted)
			return u.String()
		}
	}
	return s
}
