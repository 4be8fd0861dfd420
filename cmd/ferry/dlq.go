package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/ferrymq/ferry/broker/config"
)

// dlq lists and replays a bridge route's dead letters through a running
// broker's admin API (the outbox belongs to the broker while it runs):
//
//	ferry dlq list ROUTE [--after SEQ] [--limit N]
//	ferry dlq replay ROUTE [SEQ...]
//
// --admin-addr (default 127.0.0.1:8080, or FERRY_ADMIN_ADDR) and --token
// (or FERRY_ADMIN_TOKEN) reach the admin endpoint.
func dlq(args, env []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || (args[0] != "list" && args[0] != "replay") {
		fmt.Fprintln(stderr, "usage: ferry dlq list|replay ROUTE [flags] [SEQ...]")
		return exitUsage
	}
	verb, route := args[0], args[1]
	fs := flag.NewFlagSet("ferry dlq", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("admin-addr", envOr(env, "FERRY_ADMIN_ADDR", config.DefaultAdminAddr), "")
	token := fs.String("token", envOr(env, "FERRY_ADMIN_TOKEN", ""), "")
	after := fs.Uint64("after", 0, "")
	limit := fs.Int("limit", 100, "")
	if err := fs.Parse(args[2:]); err != nil {
		fmt.Fprintf(stderr, "ferry dlq: %v\n", err)
		return exitUsage
	}
	base := "http://" + *addr + "/api/v1/bridges/" + url.PathEscape(route) + "/deadletters"
	client := &http.Client{Timeout: 30 * time.Second}
	do := func(req *http.Request) ([]byte, error) {
		if *token != "" {
			req.Header.Set("Authorization", "Bearer "+*token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
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
		for _, a := range fs.Args() {
			n, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				fmt.Fprintf(stderr, "ferry dlq replay: %q is not a sequence number\n", a)
				return exitUsage
			}
			req.Seqs = append(req.Seqs, n)
		}
		payload, _ := json.Marshal(req)
		hreq, _ := http.NewRequest(http.MethodPost, base+"/replay", bytes.NewReader(payload))
		hreq.Header.Set("Content-Type", "application/json")
		body, err := do(hreq)
		if err != nil {
			fmt.Fprintf(stderr, "ferry dlq replay %s: %v\n", route, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s", body)
		return 0
	}
}

func envOr(env []string, key, def string) string {
	for _, kv := range env {
		if len(kv) > len(key) && kv[:len(key)] == key && kv[len(key)] == '=' {
			return kv[len(key)+1:]
		}
	}
	return def
}
