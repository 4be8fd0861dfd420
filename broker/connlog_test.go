package broker_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// At the default level the log says who connected and left, who was
// refused and why, and which TLS handshakes failed, as Mosquitto's does;
// it does not list mochi's hooks and listeners at start and stop.
func TestConnectionLogAtInfo(t *testing.T) {
	pki := newPKI(t)
	for _, tc := range []struct {
		name   string
		auth   bool
		client func(t *testing.T, b *testutil.Broker)
		want   []string // substrings of one line each
	}{
		{"connect and disconnect 3.1.1", false, func(t *testing.T, b *testutil.Broker) {
			r, code := dialAs(t, b.Addr, 4, "log-1", "alice", "x")
			if code != 0 {
				t.Fatalf("CONNACK 0x%02x", code)
			}
			r.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
			r.ExpectClosed(5 * time.Second)
		}, []string{
			`msg="client connected" client_id=log-1 username=alice listener=tcp remote=127.0.0.1:`,
			`protocol=3.1.1 clean=true keepalive=60`,
			`msg="client disconnected" client_id=log-1 username=alice listener=tcp remote=127.0.0.1:`,
			`reason="client sent DISCONNECT"`,
		}},
		{"connection dropped 5", false, func(t *testing.T, b *testutil.Broker) {
			r, _ := dialAs(t, b.Addr, 5, "log-2", "", "")
			_ = r.Conn.Close()
		}, []string{`msg="client disconnected" client_id=log-2 username="" listener=tcp`, `protocol=5 reason="connection closed by client"`}},
		{"bad password", true, func(t *testing.T, b *testutil.Broker) {
			if _, code := dialAs(t, b.Addr, 4, "log-3", "sensor1", "wrong"); code == 0 {
				t.Fatal("accepted a wrong password")
			}
		}, []string{`msg="connection refused" client_id=log-3 username=sensor1 listener=tcp`, `reason="bad username or password"`}},
		{"plain text on the TLS port", false, func(t *testing.T, b *testutil.Broker) {
			r := testutil.DialRaw(t, b.B.Addr("tls"), 4)
			r.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{ClientIdentifier: "log-4", Clean: true, Keepalive: 60}})
			r.ExpectClosed(5 * time.Second)
		}, []string{`msg="TLS handshake failed" listener=tls remote=127.0.0.1:`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs, log := testutil.NewLog(slog.LevelInfo)
			b := testutil.StartBrokerWith(t, []broker.Option{broker.WithLogger(log)}, func(c *config.Config) {
				c.Listeners = append(c.Listeners, config.Listener{Name: "tls", Type: config.ListenerTLS,
					Addr: "127.0.0.1:0", Cert: pki.serverCert, Key: pki.serverKey})
				if tc.auth {
					c.Auth.PasswordFile = filepath.Join("..", "hooks", "auth", "testdata", "mosquitto.passwd")
				}
			})
			tc.client(t, b)
			for _, w := range tc.want {
				testutil.Eventually(t, 5*time.Second, "log line with "+w+" in:\n"+logs.String(), func() bool {
					return strings.Contains(logs.String(), w)
				})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := b.B.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			for _, chatter := range []string{"added hook", "stopping hook", "attached listener", "mochi mqtt"} {
				if strings.Contains(logs.String(), chatter) {
					t.Errorf("log has mochi's %q at info:\n%s", chatter, logs.String())
				}
			}
		})
	}
}

// listeners[].name labels the per-listener metrics.
func TestListenerMetrics(t *testing.T) {
	pki := newPKI(t)
	b := testutil.StartBroker(t, func(c *config.Config) {
		c.Listeners = append(c.Listeners, config.Listener{Name: "devices-tls", Type: config.ListenerTLS,
			Addr: "127.0.0.1:0", Cert: pki.serverCert, Key: pki.serverKey})
	})
	testutil.DialRaw(t, b.Addr, 4).Connect("m-1", packets.Properties{})
	plain := testutil.DialRaw(t, b.B.Addr("devices-tls"), 4)
	plain.SendBytes([]byte("GET / HTTP/1.1\r\n\r\n"))
	plain.ExpectClosed(5 * time.Second)
	want := []string{
		`ferry_listener_connections{listener="tcp",type="tcp"} 1`,
		`ferry_listener_accepted_total{listener="tcp",type="tcp"} 1`,
		`ferry_listener_accepted_total{listener="devices-tls",type="tls"} 1`,
		`ferry_listener_tls_handshake_failures_total{listener="devices-tls",type="tls"} 1`,
	}
	var body string
	testutil.Eventually(t, 5*time.Second, "per-listener metrics", func() bool {
		resp, err := http.Get(b.AdminURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		body = string(raw)
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
}

// A refused reload is one log line, not one per layer.
func TestRefusedReloadLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	data, err := os.ReadFile(filepath.Join("..", "hooks", "auth", "testdata", "mosquitto.passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logs, log := testutil.NewLog(slog.LevelInfo)
	b := testutil.StartBrokerWith(t, []broker.Option{broker.WithLogger(log)}, func(c *config.Config) {
		c.Auth.PasswordFile = pw
	})
	if err := os.WriteFile(pw, []byte("no colon here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.B.Reload(); err == nil {
		t.Fatal("a broken password file was accepted")
	}
	if n := strings.Count(logs.String(), "reload"); n != 1 {
		t.Errorf("%d log lines about the reload, want 1:\n%s", n, logs.String())
	}
}
