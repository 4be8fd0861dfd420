package deploy_test

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = ".."

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
	binOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// staticFerry builds cmd/ferry once, the way the Dockerfile does: CGO off,
// -trimpath, stripped. (testutil.BuildFerry builds with -race, which needs
// cgo: not the binary the image ships.)
func staticFerry(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "ferry-static-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "ferry")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", binPath, "./cmd/ferry")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		binOut, binErr = cmd.CombinedOutput()
	})
	if binErr != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./cmd/ferry: %v\n%s", binErr, binOut)
	}
	return binPath
}

// unit is a systemd unit file: section -> key -> values in order (a key
// may repeat; an empty assignment is kept, it resets the list).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unit) last(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// TestSystemdUnit: the unit passes systemd-analyze verify and its security
// audit, keeps the hardening the issue asks for, and starts ferry with
// flags ferry accepts.
func TestSystemdUnit(t *testing.T) {
	const path = "systemd/ferry.service"
	u := parseUnit(t, path)

	for _, tc := range []struct{ key, want string }{
		{"User", "ferry"},
		{"StateDirectory", "ferry"},
		{"ConfigurationDirectory", "ferry"},
		{"NoNewPrivileges", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"PrivateDevices", "yes"},
		{"ProtectKernelTunables", "yes"},
		{"ProtectKernelModules", "yes"},
		{"ProtectKernelLogs", "yes"},
		{"ProtectControlGroups", "yes"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"CapabilityBoundingSet", ""},
		{"AmbientCapabilities", ""},
		{"SystemCallFilter", "~@privileged"},
		{"Restart", "on-failure"},
	} {
		if got, ok := u.last("Service", tc.key); !ok || got != tc.want {
			t.Errorf("%s: %s=%q (set: %v), want %q", path, tc.key, got, ok, tc.want)
		}
	}
	if !slices.Contains(u["Service"]["SystemCallFilter"], "@system-service") {
		t.Errorf("%s: SystemCallFilter lacks @system-service: %q", path, u["Service"]["SystemCallFilter"])
	}
	if v, _ := u.last("Service", "LimitNOFILE"); atoi(t, v) < 100_000+1024 {
		t.Errorf("%s: LimitNOFILE=%s: too few for 100k connections plus storage files", path, v)
	}
	stop, _ := u.last("Service", "TimeoutStopSec")
	if d, err := time.ParseDuration(stop); err != nil || d < config.DefaultShutdownTimeout+5*time.Second {
		t.Errorf("%s: TimeoutStopSec=%s: must exceed shutdown.timeout (%s) with room to flush storage", path, stop, config.DefaultShutdownTimeout)
	}
	reloads := u["Service"]["ExecReload"]
	if len(reloads) == 0 || reloads[len(reloads)-1] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("%s: ExecReload=%q, want the last to send SIGHUP (ferry reloads on it)", path, reloads)
	}

	// ferry accepts the ExecStart flags: `ferry check` takes the same ones
	// (the unit's ExecReload runs it), here on the example configuration.
	bin := staticFerry(t)
	execStart, _ := u.last("Service", "ExecStart")
	args := strings.Fields(execStart)
	if args[0] != "/usr/local/bin/ferry" || !strings.Contains(execStart, "--data-dir /var/lib/ferry") ||
		!strings.Contains(execStart, "-c /etc/ferry/ferry.yaml") {
		t.Fatalf("%s: ExecStart=%q: want /usr/local/bin/ferry -c /etc/ferry/ferry.yaml --data-dir /var/lib/ferry", path, execStart)
	}
	example, err := filepath.Abs(filepath.Join(repoRoot, "ferry.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	checkArgs := append([]string{"check"}, args[1:]...)
	for i, a := range checkArgs {
		checkArgs[i] = strings.NewReplacer("/etc/ferry/ferry.yaml", example, "/var/lib/ferry", t.TempDir()).Replace(a)
	}
	if out, err := exec.Command(bin, checkArgs...).CombinedOutput(); err != nil {
		t.Errorf("ferry %s: %v\n%s", strings.Join(checkArgs, " "), err, out)
	}

	// systemd-analyze verify needs the ExecStart binary to exist: a copy of
	// the unit points at the static build instead of /usr/local/bin/ferry.
	analyze := testutil.NeedCommand(t, "systemd-analyze", "systemd")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "ferry.service")
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/ferry", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Any output is a warning (an unknown or misspelt key is only that).
	if out, err := exec.Command(analyze, "verify", tmp).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 2.0 and below is what systemd calls "OK"; the unit scores 1.5.
	if out, err := exec.Command(analyze, "security", "--offline=yes", "--threshold=20", tmp).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v)\n%s", err, out)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd, args string
	line      int
}

func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasPrefix(line, "#") { // a comment inside a continuation
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.Join(strings.Fields(args), " "), line: start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s ends inside a continuation line", path)
	}
	return out
}

// TestDockerfile: Docker is not available here, so the Dockerfile is read:
// a golang:1.26 builder making a static binary, a distroless or scratch
// final stage running as a non-root user with /data as a volume, the MQTT,
// WebSocket and admin ports, a HEALTHCHECK through `ferry health`, and
// nothing fetched by ADD from the network. The build context keeps what
// the build needs.
func TestDockerfile(t *testing.T) {
	path := filepath.Join(repoRoot, "Dockerfile")
	ins := parseDockerfile(t, path)
	var stages [][]instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
		if in.cmd == "ADD" && regexp.MustCompile(`(?i)(https?|git)://|git@`).MatchString(in.args) {
			t.Errorf("%s:%d: ADD of a remote source (%s): fetch in a RUN step of the builder, checked, or not at all", path, in.line, in.args)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%s: %d stage(s); want a builder and a final image", path, len(stages))
	}
	builder, final := stages[0], stages[len(stages)-1]
	if !regexp.MustCompile(`(^| )golang:1\.26(\S*)? AS build$`).MatchString(builder[0].args) {
		t.Errorf("%s:%d: builder is FROM %s, want golang:1.26 ... AS build", path, builder[0].line, builder[0].args)
	}
	var build string
	for _, in := range builder {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			build = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/ferry"} {
		if !strings.Contains(build, want) {
			t.Errorf("%s: the go build step lacks %s: %q", path, want, build)
		}
	}
	if base := final[0].args; !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
		t.Errorf("%s:%d: final image FROM %s, want distroless/static or scratch", path, final[0].line, base)
	}

	got := map[string][]string{}
	for _, in := range final {
		got[in.cmd] = append(got[in.cmd], in.args)
	}
	users := got["USER"]
	if len(users) == 0 {
		t.Errorf("%s: the final stage has no USER: it would run as root", path)
	} else if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "root" || u == "0" {
		t.Errorf("%s: USER %s is root", path, users[len(users)-1])
	}
	ports := strings.Fields(strings.Join(got["EXPOSE"], " "))
	for _, p := range []string{"1883", "8083", "8080"} {
		if !slices.Contains(ports, p) {
			t.Errorf("%s: EXPOSE lacks %s (got %v)", path, p, ports)
		}
	}
	if vols := strings.Join(got["VOLUME"], " "); !strings.Contains(vols, `"/data"`) && !slices.Contains(strings.Fields(vols), "/data") {
		t.Errorf("%s: no VOLUME /data (got %q)", path, vols)
	}
	env := strings.Join(got["ENV"], " ")
	for _, want := range []string{"FERRY_DATA_DIR=/data", "FERRY_ADMIN_ADDR=0.0.0.0:8080"} {
		if !strings.Contains(env, want) {
			t.Errorf("%s: ENV lacks %s (got %q)", path, want, env)
		}
	}
	hc := got["HEALTHCHECK"]
	if len(hc) != 1 || !regexp.MustCompile(`CMD \["/usr/local/bin/ferry", "health"`).MatchString(hc[0]) {
		t.Errorf("%s: HEALTHCHECK %q, want one running [\"/usr/local/bin/ferry\", \"health\", ...] (no shell in the image)", path, hc)
	}
	if ep := got["ENTRYPOINT"]; len(ep) != 1 || ep[0] != `["/usr/local/bin/ferry"]` {
		t.Errorf("%s: ENTRYPOINT %q", path, ep)
	}

	// Every directory the build reads must be in the build context.
	ignore := dockerignore(t, filepath.Join(repoRoot, ".dockerignore"))
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", filepath.Join(repoRoot, "cmd", "ferry")).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum", "third_party/mochi/go.mod", "third_party/mochi/go.sum"}
	for _, dir := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(root, dir); err == nil && !strings.HasPrefix(rel, "..") {
			needed = append(needed, rel)
		}
	}
	if len(needed) < 10 {
		t.Fatalf("go list found only %v in the module", needed)
	}
	for _, p := range needed {
		if pat := ignore(p); pat != "" {
			t.Errorf(".dockerignore pattern %q leaves %s out of the build context", pat, p)
		}
	}
}

// dockerignore returns a matcher saying which pattern of path's
// .dockerignore excludes a repository path ("" if none). It knows the
// subset of the syntax Ferry's file uses: path patterns without "!".
func dockerignore(t *testing.T, path string) func(string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pats []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") || strings.Contains(l, "**") {
			t.Fatalf("%s: %q: extend this test's matcher for it", path, l)
		}
		pats = append(pats, strings.Trim(l, "/"))
	}
	return func(p string) string {
		parts := strings.Split(p, "/")
		for _, pat := range pats {
			// A pattern excludes a path and everything under it.
			for i := 1; i <= len(parts); i++ {
				if ok, _ := filepath.Match(pat, strings.Join(parts[:i], "/")); ok {
					return pat
				}
			}
		}
		return ""
	}
}

// TestStaticBinaryAndHealth: the binary the image ships is static (no
// interpreter, no shared libraries, so it runs on scratch), serves, and
// its `ferry health` probe says ready while it runs and fails once it has
// stopped, as the HEALTHCHECK sees it.
func TestStaticBinaryAndHealth(t *testing.T) {
	bin := staticFerry(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: it is dynamically linked", bin)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (%v)", bin, libs, err)
	}

	p := testutil.StartFerry(t, bin, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir())
	admin := p.Addr("admin")
	probe := func(env ...string) (int, string) {
		cmd := exec.Command(bin, "health", "--timeout", "5s")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// As in the image: the admin address from FERRY_ADMIN_ADDR.
	if code, out := probe("FERRY_ADMIN_ADDR=" + admin); code != 0 || !strings.Contains(out, "ready") {
		t.Errorf("ferry health on a running ferry: exit %d: %s", code, out)
	}
	p.Signal(t, syscall.SIGTERM)
	if err := p.Wait(t, 20*time.Second); err != nil {
		t.Fatalf("ferry exit: %v\n%s", err, p.Log())
	}
	if code, out := probe("FERRY_ADMIN_ADDR=" + admin); code != 1 {
		t.Errorf("ferry health on a stopped ferry: exit %d, want 1: %s", code, out)
	}
}

// must fails the test on err, naming what was being done.
func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(fmt.Errorf("%s: %w", what, err))
	}
}
