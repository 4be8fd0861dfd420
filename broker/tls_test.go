package broker_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
)

// TestCertificateExpiryMetric: each TLS listener exports when its
// certificate and client CA expire, and a renewed certificate moves the
// figure without a restart (the alert in deploy/prometheus/alerts.yml
// clears on renewal).
func TestCertificateExpiryMetric(t *testing.T) {
	p := newPKI(t)
	// Whole seconds: the metric is a Unix time in seconds.
	first := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	writeServerCert(t, p, first)
	b := testutil.StartBrokerWith(t, []broker.Option{broker.WithCertCheckInterval(20 * time.Millisecond)}, func(c *config.Config) {
		c.Listeners = append(c.Listeners,
			config.Listener{Name: "edge", Type: config.ListenerTLS, Addr: "127.0.0.1:0", Cert: p.serverCert, Key: p.serverKey},
			config.Listener{Name: "mtls", Type: config.ListenerTLS, Addr: "127.0.0.1:0", Cert: p.serverCert, Key: p.serverKey, ClientCA: p.caFile})
	})
	const name = "ferry_tls_certificate_expiry_timestamp_seconds"
	for _, tc := range []struct {
		series string
		want   time.Time
	}{
		{name + `{cert="server",listener="edge"}`, first},
		{name + `{cert="server",listener="mtls"}`, first},
		{name + `{cert="client_ca",listener="mtls"}`, p.ca.NotAfter},
	} {
		if got := metric(t, b, tc.series); got != float64(tc.want.Unix()) {
			t.Errorf("%s = %v, want %d (%s)", tc.series, got, tc.want.Unix(), tc.want)
		}
	}
	if got := metric(t, b, name+`{cert="client_ca",listener="edge"}`); got != 0 {
		t.Errorf("listener without client_ca exports a client_ca expiry %v", got)
	}

	renewed := first.Add(60 * 24 * time.Hour)
	writeServerCert(t, p, renewed)
	testutil.Eventually(t, 5*time.Second, "renewed certificate's expiry exported", func() bool {
		return metric(t, b, name+`{cert="server",listener="edge"}`) == float64(renewed.Unix())
	})
}

// writeServerCert replaces p's server certificate and key (atomically, as a
// renewal tool does) with one from p's CA that expires at notAfter.
func writeServerCert(t *testing.T, p *pki, notAfter time.Time) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	// Key first: a check between the two writes sees a mismatched pair,
	// refuses it and retries on the certificate's change.
	staged := &pki{dir: t.TempDir()}
	copyFile(t, staged.write(t, filepath.Base(p.serverKey), "EC PRIVATE KEY", kb), p.serverKey)
	copyFile(t, staged.write(t, filepath.Base(p.serverCert), "CERTIFICATE", der), p.serverCert)
}
