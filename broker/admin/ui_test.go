package admin_test

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/broker/admin"
	"github.com/prometheus/client_golang/prometheus"
)

// TestDashboardAssets checks how the dashboard is served: at / and /ui/
// without the token (the page asks for it), with a Content-Security-Policy
// that forbids inline code, with the right content types, and with the API
// still behind the token.
func TestDashboardAssets(t *testing.T) {
	s := admin.New(admin.Config{Addr: "127.0.0.1:0", Token: "s3cret"}, func() error { return nil },
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Handle("GET /api/v1/info", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{}")) }))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	base := "http://" + s.Addr()

	for _, tc := range []struct {
		name, path string
		status     int
		typ        string // Content-Type prefix; "" for an error
		contains   string
	}{
		{"index at the root", "/", 200, "text/html", `<script type="module" src="/ui/app.js">`},
		{"the app", "/ui/app.js", 200, "text/javascript", "Authorization"},
		{"the MQTT client", "/ui/mqtt.js", 200, "text/javascript", "export class MQTTClient"},
		{"the charts", "/ui/chart.js", 200, "text/javascript", "export function drawChart"},
		{"the style sheet", "/ui/app.css", 200, "text/css", "body"},
		{"the icon", "/ui/favicon.svg", 200, "image/svg+xml", "<svg"},
		{"a missing asset", "/ui/nope.js", 404, "", ""},
		{"an unknown page is not the index", "/nope", 404, "", ""},
		{"the API still needs the token", "/api/v1/info", 401, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get(base + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("GET %s: status %d, want %d", tc.path, resp.StatusCode, tc.status)
			}
			if tc.status != 200 {
				return
			}
			if got := resp.Header.Get("Content-Type"); !strings.HasPrefix(got, tc.typ) {
				t.Errorf("Content-Type %q, want %s", got, tc.typ)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'",
				"connect-src 'self' ws: wss:", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-") {
				t.Errorf("Content-Security-Policy %q allows unsafe sources", csp)
			}
			if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("GET %s does not contain %q", tc.path, tc.contains)
			}
		})
	}
}

// TestDashboardSourceRules keeps the dashboard compatible with its CSP and
// safe with hostile data: no inline scripts, handlers or styles in the
// HTML, and no HTML strings built in JavaScript (client ids, topics and
// payloads come from devices).
func TestDashboardSourceRules(t *testing.T) {
	files, err := filepath.Glob("ui/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboard files: %v", err)
	}
	inlineScript := regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`)
	rules := []struct {
		ext string
		bad *regexp.Regexp
		why string
	}{
		{".html", regexp.MustCompile(`\son[a-z]+\s*=`), "inline event handler (blocked by the CSP)"},
		{".html", regexp.MustCompile(`\sstyle\s*=`), "inline style (blocked by the CSP)"},
		{".html", regexp.MustCompile(`<style`), "inline style sheet (blocked by the CSP)"},
		{".html", regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/`), "remote asset (the dashboard works offline)"},
		{".js", regexp.MustCompile(`\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write`), "HTML built from strings"},
		{".js", regexp.MustCompile(`\beval\(|new Function\(`), "eval (blocked by the CSP)"},
		{".js", regexp.MustCompile(`(?i)https?://[a-z0-9.-]+\.[a-z]{2,}/`), "remote URL (the dashboard works offline)"},
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		if filepath.Ext(f) == ".html" && inlineScript.MatchString(src) {
			t.Errorf("%s: inline <script> (blocked by the CSP)", f)
		}
		for _, r := range rules {
			if filepath.Ext(f) != r.ext {
				continue
			}
			if loc := r.bad.FindStringIndex(src); loc != nil {
				t.Errorf("%s:%d: %s: %q", f, strings.Count(src[:loc[0]], "\n")+1, r.why, src[loc[0]:loc[1]])
			}
		}
	}
}
