package admin

import (
	"embed"
	"io/fs"
	"net/http"
)

// uiFiles is the dashboard: static HTML, CSS and JavaScript, embedded so the
// binary serves it offline (no CDN, no build step).
//
//go:embed ui
var uiFiles embed.FS

// uiCSP allows only the dashboard's own files: no inline script or style
// (an injected <script> cannot run), no framing (clickjacking), and
// WebSocket connections anywhere for the live view, because Ferry's
// WebSocket listener is on another port than the admin endpoint.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// uiHandler serves the dashboard: index.html at / and the assets under
// /ui/. The assets hold no secrets and are served without the token; the
// login form asks for it and the page sends it with every API call.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embed pattern above guarantees the directory
	}
	assets := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The assets change with the binary: revalidate rather than show
		// an old dashboard against a new API after an upgrade.
		h.Set("Cache-Control", "no-cache")
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, sub, "index.html")
			return
		}
		assets.ServeHTTP(w, r)
	})
}
