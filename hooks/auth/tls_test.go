package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsConn runs a real TLS handshake over a pipe and returns the server side.
func tlsConn(t *testing.T, ca *testCA, clientAuth tls.ClientAuthType, client *tls.Certificate) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	serverCert := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "broker"}, DNSNames: []string{"broker"}})
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: clientAuth, ClientCAs: pool})
	ccfg := &tls.Config{RootCAs: pool, ServerName: "broker"}
	if client != nil {
		ccfg.Certificates = []tls.Certificate{*client}
	}
	cli := tls.Client(b, ccfg)
	// Close the pipe, not the TLS conns: their close_notify would block on an
	// unread pipe.
	t.Cleanup(func() { a.Close(); b.Close() })
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return srv
}

func TestTLSUsername(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	full := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "sensor-1"}, DNSNames: []string{"sensor-1.example.com"}, EmailAddresses: []string{"ops@example.com"}})
	cnOnly := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "sensor-2"}})
	foreign := other.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "sensor-1"}})

	tests := []struct {
		name       string
		field      string
		clientAuth tls.ClientAuthType
		cert       *tls.Certificate
		user, pass string
		want       bool
		wantUser   string
	}{
		{"cn", TLSUsernameCN, tls.RequireAndVerifyClientCert, &full, "", "", true, "sensor-1"},
		{"cn beats the CONNECT user name", TLSUsernameCN, tls.RequireAndVerifyClientCert, &full, "alice", "secret", true, "sensor-1"},
		{"san_dns", TLSUsernameSANDNS, tls.RequireAndVerifyClientCert, &full, "", "", true, "sensor-1.example.com"},
		{"san_email", TLSUsernameSANEmail, tls.RequireAndVerifyClientCert, &full, "", "", true, "ops@example.com"},
		{"san_email missing", TLSUsernameSANEmail, tls.RequireAndVerifyClientCert, &cnOnly, "", "", false, ""},
		{"no certificate: password", TLSUsernameCN, tls.VerifyClientCertIfGiven, nil, "alice", "secret", true, "alice"},
		{"no certificate: anonymous refused", TLSUsernameCN, tls.VerifyClientCertIfGiven, nil, "", "", false, ""},
		{"unverified certificate is ignored", TLSUsernameCN, tls.RequireAnyClientCert, &foreign, "", "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(Config{TLSUsername: tt.field, PasswordFile: "testdata/mosquitto.passwd"}, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			cl := &mqtt.Client{ID: "c"}
			cl.Net.Conn = tlsConn(t, ca, tt.clientAuth, tt.cert)
			pk := packets.Packet{Connect: packets.ConnectParams{Username: []byte(tt.user), Password: []byte(tt.pass)}}
			if got := h.OnConnectAuthenticate(cl, pk); got != tt.want {
				t.Fatalf("OnConnectAuthenticate = %v, want %v", got, tt.want)
			}
			if !tt.want {
				return
			}
			v, _ := h.clients.Load("c")
			if id := v.(*identity); id.username != tt.wantUser {
				t.Errorf("user name %q, want %q", id.username, tt.wantUser)
			}
		})
	}
}

func TestTLSCNSelector(t *testing.T) {
	ca := newCA(t)
	cert := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "gw.example.com"}})
	h, err := New(Config{PasswordFile: "testdata/mosquitto.passwd", ACL: []ACLRule{
		{CNs: []string{"gw.example.com"}, Allow: ACLAccess{Publish: []string{"gateways/%u/#"}}},
	}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	// Without tls_username the certificate does not authenticate, but its
	// CN still selects ACL rules.
	cl := &mqtt.Client{ID: "g"}
	cl.Net.Conn = tlsConn(t, ca, tls.RequireAndVerifyClientCert, &cert)
	if !h.OnConnectAuthenticate(cl, packets.Packet{Connect: packets.ConnectParams{Username: []byte("alice"), Password: []byte("secret")}}) {
		t.Fatal("refused")
	}
	if !h.OnACLCheck(cl, "gateways/alice/x", true) {
		t.Error("CN rule did not apply")
	}
	plain := &mqtt.Client{ID: "p"}
	if !h.OnConnectAuthenticate(plain, packets.Packet{Connect: packets.ConnectParams{Username: []byte("alice"), Password: []byte("secret")}}) {
		t.Fatal("refused")
	}
	if h.OnACLCheck(plain, "gateways/alice/x", true) {
		t.Error("CN rule applied to a client without that certificate")
	}
}
