package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/hooks/auth"
	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

func runCmd(t *testing.T, stdin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, env, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := runCmd(t, "", nil, "version"); code != 0 || !strings.HasPrefix(out, "ferry ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, out, _ := runCmd(t, "", nil, "help"); code != 0 || !strings.Contains(out, "ferry check -c FILE") {
		t.Errorf("help: %d %q", code, out)
	}
	if code, _, errs := runCmd(t, "", nil, "--no-such-flag"); code != exitUsage || !strings.Contains(errs, "no-such-flag") {
		t.Errorf("unknown flag: %d %q", code, errs)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(good, []byte("storage: {sync: always}\n"), 0o600)
	_ = os.WriteFile(bad, []byte("listeners:\n  - type: tcp\n    addr: \":99999\"\n"), 0o600)
	if code, out, errs := runCmd(t, "", nil, "check", "-c", good); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("good file: %d %q %q", code, out, errs)
	}
	code, _, errs := runCmd(t, "", nil, "check", "-c", bad)
	if code != exitUsage || !strings.Contains(errs, bad+":3: listeners[0].addr") {
		t.Errorf("bad file: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runCmd(t, "", nil, "check", "-c", filepath.Join(dir, "missing.yaml")); code != exitUsage ||
		!strings.Contains(errs, "missing.yaml") {
		t.Errorf("missing file: %d %q", code, errs)
	}
}

// TestCheckCluster: ferry check says what cluster it validated (node,
// replicas, where NATS is), URL passwords hidden; nothing for a single node.
func TestCheckCluster(t *testing.T) {
	dir := t.TempDir()
	embedded := filepath.Join(dir, "embedded.yaml")
	_ = os.WriteFile(embedded, []byte("storage: {dir: "+filepath.Join(dir, "data")+"}\ncluster:\n  node_id: a\n  nats:\n    embedded:\n"+
		"      cluster_addr: 127.0.0.1:6222\n      routes: [nats://127.0.0.1:6223, nats://ru:rpw-SECRET@127.0.0.1:6224]\n"), 0o600)
	single := filepath.Join(dir, "single.yaml")
	_ = os.WriteFile(single, []byte("storage: {sync: always}\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("cluster:\n  replicas: 6\n  nats:\n    url: nats://127.0.0.1:4222\n"), 0o600)
	for _, tc := range []struct {
		name    string
		env     []string
		args    []string
		code    int
		want    []string // lines of stdout, or substrings of stderr when code != 0
		notWant string
	}{
		{"single node", nil, []string{"-c", single}, 0, []string{single + ": ok"}, "cluster:"},
		{"embedded", nil, []string{"-c", embedded}, 0, []string{
			embedded + ": ok",
			"  cluster: node_id a, replicas 3, start_timeout 30s",
			"  cluster.nats: embedded, client_addr 127.0.0.1:4222, cluster_addr 127.0.0.1:6222, " +
				"routes [nats://127.0.0.1:6223, nats://ru:xxxxx@127.0.0.1:6224], store_dir " + filepath.Join(dir, "data", "nats"),
		}, "SECRET"},
		{"url from the environment, node id flag", []string{"FERRY_CLUSTER_NATS_URL=nats://u:pw-SECRET@10.0.0.1:4222,nats://10.0.0.2:4222",
			"FERRY_CLUSTER_REPLICAS=1"}, []string{"--node-id", "n1"}, 0, []string{
			"built-in defaults: ok",
			"  cluster: node_id n1, replicas 1, start_timeout 30s",
			"  cluster.nats: url nats://u:xxxxx@10.0.0.1:4222,nats://10.0.0.2:4222",
		}, "SECRET"},
		{"bad cluster value", nil, []string{"-c", bad}, exitUsage, []string{bad + ":2: cluster.replicas: 6 must be 1-5"}, ""},
		{"bad node id flag", nil, []string{"-c", embedded, "--node-id=a.b"}, exitUsage,
			[]string{`--node-id="a.b": cluster.node_id: "a.b" must be`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "", tc.env, append([]string{"check"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q, stderr %q", code, tc.code, out, errs)
			}
			if tc.code == 0 {
				if got := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
					t.Errorf("stdout:\n%s\nwant:\n%s", out, strings.Join(tc.want, "\n"))
				}
			}
			for _, w := range tc.want {
				if tc.code != 0 && !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not contain %q", errs, w)
				}
			}
			if tc.notWant != "" && strings.Contains(out+errs, tc.notWant) {
				t.Errorf("output contains %q: %s%s", tc.notWant, out, errs)
			}
		})
	}
}

// TestBadConfigExitsBeforeListening: one bad field and nothing listens, not
// even the listeners that were fine.
func TestBadConfigExitsBeforeListening(t *testing.T) {
	free := testutil.FreeAddr(t)
	cfg := filepath.Join(t.TempDir(), "ferry.yaml")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf("listeners:\n  - {type: tcp, addr: %q}\n  - {type: ws, addr: \":99999\"}\n", free)), 0o600)
	code, _, errs := runCmd(t, "", nil, "-c", cfg, "--admin-addr", "")
	if code != exitUsage || !strings.Contains(errs, "listeners[1].addr") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if c, err := net.Dial("tcp", free); err == nil {
		c.Close()
		t.Fatalf("something listens on %s after a refused config", free)
	}
}

func TestPasswd(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	if code, _, errs := runCmd(t, "s3cret\n", nil, "passwd", "--stdin", file, "alice"); code != 0 {
		t.Fatalf("passwd: %d %s", code, errs)
	}
	pw, err := auth.LoadPasswordFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !pw.Check("alice", "s3cret") || pw.Check("alice", "wrong") {
		t.Fatal("the written password does not verify")
	}
	if code, _, _ := runCmd(t, "", nil, "passwd", "--stdin", file, "bob"); code != exitUsage {
		t.Errorf("empty password accepted: %d", code)
	}
	if code, _, _ := runCmd(t, "x\n", nil, "passwd", file, "carol"); code != 0 {
		t.Errorf("non-terminal stdin without --stdin: %d", code)
	}
	if code, _, _ := runCmd(t, "x\n", nil, "passwd", file, "a:b"); code != exitUsage {
		t.Errorf("user with ':' accepted: %d", code)
	}
}

// ferry passwd takes mosquitto_passwd's flags, before or after the
// arguments: -b (password on the command line), -D (delete), -c (new file).
func TestPasswdMosquittoFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		users map[string]string // user -> password that must verify; "" = absent
	}{
		{"batch, flag first", []string{"-b", file, "alice", "a1"}, 0, map[string]string{"alice": "a1"}},
		{"batch, flag last", []string{file, "bob", "b1", "-b"}, 0, map[string]string{"alice": "a1", "bob": "b1"}},
		{"batch changes a password", []string{file, "-b", "alice", "a2"}, 0, map[string]string{"alice": "a2", "bob": "b1"}},
		{"delete, flag last", []string{file, "alice", "-D"}, 0, map[string]string{"alice": "", "bob": "b1"}},
		{"delete a user not there", []string{"-D", file, "alice"}, 1, map[string]string{"bob": "b1"}},
		{"batch without the password", []string{"-b", file, "carol"}, exitUsage, map[string]string{"bob": "b1"}},
		{"delete with a password", []string{"-D", "-b", file, "bob", "x"}, exitUsage, map[string]string{"bob": "b1"}},
		{"create anew", []string{"-c", "-b", file, "carol", "c1"}, 0, map[string]string{"bob": "", "carol": "c1"}},
		{"after --, a dash is an argument", []string{"-b", "--", file, "dave", "-D"}, 0, map[string]string{"dave": "-D"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runCmd(t, "", nil, append([]string{"passwd"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tc.code, errs)
			}
			pw, err := auth.LoadPasswordFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for user, pass := range tc.users {
				if pass == "" && pw.Has(user) {
					t.Errorf("%s still in the file", user)
				} else if pass != "" && !pw.Check(user, pass) {
					t.Errorf("%s's password is not %q", user, pass)
				}
			}
		})
	}
}

// A file written by mosquitto_passwd is changed by ferry passwd -b and -D
// and still read by mosquitto_passwd, and the other way round.
func TestPasswdInteroperatesWithMosquittoPasswd(t *testing.T) {
	mp := testutil.NeedCommand(t, "mosquitto_passwd", "mosquitto")
	file := filepath.Join(t.TempDir(), "passwd")
	for i, u := range []string{"m1", "m2", "m3"} {
		args := []string{"-b", file, u, u + "-pw"}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command(mp, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v %s", err, out)
		}
	}
	if code, _, errs := runCmd(t, "", nil, "passwd", file, "m2", "-D"); code != 0 {
		t.Fatalf("ferry passwd -D: %d %s", code, errs)
	}
	if code, _, errs := runCmd(t, "", nil, "passwd", file, "f1", "f1-pw", "-b"); code != 0 {
		t.Fatalf("ferry passwd -b: %d %s", code, errs)
	}
	if out, err := exec.Command(mp, "-D", file, "m3").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -D on ferry's file: %v %s", err, out)
	}
	pw, err := auth.LoadPasswordFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !pw.Check("m1", "m1-pw") || !pw.Check("f1", "f1-pw") || pw.Has("m2") || pw.Has("m3") || pw.Len() != 2 {
		t.Errorf("file after both tools: m1 %v, f1 %v, m2 %v, m3 %v, %d users", pw.Check("m1", "m1-pw"),
			pw.Check("f1", "f1-pw"), pw.Has("m2"), pw.Has("m3"), pw.Len())
	}
}

func startFerry(t *testing.T, extra ...string) *testutil.Proc {
	t.Helper()
	bin := testutil.BuildFerry(t)
	args := append([]string{"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir()}, extra...)
	return testutil.StartFerry(t, bin, args...)
}

// TestGracefulShutdown: SIGINT and SIGTERM stop the broker within 5 s with
// exit code 0, and connected MQTT 5 clients are told why (DISCONNECT 0x8B).
func TestGracefulShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startFerry(t)
			c := testutil.DialRaw(t, p.Addr("tcp0"), 5)
			c.Connect("watching-shutdown", packets.Properties{})
			start := time.Now()
			p.Signal(t, sig)
			d := c.Expect(packets.Disconnect)
			if d.ReasonCode != packets.ErrServerShuttingDown.Code {
				t.Errorf("DISCONNECT reason 0x%02x, want 0x8b", d.ReasonCode)
			}
			if err := p.Wait(t, 5*time.Second); err != nil {
				t.Fatalf("exit: %v\n%s", err, p.Log())
			}
			t.Logf("stopped in %s", time.Since(start))
		})
	}
}

func TestReadyzAndMetrics(t *testing.T) {
	p := startFerry(t)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + p.Addr("admin") + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d %s", code, body)
	}
	_, body := get("/metrics")
	for _, m := range []string{"ferry_connections ", "ferry_messages_received_total{qos=\"1\"}", "ferry_messages_sent_total",
		"ferry_received_bytes_total", "ferry_messages_dropped_total{reason=", "ferry_retained_messages", "ferry_subscriptions",
		"ferry_inflight_messages"} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestMosquittoClients is the README's tour: Mosquitto's own clients, MQTT
// 3.1.1 and 5, exchange QoS 0/1/2 and retained messages through Ferry.
func TestMosquittoClients(t *testing.T) {
	pub := testutil.NeedCommand(t, "mosquitto_pub", "mosquitto-clients")
	sub := testutil.NeedCommand(t, "mosquitto_sub", "mosquitto-clients")
	p := startFerry(t)
	host, port, _ := net.SplitHostPort(p.Addr("tcp0"))
	for _, v := range []string{"mqttv311", "mqttv5"} {
		for _, q := range []string{"0", "1", "2"} {
			t.Run(v+"/qos"+q, func(t *testing.T) {
				topic := "tour/" + v + "/" + q
				msg := "hello-" + v + "-" + q
				if out, err := exec.Command(pub, "-h", host, "-p", port, "-V", v, "-q", q, "-r", "-t", topic, "-m", msg).CombinedOutput(); err != nil {
					t.Fatalf("mosquitto_pub: %v %s", err, out)
				}
				// The retained message arrives at a later subscriber.
				out, err := exec.Command(sub, "-h", host, "-p", port, "-V", v, "-q", q, "-t", topic, "-C", "1", "-W", "5", "-v").CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != topic+" "+msg {
					t.Fatalf("mosquitto_sub: %v %q", err, out)
				}
			})
		}
	}
}
