package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/mochitest"
)

// nodeEnv makes the test binary serve a bare mochi broker on loopback and
// print its address instead of running tests: a broker process the storm
// can kill.
const nodeEnv = "FERRY_BENCH_TEST_NODE"

func TestMain(m *testing.M) {
	if os.Getenv(nodeEnv) == "1" {
		serveNode()
		return
	}
	os.Exit(m.Run())
}

// serveNode runs a mochi broker until the process is killed.
func serveNode() {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	l := mochitest.NewListener(s, "node")
	if err := s.AddListener(l); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if err := s.Serve(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("addr", l.Address())
	select {}
}

// startNode runs serveNode in a child process and returns its address and
// process; the process is killed when the test ends.
func startNode(t *testing.T) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if !ok {
		t.Fatalf("node said %q", line)
	}
	return addr, cmd
}

func runStormScenario(t *testing.T, cfg Config) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg.Scenario = Storm
	if cfg.Drain == 0 {
		cfg.Drain = 300 * time.Millisecond
	}
	if cfg.MoveTimeout == 0 {
		cfg.MoveTimeout = 10 * time.Second
	}
	if cfg.CheckWait == 0 {
		cfg.CheckWait = 300 * time.Millisecond
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("storm: %v", err)
	}
	return res
}

// TestStormSessionsResumed: sessions closed without DISCONNECT and
// reconnected to the same broker are all resumed and all get their
// message.
func TestStormSessionsResumed(t *testing.T) {
	addr, _ := startMochi(t)
	res := runStormScenario(t, Config{Addr: addr, Clients: 300, ConnectConcurrency: 32})
	if len(res.Errors) > 0 {
		t.Fatalf("client errors: %v", res.Errors)
	}
	if res.MoveMode != MoveClose || res.KilledPID != 0 || len(res.MoveAddrs) != 1 || res.MoveAddrs[0] != addr {
		t.Errorf("mode %q killed %d move addrs %v", res.MoveMode, res.KilledPID, res.MoveAddrs)
	}
	if res.Clients != 300 || res.Connected != 300 || res.Resumed != 300 || res.SessionsLost != 0 || res.NotPresent != 0 || res.MoveFailed != 0 {
		t.Errorf("clients %d set up %d resumed %d lost %d (not present %d, failed %d); want 300, 300, 300, 0",
			res.Clients, res.Connected, res.Resumed, res.SessionsLost, res.NotPresent, res.MoveFailed)
	}
	if res.Sent != 300 || res.Acked != 300 || res.Expected != 300 || res.Unique != 300 || res.Lost != 0 || res.Mismatched != 0 {
		t.Errorf("check: sent %d acked %d expected %d delivered %d lost %d misrouted %d; want 300 x4, 0, 0",
			res.Sent, res.Acked, res.Expected, res.Unique, res.Lost, res.Mismatched)
	}
	if res.CheckAddr != addr || len(res.Checks) != 1 || res.Checks[0].Seconds <= 0 || res.LostByAddr != nil || res.MoveSeconds <= 0 || res.ConnectSeconds <= 0 || res.MoveLatency == nil ||
		res.MoveLatency.Samples != 300 || !res.Persistent || res.QoS != 1 {
		t.Errorf("result fields: %+v", res)
	}
}

// TestStormNodeKilled kills the node the sessions are on and moves them to
// another broker that has never seen them: every session is lost, and said
// so, and no check message is delivered.
func TestStormNodeKilled(t *testing.T) {
	node, cmd := startNode(t)
	other, _ := startMochi(t)
	res := runStormScenario(t, Config{Addr: node, MoveAddrs: []string{other}, KillPID: cmd.Process.Pid, Clients: 100, BrokerPID: cmd.Process.Pid})
	if res.MoveMode != MoveKill || res.KilledPID != cmd.Process.Pid || res.GoneSeconds <= 0 || res.GoneSeconds >= stormGoneTimeout.Seconds() {
		t.Errorf("mode %q killed %d gone %vs", res.MoveMode, res.KilledPID, res.GoneSeconds)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("node exit: %v, want killed", err)
	}
	if res.Connected != 100 || res.Resumed != 0 || res.NotPresent != 100 || res.SessionsLost != 100 {
		t.Errorf("set up %d resumed %d not present %d lost %d; want 100, 0, 100, 100", res.Connected, res.Resumed, res.NotPresent, res.SessionsLost)
	}
	if res.CheckAddr != other || res.Acked != 100 || res.Unique != 0 || res.Lost != 100 || res.LossPct != 100 || res.LostByAddr[other] != 100 {
		t.Errorf("check at %s: acked %d delivered %d lost %d (%v%%, by address %v); want %s, 100, 0, 100",
			res.CheckAddr, res.Acked, res.Unique, res.Lost, res.LossPct, res.LostByAddr, other)
	}
}

// TestStormUnreachableMove: sessions moved to an address where nothing
// listens get no CONNACK within the move timeout and count as lost.
func TestStormUnreachableMove(t *testing.T) {
	addr, _ := startMochi(t)
	res := runStormScenario(t, Config{Addr: addr, MoveAddrs: []string{"127.0.0.1:1"}, Clients: 10, MoveTimeout: 500 * time.Millisecond})
	if res.Connected != 10 || res.MoveFailed != 10 || res.SessionsLost != 10 || res.Resumed != 0 || res.Retries < 10 {
		t.Errorf("set up %d failed %d lost %d resumed %d retries %d; want 10, 10, 10, 0, >= 10",
			res.Connected, res.MoveFailed, res.SessionsLost, res.Resumed, res.Retries)
	}
	if res.MoveSeconds != 0 || res.MoveLatency != nil || res.ErrorsAll < 10 {
		t.Errorf("move %vs latency %+v errors %d", res.MoveSeconds, res.MoveLatency, res.ErrorsAll)
	}
}

func TestCountMoves(t *testing.T) {
	tests := []struct {
		name  string
		setUp []bool
		out   []moveOutcome
		want  stormCounts
	}{
		{name: "all resumed", setUp: []bool{true, true}, out: []moveOutcome{{acked: true, present: true}, {acked: true, present: true}},
			want: stormCounts{resumed: 2}},
		{name: "not set up is not counted", setUp: []bool{false, true}, out: []moveOutcome{{}, {acked: true, present: true}},
			want: stormCounts{resumed: 1}},
		{name: "session not present is lost", setUp: []bool{true, true}, out: []moveOutcome{{acked: true}, {acked: true, present: true}},
			want: stormCounts{resumed: 1, notPresent: 1, lost: 1}},
		{name: "no connack is lost", setUp: []bool{true}, out: []moveOutcome{{failed: 3}},
			want: stormCounts{failed: 1, lost: 1, retries: 3}},
		{name: "resumed after retries", setUp: []bool{true, true}, out: []moveOutcome{{acked: true, present: true, failed: 2}, {acked: true, failed: 1}},
			want: stormCounts{resumed: 1, notPresent: 1, lost: 1, retried: 2, retries: 3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := countMoves(tc.setUp, tc.out); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRetryBackoff(t *testing.T) {
	for n := range 40 {
		d := retryBackoff(n)
		base := min(stormRetryMin<<min(n, 16), stormRetryMax)
		if n >= 16 {
			base = stormRetryMax
		}
		if d < base || d > base+base/2 {
			t.Fatalf("attempt %d: %v, want within [%v, %v]", n, d, base, base+base/2)
		}
	}
}

func TestFDLimit(t *testing.T) {
	if err := fdLimitError(10000, 20000); err != nil {
		t.Fatalf("20000 descriptors for 10000 sessions: %v", err)
	}
	err := fdLimitError(10000, 1024)
	if !errors.Is(err, ErrFDLimit) || !strings.Contains(err.Error(), "10000 sessions") || !strings.Contains(err.Error(), "limit is 1024") {
		t.Fatalf("got %v", err)
	}
}

func TestStormConfig(t *testing.T) {
	c := Config{Scenario: Storm, Addr: "a:1", Persistent: false, QoS: 0}.withDefaults()
	if c.Clients != DefaultStormClients || !c.Persistent || c.QoS != 1 || len(c.MoveAddrs) != 1 || c.MoveAddrs[0] != "a:1" ||
		c.MoveTimeout != DefaultMoveTimeout || c.CheckWait != DefaultCheckWait || c.SessionExpiry != DefaultSessionExpiry {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	bad := []Config{
		{Scenario: Storm, Addr: "a:1", KillPID: 12345},                                  // moves to the node it kills
		{Scenario: Storm, Addr: "a:1", MoveAddrs: []string{"b:1", ""}},                  // empty address
		{Scenario: Storm, Addr: "a:1", MoveAddrs: []string{"b:1"}, MoveConcurrency: -1}, // negative
		{Scenario: Storm, Addr: "a:1", CheckWait: -time.Second},                         // negative
	}
	for i, c := range bad {
		if err := c.withDefaults().validate(); err == nil {
			t.Errorf("config %d accepted: %+v", i, c)
		}
	}
}

// dropRound sends every message of one check round (the header's
// Publisher field) to a topic nobody subscribes to.
type dropRound struct {
	mqtt.HookBase
	round uint32
}

func (h *dropRound) ID() string { return "drop-round" }

func (h *dropRound) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *dropRound) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if hd, ok := ParseHeader(pk.Payload); ok && hd.Publisher == h.round {
		pk.TopicName = "nobody/" + pk.TopicName // acknowledged, delivered to no one
	}
	return pk, nil
}

// TestStormCheckRounds: each round is counted on its own, and a round
// whose messages never arrive shows as that round's loss.
func TestStormCheckRounds(t *testing.T) {
	addr, _ := startMochi(t, &dropRound{round: 1})
	res := runStormScenario(t, Config{Addr: addr, Clients: 40, CheckRounds: 3, CheckInterval: 20 * time.Millisecond})
	if len(res.Checks) != 3 {
		t.Fatalf("checks %+v, want 3 rounds", res.Checks)
	}
	for k, want := range []int64{40, 0, 40} {
		c := res.Checks[k]
		if c.Round != k+1 || c.Sent != 40 || c.Acked != 40 || c.Delivered != want || c.Lost != 40-want {
			t.Errorf("round %d: %+v; want 40 sent and acked, %d delivered", k+1, c, want)
		}
		if k > 0 && c.AfterMove < res.Checks[k-1].AfterMove+0.02 {
			t.Errorf("round %d started %.3f s after the move, round %d %.3f s", k+1, c.AfterMove, k, res.Checks[k-1].AfterMove)
		}
	}
	if res.Sent != 120 || res.Acked != 120 || res.Expected != 120 || res.Unique != 80 || res.Lost != 40 || res.LostByAddr[addr] != 40 {
		t.Errorf("totals: sent %d acked %d expected %d delivered %d lost %d by address %v; want 120, 120, 120, 80, 40",
			res.Sent, res.Acked, res.Expected, res.Unique, res.Lost, res.LostByAddr)
	}
}

// kickOnce ends every storm session's second connection (its first after
// the move) shortly after its CONNACK, once.
type kickOnce struct {
	mqtt.HookBase
	mu    sync.Mutex
	conns map[string]int
}

func (h *kickOnce) ID() string { return "kick-once" }

func (h *kickOnce) Provides(b byte) bool { return b == mqtt.OnSessionEstablished }

func (h *kickOnce) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if !strings.Contains(cl.ID, "-storm-") || strings.HasSuffix(cl.ID, "-check") {
		return
	}
	h.mu.Lock()
	h.conns[cl.ID]++
	n := h.conns[cl.ID]
	h.mu.Unlock()
	if n == 2 {
		time.AfterFunc(20*time.Millisecond, func() { cl.Stop(errors.New("kicked by the test")) })
	}
}

// TestStormDroppedSessionsReconnect: sessions the broker drops after the
// move reconnect, find their session and get every round's message.
func TestStormDroppedSessionsReconnect(t *testing.T) {
	addr, _ := startMochi(t, &kickOnce{conns: map[string]int{}})
	res := runStormScenario(t, Config{Addr: addr, Clients: 30, CheckRounds: 2, CheckInterval: 200 * time.Millisecond, CheckWait: time.Second})
	if res.Resumed != 30 || res.DroppedAfterMove != 30 || res.Reconnected != 30 || res.LostAfterMove != 0 {
		t.Errorf("resumed %d dropped %d reconnected %d lost after %d; want 30, 30, 30, 0", res.Resumed, res.DroppedAfterMove, res.Reconnected, res.LostAfterMove)
	}
	if res.Acked != 60 || res.Unique != 60 || res.Lost != 0 {
		t.Errorf("checks %+v: acked %d delivered %d lost %d; want 60, 60, 0", res.Checks, res.Acked, res.Unique, res.Lost)
	}
}
