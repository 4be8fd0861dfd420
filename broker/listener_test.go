package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

// pki is a throwaway CA with a server certificate for 127.0.0.1 and a
// client certificate, written as PEM files.
type pki struct {
	dir                           string
	caFile, serverCert, serverKey string
	clientCert                    tls.Certificate
	pool                          *x509.CertPool
	ca                            *x509.Certificate
	caKey                         *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	return issue(t, ca, caKey, caDER)
}

// newPKIFrom issues fresh leaf certificates from p's CA.
func newPKIFrom(t *testing.T, p *pki) *pki {
	t.Helper()
	return issue(t, p.ca, p.caKey, p.ca.Raw)
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caDER []byte) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), ca: ca, caKey: caKey}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, usage x509.ExtKeyUsage, ip bool) ([]byte, *ecdsa.PrivateKey) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		if ip {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	sDER, sKey := leaf("127.0.0.1", x509.ExtKeyUsageServerAuth, true)
	p.serverCert = p.write(t, "server.pem", "CERTIFICATE", sDER)
	kb, _ := x509.MarshalECPrivateKey(sKey)
	p.serverKey = p.write(t, "server-key.pem", "EC PRIVATE KEY", kb)
	cDER, cKey := leaf("device-1", x509.ExtKeyUsageClientAuth, false)
	p.clientCert = tls.Certificate{Certificate: [][]byte{cDER}, PrivateKey: cKey}
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pahoRoundTrip connects a paho client to url, subscribes and receives its
// own QoS 1 message.
func pahoRoundTrip(t *testing.T, url string, tc *tls.Config) error {
	t.Helper()
	got := make(chan string, 1)
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("rt-" + filepath.Base(t.Name())).
		SetTLSConfig(tc).SetConnectTimeout(5 * time.Second).SetAutoReconnect(false).SetConnectRetry(false)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return tok.Error()
	}
	defer c.Disconnect(100)
	if tok := c.Subscribe("rt/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("subscribe timed out")
	}
	if tok := c.Publish("rt/x", 1, false, "over "+url); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-got:
		if m != "over "+url {
			t.Fatalf("payload %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("own message not received")
	}
	return nil
}

func TestListenersOfEveryType(t *testing.T) {
	p := newPKI(t)
	sock := filepath.Join(t.TempDir(), "mqtt.sock")
	b := testutil.StartBroker(t, func(c *config.Config) {
		c.Listeners = append(c.Listeners,
			config.Listener{Name: "tls", Type: "tls", Addr: "127.0.0.1:0", Cert: p.serverCert, Key: p.serverKey},
			config.Listener{Name: "mtls", Type: "tls", Addr: "127.0.0.1:0", Cert: p.serverCert, Key: p.serverKey, ClientCA: p.caFile},
			config.Listener{Name: "ws", Type: "ws", Addr: "127.0.0.1:0", Path: "/mqtt"},
			config.Listener{Name: "wss", Type: "wss", Addr: "127.0.0.1:0", Path: "/mqtt", Cert: p.serverCert, Key: p.serverKey},
			config.Listener{Name: "tcp2", Type: "tcp", Addr: "127.0.0.1:0"},
			config.Listener{Name: "unix", Type: "unix", Addr: sock},
		)
	})
	trust := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}
	withCert := &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.clientCert}, MinVersion: tls.VersionTLS12}
	for _, tc := range []struct {
		name, url string
		tls       *tls.Config
		wantErr   bool
	}{
		{"tcp", "tcp://" + b.Addr, nil, false},
		{"second tcp", "tcp://" + b.B.Addr("tcp2"), nil, false},
		{"tls", "ssl://" + b.B.Addr("tls"), trust, false},
		{"mtls with client certificate", "ssl://" + b.B.Addr("mtls"), withCert, false},
		{"mtls without client certificate", "ssl://" + b.B.Addr("mtls"), trust, true},
		{"ws", "ws://" + b.B.Addr("ws") + "/mqtt", nil, false},
		{"wss", "wss://" + b.B.Addr("wss") + "/mqtt", trust, false},
		{"unix", "unix://" + sock, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := pahoRoundTrip(t, tc.url, tc.tls)
			if tc.wantErr != (err != nil) {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
		})
	}

	t.Run("tls 1.1 refused", func(t *testing.T) {
		c, err := tls.Dial("tcp", b.B.Addr("tls"), &tls.Config{RootCAs: p.pool, MaxVersion: tls.VersionTLS11})
		if err == nil {
			c.Close()
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("websocket guard and text frames", func(t *testing.T) {
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+b.B.Addr("ws")+"/mqtt", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		// The #501 packet split over two binary messages still reaches the
		// guard whole.
		_ = ws.WriteMessage(websocket.BinaryMessage, append(append([]byte{}, connectV5...), issue501[:3]...))
		_ = ws.WriteMessage(websocket.BinaryMessage, issue501[3:])
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		var types []byte
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				break
			}
			types = append(types, msg[0]>>4)
		}
		if len(types) != 2 || types[0] != packets.Connack || types[1] != packets.Disconnect {
			t.Fatalf("got packet types %v, want CONNACK then DISCONNECT", types)
		}
	})
}

// TestCertificateReload: a renewed certificate is served without a restart;
// a broken one is refused and the previous one stays in service.
func TestCertificateReload(t *testing.T) {
	p := newPKI(t)
	b := testutil.StartBrokerWith(t, []broker.Option{broker.WithCertCheckInterval(20 * time.Millisecond)}, func(c *config.Config) {
		c.Listeners = append(c.Listeners, config.Listener{Name: "tls", Type: "tls", Addr: "127.0.0.1:0", Cert: p.serverCert, Key: p.serverKey})
	})
	served := func() string {
		c, err := tls.Dial("tcp", b.B.Addr("tls"), &tls.Config{RootCAs: p.pool})
		if err != nil {
			return "error: " + err.Error()
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := served()
	if strings.HasPrefix(first, "error") {
		t.Fatal(first)
	}
	// Renew: a new certificate from the same CA, written over the old files.
	q := newPKIFrom(t, p)
	copyFile(t, q.serverCert, p.serverCert)
	copyFile(t, q.serverKey, p.serverKey)
	var second string
	testutil.Eventually(t, 5*time.Second, "renewed certificate served", func() bool {
		second = served()
		return second != first && !strings.HasPrefix(second, "error")
	})
	if err := os.WriteFile(p.serverCert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p.serverCert, time.Now(), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for range 10 { // several check intervals pass; the good certificate stays
		if got := served(); got != second {
			t.Fatalf("after a broken renewal the listener serves %s, want %s", got, second)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

// MQTT 3.1 and 3.1.1 have no DISCONNECT from a server: a 3.x client whose
// connection the broker ends (shutdown, takeover) sees it closed, with no
// packet first; an MQTT 5 client gets DISCONNECT with the reason.
func TestServerDisconnectOnlyForMQTT5(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version byte
		reason  byte // the DISCONNECT reason an MQTT 5 client gets; 0 = none sent
		end     func(t *testing.T, b *testutil.Broker, r *testutil.Raw, id string)
	}{
		{"shutdown 3.1", 3, 0, shutdownBroker},
		{"shutdown 3.1.1", 4, 0, shutdownBroker},
		{"shutdown 5", 5, packets.ErrServerShuttingDown.Code, shutdownBroker},
		{"takeover 3.1.1", 4, 0, takeOver},
		{"takeover 5", 5, packets.ErrSessionTakenOver.Code, takeOver},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testutil.StartBroker(t)
			r := testutil.DialRaw(t, b.Addr, tc.version)
			r.Connect("dc-"+strings.ReplaceAll(tc.name, " ", "-"), packets.Properties{})
			tc.end(t, b, r, "dc-"+strings.ReplaceAll(tc.name, " ", "-"))
			pk, err := r.Read(5 * time.Second)
			if tc.reason == 0 {
				if err == nil {
					t.Fatalf("MQTT %d client got %s (% x) from the server; want the connection closed", tc.version,
						packets.PacketNames[pk.FixedHeader.Type], testutil.Encode(t, pk, tc.version))
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("connection still open")
				}
				return
			}
			if err != nil {
				t.Fatalf("MQTT 5 client: want DISCONNECT 0x%02x, got %v", tc.reason, err)
			}
			if pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != tc.reason {
				t.Fatalf("got %s reason 0x%02x, want DISCONNECT 0x%02x", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode, tc.reason)
			}
		})
	}
}

func shutdownBroker(t *testing.T, b *testutil.Broker, _ *testutil.Raw, _ string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.B.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func takeOver(t *testing.T, b *testutil.Broker, _ *testutil.Raw, id string) {
	t.Helper()
	testutil.DialRaw(t, b.Addr, 4).Connect(id, packets.Properties{})
}

// mosquitto_sub, a strict MQTT 3.1.1 client, reports a server DISCONNECT as
// "A network protocol error occurred"; a broker shutdown must look to it
// like a lost connection.
func TestMosquittoSubSeesCleanShutdown(t *testing.T) {
	bin := testutil.NeedCommand(t, "mosquitto_sub", "mosquitto-clients")
	b := testutil.StartBroker(t)
	host, port, _ := net.SplitHostPort(b.Addr)
	out := &testutil.Log{} // written by exec's goroutines while the test reads it
	cmd := exec.Command(bin, "-V", "mqttv311", "-h", host, "-p", port, "-t", "x/#", "-i", "mosq-shutdown")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testutil.Eventually(t, 5*time.Second, "mosquitto_sub connected", func() bool {
		_, ok := b.B.Server().Clients.Get("mosq-shutdown")
		return ok
	})
	shutdownBroker(t, b, nil, "")
	// Shutdown returns once every connection has ended: by then
	// mosquitto_sub has read what it was sent. A lost connection leaves it
	// trying to reconnect, quietly; a protocol error makes it print and exit.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("mosquitto_sub exited (%v) after the shutdown:\n%s", err, out.String())
	case <-time.After(2 * time.Second):
	}
	if strings.Contains(strings.ToLower(out.String()), "protocol error") {
		t.Fatalf("mosquitto_sub saw a protocol error:\n%s", out.String())
	}
}
