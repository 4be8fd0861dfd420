package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// minRSABits refuses keys too short to be trusted for signatures.
const minRSABits = 2048

// jwtVerifier checks tokens against the configured keys. Immutable.
type jwtVerifier struct {
	parser *jwt.Parser
	claim  string
	hmac   []byte
	rsa    []*rsa.PublicKey
	ec     []*ecdsa.PublicKey
	byKid  map[string]any // JWKS keys with a kid
}

func loadJWT(c JWTConfig) (*jwtVerifier, error) {
	v := &jwtVerifier{claim: c.UsernameClaim, byKid: map[string]any{}}
	var errs []error
	if strings.TrimSpace(c.UsernameClaim) != c.UsernameClaim {
		errs = append(errs, fmt.Errorf("jwt.username_claim: %q has surrounding spaces", c.UsernameClaim))
	}
	if c.HS256SecretFile != "" {
		b, err := os.ReadFile(c.HS256SecretFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("jwt.hs256_secret_file: %w", err))
		case len(strings.TrimSpace(string(b))) < 32:
			// RFC 7518 §3.2: the key must be at least as long as the hash.
			errs = append(errs, fmt.Errorf("jwt.hs256_secret_file: %s: secret shorter than 32 bytes", c.HS256SecretFile))
		default:
			v.hmac = []byte(strings.TrimSpace(string(b)))
		}
	}
	for i, f := range c.PublicKeyFiles {
		if err := v.addPEM(f); err != nil {
			errs = append(errs, fmt.Errorf("jwt.public_key_files[%d]: %w", i, err))
		}
	}
	if c.JWKSFile != "" {
		if err := v.addJWKS(c.JWKSFile); err != nil {
			errs = append(errs, fmt.Errorf("jwt.jwks_file: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var methods []string
	if v.hmac != nil {
		methods = append(methods, "HS256")
	}
	if len(v.rsa) > 0 {
		methods = append(methods, "RS256")
	}
	if len(v.ec) > 0 {
		methods = append(methods, "ES256")
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithExpirationRequired()}
	if c.Audience != "" {
		opts = append(opts, jwt.WithAudience(c.Audience))
	}
	if c.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(c.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func (v *jwtVerifier) addKey(k any, where string) error {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("%s: RSA key of %d bits, want at least %d", where, k.N.BitLen(), minRSABits)
		}
		v.rsa = append(v.rsa, k)
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("%s: EC key on %s, want P-256 (ES256)", where, k.Curve.Params().Name)
		}
		v.ec = append(v.ec, k)
	default:
		return fmt.Errorf("%s: %T is not an RSA or ECDSA public key", where, k)
	}
	return nil
}

func (v *jwtVerifier) addPEM(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	found := 0
	for i := 0; ; i++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		where := fmt.Sprintf("%s: PEM block %d (%s)", path, i, blk.Type)
		var k any
		switch blk.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(blk.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(blk.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(blk.Bytes); err == nil {
				k = cert.PublicKey
			}
		default:
			return fmt.Errorf("%s: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", where)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := v.addKey(k, where); err != nil {
			return err
		}
		found++
	}
	if found == 0 {
		return fmt.Errorf("%s: no PEM public key found", path)
	}
	return nil
}

// jwk is the subset of RFC 7517 we read.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func (v *jwtVerifier) addJWKS(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(set.Keys) == 0 {
		return fmt.Errorf("%s: no keys", path)
	}
	for i, k := range set.Keys {
		where := fmt.Sprintf("%s: keys[%d]", path, i)
		if k.Use != "" && k.Use != "sig" {
			continue // an encryption key cannot verify signatures
		}
		key, err := k.publicKey()
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := v.addKey(key, where); err != nil {
			return err
		}
		if k.Kid != "" {
			if _, dup := v.byKid[k.Kid]; dup {
				return fmt.Errorf("%s: kid %q used twice", where, k.Kid)
			}
			v.byKid[k.Kid] = key
		}
	}
	return nil
}

func (k jwk) publicKey() (any, error) {
	dec := func(field, s string) ([]byte, error) {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%s: not base64url", field)
		}
		return b, nil
	}
	switch k.Kty {
	case "RSA":
		n, err := dec("n", k.N)
		if err != nil {
			return nil, err
		}
		e, err := dec("e", k.E)
		if err != nil {
			return nil, err
		}
		if len(e) > 4 {
			return nil, errors.New("e: exponent too large")
		}
		ev := new(big.Int).SetBytes(e).Int64()
		if ev < 3 || ev%2 == 0 {
			return nil, fmt.Errorf("e: bad exponent %d", ev)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(ev)}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("crv %q: want P-256", k.Crv)
		}
		x, err := dec("x", k.X)
		if err != nil {
			return nil, err
		}
		y, err := dec("y", k.Y)
		if err != nil {
			return nil, err
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("x, y: want 32 bytes each for P-256")
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("x, y: %w", err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("kty %q: want RSA or EC", k.Kty)
}

// looksLikeJWT is a cheap test to skip JWT parsing for ordinary passwords.
func looksLikeJWT(s string) bool {
	return strings.Count(s, ".") == 2 && strings.HasPrefix(s, "eyJ")
}

// verify checks the token's signature, exp, nbf, and the configured
// audience and issuer, and returns the user name claim and all claims.
func (v *jwtVerifier) verify(token string) (string, jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, v.key)
	if err != nil {
		return "", nil, err
	}
	name, ok := claims[v.claim].(string)
	if !ok || name == "" {
		return "", nil, fmt.Errorf("claim %q: missing or not a string", v.claim)
	}
	return name, claims, nil
}

func (v *jwtVerifier) key(t *jwt.Token) (any, error) {
	if kid, ok := t.Header["kid"].(string); ok && kid != "" {
		if k, ok := v.byKid[kid]; ok {
			return k, nil
		}
	}
	var set jwt.VerificationKeySet
	switch t.Method.Alg() {
	case "HS256":
		return v.hmac, nil
	case "RS256":
		for _, k := range v.rsa {
			set.Keys = append(set.Keys, k)
		}
	case "ES256":
		for _, k := range v.ec {
			set.Keys = append(set.Keys, k)
		}
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("no key for %s", t.Method.Alg())
	}
	return set, nil
}
