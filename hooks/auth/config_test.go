package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestConfigEnabled(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want bool
	}{
		{"zero", Config{}, false},
		{"defaults only", Config{}.withDefaults(), false},
		{"password file", Config{PasswordFile: "x"}, true},
		{"acl file", Config{ACLFile: "x"}, true},
		{"yaml acl", Config{ACL: []ACLRule{{}}}, true},
		{"anonymous", Config{AllowAnonymous: true}, true},
		{"jwt", Config{JWT: JWTConfig{JWKSFile: "x"}}, true},
		{"http", Config{HTTP: HTTPConfig{URL: "http://x"}}, true},
		{"tls", Config{TLSUsername: "cn"}, true},
	}
	for _, tt := range tests {
		if got := tt.cfg.Enabled(); got != tt.want {
			t.Errorf("%s: Enabled() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("# users\nalice:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badACL := filepath.Join(dir, "acl")
	if err := os.WriteFile(badACL, []byte("user a\ntopic reed x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name     string
		cfg      Config
		wantErrs []string // each a separate joined error, in order
	}{
		{"empty is valid", Config{}, nil},
		{"mosquitto fixture", Config{PasswordFile: "testdata/mosquitto.passwd"}, nil},
		{"anonymous with ACL", Config{AllowAnonymous: true, ACL: []ACLRule{{Anonymous: true, Allow: ACLAccess{Subscribe: []string{"#"}}}}}, nil},
		{"missing password file", Config{PasswordFile: missing}, []string{"password_file: open " + missing + ": no such file or directory"}},
		{"plaintext password", Config{PasswordFile: plain}, []string{"password_file: " + plain + ":2: user \"alice\": not a $7$"}},
		{"bad acl file", Config{PasswordFile: "testdata/mosquitto.passwd", ACLFile: badACL}, []string{"acl_file: " + badACL + ":2: topic: access \"reed\""}},
		{"everything wrong", Config{
			PasswordFile: missing,
			ACL:          []ACLRule{{Allow: ACLAccess{Publish: []string{"a/#/b"}}}},
			JWT:          JWTConfig{JWKSFile: missing, UsernameClaim: " sub"},
			HTTP:         HTTPConfig{URL: "ftp://x", Timeout: time.Hour, CacheSize: -1},
			TLSUsername:  "serial",
		}, []string{
			"password_file: open ",
			"acl[0].allow.publish[0]: filter \"a/#/b\"",
			"jwt.username_claim: \" sub\" has surrounding spaces",
			"jwt.jwks_file: open ",
			"http.url: \"ftp://x\": want http:// or https://",
			"http.timeout: 1h0m0s is outside (0, 1m0s]",
			"http.cache_size: -1 is negative",
			"tls_username: \"serial\": want \"cn\", \"san_dns\" or \"san_email\"",
		}},
		{"nobody could connect", Config{ACL: []ACLRule{{Allow: ACLAccess{Publish: []string{"x"}}}}}, []string{"allow_anonymous: false, and no password_file, jwt, http or tls_username is set"}},
		{"audience without keys", Config{PasswordFile: "testdata/mosquitto.passwd", JWT: JWTConfig{Audience: "x"}}, []string{"jwt: audience or issuer set but no key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantErrs) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() = nil")
			}
			var got []string
			var joined interface{ Unwrap() []error }
			if errors.As(err, &joined) {
				for _, e := range joined.Unwrap() {
					got = append(got, strings.Split(e.Error(), "\n")...)
				}
			}
			if len(got) != len(tt.wantErrs) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tt.wantErrs), err)
			}
			for i, w := range tt.wantErrs {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, got[i], w)
				}
			}
			if _, nerr := New(tt.cfg, nil); nerr == nil || !strings.HasPrefix(nerr.Error(), "auth: ") {
				t.Errorf("New error = %v, want the same problems prefixed with auth:", nerr)
			}
		})
	}
}

func TestConfigYAML(t *testing.T) {
	src := `
password_file: users.txt
acl_file: acl.txt
allow_anonymous: true
acl:
  - users: [alice]
    cns: [gw.example.com]
    allow: {publish: ["devices/%u/#"], subscribe: ["commands/%u/#"]}
    deny: {subscribe: ["commands/%u/secret"]}
  - anonymous: true
    allow: {subscribe: ["public/#"]}
jwt:
  hs256_secret_file: secret
  public_key_files: [a.pem, b.pem]
  jwks_file: jwks.json
  username_claim: email
  audience: ferry
  issuer: https://id.example
http:
  url: https://auth.example/mqtt
  timeout: 500ms
  cache_ttl: 1m
  cache_size: 50
tls_username: san_dns
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.PasswordFile != "users.txt" || c.ACLFile != "acl.txt" || !c.AllowAnonymous || c.TLSUsername != "san_dns" ||
		len(c.ACL) != 2 || c.ACL[0].CNs[0] != "gw.example.com" || c.ACL[0].Deny.Subscribe[0] != "commands/%u/secret" || !c.ACL[1].Anonymous ||
		c.JWT.UsernameClaim != "email" || len(c.JWT.PublicKeyFiles) != 2 || c.JWT.Issuer != "https://id.example" ||
		c.HTTP.Timeout != 500*time.Millisecond || c.HTTP.CacheTTL != time.Minute || c.HTTP.CacheSize != 50 {
		t.Errorf("decoded %+v", c)
	}
	d := Config{}.withDefaults()
	if d.JWT.UsernameClaim != "sub" || d.HTTP.Timeout != 2*time.Second || d.HTTP.CacheTTL != 30*time.Second || d.HTTP.CacheSize != 10000 {
		t.Errorf("defaults %+v", d)
	}
}
