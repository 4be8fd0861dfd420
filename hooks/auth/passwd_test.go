package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// testdata/mosquitto.passwd was written by mosquitto_passwd 2.0.11:
//
//	mosquitto_passwd -c -b mosquitto.passwd alice secret          # $7$
//	mosquitto_passwd -H sha512 -b mosquitto.passwd bob hunter2    # $6$
//	mosquitto_passwd -b mosquitto.passwd watcher watch-all
//	mosquitto_passwd -b mosquitto.passwd dave 'pä:ss wörd$'
func TestPasswordFileFromMosquitto(t *testing.T) {
	p, err := LoadPasswordFile("testdata/mosquitto.passwd")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user, password string
		want                 bool
	}{
		{"pbkdf2 right", "alice", "secret", true},
		{"pbkdf2 wrong", "alice", "Secret", false},
		{"pbkdf2 empty", "alice", "", false},
		{"sha512 right", "bob", "hunter2", true},
		{"sha512 wrong", "bob", "hunter", false},
		{"special characters", "dave", "pä:ss wörd$", true},
		{"special characters wrong", "dave", "pä:ss wörd", false},
		{"other user's password", "bob", "secret", false},
		{"unknown user", "mallory", "secret", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Check(tt.user, tt.password); got != tt.want {
				t.Errorf("Check(%q, %q) = %v, want %v", tt.user, tt.password, got, tt.want)
			}
		})
	}
}

func TestPasswordFileBcrypt(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// Go writes $2a$; $2b$ and $2y$ (PHP, htpasswd) are the same algorithm.
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		line := "carol:" + prefix + string(h[4:]) + "\n"
		p, err := ParsePasswordFile(strings.NewReader(line), "pw")
		if err != nil {
			t.Fatalf("%s: %v", prefix, err)
		}
		if !p.Check("carol", "s3cret") || p.Check("carol", "s3cre") {
			t.Errorf("%s: bcrypt check wrong", prefix)
		}
	}
}

func TestParsePasswordFileErrors(t *testing.T) {
	good := "alice:$7$101$3geaaJlgTXELCFLd$lYxzAF0KLs9AMTaNk1ia66HQBdq55/V2Cnbhyxel+VkiBFKqpN9B1edUGaLX24EOCHXQwqWhQRpmJ9pRVjZeFg=="
	tests := []struct {
		name, in, wantErr string
	}{
		{"plaintext", "# c\n\nbob:hunter2\n", "pw:3: user \"bob\": not a $7$, $6$ or bcrypt hash"},
		{"no colon", "bob\n", "pw:1: want user:hash"},
		{"empty user", ":$6$x$y\n", "pw:1: want user:hash"},
		{"empty hash", "bob:\n", "pw:1: user \"bob\": empty password hash"},
		{"bad iterations", "bob:$7$0$AAAA$AAAA\n", "pw:1: user \"bob\": $7$ hash: iterations \"0\""},
		{"huge iterations", "bob:$7$999999999$AAAA$AAAA\n", "iterations \"999999999\""},
		{"short $7$", "bob:$7$101$AAAA\n", "malformed $7$ hash"},
		{"bad base64 salt", "bob:$6$!!!$" + strings.Repeat("A", 88) + "\n", "salt is not base64"},
		{"short digest", "bob:$6$AAAA$AAAA\n", "hash is not 64 bytes"},
		{"bad bcrypt", "bob:$2y$xx$abc\n", "bcrypt hash"},
		{"duplicate", good + "\n" + good + "\n", "pw:2: user \"alice\" listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePasswordFile(strings.NewReader(tt.in), "pw")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestSetPassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte("# users\nbob:$6$SACuxjL4JN9fEUxm$NyR2/YEhUSxIPkJ9YwOAc4KpZpEXsB5zGByge/RkCkLacGGc7cTMwsey9SBoWl+b7wJvS/YS+plL/uPwKq/ZUg=="), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "alice", "first"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "alice", "second"); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Check("alice", "second") || p.Check("alice", "first") {
		t.Error("alice's password was not replaced")
	}
	if !p.Check("bob", "hunter2") {
		t.Error("bob's line was not kept")
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "# users\n") || strings.Count(string(b), "alice:") != 1 {
		t.Errorf("file content:\n%s", b)
	}
	if !strings.Contains(string(b), "alice:$7$101$") {
		t.Errorf("want a $7$ hash with %d iterations:\n%s", DefaultPBKDF2Iterations, b)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".passwd.tmp*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestSetPasswordBadUser(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	for _, u := range []string{"", "a:b", "a\nb", " a", "#a"} {
		if err := SetPassword(path, u, "x"); err == nil {
			t.Errorf("SetPassword(%q) succeeded", u)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("file created for bad user names: %v", err)
	}
}
