package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	mqtt "github.com/mochi-mqtt/server/v2"
)

type jwtKeys struct {
	dir     string
	secret  []byte
	rsa     *rsa.PrivateKey
	ec      *ecdsa.PrivateKey
	ecOther *ecdsa.PrivateKey
	cfg     JWTConfig
}

func newJWTKeys(t *testing.T) *jwtKeys {
	t.Helper()
	k := &jwtKeys{dir: t.TempDir(), secret: []byte("0123456789abcdef0123456789abcdef-hs256")}
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if k.ecOther, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(k.dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	ecPub, err := k.ec.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(ecPub[1:33]), "y": b64(ecPub[33:])},
		{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}, // skipped: not for signatures
	}})
	k.cfg = JWTConfig{
		HS256SecretFile: write("secret", append(k.secret, '\n')),
		PublicKeyFiles:  []string{write("rsa.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
		JWKSFile:        write("jwks.json", jwks),
		UsernameClaim:   DefaultUsernameClaim,
	}
	return k
}

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTVerify(t *testing.T) {
	k := newJWTKeys(t)
	cfg := k.cfg
	cfg.Audience, cfg.Issuer = "ferry", "https://issuer.example"
	v, err := loadJWT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "dev-1", "aud": "ferry", "iss": "https://issuer.example", "exp": now.Add(time.Hour).Unix(), "tenant": "acme"}
	}
	with := func(key string, val any) jwt.MapClaims {
		c := good()
		if val == nil {
			delete(c, key)
		} else {
			c[key] = val
		}
		return c
	}
	tests := []struct {
		name  string
		token string
		want  bool
	}{
		{"HS256", sign(t, jwt.SigningMethodHS256, k.secret, good(), ""), true},
		{"RS256 from PEM", sign(t, jwt.SigningMethodRS256, k.rsa, good(), ""), true},
		{"ES256 from JWKS by kid", sign(t, jwt.SigningMethodES256, k.ec, good(), "ec-1"), true},
		{"ES256 from JWKS without kid", sign(t, jwt.SigningMethodES256, k.ec, good(), ""), true},
		{"ES256 unknown key", sign(t, jwt.SigningMethodES256, k.ecOther, good(), ""), false},
		{"HS256 wrong secret", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), good(), ""), false},
		{"HS384 not allowed", sign(t, jwt.SigningMethodHS384, k.secret, good(), ""), false},
		{"expired", sign(t, jwt.SigningMethodHS256, k.secret, with("exp", now.Add(-time.Minute).Unix()), ""), false},
		{"no exp", sign(t, jwt.SigningMethodHS256, k.secret, with("exp", nil), ""), false},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, k.secret, with("nbf", now.Add(time.Hour).Unix()), ""), false},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, k.secret, with("aud", "other"), ""), false},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, k.secret, with("iss", "evil"), ""), false},
		{"no username claim", sign(t, jwt.SigningMethodHS256, k.secret, with("sub", nil), ""), false},
		{"numeric username claim", sign(t, jwt.SigningMethodHS256, k.secret, with("sub", 7), ""), false},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good(), ""), false},
		{"tampered", strings.Replace(sign(t, jwt.SigningMethodRS256, k.rsa, good(), ""), ".", ".e", 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, claims, err := v.verify(tt.token)
			if (err == nil) != tt.want {
				t.Fatalf("verify err = %v, want ok %v", err, tt.want)
			}
			if tt.want && (name != "dev-1" || claims["tenant"] != "acme") {
				t.Errorf("name %q claims %v", name, claims)
			}
		})
	}
}

// An HS256 token signed with the RSA public key as HMAC secret must not
// verify (the classic algorithm confusion attack).
func TestJWTAlgorithmConfusion(t *testing.T) {
	k := newJWTKeys(t)
	cfg := k.cfg
	cfg.HS256SecretFile = ""
	v, err := loadJWT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := os.ReadFile(cfg.PublicKeyFiles[0])
	tok := sign(t, jwt.SigningMethodHS256, pemBytes, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}, "")
	if _, _, err := v.verify(tok); err == nil {
		t.Fatal("HS256 token signed with the public key verified")
	}
}

func TestJWTConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	der, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	tests := []struct {
		name    string
		cfg     JWTConfig
		wantErr string
	}{
		{"missing secret", JWTConfig{HS256SecretFile: filepath.Join(dir, "nope")}, "jwt.hs256_secret_file: open "},
		{"short secret", JWTConfig{HS256SecretFile: write("short", "abc\n")}, "secret shorter than 32 bytes"},
		{"not PEM", JWTConfig{PublicKeyFiles: []string{write("x.pem", "hello")}}, "jwt.public_key_files[0]: " + filepath.Join(dir, "x.pem") + ": no PEM public key found"},
		{"private key PEM", JWTConfig{PublicKeyFiles: []string{write("p.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}}, "want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE"},
		{"small RSA", JWTConfig{PublicKeyFiles: []string{write("s.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))}}, "RSA key of 1024 bits"},
		{"JWKS not JSON", JWTConfig{JWKSFile: write("j1", "{")}, "jwt.jwks_file: "},
		{"JWKS empty", JWTConfig{JWKSFile: write("j2", `{"keys":[]}`)}, "no keys"},
		{"JWKS oct", JWTConfig{JWKSFile: write("j3", `{"keys":[{"kty":"oct","k":"AAAA"}]}`)}, "keys[0]: kty \"oct\": want RSA or EC"},
		{"JWKS P-384", JWTConfig{JWKSFile: write("j4", `{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}`)}, "crv \"P-384\": want P-256"},
		{"JWKS bad point", JWTConfig{JWKSFile: write("j5", `{"keys":[{"kty":"EC","crv":"P-256","x":"`+strings.Repeat("A", 43)+`","y":"`+strings.Repeat("A", 43)+`"}]}`)}, "keys[0]: x, y:"},
		{"JWKS bad base64", JWTConfig{JWKSFile: write("j6", `{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}`)}, "n: not base64url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.UsernameClaim = "sub"
			_, err := loadJWT(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// A JWT client gets its identity from the claim, and its claims work in
// ACL placeholders.
func TestHookJWTIdentity(t *testing.T) {
	k := newJWTKeys(t)
	h, err := New(Config{JWT: k.cfg, ACL: []ACLRule{
		{Allow: ACLAccess{Publish: []string{"tenants/%{claim:tenant}/%u/#"}}},
	}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodRS256, k.rsa, jwt.MapClaims{"sub": "dev-1", "tenant": "acme", "exp": time.Now().Add(time.Hour).Unix()}, "")
	cl := &mqtt.Client{ID: "c1"}
	pk := packets.Packet{Connect: packets.ConnectParams{Username: []byte("ignored"), Password: []byte(tok), UsernameFlag: true, PasswordFlag: true}}
	if !h.OnConnectAuthenticate(cl, pk) {
		t.Fatal("valid JWT refused")
	}
	if !h.OnACLCheck(cl, "tenants/acme/dev-1/t", true) {
		t.Error("claim placeholder did not grant its topic")
	}
	if h.OnACLCheck(cl, "tenants/acme/ignored/t", true) || h.OnACLCheck(cl, "tenants/other/dev-1/t", true) {
		t.Error("grant beyond the token's identity")
	}
	pk.Connect.Password = []byte(tok[:len(tok)-2])
	if h.OnConnectAuthenticate(&mqtt.Client{ID: "c2"}, pk) {
		t.Error("tampered JWT accepted")
	}
	if st := h.Stats(); st.JWT.Success != 1 || st.JWT.Failure != 1 {
		t.Errorf("jwt stats %+v", st.JWT)
	}
}
