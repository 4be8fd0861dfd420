package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

const healthUsage = `usage: ferry health [-c FILE] [--timeout D] [URL]
  URL          what to probe (default: /readyz on FILE's admin.addr, else
               FERRY_ADMIN_ADDR, else 127.0.0.1:8080); a bare host:port
               means its /readyz
  -c FILE      read admin.addr from the broker's configuration
  --timeout D  give up after D (default 5s)`

// defaultHealthTimeout bounds one probe: an orchestrator runs its own
// timer too, and a probe must never outlive it.
const defaultHealthTimeout = 5 * time.Second

// health probes a running broker's readiness and exits 0 when it is ready,
// 1 when it is not or cannot be reached, 2 on bad usage:
//
//	ferry health [-c FILE] [--timeout D] [URL]
//
// It exists for images without curl or wget (scratch, distroless): the
// container's HEALTHCHECK runs the broker's own binary. /readyz needs no
// token, so none is sent.
func health(args, env []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferry health", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var path string
	fs.StringVar(&path, "c", "", "")
	fs.StringVar(&path, "config", "", "")
	timeout := fs.Duration("timeout", defaultHealthTimeout, "")
	pos, err := parseInterspersed(fs, args)
	if err == nil && len(pos) > 1 {
		err = fmt.Errorf("one URL at most, got %d", len(pos))
	}
	if err == nil && *timeout <= 0 {
		err = fmt.Errorf("--timeout %s: must be positive", *timeout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry health: %v\n%s\n", err, healthUsage)
		return exitUsage
	}
	var target string
	if len(pos) == 1 {
		target = pos[0]
		if !strings.Contains(target, "://") {
			target = "http://" + dialable(target) + "/readyz"
		}
	} else {
		addr, _, err := adminEndpoint(path, env)
		if err != nil {
			fmt.Fprintf(stderr, "ferry health: %v\n", err)
			return exitUsage
		}
		if addr == "" {
			fmt.Fprintln(stderr, "ferry health: the admin endpoint is disabled (admin.addr is empty); there is no /readyz to probe")
			return exitUsage
		}
		target = "http://" + dialable(addr) + "/readyz"
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		fmt.Fprintf(stderr, "ferry health: %q: %v\n", target, err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ferry health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	// The body names why the broker is not ready; a few lines are plenty.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	body = bytes.TrimSpace(body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "ferry health: %s: %s: %s\n", target, resp.Status, body)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", target, body)
	return 0
}
