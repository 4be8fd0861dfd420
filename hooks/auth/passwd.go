package auth

import (
	"bufio"
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// DefaultPBKDF2Iterations is the iteration count SetPassword writes into new
// "$7$" hashes. It is mosquitto_passwd's default (mosquitto 2.0), so files
// stay interchangeable; the salt and hash lengths match it too.
const DefaultPBKDF2Iterations = 101

const (
	saltLen    = 12 // bytes of salt mosquitto_passwd generates
	sha512Len  = 64 // bytes of a SHA-512 digest
	maxLineLen = 64 * 1024
	// maxIterations bounds the PBKDF2 work one login attempt can cost, so a
	// typo in a hand-edited file cannot turn every CONNECT into minutes of CPU.
	maxIterations = 10_000_000
)

// Passwords is a parsed password file: user names and their password hashes.
// It is immutable once parsed and safe for concurrent use.
type Passwords struct {
	users map[string]pwHash
}

type hashKind uint8

const (
	hashPBKDF2 hashKind = iota + 1 // $7$: PBKDF2-HMAC-SHA512
	hashSHA512                     // $6$: SHA-512(password || salt), mosquitto 1.x
	hashBcrypt                     // $2a$, $2b$, $2y$
)

type pwHash struct {
	kind       hashKind
	iterations int
	salt       []byte
	sum        []byte // digest, or the whole bcrypt hash string
}

// dummyHash is compared against when the user is unknown, so that a missing
// user costs about as much time as a wrong password.
var dummyHash = pwHash{kind: hashPBKDF2, iterations: DefaultPBKDF2Iterations, salt: make([]byte, saltLen), sum: make([]byte, sha512Len)}

// ParsePasswordFile parses a Mosquitto-compatible password file read from r;
// name is used in error messages only. Each line is "user:hash", where hash
// is "$7$iterations$salt$hash" (PBKDF2-SHA512, mosquitto 2), "$6$salt$hash"
// (salted SHA-512, mosquitto 1.x) or a bcrypt hash ("$2a$", "$2b$", "$2y$").
// Lines starting with "#" and blank lines are ignored. A plaintext or
// malformed password, or a duplicate user, is an error naming name:line.
func ParsePasswordFile(r io.Reader, name string) (*Passwords, error) {
	p := &Passwords{users: make(map[string]pwHash)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLineLen)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), " \t\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		user = strings.TrimSpace(user)
		if !ok || user == "" {
			return nil, fmt.Errorf("%s:%d: want user:hash", name, n)
		}
		h, err := parseHash(strings.TrimSpace(hash))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %w", name, n, user, err)
		}
		if _, dup := p.users[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q listed twice", name, n, user)
		}
		p.users[user] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, n+1, err)
	}
	return p, nil
}

// LoadPasswordFile reads and parses the password file at path.
func LoadPasswordFile(path string) (*Passwords, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParsePasswordFile(f, path)
}

func parseHash(s string) (pwHash, error) {
	switch {
	case strings.HasPrefix(s, "$7$"):
		parts := strings.Split(s, "$") // "", "7", iterations, salt, hash
		if len(parts) != 5 {
			return pwHash{}, errors.New(`malformed $7$ hash: want $7$iterations$salt$hash`)
		}
		it, err := strconv.Atoi(parts[2])
		if err != nil || it < 1 || it > maxIterations {
			return pwHash{}, fmt.Errorf("$7$ hash: iterations %q: want 1 to %d", parts[2], maxIterations)
		}
		salt, sum, err := decodeSaltSum(parts[3], parts[4])
		if err != nil {
			return pwHash{}, fmt.Errorf("$7$ hash: %w", err)
		}
		return pwHash{kind: hashPBKDF2, iterations: it, salt: salt, sum: sum}, nil
	case strings.HasPrefix(s, "$6$"):
		parts := strings.Split(s, "$") // "", "6", salt, hash
		if len(parts) != 4 {
			return pwHash{}, errors.New(`malformed $6$ hash: want $6$salt$hash`)
		}
		salt, sum, err := decodeSaltSum(parts[2], parts[3])
		if err != nil {
			return pwHash{}, fmt.Errorf("$6$ hash: %w", err)
		}
		return pwHash{kind: hashSHA512, salt: salt, sum: sum}, nil
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		if _, err := bcrypt.Cost([]byte(s)); err != nil {
			return pwHash{}, fmt.Errorf("bcrypt hash: %w", err)
		}
		return pwHash{kind: hashBcrypt, sum: []byte(s)}, nil
	case s == "":
		return pwHash{}, errors.New("empty password hash")
	default:
		// Mosquitto would hash such a line with `mosquitto_passwd -U`; we refuse
		// rather than keep a plaintext password in memory and on disk.
		return pwHash{}, errors.New("not a $7$, $6$ or bcrypt hash (plaintext password?); hash it with `ferry passwd` or `mosquitto_passwd -U`")
	}
}

func decodeSaltSum(salt64, sum64 string) (salt, sum []byte, err error) {
	salt, err = base64.StdEncoding.DecodeString(salt64)
	if err != nil || len(salt) == 0 {
		return nil, nil, fmt.Errorf("salt is not base64")
	}
	sum, err = base64.StdEncoding.DecodeString(sum64)
	if err != nil || len(sum) != sha512Len {
		return nil, nil, fmt.Errorf("hash is not %d bytes of base64", sha512Len)
	}
	return salt, sum, nil
}

// Check reports whether password is user's password. It takes about as
// long for an unknown user as for a wrong password, and compares digests in
// constant time.
func (p *Passwords) Check(user, password string) bool {
	h, ok := p.users[user]
	if !ok {
		dummyHash.verify(password)
		return false
	}
	return h.verify(password)
}

// Has reports whether user is listed in the file.
func (p *Passwords) Has(user string) bool {
	_, ok := p.users[user]
	return ok
}

// Len returns the number of users.
func (p *Passwords) Len() int { return len(p.users) }

func (h pwHash) verify(password string) bool {
	var sum []byte
	switch h.kind {
	case hashPBKDF2:
		var err error
		sum, err = pbkdf2.Key(sha512.New, password, h.salt, h.iterations, sha512Len)
		if err != nil {
			return false
		}
	case hashSHA512:
		d := sha512.New()
		d.Write([]byte(password))
		d.Write(h.salt)
		sum = d.Sum(nil)
	case hashBcrypt:
		return bcrypt.CompareHashAndPassword(h.sum, []byte(password)) == nil
	default:
		return false
	}
	return subtle.ConstantTimeCompare(sum, h.sum) == 1
}

// HashPassword returns a Mosquitto "$7$" (PBKDF2-SHA512) hash of password
// with a fresh random salt and DefaultPBKDF2Iterations.
func HashPassword(password string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	sum, err := pbkdf2.Key(sha512.New, password, salt, DefaultPBKDF2Iterations, sha512Len)
	if err != nil {
		return "", fmt.Errorf("pbkdf2: %w", err)
	}
	return fmt.Sprintf("$7$%d$%s$%s", DefaultPBKDF2Iterations,
		base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(sum)), nil
}

// SetPassword adds user to the password file at path, or replaces the
// user's hash if present, with a "$7$" hash of password. Other lines,
// comments included, are kept as they are. The file is created if missing.
// The update is atomic: the new content is written to a temporary file in the
// same directory, synced, and renamed over path, so a crash leaves either the
// old or the new file. The file's mode is 0600 (and its owner the caller's).
func SetPassword(path, user, password string) error {
	if err := validUserName(user); err != nil {
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("set password: %w", err)
	}
	hash, err := HashPassword(password)
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	out, found := replaceUser(old, user, user+":"+hash+"\n")
	if !found {
		out = append(out, user+":"+hash+"\n"...)
	}
	return writeFileAtomic(path, out, 0o600)
}

// ErrNoUser is returned by DeletePassword for a user the file does not
// have.
var ErrNoUser = errors.New("user not in the password file")

// DeletePassword removes user from the password file at path, as
// mosquitto_passwd -D does; other lines are kept as they are. The update is
// atomic, as SetPassword's.
func DeletePassword(path, user string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	out, found := replaceUser(old, user, "")
	if !found {
		return fmt.Errorf("delete user %q from %s: %w", user, path, ErrNoUser)
	}
	return writeFileAtomic(path, out, 0o600)
}

// replaceUser returns the password file content with user's line replaced
// by line ("" deletes it), and whether the user was there. Duplicates of
// the user are dropped: the file would not load with them.
func replaceUser(content []byte, user, line string) ([]byte, bool) {
	var out bytes.Buffer
	found := false
	for _, l := range strings.SplitAfter(string(content), "\n") {
		if l == "" {
			continue
		}
		u, _, ok := strings.Cut(l, ":")
		if ok && !strings.HasPrefix(l, "#") && strings.TrimSpace(u) == user {
			if !found {
				out.WriteString(line)
			}
			found = true
			continue
		}
		if !strings.HasSuffix(l, "\n") {
			l += "\n"
		}
		out.WriteString(l)
	}
	return out.Bytes(), found
}

// validUserName refuses names that cannot be stored in a password file or
// that would be ambiguous in one.
func validUserName(user string) error {
	switch {
	case user == "":
		return errors.New("user name is empty")
	case strings.ContainsAny(user, ":\r\n"):
		return fmt.Errorf("user name %q contains ':' or a line break", user)
	case strings.TrimSpace(user) != user || strings.HasPrefix(user, "#"):
		return fmt.Errorf("user name %q starts with '#' or has surrounding spaces", user)
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Sync before rename: a crash after the rename must not leave an empty
	// password file (which would lock every user out).
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Sync the directory so the rename itself survives a crash; not every
	// platform supports it, and the data is already safe, so errors are ignored.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
