package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/load"

	"github.com/ferrymq/ferry/internal/mochitest"
)

func TestBadArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown flag", args: []string{"-nope"}, want: "flag provided but not defined"},
		{name: "bad mqtt version", args: []string{"-mqtt", "4.0"}, want: "-mqtt"},
		{name: "qos out of range", args: []string{"-qos", "3"}, want: "out of range"},
		{name: "bad format", args: []string{"-format", "xml"}, want: "-format"},
		{name: "stray argument", args: []string{"fan-in"}, want: "unexpected arguments"},
		{name: "missing ca file", args: []string{"-ca", "/nonexistent/ca.pem"}, want: "read -ca"},
		{name: "unknown scenario", args: []string{"-scenario", "fan-in,bogus", "-addr", "127.0.0.1:1", "-n", "1"}, want: "bogus"},
		{name: "kill pid without storm", args: []string{"-scenario", "fan-in", "-kill-pid", "1"}, want: "need -scenario storm"},
		{name: "move addrs without storm", args: []string{"-move-addrs", "a:1,b:1"}, want: "need -scenario storm"},
		{name: "bad broker pid list", args: []string{"-broker-pid", "12,x"}, want: `pid "x"`},
		{name: "storm moving to the node it kills", args: []string{"-scenario", "storm", "-addr", "127.0.0.1:1", "-kill-pid", "99999999"},
			want: "address of the node -kill-pid"},
		{name: "summarize bad flag", args: []string{"summarize", "-nope"}, want: "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error()+errOut.String(), tc.want) {
				t.Fatalf("err %v, stderr %q; want %q", err, errOut.String(), tc.want)
			}
		})
	}
}

// TestRunAndSummarize runs two scenarios end to end through the command
// line, then summarizes their JSON lines.
func TestRunAndSummarize(t *testing.T) {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := mochitest.Serve(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	args := []string{"-addr", l.Address(), "-scenario", "pairs,latency", "-qos", "1", "-pubs", "3", "-n", "50",
		"-drain", "200ms", "-label", "mochi", "-tag", "smoke", "-format", "both", "-progress", "0"}
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 JSON lines, got %q", out.String())
	}
	for _, line := range lines {
		var r load.Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Broker != "mochi" || r.Tag != "smoke" || r.Sent != 150 || r.Received != 150 || r.Lost != 0 {
			t.Fatalf("result %+v", r)
		}
	}
	if !strings.Contains(errOut.String(), "scenario") || !strings.Contains(errOut.String(), "latency") {
		t.Fatalf("no table on stderr: %q", errOut.String())
	}

	file := filepath.Join(t.TempDir(), "results.jsonl")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := run(ctx, []string{"summarize", file}, &md, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| case | mochi |") || !strings.Contains(md.String(), "| smoke |") {
		t.Fatalf("summary:\n%s", md.String())
	}
}

// TestStormAndClusterSummary runs the storm through the command line and
// summarizes it with the cluster targets.
func TestStormAndClusterSummary(t *testing.T) {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := mochitest.Serve(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	args := []string{"-addr", l.Address(), "-move-addrs", l.Address(), "-scenario", "storm", "-clients", "50",
		"-connect-concurrency", "8", "-drain", "200ms", "-check-wait", "300ms", "-label", "mochi", "-tag", "storm 50", "-progress", "0",
		"-broker-pid", fmt.Sprintf("%d,%d", os.Getpid(), os.Getpid())}
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	var r load.Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %q", err, out.String())
	}
	if r.Scenario != load.Storm || r.Clients != 50 || r.Resumed != 50 || r.Unique != 50 || r.SessionsLost != 0 || len(r.BrokerPIDs) != 2 {
		t.Fatalf("result %+v", r)
	}
	if !strings.Contains(errOut.String(), "resumed") || !strings.Contains(errOut.String(), "close") {
		t.Fatalf("no storm table on stderr: %q", errOut.String())
	}
	file := filepath.Join(t.TempDir(), "results.jsonl")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := run(ctx, []string{"summarize", "-cluster", file}, &md, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| storm 50 | 50 sessions (close): move", "| storm 50: 50 sessions move (close), none lost |", "| **yes** |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("missing %q in\n%s", want, md.String())
		}
	}
}
