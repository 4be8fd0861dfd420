package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/ferrymq/ferry/broker/config"
)

const dlqUsage = `usage: ferry dlq list ROUTE [--after SEQ] [--limit N]
       ferry dlq replay ROUTE [SEQ...]
       ferry dlq purge ROUTE (--all | SEQ...)
  -c FILE           read admin.addr and admin.token from the broker's configuration
  --admin-addr ADDR the broker's admin endpoint (default: FILE's, FERRY_ADMIN_ADDR or 127.0.0.1:8080)
  --token TOKEN     its bearer token (default: FILE's admin.token or FERRY_ADMIN_TOKEN)`

// dlq lists, replays and purges a bridge route's dead letters through a
// running broker's admin API (the outbox belongs to the broker while it
// runs):
//
//	ferry dlq [-c FILE] list ROUTE [--after SEQ] [--limit N]
//	ferry dlq [-c FILE] replay ROUTE [SEQ...]
//	ferry dlq [-c FILE] purge ROUTE (--all | SEQ...)
//
// purge deletes for good, so it wants the seqs or an explicit --all.
// The admin endpoint and its token are the flags', else those of the
// configuration the broker runs with (-c FILE, with its FERRY_ADMIN_*
// variables), else FERRY_ADMIN_ADDR and FERRY_ADMIN_TOKEN, else
// 127.0.0.1:8080 without a token. Flags may come anywhere.
func dlq(args, env []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferry dlq", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var path string
	fs.StringVar(&path, "c", "", "")
	fs.StringVar(&path, "config", "", "")
	addrFlag := fs.String("admin-addr", "", "")
	tokenFlag := fs.String("token", "", "")
	after := fs.Uint64("after", 0, "")
	limit := fs.Int("limit", 100, "")
	all := fs.Bool("all", false, "")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		fmt.Fprintf(stderr, "ferry dlq: %v\n%s\n", err, dlqUsage)
		return exitUsage
	}
	if len(pos) < 2 || (pos[0] != "list" && pos[0] != "replay" && pos[0] != "purge") || (pos[0] == "list" && len(pos) > 2) {
		fmt.Fprintln(stderr, dlqUsage)
		return exitUsage
	}
	if pos[0] == "purge" && (len(pos) > 2) == *all {
		fmt.Fprintf(stderr, "ferry dlq purge: give the seqs to delete, or --all to delete every dead letter of the route\n%s\n", dlqUsage)
		return exitUsage
	}
	verb, route := pos[0], pos[1]
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	addr, token, err := adminEndpoint(path, env)
	if err != nil {
		fmt.Fprintf(stderr, "ferry dlq: %v\n", err)
		return exitUsage
	}
	if set["admin-addr"] {
		addr = *addrFlag
	}
	if set["token"] {
		token = *tokenFlag
	}
	if addr == "" {
		fmt.Fprintf(stderr, "ferry dlq: the admin endpoint is disabled (admin.addr is empty); set it, or give --admin-addr\n")
		return exitUsage
	}
	base := "http://" + dialable(addr) + "/api/v1/bridges/" + url.PathEscape(route) + "/deadletters"
	client := &http.Client{Timeout: 30 * time.Second}
	do := func(req *http.Request) ([]byte, error) {
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			var p struct{ Detail string }
			if json.Unmarshal(body, &p) == nil && p.Detail != "" {
				return nil, fmt.Errorf("%s: %s", resp.Status, p.Detail)
			}
			return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		return body, nil
	}
	switch verb {
	case "list":
		req, _ := http.NewRequest(http.MethodGet, base+"?after="+strconv.FormatUint(*after, 10)+"&limit="+strconv.Itoa(*limit), nil)
		body, err := do(req)
		if err != nil {
			fmt.Fprintf(stderr, "ferry dlq list %s: %v\n", route, err)
			return 1
		}
		var dls []struct {
			Seq     uint64 `json:"seq"`
			ID      string `json:"id"`
			Topic   string `json:"topic"`
			Created string `json:"created"`
			Reason  string `json:"reason"`
		}
		if err := json.Unmarshal(body, &dls); err != nil {
			fmt.Fprintf(stderr, "ferry dlq list %s: %v\n", route, err)
			return 1
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tID\tTOPIC\tCREATED\tREASON")
		for _, d := range dls {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", d.Seq, d.ID, d.Topic, d.Created, d.Reason)
		}
		_ = tw.Flush()
		return 0
	default:
		var req struct {
			Seqs []uint64 `json:"seqs,omitempty"`
		}
		for _, a := range pos[2:] {
			n, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				fmt.Fprintf(stderr, "ferry dlq replay: %q is not a sequence number\n", a)
				return exitUsage
			}
			req.Seqs = append(req.Seqs, n)
		}
		payload, _ := json.Marshal(req)
		method, url, key := http.MethodPost, base+"/replay", "replayed"
		if verb == "purge" {
			method, url, key = http.MethodDelete, base, "purged"
		}
		hreq, _ := http.NewRequest(method, url, bytes.NewReader(payload))
		hreq.Header.Set("Content-Type", "application/json")
		body, err := do(hreq)
		if err != nil {
			fmt.Fprintf(stderr, "ferry dlq %s %s: %v\n", verb, route, err)
			return 1
		}
		var res map[string]*int
		if err := json.Unmarshal(body, &res); err != nil || res[key] == nil {
			fmt.Fprintf(stderr, "ferry dlq %s %s: unexpected answer %q\n", verb, route, bytes.TrimSpace(body))
			return 1
		}
		n := *res[key]
		noun := "dead letters"
		if n == 1 {
			noun = "dead letter"
		}
		if verb == "purge" {
			fmt.Fprintf(stdout, "purged %d %s of route %s: deleted for good\n", n, noun, route)
			return 0
		}
		fmt.Fprintf(stdout, "replayed %d %s of route %s: back in its outbox, after the messages already there\n", n, noun, route)
		return 0
	}
}

// adminEndpoint is the admin address and token of the configuration at
// path (with its environment), or of the environment alone when path is
// empty.
func adminEndpoint(path string, env []string) (addr, token string, err error) {
	if path == "" {
		return envOr(env, "FERRY_ADMIN_ADDR", config.DefaultAdminAddr), envOr(env, "FERRY_ADMIN_TOKEN", ""), nil
	}
	cfg, err := config.Load(config.Source{Path: path, Env: env})
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	return *cfg.Admin.Addr, cfg.Admin.Token, nil
}

// dialable turns a listening address into one to connect to: a wildcard
// or empty host is this machine.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func envOr(env []string, key, def string) string {
	for _, kv := range env {
		if len(kv) > len(key) && kv[:len(key)] == key && kv[len(key)] == '=' {
			return kv[len(key)+1:]
		}
	}
	return def
}
