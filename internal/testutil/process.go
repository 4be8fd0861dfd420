package testutil

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildOut  []byte
)

// BuildFerry builds cmd/ferry once per test binary and returns its path.
func BuildFerry(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "ferry")
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-race", "-o", buildPath, "./cmd/ferry")
		cmd.Dir = root
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build ferry: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Proc is a ferry process started by a test.
type Proc struct {
	Cmd *exec.Cmd
	// Addrs maps listener names to their bound addresses, read from the
	// "listening" log lines; "admin" is the admin endpoint.
	Addrs map[string]string
	mu    sync.Mutex
	log   strings.Builder
	ready chan struct{} // closed at the "ferry started" line
	done  chan struct{} // closed once the process exited and its log is read
	err   error
}

var listenRe = regexp.MustCompile(`msg=listening listener=(\S+) type=\S+ addr=(\S+)|msg="admin listening" addr=(\S+)`)

// StartFerry runs bin with args (plus --log-level info), waits until every
// listener has logged its address and the "ferry started" line, and kills
// it at test end if it is still running.
func StartFerry(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	p := LaunchFerry(t, bin, nil, args...)
	p.WaitStarted(t, 30*time.Second)
	return p
}

// LaunchFerry runs bin with args as StartFerry does, with env (KEY=value
// entries) added to the environment, and returns at once, without waiting
// for it to start: for processes that can only finish starting together,
// such as the nodes of a cluster. WaitStarted waits for it. The process is
// killed at test end if it is still running.
func LaunchFerry(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Addrs: map[string]string{}, ready: make(chan struct{}), done: make(chan struct{})}
	p.Cmd = exec.Command(bin, args...)
	p.Cmd.Env = append(append(os.Environ(), "FERRY_LOG_LEVEL=info", "FERRY_LOG_FORMAT=text"), env...)
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start ferry: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			if m := listenRe.FindStringSubmatch(line); m != nil {
				if m[1] != "" {
					p.Addrs[m[1]] = m[2]
				} else {
					p.Addrs["admin"] = m[3]
				}
			}
			p.mu.Unlock()
			if !signalled && strings.Contains(line, `msg="ferry started"`) {
				signalled = true
				close(p.ready)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Kill()
		<-p.done
	})
	return p
}

// WaitStarted waits up to timeout for the process's "ferry started" line
// (every listener has logged its address before it), failing the test with
// the log when the process exits first or the time runs out.
func (p *Proc) WaitStarted(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := p.waitStarted(timeout); err != nil {
		t.Fatalf("%v\n%s", err, p.Log())
	}
}

// waitStarted is WaitStarted returning what went wrong, without the log.
func (p *Proc) waitStarted(timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		if p.started() { // it started, then exited
			return nil
		}
		return fmt.Errorf("ferry exited before it was ready: %v", p.err)
	case <-timer.C:
		return fmt.Errorf("ferry not ready after %s", timeout)
	}
}

// started reports whether the process has logged "ferry started".
func (p *Proc) started() bool {
	select {
	case <-p.ready:
		return true
	default:
		return false
	}
}

// exited reports whether the process has exited.
func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Log is everything the process has written to stderr so far.
func (p *Proc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Addr returns a listener's address.
func (p *Proc) Addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Addrs[name]
}

// Signal sends sig to the process.
func (p *Proc) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits up to timeout for the process to exit and returns its error
// (nil for exit code 0).
func (p *Proc) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("ferry still running %s after being told to stop:\n%s", timeout, p.Log())
		return nil
	}
}
