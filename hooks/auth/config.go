package auth

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Defaults applied to zero fields of Config.
const (
	DefaultUsernameClaim = "sub"
	DefaultHTTPTimeout   = 2 * time.Second
	DefaultHTTPCacheTTL  = 30 * time.Second
	DefaultHTTPCacheSize = 10000

	// MaxHTTPTimeout bounds how long one CONNECT may wait for the callout.
	MaxHTTPTimeout = time.Minute
)

// Values of Config.TLSUsername.
const (
	TLSUsernameCN       = "cn"        // the certificate subject's common name
	TLSUsernameSANDNS   = "san_dns"   // the first DNS subject alternative name
	TLSUsernameSANEmail = "san_email" // the first e-mail subject alternative name
)

// Config configures authentication and authorization. The zero value
// disables both; zero fields take the Default constants.
type Config struct {
	// PasswordFile is a Mosquitto-format password file ("user:hash" lines).
	PasswordFile string `yaml:"password_file"`
	// ACLFile is a Mosquitto-format ACL file.
	ACLFile string `yaml:"acl_file"`
	// ACL is the YAML form of the ACL, used alongside ACLFile.
	ACL []ACLRule `yaml:"acl"`
	// AllowAnonymous lets clients without credentials connect when auth is
	// enabled. They get only the ACL rules for anonymous clients.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// JWT accepts a signed JWT in the CONNECT password field.
	JWT JWTConfig `yaml:"jwt"`
	// HTTP asks an HTTP endpoint whether a client may connect.
	HTTP HTTPConfig `yaml:"http"`
	// TLSUsername, on connections with a verified client certificate, takes
	// the client's user name from the certificate: "cn", "san_dns" or
	// "san_email". Empty: certificates do not authenticate.
	TLSUsername string `yaml:"tls_username"`
	// AllowSessionTakeover lets a client of another identity connect under
	// the client id of an existing session, taking over its connection and
	// its stored session (mochi's behaviour, and Ferry's before sessions
	// had owners). Default false: a session belongs to the identity (user
	// name, or certificate name with tls_username) that created it, and
	// any other identity is refused with CONNACK 0x87 (MQTT 3: 0x05).
	AllowSessionTakeover bool `yaml:"allow_session_takeover"`
}

// JWTConfig configures JWT authentication. It is enabled when at least one
// key source is set.
type JWTConfig struct {
	// HS256SecretFile holds the HMAC secret; surrounding white space is
	// trimmed.
	HS256SecretFile string `yaml:"hs256_secret_file"`
	// PublicKeyFiles are PEM files of RSA (RS256) or ECDSA P-256 (ES256)
	// public keys or certificates.
	PublicKeyFiles []string `yaml:"public_key_files"`
	// JWKSFile is a JSON Web Key Set file with RSA and EC P-256 keys.
	JWKSFile string `yaml:"jwks_file"`
	// UsernameClaim names the claim that becomes the client's user name.
	// Default "sub".
	UsernameClaim string `yaml:"username_claim"`
	// Audience, when set, must be in the token's "aud".
	Audience string `yaml:"audience"`
	// Issuer, when set, must equal the token's "iss".
	Issuer string `yaml:"issuer"`
}

// HTTPConfig configures the HTTP authentication callout.
type HTTPConfig struct {
	// URL receives a POST per CONNECT not already answered by the cache.
	URL string `yaml:"url"`
	// Timeout bounds one request. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// CacheTTL is how long an answer is reused. Default 30s; negative
	// disables the cache.
	CacheTTL time.Duration `yaml:"cache_ttl"`
	// CacheSize is the number of answers kept. Default 10000.
	CacheSize int `yaml:"cache_size"`
}

// Enabled reports whether any authentication or authorization is
// configured. When it is false the hook lets every client in with full
// rights (except publishing to $SYS).
func (c Config) Enabled() bool {
	return c.PasswordFile != "" || c.ACLFile != "" || len(c.ACL) > 0 || c.AllowAnonymous ||
		c.JWT.enabled() || c.HTTP.URL != "" || c.TLSUsername != ""
}

// hasCredentialMethod reports whether anything can verify a user name.
func (c Config) hasCredentialMethod() bool {
	return c.PasswordFile != "" || c.JWT.enabled() || c.HTTP.URL != "" || c.TLSUsername != ""
}

func (j JWTConfig) enabled() bool {
	return j.HS256SecretFile != "" || len(j.PublicKeyFiles) > 0 || j.JWKSFile != ""
}

// withDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.JWT.UsernameClaim == "" {
		c.JWT.UsernameClaim = DefaultUsernameClaim
	}
	if c.HTTP.Timeout == 0 {
		c.HTTP.Timeout = DefaultHTTPTimeout
	}
	if c.HTTP.CacheTTL == 0 {
		c.HTTP.CacheTTL = DefaultHTTPCacheTTL
	}
	if c.HTTP.CacheSize == 0 {
		c.HTTP.CacheSize = DefaultHTTPCacheSize
	}
	return c
}

// Validate checks c and loads every file it names, and reports all problems
// at once. Each error's text starts with the YAML key path relative to this
// struct, e.g. "password_file: users.txt:3: ...".
func (c Config) Validate() error {
	_, err := load(c.withDefaults())
	return err
}

// load reads every file c names. It assumes defaults are applied.
func load(c Config) (*state, error) {
	var errs []error
	st := &state{}
	var err error
	if c.PasswordFile != "" {
		if st.passwords, err = LoadPasswordFile(c.PasswordFile); err != nil {
			errs = append(errs, fmt.Errorf("password_file: %w", err))
		}
	}
	if c.ACLFile != "" {
		if _, err = loadACL(c.ACLFile, nil); err != nil {
			errs = append(errs, fmt.Errorf("acl_file: %w", err))
		}
	}
	if _, err = compileYAMLRules(c.ACL); err != nil {
		errs = append(errs, err) // already prefixed with acl[i]
	}
	if len(errs) == 0 {
		st.acl, _ = loadACL(c.ACLFile, c.ACL)
	}
	if c.JWT.enabled() {
		if st.jwt, err = loadJWT(c.JWT); err != nil {
			errs = append(errs, err) // already prefixed with jwt.<key>
		}
	} else if c.JWT.Audience != "" || c.JWT.Issuer != "" {
		errs = append(errs, errors.New("jwt: audience or issuer set but no key: set hs256_secret_file, public_key_files or jwks_file"))
	}
	if c.HTTP.URL != "" {
		u, err := url.Parse(c.HTTP.URL)
		if err != nil {
			errs = append(errs, fmt.Errorf("http.url: %w", err))
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("http.url: %q: want http:// or https:// with a host", c.HTTP.URL))
		}
	}
	if c.HTTP.Timeout < 0 || c.HTTP.Timeout > MaxHTTPTimeout {
		errs = append(errs, fmt.Errorf("http.timeout: %s is outside (0, %s]", c.HTTP.Timeout, MaxHTTPTimeout))
	}
	if c.HTTP.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("http.cache_size: %d is negative", c.HTTP.CacheSize))
	}
	switch c.TLSUsername {
	case "", TLSUsernameCN, TLSUsernameSANDNS, TLSUsernameSANEmail:
	default:
		errs = append(errs, fmt.Errorf("tls_username: %q: want %q, %q or %q", c.TLSUsername, TLSUsernameCN, TLSUsernameSANDNS, TLSUsernameSANEmail))
	}
	if c.Enabled() && !c.hasCredentialMethod() && !c.AllowAnonymous {
		errs = append(errs, errors.New("allow_anonymous: false, and no password_file, jwt, http or tls_username is set: no client could connect"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return st, nil
}
