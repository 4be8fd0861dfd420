// Command ferry is the Ferry MQTT broker.
//
//	ferry [-c ferry.yaml] [--mqtt-addr :1883] [--ws-addr :8083] [--admin-addr 127.0.0.1:8080] [--data-dir ./data] [--node-id a]
//	ferry check -c ferry.yaml
//	ferry passwd [-c] [-b] [-D] [--stdin] FILE USER [PASSWORD]
//	ferry dlq [-c ferry.yaml] list|replay ROUTE [SEQ...]
//	ferry store verify DIR | ferry store salvage DIR OUT
//	ferry health [-c ferry.yaml] [URL]
//	ferry version
//
// Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr))
}

// exitUsage is the exit code for bad configuration or usage.
const exitUsage = 2

func run(args, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintln(stdout, "ferry", broker.Version())
			return 0
		case "check":
			return check(args[1:], env, stdout, stderr)
		case "passwd":
			return passwd(args[1:], stdin, stdout, stderr)
		case "dlq":
			return dlq(args[1:], env, stdout, stderr)
		case "store":
			return store(args[1:], stdout, stderr)
		case "health":
			return health(args[1:], env, stdout, stderr)
		case "help", "-h", "--help":
			usage(stdout)
			return 0
		}
	}
	src, code := parseFlags("ferry", args, env, stderr)
	if code >= 0 {
		return code
	}
	cfg, warnings, err := config.LoadWithWarnings(src)
	if err != nil {
		printWarnings(stderr, "ferry", warnings)
		fmt.Fprintf(stderr, "ferry: invalid configuration:\n%s\n", indent(err))
		return exitUsage
	}
	return serve(cfg, warnings, stderr)
}

func printWarnings(w io.Writer, prog string, warnings []string) {
	for _, m := range warnings {
		fmt.Fprintf(w, "%s: warning: %s\n", prog, m)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Ferry is an MQTT broker for IoT.

Usage:
  ferry [flags]            run the broker
  ferry check -c FILE      validate a configuration file and exit
  ferry passwd FILE USER   add or change a user in a password file
                           (Mosquitto-compatible, with mosquitto_passwd's
                           -c, -b FILE USER PASSWORD and -D FILE USER;
                           --stdin reads the password)
  ferry dlq list ROUTE     list a bridge route's dead letters (running broker,
  ferry dlq replay ROUTE [SEQ...]   via -c FILE, or --admin-addr and --token)
  ferry store verify DIR   report damage in a data dir (broker stopped)
  ferry store salvage DIR OUT   copy what is readable into the new dir OUT
  ferry health [URL]       exit 0 if the broker's /readyz answers ready, else 1
                           (for container health checks; -c FILE reads admin.addr)
  ferry version            print the version

Flags (a flag wins over FERRY_* environment variables, which win over the file):
  -c, --config FILE        YAML configuration file (see ferry.example.yaml)
  --mqtt-addr ADDR         MQTT TCP listener (default :1883; "" disables)
  --ws-addr ADDR           MQTT over WebSocket listener (default :8083; "" disables)
  --admin-addr ADDR        dashboard, REST API, health, readiness and metrics HTTP
                           (default 127.0.0.1:8080; "" disables)
  --data-dir DIR           storage directory (default ./data)
  --log-level LEVEL        debug, info, warn or error (default info)
  --node-id ID             cluster.node_id: this node's name in its cluster (default:
                           the host name); the cluster section needs its nats too
`)
}

// parseFlags returns the config source, or an exit code >= 0 when the
// program should stop.
func parseFlags(name string, args, env []string, stderr io.Writer) (config.Source, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var path string
	fs.StringVar(&path, "c", "", "")
	fs.StringVar(&path, "config", "", "")
	var mqttAddr, wsAddr, adminAddr, dataDir, logLevel, nodeID string
	fs.StringVar(&mqttAddr, "mqtt-addr", config.DefaultMQTTAddr, "")
	fs.StringVar(&wsAddr, "ws-addr", config.DefaultWSAddr, "")
	fs.StringVar(&adminAddr, "admin-addr", config.DefaultAdminAddr, "")
	fs.StringVar(&dataDir, "data-dir", config.DefaultDataDir, "")
	fs.StringVar(&logLevel, "log-level", config.DefaultLogLevel, "")
	fs.StringVar(&nodeID, "node-id", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(os.Stdout)
			return config.Source{}, 0
		}
		fmt.Fprintf(stderr, "%s: %v\nRun 'ferry help' for usage.\n", name, err)
		return config.Source{}, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\nRun 'ferry help' for usage.\n", name, fs.Arg(0))
		return config.Source{}, exitUsage
	}
	src := config.Source{Path: path, Env: env}
	fs.Visit(func(f *flag.Flag) {
		v := f.Value.String()
		switch f.Name {
		case "mqtt-addr":
			src.Flags.MQTTAddr = &v
		case "ws-addr":
			src.Flags.WSAddr = &v
		case "admin-addr":
			src.Flags.AdminAddr = &v
		case "data-dir":
			src.Flags.DataDir = &v
		case "log-level":
			src.Flags.LogLevel = &v
		case "node-id":
			src.Flags.NodeID = &v
		}
	})
	return src, -1
}

func check(args, env []string, stdout, stderr io.Writer) int {
	src, code := parseFlags("ferry check", args, env, stderr)
	if code >= 0 {
		return code
	}
	cfg, warnings, err := config.LoadWithWarnings(src)
	printWarnings(stderr, "ferry check", warnings)
	if err != nil {
		fmt.Fprintf(stderr, "ferry check: invalid configuration:\n%s\n", indent(err))
		return exitUsage
	}
	name := src.Path
	if name == "" {
		name = "built-in defaults"
	}
	fmt.Fprintf(stdout, "%s: ok\n", name)
	for _, l := range clusterSummary(cfg) {
		fmt.Fprintf(stdout, "  %s\n", l)
	}
	return 0
}

// clusterSummary describes the cluster section ferry check accepted, in
// its YAML names, URL passwords hidden; nothing for a single node.
func clusterSummary(cfg config.Config) []string {
	c := cfg.Cluster
	if c == nil {
		return nil
	}
	out := []string{fmt.Sprintf("cluster: node_id %s, replicas %d, start_timeout %s", c.NodeID, c.Replicas, c.StartTimeout)}
	e := c.NATS.Embedded
	if e == nil {
		var urls []string
		for _, u := range strings.Split(c.NATS.URL, ",") {
			urls = append(urls, redactURL(strings.TrimSpace(u)))
		}
		n := "cluster.nats: url " + strings.Join(urls, ",")
		if c.NATS.CredsFile != "" {
			n += ", creds_file " + c.NATS.CredsFile
		}
		return append(out, n)
	}
	routes := make([]string, len(e.Routes))
	for i, r := range e.Routes {
		routes[i] = redactURL(r)
	}
	clusterAddr := e.ClusterAddr
	if clusterAddr == "" {
		clusterAddr = `"" (no other servers: a lone JetStream server)`
	}
	return append(out, fmt.Sprintf("cluster.nats: embedded, client_addr %s, cluster_addr %s, routes [%s], store_dir %s",
		e.ClientAddr, clusterAddr, strings.Join(routes, ", "), e.StoreDir))
}

// redactURL hides the password of a URL.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return s
}

func indent(err error) string {
	var out []byte
	line := []byte("  ")
	for _, c := range []byte(err.Error()) {
		line = append(line, c)
		if c == '\n' {
			out = append(out, line...)
			line = []byte("  ")
		}
	}
	return string(append(out, line...))
}

func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.SlogLevel()}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(cfg config.Config, warnings []string, stderr io.Writer) int {
	log := newLogger(cfg.Log, stderr)
	for _, w := range warnings {
		log.Warn(w)
	}
	b, err := broker.New(cfg, broker.WithLogger(log))
	if err != nil {
		fmt.Fprintf(stderr, "ferry: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := b.Start(ctx); err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	log.Info("ferry started", "version", broker.Version())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case <-hup:
			_ = b.Reload() // logs its outcome; a refused reload keeps the old rules
		case <-ctx.Done():
			break wait
		}
	}
	stop() // a second signal now kills the process the default way
	log.Info("shutting down", "timeout", cfg.Shutdown.Timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Timeout)
	defer cancel()
	if err := b.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	return 0
}
