package deploy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ferrymq/ferry/internal/testutil"
)

const (
	dashboardPath = "grafana/ferry.json"
	alertsPath    = "prometheus/alerts.yml"
)

// promqlKeywords are PromQL words that are not metric names: operators,
// modifiers and aggregations (which "by (...)" may separate from their
// "("; other functions are told by the "(" that follows them).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// promqlLabelLists are the keywords followed by a parenthesised list of
// label names.
var promqlLabelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names a PromQL expression selects, in
// order of appearance, without repeats. It skips strings, label matchers,
// ranges, numbers, functions, aggregations and label lists: what is left
// is a selector's name. Grafana variables ($job, $__rate_interval) may
// stand where PromQL allows a string or a duration.
func metricNames(expr string) []string {
	var names []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\t' || expr[i] == '\n') {
			i++
		}
		return i
	}
	// skipString returns the index after the string quoted at i.
	skipString := func(i int) int {
		q := expr[i]
		for i++; i < len(expr) && expr[i] != q; i++ {
			if expr[i] == '\\' && q != '`' {
				i++
			}
		}
		return i + 1
	}
	// skipTo returns the index after the close matching the open at i,
	// stepping over quoted strings.
	skipTo := func(i int, open, close byte) int {
		depth := 0
		for ; i < len(expr); i++ {
			switch expr[i] {
			case '"', '\'', '`':
				i = skipString(i) - 1
			case open:
				depth++
			case close:
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '{':
			i = skipTo(i, '{', '}')
		case c == '[':
			i = skipTo(i, '[', ']')
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '$': // a Grafana variable
			for i++; i < len(expr) && isPart(expr[i]); i++ {
			}
		case c >= '0' && c <= '9' || c == '.':
			for i++; i < len(expr) && (isPart(expr[i]) || expr[i] == '.' ||
				(expr[i] == '+' || expr[i] == '-') && (expr[i-1] == 'e' || expr[i-1] == 'E')); i++ {
			}
		case isStart(c):
			j := i + 1
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			next := skipSpace(j)
			switch {
			case promqlLabelLists[word]:
				if next < len(expr) && expr[next] == '(' {
					j = skipTo(next, '(', ')')
				}
			case promqlKeywords[word]:
			case next < len(expr) && expr[next] == '(':
				// a function or an aggregation; its arguments follow
			default:
				if !slices.Contains(names, word) {
					names = append(names, word)
				}
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		name, expr string
		want       []string
	}{
		{"selector", `ferry_connections`, []string{"ferry_connections"}},
		{"matchers with braces in strings", `ferry_x{route=~"a{1,2}",job="$job"}`, []string{"ferry_x"}},
		{"aggregation with by", `sum by (route, le) (rate(ferry_b_bucket{route=~"$route"}[$__rate_interval]))`, []string{"ferry_b_bucket"}},
		{"by after the expression", `sum(rate(a_total[5m])) by (instance)`, []string{"a_total"}},
		{"binary operators and numbers", `a / b > 0.8 and c - time() < 14 * 86400 or d offset 5m`, []string{"a", "b", "c", "d"}},
		{"vector matching", `a * on (route) group_left (listener) b`, []string{"a", "b"}},
		{"quantile", `histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m])))`, []string{"x_bucket"}},
		{"repeats once", `a + a`, []string{"a"}},
		{"scientific number", `a > 1e+06`, []string{"a"}},
		{"absent", `absent(up{job="ferry"})`, []string{"up"}},
		{"string arguments", `label_replace(a, "dst_label", 'x_y', "src", "(.*)")`, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
				t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
			}
		})
	}
}

// query is one PromQL expression and where it was found.
type query struct{ where, expr string }

// dashboardQueries returns the PromQL of every panel target and of every
// query variable (label_values(METRIC..., label) gives its selector).
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string
		UID        string
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage
			}
		}
		Panels []struct {
			Title, Type string
			Targets     []struct{ Expr, RefID string }
			Panels      []json.RawMessage
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: title %q, uid %q: both are needed for a stable import", dashboardPath, d.Title, d.UID)
	}
	var qs []query
	for _, p := range d.Panels {
		if len(p.Panels) > 0 {
			t.Fatalf("%s: panel %q nests panels (a collapsed row): read them too", dashboardPath, p.Title)
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", dashboardPath, p.Title)
		}
		for _, tg := range p.Targets {
			qs = append(qs, query{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("%s: variable %s: %v", dashboardPath, v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("%s: variable %s: %q is not label_values(selector, label)", dashboardPath, v.Name, q.Query)
		}
		qs = append(qs, query{"variable " + v.Name, m[1]})
	}
	return qs
}

// alertRules returns each rule of alerts.yml.
func alertRules(t *testing.T) []query {
	t.Helper()
	data, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string
			Rules []struct{ Alert, Expr string }
		}
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var qs []query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			qs = append(qs, query{"alert " + r.Alert, r.Expr})
		}
	}
	return qs
}

// grafanaVars stand in for Grafana's variables so that promtool can parse
// a dashboard's expressions.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*", "$route", ".*")

// TestPromQLParses: promtool accepts the alert rules, their unit tests pass
// (each alert fires on what should fire it and not on what should not),
// and every dashboard expression parses (as a recording rule, with
// Grafana's variables filled in).
func TestPromQLParses(t *testing.T) {
	promtool := testutil.NeedCommand(t, "promtool", "prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	qs := dashboardQueries(t)
	for i, q := range qs {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query%d", i), Expr: grafanaVars.Replace(q.expr)})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		// promtool names the rule by its index: map it back to the panel.
		msg := string(out)
		for i := len(qs) - 1; i >= 0; i-- {
			msg = strings.ReplaceAll(msg, fmt.Sprintf("dashboard:query%d", i), qs[i].where)
		}
		t.Errorf("%s: promtool check rules: %v\n%s", dashboardPath, err, msg)
	}
}

// synthetic are series Prometheus makes itself, not Ferry.
var synthetic = map[string]bool{"up": true}

// TestMonitoringMetricsExist: every metric the Grafana dashboard and the
// alert rules query exists in the /metrics of a running ferry (the static
// binary the image ships) with a TLS listener, authentication and a
// bridge route, so that every family is exported.
func TestMonitoringMetricsExist(t *testing.T) {
	bin := staticFerry(t)
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	if out, err := exec.Command(bin, "passwd", "-c", "-b", filepath.Join(dir, "passwd"), "probe", "secret").CombinedOutput(); err != nil {
		t.Fatalf("ferry passwd: %v\n%s", err, out)
	}
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(hook.Close)
	cfg := filepath.Join(dir, "ferry.yaml")
	must(t, "write config", os.WriteFile(cfg, fmt.Appendf(nil, `listeners:
  - {name: tcp, type: tcp, addr: "127.0.0.1:0"}
  - {name: tls, type: tls, addr: "127.0.0.1:0", cert: %q, key: %q, client_ca: %q}
storage: {dir: %q}
admin: {addr: "127.0.0.1:0"}
auth: {password_file: %q}
bridges:
  - {name: hooks, from: "dev/#", to: {webhook: {url: %q, unsigned: true}}}
`, cert, key, cert, filepath.Join(dir, "data"), filepath.Join(dir, "passwd"), hook.URL), 0o600))
	p := testutil.StartFerry(t, bin, "-c", cfg)

	resp, err := http.Get("http://" + p.Addr("admin") + "/metrics")
	must(t, "GET /metrics", err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, "read /metrics", err)
	have := exported(string(body))

	qs := append(dashboardQueries(t), alertRules(t)...)
	seen := map[string]bool{}
	for _, q := range qs {
		names := metricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		for _, n := range names {
			seen[n] = true
			if !have[n] && !synthetic[n] {
				t.Errorf("%s queries %s, which ferry does not export\n  %s", q.where, n, q.expr)
			}
		}
	}
	// The families the issue names are all covered.
	for _, n := range []string{"ferry_connections", "ferry_messages_received_total", "ferry_messages_sent_total",
		"ferry_messages_dropped_total", "ferry_storage_free_bytes", "ferry_bridge_delivered_total", "ferry_bridge_lag_seconds",
		"ferry_bridge_queue_bytes", "ferry_bridge_queue_max_bytes", "ferry_bridge_dead_lettered_total",
		"ferry_bridge_delivery_latency_seconds_bucket", "ferry_tls_certificate_expiry_timestamp_seconds", "up"} {
		if !seen[n] {
			t.Errorf("neither the dashboard nor the alerts use %s", n)
		}
	}
	t.Logf("%d queries over %d metric names", len(qs), len(seen))
}

// exported returns the series names of a Prometheus text exposition: each
// family's name, and a histogram's or summary's _bucket, _sum and _count.
func exported(body string) map[string]bool {
	have := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			have[f[2]] = true
			switch f[3] {
			case "histogram":
				have[f[2]+"_bucket"], have[f[2]+"_sum"], have[f[2]+"_count"] = true, true, true
			case "summary":
				have[f[2]+"_sum"], have[f[2]+"_count"] = true, true
			}
		}
	}
	return have
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and its
// key into dir.
func writeSelfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, "generate key", err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	must(t, "create certificate", err)
	kb, err := x509.MarshalECPrivateKey(k)
	must(t, "marshal key", err)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	must(t, "write certificate", os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, "write key", os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return cert, key
}
