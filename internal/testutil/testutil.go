// Package testutil holds helpers shared by Ferry's tests: a real broker on
// loopback and polling instead of sleeping.
package testutil

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// Eventually polls fn every 10 ms until it returns true or timeout passes,
// then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, msg string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if fn() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Need returns the value of the environment variable name, which `make test`
// sets for a service it started. When it is unset the test is skipped with
// how to get the service, or fails under CI=true, where every service must
// be there.
func Need(t testing.TB, name, howTo string) string {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		return v
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set under CI=true: the service is missing (%s)", name, howTo)
	}
	t.Skipf("%s not set; %s (make test does this)", name, howTo)
	return ""
}

// NeedCommand returns the path of an executable, skipping the test (failing
// under CI=true) when it is not installed.
func NeedCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/usr/local/sbin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed under CI=true (apt-get install %s; make test does this)", name, pkg)
	}
	t.Skipf("%s not installed; apt-get install %s (make test does this)", name, pkg)
	return ""
}
