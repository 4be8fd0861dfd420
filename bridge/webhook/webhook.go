package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/bridge"
)

// Defaults and limits.
const (
	// DefaultBatchSize is the most messages per request.
	DefaultBatchSize = 100
	// DefaultTimeout bounds one request, response included.
	DefaultTimeout = 10 * time.Second
	// MaxBatchSize is the largest batch_size accepted.
	MaxBatchSize = 10000
	// errBodyLimit is how much of an error response is kept for the
	// dead-letter reason.
	errBodyLimit = 256
)

// Config is the connector's section, e.g.
//
//	webhook: {url: "https://api.example.com/ingest", secret_file: /run/secrets/wh, batch_size: 50, linger: 20ms}
type Config struct {
	// URL receives the POSTs (http or https).
	URL string `yaml:"url"`
	// Secret signs requests: "whsec_<base64>" (or bare base64). SecretFile
	// reads it from a file instead; never both. One of them is required
	// unless Unsigned is set.
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
	// Unsigned sends requests without a signature: it must be asked for,
	// so that a forgotten secret is a configuration error rather than
	// requests anyone could forge.
	Unsigned bool `yaml:"unsigned"`
	// Headers are added to every request.
	Headers   map[string]string `yaml:"headers"`
	BatchSize int               `yaml:"batch_size"`
	// Linger is how long a batch waits to fill; 0 sends what is there.
	Linger  time.Duration `yaml:"linger"`
	Timeout time.Duration `yaml:"timeout"`
}

// Connector is the webhook connector.
type Connector struct {
	cfg    Config
	key    []byte // HMAC key; nil: unsigned
	client *http.Client
	tr     *http.Transport
	log    *slog.Logger
	now    func() time.Time
}

var (
	_ bridge.Connector = (*Connector)(nil)
	_ bridge.Batcher   = (*Connector)(nil)
	_ bridge.Factory   = New
)

// New is the connector's bridge.Factory: it decodes and validates the
// section and reads secret_file; no network I/O.
func New(spec bridge.Spec, deps bridge.Deps) (bridge.Connector, error) {
	var cfg Config
	if err := spec.Decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	var errs bridge.FieldErrors
	add := errs.Add
	if spec.Direction != bridge.Out {
		add("", "webhook can only be an egress target")
	}
	if u, err := url.Parse(cfg.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("url", "%q is not an http(s) URL", cfg.URL)
	}
	secret := cfg.Secret
	if cfg.SecretFile != "" {
		if secret != "" {
			add("secret_file", "set secret or secret_file, not both")
		}
		b, err := os.ReadFile(cfg.SecretFile)
		if err != nil {
			add("secret_file", "%w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	switch {
	case secret == "" && cfg.SecretFile == "" && !cfg.Unsigned:
		add("secret", "required to sign requests (or secret_file; or unsigned: true to send them unsigned)")
	case (secret != "" || cfg.SecretFile != "") && cfg.Unsigned:
		add("unsigned", "true contradicts the secret that is set")
	}
	var key []byte
	if secret != "" {
		var err error
		if key, err = DecodeSecret(secret); err != nil {
			add("secret", "%w", err) // the error never contains the secret
		}
	}
	if cfg.BatchSize < 1 || cfg.BatchSize > MaxBatchSize {
		add("batch_size", "%d is not in [1, %d]", cfg.BatchSize, MaxBatchSize)
	}
	if cfg.Linger < 0 {
		add("linger", "%s is negative", cfg.Linger)
	}
	if cfg.Timeout < time.Millisecond {
		add("timeout", "%s is less than allowed 1ms", cfg.Timeout)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Connector{
		cfg: cfg,
		key: key,
		tr:  tr,
		client: &http.Client{
			Transport: tr,
			// A redirect would replay the body elsewhere; the status is
			// reported instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log: log,
		now: time.Now,
	}, nil
}

// DecodeSecret returns the HMAC key of a Standard Webhooks secret
// ("whsec_" followed by base64; the prefix is optional).
func DecodeSecret(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
	if err != nil || len(key) == 0 {
		return nil, errors.New("not a whsec_<base64> secret")
	}
	return key, nil
}

// Sign returns the webhook-signature header value for id, timestamp and
// body: "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)).
func Sign(key []byte, id string, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Name implements bridge.Connector.
func (c *Connector) Name() string { return "webhook" }

// BatchHint implements bridge.Batcher.
func (c *Connector) BatchHint() (int, time.Duration) { return c.cfg.BatchSize, c.cfg.Linger }

// Start implements bridge.Connector; there is nothing to connect ahead.
func (c *Connector) Start(context.Context) error { return nil }

// Close implements bridge.Connector: it closes idle connections; requests
// in flight end with their Deliver's ctx.
func (c *Connector) Close(context.Context) error {
	c.tr.CloseIdleConnections()
	return nil
}

type body struct {
	Type      string            `json:"type"`
	Timestamp string            `json:"timestamp"`
	Data      []json.RawMessage `json:"data"`
}

// Deliver implements bridge.Connector: one POST of the whole batch.
func (c *Connector) Deliver(ctx context.Context, batch []bridge.Message) error {
	if len(batch) == 0 {
		return nil
	}
	b := body{Type: "mqtt.messages", Timestamp: batch[0].Created.UTC().Format(time.RFC3339Nano), Data: make([]json.RawMessage, len(batch))}
	for i := range batch {
		e, err := bridge.Envelope(&batch[i])
		if err != nil {
			return bridge.Permanent(fmt.Errorf("webhook: envelope: %w", err))
		}
		b.Data[i] = e
	}
	payload, err := json.Marshal(b)
	if err != nil {
		return bridge.Permanent(fmt.Errorf("webhook: body: %w", err))
	}
	id := batch[0].ID
	if len(batch) > 1 {
		id += "_" + batch[len(batch)-1].ID
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.URL, bytes.NewReader(payload))
	if err != nil {
		return bridge.Permanent(fmt.Errorf("webhook: request: %w", err))
	}
	for k, v := range c.cfg.Headers {
		req.Header.Set(k, v)
	}
	ts := c.now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	if c.key != nil {
		req.Header.Set("webhook-signature", Sign(c.key, id, ts, payload))
	}
	resp, err := c.client.Do(req)
	if err != nil {
		// Connection refused, reset, DNS, TLS, timeout: the endpoint, not
		// this batch.
		return bridge.Unavailable(fmt.Errorf("webhook: post %s: %w", redact(c.cfg.URL), err))
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, errBodyLimit))
	// Drain a little more so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	err = fmt.Errorf("webhook: post %s: http %d: %s", redact(c.cfg.URL), code, strings.TrimSpace(string(head)))
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500 {
		return bridge.Unavailable(err)
	}
	return bridge.Permanent(err)
}

// redact drops credentials and the query from a URL for error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid url)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}
