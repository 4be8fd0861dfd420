// Command ferry-bench is a load generator for MQTT brokers, in the spirit of
// emqtt-bench. It speaks MQTT 3.1.1/5 through its own minimal codec on
// buffered net.Conns so that it is not the bottleneck, and prints one JSON
// line per scenario on stdout plus a human-readable table.
//
// Scenarios: fan-in (P publishers to one wildcard subscriber), pairs (N
// publisher/subscriber pairs), fan-out (one publisher to S subscribers),
// latency (fixed rate), idle (C silent connections: connect rate and broker
// RSS), reqresp (MQTT 5 response topic and correlation data round trips)
// and storm (C persistent sessions leave their node at once and resume on
// others). With -sub-addr the subscribers connect to another node of a
// cluster than the publishers.
//
//	ferry-bench -addr 127.0.0.1:1883 -scenario fan-in -qos 1 -size 64 -pubs 10 -d 10s
//	ferry-bench -addr n0:1883 -sub-addr n1:1883 -scenario latency -qos 1   # across nodes
//	ferry-bench -scenario idle -clients 10000 -broker-pid $(pidof mosquitto)
//	ferry-bench -scenario storm -addr n0:1883 -move-addrs n1:1883,n2:1883 -kill-pid $N0
//	ferry-bench summarize results.jsonl   # markdown: median (min–max) per case and broker
//	ferry-bench summarize -cluster results.jsonl   # plus the cluster targets
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"
	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/report"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ferry-bench:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "summarize" {
		return summarize(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg        load.Config
		scenarios  = fs.String("scenario", load.FanIn, "comma-separated scenarios: "+strings.Join(load.Scenarios, ", "))
		version    = fs.String("mqtt", "3.1.1", "protocol version: 3.1.1 or 5 (reqresp always uses 5)")
		qos        = fs.Uint("qos", 0, "QoS of publishes and subscriptions: 0, 1 or 2")
		clean      = fs.Bool("clean", true, "clean sessions; -clean=false uses persistent sessions with stable client ids")
		useTLS     = fs.Bool("tls", false, "connect with TLS")
		caFile     = fs.String("ca", "", "PEM CA bundle to verify the broker (implies -tls)")
		insecure   = fs.Bool("insecure", false, "skip TLS certificate verification (implies -tls)")
		serverName = fs.String("servername", "", "TLS server name (default: host of the address dialled)")
		moveAddrs  = fs.String("move-addrs", "", "storm: comma-separated addresses the sessions reconnect to, round robin (default -addr)")
		format     = fs.String("format", "both", "output: json (stdout), table (stdout), both (json on stdout, table on stderr)")
		progress   = fs.Duration("progress", time.Second, "progress line interval on stderr; 0 disables")
		verbose    = fs.Bool("verbose", false, "log client errors on stderr")
		keepalive  = fs.Uint("keepalive", load.DefaultKeepAlive, "keepalive seconds (PINGREQ at half of it)")
		expiry     = fs.Uint("session-expiry", load.DefaultSessionExpiry, "MQTT 5 session expiry seconds with -clean=false")
		cpuProfile = fs.String("cpuprofile", "", "write the generator's CPU profile to this file")
	)
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:1883", "broker host:port (publishers; the storm's sessions before they move)")
	fs.StringVar(&cfg.SubAddr, "sub-addr", "", "host:port where subscribers connect (default -addr); another cluster node makes every message cross nodes")
	fs.StringVar(&cfg.Label, "label", "", "broker name recorded in results")
	fs.StringVar(&cfg.Tag, "tag", "", "case name recorded in results, for summarize")
	fs.IntVar(&cfg.PayloadSize, "size", load.DefaultPayload, fmt.Sprintf("payload bytes (minimum %d, the sequence header)", load.HeaderSize))
	fs.IntVar(&cfg.Publishers, "pubs", 0, "publishers (fan-in 10, pairs 100 = pair count, fan-out 1, latency 1, reqresp 10 requesters)")
	fs.IntVar(&cfg.Subscribers, "subs", 0, "subscribers for fan-out (default 100)")
	fs.IntVar(&cfg.Clients, "clients", 0, fmt.Sprintf("connections for idle (default %d), sessions for storm (default %d)", load.DefaultIdleClients, load.DefaultStormClients))
	fs.IntVar(&cfg.KillPID, "kill-pid", 0, "storm: SIGKILL this process (the sessions' node) once the sessions are set up, instead of closing their connections")
	fs.IntVar(&cfg.MoveConcurrency, "move-concurrency", 0, "storm: reconnections under way at once; 0 = all at once")
	fs.IntVar(&cfg.CheckRounds, "check-rounds", load.DefaultCheckRounds, "storm: rounds of one QoS 1 message to every session after the move")
	fs.DurationVar(&cfg.CheckInterval, "check-interval", load.DefaultCheckInterval, "storm: pause between check rounds")
	fs.DurationVar(&cfg.CheckWait, "check-wait", load.DefaultCheckWait, "storm: the wait for the check messages ends after this long without a delivery")
	fs.DurationVar(&cfg.MoveTimeout, "move-timeout", load.DefaultMoveTimeout, "storm: bound on the reconnections (a session without CONNACK by then is lost), each SUBACK and the check messages' acks")
	fs.DurationVar(&cfg.Duration, "d", load.DefaultDuration, "send phase duration (idle: hold time)")
	fs.IntVar(&cfg.Count, "n", 0, "messages per publisher; overrides -d when set")
	fs.Float64Var(&cfg.Rate, "rate", 0, "total publish rate msg/s; 0 = unlimited (latency default 2000)")
	fs.IntVar(&cfg.Inflight, "inflight", load.DefaultInflight, "unacked QoS 1/2 publishes per publisher")
	fs.IntVar(&cfg.Outstanding, "outstanding", load.DefaultOutstanding, "reqresp: requests awaiting response per requester")
	fs.DurationVar(&cfg.AckDelay, "ack-delay", 0, "let subscriber acks wait up to this long to share a write (cuts generator syscalls at QoS 1/2)")
	fs.DurationVar(&cfg.Drain, "drain", load.DefaultDrain, "after sending, wait until acks and deliveries have stopped for this long (at most 10x) before counting loss")
	fs.StringVar(&cfg.ClientPrefix, "id-prefix", "fb", "client id prefix")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", "", "topic prefix (default bench/<random>)")
	fs.IntVar(&cfg.SendBuffer, "sndbuf", 64<<10, "SO_SNDBUF bytes per connection, bounding what a QoS 0 publisher queues in the kernel; 0 = kernel autotuning")
	fs.Func("broker-pid", "broker pid, or comma-separated pids of a cluster's nodes: their CPU use is reported (summed), and the first's VmRSS in the idle scenario", func(v string) error {
		pids, err := parsePIDs(v)
		if err != nil {
			return err
		}
		cfg.BrokerPID, cfg.OtherBrokerPIDs = pids[0], pids[1:]
		return nil
	})
	fs.IntVar(&cfg.ConnectConcurrency, "conc", load.DefaultConnectConcurrency, "concurrent connection attempts")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", load.DefaultConnectConcurrency, "the same as -conc")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch *version {
	case "3", "3.1.1", "4":
		cfg.Version = mqttc.V311
	case "5":
		cfg.Version = mqttc.V5
	default:
		return fmt.Errorf("-mqtt %q: want 3.1.1 or 5", *version)
	}
	if *qos > 2 || *keepalive > 65535 || *expiry > 1<<32-1 {
		return fmt.Errorf("-qos, -keepalive or -session-expiry out of range")
	}
	cfg.QoS, cfg.KeepAlive, cfg.SessionExpiry = byte(*qos), uint16(*keepalive), uint32(*expiry)
	cfg.Persistent = !*clean
	if *moveAddrs != "" {
		for _, a := range strings.Split(*moveAddrs, ",") {
			cfg.MoveAddrs = append(cfg.MoveAddrs, strings.TrimSpace(a))
		}
	}
	names := strings.Split(*scenarios, ",")
	for i := range names {
		names[i] = strings.TrimSpace(names[i])
	}
	if (cfg.KillPID != 0 || len(cfg.MoveAddrs) > 0) && !slices.Contains(names, load.Storm) {
		return fmt.Errorf("-kill-pid and -move-addrs need -scenario %s", load.Storm)
	}
	if *useTLS || *caFile != "" || *insecure {
		tc, err := tlsConfig(*caFile, *serverName, *insecure)
		if err != nil {
			return err
		}
		cfg.TLS = tc
	}
	if *progress > 0 {
		cfg.Progress, cfg.ProgressEvery = stderr, *progress
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	var tableOut io.Writer
	switch *format {
	case "json":
	case "table":
		tableOut = stdout
	case "both":
		tableOut = stderr
	default:
		return fmt.Errorf("-format %q: want json, table or both", *format)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var (
		results []load.Result
		errs    []error
	)
	enc := json.NewEncoder(stdout)
	for _, sc := range names {
		c := cfg
		c.Scenario = sc
		res, err := load.Run(ctx, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Scenario, err))
			continue
		}
		results = append(results, res)
		if *format != "table" {
			if err := enc.Encode(res); err != nil {
				return fmt.Errorf("write result: %w", err)
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	if tableOut != nil && len(results) > 0 {
		if err := load.WriteTable(tableOut, results); err != nil {
			return fmt.Errorf("write table: %w", err)
		}
	}
	return errors.Join(errs...)
}

// parsePIDs parses a comma-separated list of positive process ids.
func parsePIDs(v string) ([]int, error) {
	var pids []int
	for _, f := range strings.Split(v, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("pid %q: want a positive number", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// summarize prints the markdown comparison of JSON result files (stdin when
// none are named); with -cluster, the cluster targets after it.
func summarize(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferry-bench summarize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cluster := fs.Bool("cluster", false, fmt.Sprintf("also check the cluster targets, from the results labelled %q, %q and %q",
		report.LabelSingle, report.LabelClusterSame, report.LabelClusterCross))
	if err := fs.Parse(args); err != nil {
		return err
	}
	files := fs.Args()
	var rs []load.Result
	if len(files) == 0 {
		r, err := report.Read(os.Stdin)
		if err != nil {
			return err
		}
		rs = r
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("summarize: %w", err)
		}
		r, err := report.Read(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("summarize %s: %w", name, err)
		}
		rs = append(rs, r...)
	}
	if err := report.Markdown(stdout, rs); err != nil {
		return err
	}
	if *cluster {
		if _, err := io.WriteString(stdout, "\n"); err != nil {
			return err
		}
		return report.ClusterTargets(stdout, rs)
	}
	return nil
}

// tlsConfig builds the clients' TLS configuration. Without serverName,
// each connection verifies the host of the address it dials.
func tlsConfig(caFile, serverName string, insecure bool) (*tls.Config, error) {
	tc := &tls.Config{InsecureSkipVerify: insecure, ServerName: serverName} //nolint:gosec // opt-in for self-signed test brokers
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read -ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no certificates found", caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
