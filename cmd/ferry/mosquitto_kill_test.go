package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testutil"
)

// TestMosquittoSubSurvivesKill is the persistence issue's done-when scenario
// with the clients users have: with storage.sync always, a persistent QoS 1
// subscriber (mosquitto_sub -c -i ID -q 1) receives, across two kill -9s of
// Ferry that hit a running stream and the restarts, every message the
// broker acknowledged, in order; the retained message is still there.
func TestMosquittoSubSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: -short")
	}
	pubCmd := testutil.NeedCommand(t, "mosquitto_pub", "mosquitto-clients")
	subCmd := testutil.NeedCommand(t, "mosquitto_sub", "mosquitto-clients")
	bin := testutil.BuildFerry(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(cfg, []byte("storage:\n  sync: always\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"-c", cfg, "--mqtt-addr", addr, "--ws-addr", "", "--admin-addr", "", "--data-dir", filepath.Join(dir, "data")}
	proc := testutil.StartFerry(t, bin, args...)

	if out, err := exec.Command(pubCmd, "-h", host, "-p", port, "-q", "1", "-r", "-t", "dw/retained", "-m", "keep").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}

	// The subscriber: its session first, then it stays connected (it
	// reconnects by itself after each kill).
	sub := exec.Command(subCmd, "-h", host, "-p", port, "-c", "-i", "dw-sub", "-q", "1", "-t", "dw/stream")
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	var mu sync.Mutex
	var got []int
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
				mu.Lock()
				got = append(got, n)
				mu.Unlock()
			}
		}
	}()
	received := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), got...)
	}
	// The subscription exists once a message published now arrives.
	probe := connectPaho(t, addr, "dw-probe", true, func(paho.Client, paho.Message) {})
	testutil.Eventually(t, 10*time.Second, "mosquitto_sub subscribed", func() bool {
		probe.Publish("dw/stream", 1, false, "-1").WaitTimeout(time.Second)
		return len(received()) > 0
	})
	probe.Disconnect(100)

	// The publisher: one message at a time, each counted as acknowledged
	// once its PUBACK arrives; after a reconnect it resends the
	// unacknowledged one first (its session is persistent too).
	var amu sync.Mutex
	acked := map[int]bool{}
	sent := 0
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	pubs.Add(1)
	go crashPublisher(addr, pubStream{id: "dw-pub", topic: "dw/stream", qos: 1,
		payload: func(seq uint64) []byte {
			amu.Lock()
			sent = max(sent, int(seq))
			amu.Unlock()
			return strconv.AppendUint(nil, seq, 10)
		},
		acked: func(seq uint64) {
			amu.Lock()
			acked[int(seq)] = true
			amu.Unlock()
		}}, stop, &pubs)
	ackedCount := func() int {
		amu.Lock()
		defer amu.Unlock()
		return len(acked)
	}
	for kill := range 2 {
		target := ackedCount() + 300
		testutil.Eventually(t, 30*time.Second, "messages acknowledged mid-stream", func() bool { return ackedCount() >= target })
		proc.Signal(t, syscall.SIGKILL)
		_ = proc.Wait(t, 10*time.Second)
		proc = testutil.StartFerry(t, bin, args...)
		t.Logf("kill %d after %d acknowledged", kill+1, target)
	}
	target := ackedCount() + 300
	testutil.Eventually(t, 30*time.Second, "messages acknowledged after the last restart", func() bool { return ackedCount() >= target })
	close(stop)
	pubs.Wait()

	amu.Lock()
	want := make([]int, 0, len(acked))
	for i := 1; i <= sent; i++ {
		if acked[i] {
			want = append(want, i)
		}
	}
	amu.Unlock()
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("mosquitto_sub has all %d acknowledged messages", len(want)), func() bool {
		seen := map[int]bool{}
		for _, n := range received() {
			seen[n] = true
		}
		for _, n := range want {
			if !seen[n] {
				return false
			}
		}
		return true
	})
	// In order: first deliveries only ever go up; a redelivery (QoS 1 after
	// a crash) repeats an earlier message and is counted.
	last, dupes := -2, 0
	firsts := map[int]bool{}
	all := received()
	for i, n := range all {
		if firsts[n] {
			dupes++
			continue
		}
		firsts[n] = true
		if n < last {
			amu.Lock()
			wasAcked := acked[n]
			amu.Unlock()
			t.Fatalf("message %d (acknowledged: %v) delivered after %d: out of order; deliveries around it: %v",
				n, wasAcked, last, all[max(0, i-12):min(len(all), i+4)])
		}
		last = n
	}
	t.Logf("%d acknowledged, %d published, %d deliveries, %d duplicates", len(want), sent, len(received()), dupes)

	out, err := exec.Command(subCmd, "-h", host, "-p", port, "-t", "dw/retained", "-C", "1", "-W", "5").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "keep" {
		t.Fatalf("retained message after the restarts: %v %q", err, out)
	}
}
