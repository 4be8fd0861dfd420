package auth

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"testing"
	"time"
)

// TestSetPasswordWorksWithMosquitto starts a real mosquitto whose
// password_file was written by SetPassword, and connects to it.
func TestSetPasswordWorksWithMosquitto(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto" // Debian installs it outside a user's PATH
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("mosquitto not installed (apt-get install mosquitto)")
			}
			t.Skip("mosquitto not installed; apt-get install mosquitto to run this test")
		}
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := SetPassword(pw, "alice", "s3cret pass"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(pw, "bob", "other"); err != nil {
		t.Fatal(err)
	}

	// Pick a free port; the tiny window before mosquitto binds it is
	// acceptable for a test.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// "user" keeps mosquitto from switching to the mosquitto account when
	// run as root, which could not read the 0600 file.
	cfg := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\nuser %s\n", port, pw, u.Username)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", logs.String())
		}
	})
	eventually(t, 10*time.Second, "mosquitto listening on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	if _, err := connect(t, addr, "c1", "alice", "s3cret pass"); err != nil {
		t.Errorf("mosquitto refused alice with the password SetPassword wrote: %v", err)
	}
	if _, err := connect(t, addr, "c2", "bob", "other"); err != nil {
		t.Errorf("mosquitto refused bob: %v", err)
	}
	if _, err := connect(t, addr, "c3", "alice", "wrong"); err == nil {
		t.Error("mosquitto accepted a wrong password: the test proves nothing")
	}
}
