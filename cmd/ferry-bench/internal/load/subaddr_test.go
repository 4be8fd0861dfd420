package load

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingProxy forwards every connection to target and counts them: a
// second address for one broker, to see which clients dial which address.
type countingProxy struct {
	ln    net.Listener
	conns atomic.Int64
}

func startProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	track := func(cs ...net.Conn) {
		mu.Lock()
		open = append(open, cs...)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			b, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(c, b)
			for _, pair := range [][2]net.Conn{{c, b}, {b, c}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = io.Copy(pair[0], pair[1])
					_ = pair[0].Close()
					_ = pair[1].Close()
				}()
			}
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *countingProxy) addr() string { return p.ln.Addr().String() }

// TestSubAddr: subscribers (and only they) connect to SubAddr, and the
// result records both addresses.
func TestSubAddr(t *testing.T) {
	addr, _ := startMochi(t)
	tests := []struct {
		name string
		cfg  Config
		subs int64 // connections expected at SubAddr
	}{
		{name: "fan-in", cfg: Config{Scenario: FanIn, QoS: 1, Publishers: 3, Count: 100}, subs: 1},
		{name: "pairs", cfg: Config{Scenario: Pairs, QoS: 1, Publishers: 4, Count: 100}, subs: 4},
		{name: "fan-out", cfg: Config{Scenario: FanOut, QoS: 0, Subscribers: 3, Count: 100, Rate: 2000}, subs: 3},
		{name: "latency", cfg: Config{Scenario: Latency, QoS: 1, Rate: 2000, Count: 100}, subs: 1},
		{name: "reqresp responder", cfg: Config{Scenario: ReqResp, QoS: 0, Publishers: 2, Count: 100}, subs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, addr)
			tc.cfg.Addr, tc.cfg.SubAddr = addr, p.addr()
			tc.cfg.Drain = 300 * time.Millisecond
			res := runScenario(t, tc.cfg)
			if got := p.conns.Load(); got != tc.subs {
				t.Errorf("%d connections at the sub address, want %d", got, tc.subs)
			}
			if res.Addr != addr || res.SubAddr != p.addr() {
				t.Errorf("addr %q sub_addr %q, want %q and %q", res.Addr, res.SubAddr, addr, p.addr())
			}
			if res.Lost != 0 || res.Unique != res.Expected || res.Expected == 0 {
				t.Errorf("expected %d unique %d lost %d", res.Expected, res.Unique, res.Lost)
			}
		})
	}
}

func TestSubAddrDefault(t *testing.T) {
	c := Config{Scenario: FanIn, Addr: "a:1"}.withDefaults()
	if c.SubAddr != "a:1" {
		t.Fatalf("sub addr %q, want a:1", c.SubAddr)
	}
	c = Config{Scenario: FanIn, Addr: "a:1", SubAddr: "b:2"}.withDefaults()
	if c.SubAddr != "b:2" {
		t.Fatalf("sub addr %q, want b:2", c.SubAddr)
	}
}

// TestDialOptionsServerName: without a configured server name, TLS
// verifies the host of each address dialled.
func TestDialOptionsServerName(t *testing.T) {
	c := Config{TLS: &tls.Config{MinVersion: tls.VersionTLS12}}
	if o := c.dialOptions("10.0.0.1:8883"); o.TLS.ServerName != "10.0.0.1" {
		t.Errorf("server name %q, want 10.0.0.1", o.TLS.ServerName)
	}
	if o := c.dialOptions("[::1]:8883"); o.TLS.ServerName != "::1" {
		t.Errorf("server name %q, want ::1", o.TLS.ServerName)
	}
	if c.TLS.ServerName != "" {
		t.Error("dialOptions changed the shared TLS configuration")
	}
	c.TLS.ServerName = "broker.example"
	if o := c.dialOptions("10.0.0.1:8883"); o.TLS.ServerName != "broker.example" {
		t.Errorf("server name %q, want the configured one", o.TLS.ServerName)
	}
}
