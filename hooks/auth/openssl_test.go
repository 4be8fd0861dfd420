package auth

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The files under testdata/tls and testdata/jwt were made with the openssl
// commands in docs/security.md (with longer validity), so these tests keep
// the documentation honest.

func readPEM(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	return blk.Bytes
}

func TestOpenSSLClientCertificate(t *testing.T) {
	caCert, err := x509.ParseCertificate(readPEM(t, "testdata/tls/ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(readPEM(t, "testdata/tls/ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: caCert, key: caKey.(*ecdsa.PrivateKey)}
	client, err := tls.LoadX509KeyPair("testdata/tls/sensor-1.pem", "testdata/tls/sensor-1.key")
	if err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]string{
		TLSUsernameCN:       "sensor-1",
		TLSUsernameSANDNS:   "sensor-1.devices.example.com",
		TLSUsernameSANEmail: "ops@example.com",
	} {
		h, err := New(Config{TLSUsername: field}, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		cl := &mqtt.Client{ID: "s"}
		cl.Net.Conn = tlsConn(t, ca, tls.RequireAndVerifyClientCert, &client)
		if !h.OnConnectAuthenticate(cl, packets.Packet{}) {
			t.Fatalf("%s: refused", field)
		}
		v, _ := h.clients.Load("s")
		if got := v.(*identity).username; got != want {
			t.Errorf("%s: user name %q, want %q", field, got, want)
		}
	}
}

func TestOpenSSLJWTKeys(t *testing.T) {
	v, err := loadJWT(JWTConfig{
		HS256SecretFile: "testdata/jwt/hs256.secret",
		PublicKeyFiles:  []string{"testdata/jwt/rs256.pub", "testdata/jwt/es256.pub"},
		UsernameClaim:   "sub",
	})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := os.ReadFile("testdata/jwt/hs256.secret")
	if err != nil {
		t.Fatal(err)
	}
	rsKey, err := x509.ParsePKCS8PrivateKey(readPEM(t, "testdata/jwt/rs256.key"))
	if err != nil {
		t.Fatal(err)
	}
	esKey, err := x509.ParsePKCS8PrivateKey(readPEM(t, "testdata/jwt/es256.key"))
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "dev-9", "exp": time.Now().Add(time.Minute).Unix()}
	for _, tok := range []string{
		sign(t, jwt.SigningMethodHS256, []byte(strings.TrimSpace(string(secret))), claims, ""),
		sign(t, jwt.SigningMethodRS256, rsKey, claims, ""),
		sign(t, jwt.SigningMethodES256, esKey, claims, ""),
	} {
		if name, _, err := v.verify(tok); err != nil || name != "dev-9" {
			t.Errorf("verify = %q, %v", name, err)
		}
	}
}
