package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker/config"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	cfg, err := config.Load(config.Source{})
	if err != nil {
		t.Fatalf("built-in defaults do not validate: %v", err)
	}
	if len(cfg.Listeners) != 2 || cfg.Listeners[0].Addr != ":1883" || cfg.Listeners[1].Addr != ":8083" ||
		cfg.Listeners[1].Type != "ws" {
		t.Errorf("default listeners %+v", cfg.Listeners)
	}
	if *cfg.Admin.Addr != "127.0.0.1:8080" || cfg.Storage.Dir != "./data" || cfg.Storage.Sync != "batch" ||
		cfg.Storage.SyncInterval != 100*time.Millisecond || cfg.Shutdown.Timeout != 5*time.Second {
		t.Errorf("defaults: admin %q, storage %+v, shutdown %s", *cfg.Admin.Addr, cfg.Storage, cfg.Shutdown.Timeout)
	}
}

func TestExampleFileIsValidAndDocumentsEveryField(t *testing.T) {
	path := filepath.Join("..", "..", "ferry.example.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(config.Source{Path: path}); err != nil {
		t.Fatalf("ferry.example.yaml: %v", err)
	}
	// Every YAML key of the config types appears in the example.
	for _, key := range []string{"listeners", "name", "type", "addr", "path", "cert", "key", "client_ca",
		"mqtt", "max_qos", "retain_available", "wildcard_subscriptions", "shared_subscriptions",
		"subscription_identifiers", "topic_alias_maximum", "receive_maximum", "max_session_expiry",
		"max_message_expiry", "sys_interval", "limits", "max_packet_size", "max_connections", "max_connections_per_ip", "connection_rate_per_ip", "max_inflight", "max_queued_messages", "max_queued_bytes",
		"client_writes_pending", "overflow_policy", "overflow_wait", "read_buffer_size", "write_buffer_size", "close_linger", "idle_park_after", "connect_timeout", "write_timeout", "resend_after", "max_topic_length", "max_topic_levels", "max_subscriptions", "publish_rate", "publish_burst", "publish_byte_rate", "rate_action", "client_id_max_length", "client_id_pattern", "max_goroutines", "max_heap_bytes", "storage", "dir",
		"sync", "sync_interval", "gc_interval", "gc_discard_ratio", "memtable_size", "auth", "password_file", "acl_file", "acl", "allow_anonymous", "jwt",
		"hs256_secret_file", "public_key_files", "jwks_file", "username_claim", "audience", "issuer", "http",
		"url", "timeout", "cache_ttl", "cache_size", "tls_username", "allow_session_takeover", "admin", "token", "allow_unauthenticated", "pprof", "log",
		"level", "format", "shutdown", "bridges", "bridge_identity",
		"cluster", "node_id", "replicas", "nats", "embedded", "client_addr", "cluster_addr", "routes", "store_dir",
		"creds_file", "start_timeout"} {
		if !strings.Contains(string(data), key+":") {
			t.Errorf("ferry.example.yaml does not document %q", key)
		}
	}
}

func TestBadConfigErrorsNameFieldAndLine(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
		want []string // substrings of the error
	}{
		{"unknown top-level key", "log:\n  level: info\nbogus: 1\n", nil,
			[]string{"ferry.yaml:3: bogus: unknown field"}},
		{"unknown nested key", "storage:\n  dir: x\n  syncc: always\n", nil,
			[]string{"ferry.yaml:3: storage.syncc: unknown field"}},
		{"wrong type", "mqtt:\n  max_qos: two\n", nil,
			[]string{`ferry.yaml:2: mqtt.max_qos: "two" is not an integer`}},
		{"bad duration", "storage:\n  sync_interval: 5 parsecs\n", nil,
			[]string{"ferry.yaml:2: storage.sync_interval:"}},
		{"port out of range", "listeners:\n  - type: tcp\n    addr: \":99999\"\n", nil,
			[]string{"ferry.yaml:3: listeners[0].addr:", "99999"}},
		{"address without port", "listeners:\n  - {type: tcp, addr: localhost}\n", nil,
			[]string{"ferry.yaml:2: listeners[0].addr:", "not host:port"}},
		{"unknown listener type", "listeners:\n  - type: quic\n    addr: \":1\"\n", nil,
			[]string{"ferry.yaml:2: listeners[0].type: must be one of"}},
		{"missing cert file", "listeners:\n  - type: tls\n    addr: \":8883\"\n    cert: /nonexistent/cert.pem\n    key: /nonexistent/key.pem\n", nil,
			[]string{"ferry.yaml:4: listeners[0].cert:", "no such file"}},
		{"tls without cert", "listeners:\n  - type: tls\n    addr: \":8883\"\n", nil,
			[]string{"listeners[0].cert: a tls listener needs a certificate file"}},
		{"cert on plain tcp", "listeners:\n  - type: tcp\n    addr: \":1\"\n    cert: c.pem\n", nil,
			[]string{"listeners[0].cert: only applies to tls and wss"}},
		{"duplicate listener names", "listeners:\n  - {name: a, type: tcp, addr: \":1\"}\n  - {name: a, type: ws, addr: \":2\"}\n", nil,
			[]string{"listeners[1].name:", "already the name of listeners[0]"}},
		{"bad sync mode", "storage:\n  sync: sometimes\n", nil,
			[]string{"ferry.yaml:2: storage.sync: must be one of always, batch, none"}},
		{"qos out of range", "mqtt:\n  max_qos: 3\n", nil,
			[]string{"ferry.yaml:2: mqtt.max_qos: 3 is out of range [0, 2]"}},
		{"bad admin address", "admin:\n  addr: \"127.0.0.1:http2\"\n", nil,
			[]string{"ferry.yaml:2: admin.addr:"}},
		{"unknown overflow policy", "limits:\n  overflow_policy: drop-random\n", nil,
			[]string{"ferry.yaml:2: limits.overflow_policy: must be block-publisher, drop-newest or drop-oldest"}},
		{"negative queue bound", "limits:\n  max_queued_messages: -1\n", nil,
			[]string{"ferry.yaml:2: limits.max_queued_messages: -1 is out of range"}},
		{"negative queue bytes", "limits:\n  max_queued_bytes: -5\n", nil,
			[]string{"ferry.yaml:2: limits.max_queued_bytes: -5 must be at least 1"}},
		{"bad log level", "log:\n  level: loud\n", nil,
			[]string{"ferry.yaml:2: log.level: must be debug, info, warn or error"}},
		{"missing password file", "auth:\n  password_file: /nonexistent/passwd\n", nil,
			[]string{"ferry.yaml:2: auth.password_file:"}},
		{"several problems at once", "storage:\n  sync: x\nmqtt:\n  max_qos: 9\n", nil,
			[]string{"storage.sync", "mqtt.max_qos"}},
		{"bad environment value", "", []string{"FERRY_STORAGE_SYNC_INTERVAL=soon"},
			[]string{"storage.sync_interval", "FERRY_STORAGE_SYNC_INTERVAL", "not a duration"}},
		{"bad environment boolean", "", []string{"FERRY_MQTT_RETAIN_AVAILABLE=maybe"},
			[]string{"mqtt.retain_available", "not a boolean"}},
		{"not yaml", "listeners: [\n", nil, []string{"ferry.yaml"}},
		{"duration without unit", "storage:\n  sync_interval: 100\n", nil,
			[]string{"ferry.yaml:2: storage.sync_interval: 100 has no unit: write a duration such as 100ms"}},
		{"duration as a word", "shutdown:\n  timeout: soon\n", nil,
			[]string{`ferry.yaml:2: shutdown.timeout: "soon" is not a duration`}},
		{"mapping for a number", "mqtt:\n  max_qos: {a: 1}\n", nil,
			[]string{"ferry.yaml:2: mqtt.max_qos: want a single value, not a mapping"}},
		{"misindented key", "storage:\n  dir: x\n sync: always\nlog:\n  level: info\n", nil,
			[]string{"ferry.yaml:3: "}},
		{"misindented list item", "log:\n  level: info\nlisteners:\n  - type: tcp\n    addr: \":1\"\n   - type: ws\n    addr: \":2\"\n", nil,
			[]string{"ferry.yaml:6: "}},
		{"unclosed quote", "storage:\n  dir: \"x\nlog:\n  level: info\nadmin:\n  addr: \":1\"\n", nil,
			[]string{"ferry.yaml:2: "}},
		{"tab indentation", "log:\n  level: info\n\tformat: json\n", nil,
			[]string{"ferry.yaml:3: "}},
		{"duplicate listener address", "listeners:\n  - {type: tcp, addr: \":1883\"}\n  - {type: ws, addr: \":1883\"}\n", nil,
			[]string{`ferry.yaml:3: listeners[1].addr: ":1883" is already the address of listeners[0] (tcp0)`}},
		{"listener address under a wildcard one", "listeners:\n  - {type: tcp, addr: \"0.0.0.0:1883\"}\n  - {type: tls, addr: \"127.0.0.1:1883\", cert: c, key: k}\n", nil,
			[]string{`ferry.yaml:3: listeners[1].addr: "127.0.0.1:1883" is already the address of listeners[0]`}},
		{"unknown connector field", "bridges:\n  - name: r1\n    from: a/#\n    to:\n      redis:\n        adr: x\n        stream: s\n", nil,
			[]string{`ferry.yaml:6: bridges[0].to.redis.adr: route "r1": unknown field`}},
		{"unknown field of a flow-style connector", "bridges:\n  - name: r2\n    from: b/#\n    to:\n      nats: {url: \"nats://x\", subjectt: y}\n", nil,
			[]string{`ferry.yaml:5: bridges[0].to.nats.subjectt: route "r2": unknown field`}},
		{"two connectors in one route, and more", "mqtt:\n  max_qos: 9\nbridges:\n  - name: r1\n    from: a/#\n" +
			"    to: {nats: {url: \"nats://x\", subject: s}, kafka: {brokers: [a], topic: t}}\n" +
			"  - name: r2\n    from: {a: 1}\n    to: {bogus: {}}\n", nil,
			[]string{"ferry.yaml:2: mqtt.max_qos:", "ferry.yaml:6: bridges[0].to: want exactly one connector, got [kafka nats]",
				`ferry.yaml:8: bridges[1].from: route "r2": egress route needs`, `ferry.yaml:9: bridges[1].to.bogus: unknown connector "bogus"`}},
		{"connector field of the wrong type", "bridges:\n  - name: r1\n    from: a/#\n    to:\n      redis:\n        addr: x\n        stream: s\n        db: zero\n", nil,
			[]string{`ferry.yaml:8: bridges[0].to.redis.db: route "r1": "zero" is not an integer`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "ferry.yaml", tc.yaml)
			_, err := config.Load(config.Source{Path: path, Env: tc.env})
			if err == nil {
				t.Fatal("accepted")
			}
			msg := strings.ReplaceAll(err.Error(), path, "ferry.yaml")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, goType := range []string{"redis.Config", "nats.Config", "time.Duration", "!!", "not found in type"} {
				if strings.Contains(msg, goType) {
					t.Errorf("error %q names a Go or YAML type: %q", msg, goType)
				}
			}
		})
	}
}

// A value set by the environment or a flag is blamed on the variable or
// flag, not on the file line of the value it replaced.
func TestErrorsNameTheirSource(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "ok.yaml", "listeners:\n  - {type: tcp, addr: \":1883\"}\nmqtt:\n  max_qos: 1\nstorage:\n  sync: always\n")
	bad := ":99999"
	for _, tc := range []struct {
		name    string
		env     []string
		flags   config.Overrides
		want    string
		notWant string
	}{
		{"variable over a file value", []string{"FERRY_MQTT_MAX_QOS=5"}, config.Overrides{},
			`FERRY_MQTT_MAX_QOS="5": mqtt.max_qos: 5 is out of range [0, 2]`, "ok.yaml:4"},
		{"variable of a bad type", []string{"FERRY_STORAGE_SYNC_INTERVAL=100"}, config.Overrides{},
			`FERRY_STORAGE_SYNC_INTERVAL="100": storage.sync_interval: not a duration: 100 has no unit`, "ok.yaml"},
		{"flag over a file listener", nil, config.Overrides{MQTTAddr: &bad},
			`--mqtt-addr=":99999": listeners[0].addr: port "99999"`, "ok.yaml:2"},
		{"address variable", []string{"FERRY_MQTT_ADDR=:99999"}, config.Overrides{},
			`FERRY_MQTT_ADDR=":99999": listeners[0].addr: port "99999"`, "ok.yaml:2"},
		{"flag over a variable", []string{"FERRY_LOG_LEVEL=info"}, config.Overrides{LogLevel: &bad},
			`--log-level=":99999": log.level: must be debug, info, warn or error`, "FERRY_LOG_LEVEL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Load(config.Source{Path: path, Env: tc.env, Flags: tc.flags})
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("error %q blames %q", err, tc.notWant)
			}
		})
	}
}

// Every problem is reported in one pass: type errors beside validation
// errors, and every route's problems, its own and its connector's.
func TestEveryErrorInOnePass(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "ferry.yaml", `listeners:
  - {type: tcp, addr: ":1883"}
  - {type: ws, addr: ":1883"}
storage:
  sync_interval: 100
mqtt:
  max_qos: 7
bridges:
  - name: r1
    from: "a/#"
    to:
      redis:
        adr: "127.0.0.1:6379"
        stream: s
  - name: r2
    from: "b/#"
    to:
      nats: {url: "nats://x", subjectt: y}
  - name: R3
    from: "c/#"
    to: {kafka: {brokers: [], topic: t}}
`)
	_, err := config.Load(config.Source{Path: path})
	if err == nil {
		t.Fatal("accepted")
	}
	msg := strings.ReplaceAll(err.Error(), path, "ferry.yaml")
	want := []string{
		"ferry.yaml:3: listeners[1].addr:",
		"ferry.yaml:5: storage.sync_interval:",
		"ferry.yaml:7: mqtt.max_qos:",
		"ferry.yaml:13: bridges[0].to.redis.adr:",
		"ferry.yaml:18: bridges[1].to.nats.subjectt:",
		"ferry.yaml:19: bridges[2].name:",
		"ferry.yaml:21: bridges[2].to.kafka.brokers:",
	}
	lines := strings.Split(msg, "\n")
	if len(lines) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(lines), len(want), msg)
	}
	for i, w := range want {
		if i >= len(lines) || !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d: want it to start with %q in:\n%s", i, w, msg)
		}
	}
}

func TestUnknownVariablesWarned(t *testing.T) {
	_, warnings, err := config.LoadWithWarnings(config.Source{Env: []string{
		"FERRY_STORAGE_SYNK=always", "FERRY_STORAGE_SYNC=always", "FERRY_TEST_REDIS_ADDR=x", "FERRY_BOGUS=1", "PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"environment variable FERRY_BOGUS is not a Ferry setting and is ignored",
		"environment variable FERRY_STORAGE_SYNK is not a Ferry setting and is ignored (did you mean FERRY_STORAGE_SYNC?)",
	}
	if strings.Join(warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(want, "\n"))
	}
}

// Files named in the file are found beside it, wherever ferry runs from;
// those named by the environment are relative to the working directory.
func TestRelativePathsFromTheFilesDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "conf"), 0o700); err != nil {
		t.Fatal(err)
	}
	pw, err := os.ReadFile(filepath.Join("..", "..", "hooks", "auth", "testdata", "mosquitto.passwd"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "conf"), "passwd", string(pw))
	path := writeFile(t, filepath.Join(dir, "conf"), "ferry.yaml", "auth:\n  password_file: passwd\n  acl_file: sub/acl\n")
	_, err = config.Load(config.Source{Path: path})
	if err == nil {
		t.Fatal("accepted a missing ACL file")
	}
	if strings.Contains(err.Error(), "password_file") {
		t.Errorf("password file beside the config not found: %v", err)
	}
	if want := filepath.Join(dir, "conf", "sub", "acl"); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	// A connector's files too.
	writeFile(t, filepath.Join(dir, "conf"), "hook.secret", "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\n")
	hooks := writeFile(t, filepath.Join(dir, "conf"), "hooks.yaml",
		"bridges:\n  - name: h\n    from: a/#\n    to: {webhook: {url: \"http://127.0.0.1:1/\", secret_file: hook.secret}}\n"+
			"  - name: g\n    from: b/#\n    to:\n      webhook:\n        url: \"http://127.0.0.1:1/\"\n        secret_file: missing.secret\n")
	_, err = config.Load(config.Source{Path: hooks})
	if err == nil || strings.Contains(err.Error(), "bridges[0]") {
		t.Errorf("webhook secret_file beside the config not found, or the missing one not reported: %v", err)
	}
	if want := hooks + ":10: bridges[1].to.webhook.secret_file"; err == nil || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), filepath.Join(dir, "conf", "missing.secret")) {
		t.Errorf("error %v does not start with %q and name the file beside the config", err, want)
	}
	_, err = config.Load(config.Source{Path: path, Env: []string{"FERRY_AUTH_ACL_FILE=" + filepath.Join(dir, "conf", "passwd"),
		"FERRY_AUTH_PASSWORD_FILE=passwd"}})
	if err == nil || !strings.Contains(err.Error(), `FERRY_AUTH_PASSWORD_FILE="passwd": auth.password_file`) {
		t.Errorf("a relative path from the environment should be relative to the working directory: %v", err)
	}
}

func TestPrecedenceFlagOverEnvOverFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "ferry.yaml", "storage:\n  dir: from-file\n  sync: always\nlog:\n  level: warn\n")
	flag := "from-flag"
	for _, tc := range []struct {
		name  string
		env   []string
		flags config.Overrides
		dir   string
		sync  string
	}{
		{"file only", nil, config.Overrides{}, "from-file", "always"},
		{"env over file", []string{"FERRY_DATA_DIR=from-env", "FERRY_STORAGE_SYNC=none"}, config.Overrides{}, "from-env", "none"},
		{"yaml-path env", []string{"FERRY_STORAGE_DIR=from-env2"}, config.Overrides{}, "from-env2", "always"},
		{"flag over env", []string{"FERRY_DATA_DIR=from-env"}, config.Overrides{DataDir: &flag}, "from-flag", "always"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Load(config.Source{Path: path, Env: tc.env, Flags: tc.flags})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Storage.Dir != tc.dir || cfg.Storage.Sync != tc.sync {
				t.Errorf("dir %q sync %q, want %q %q", cfg.Storage.Dir, cfg.Storage.Sync, tc.dir, tc.sync)
			}
			if cfg.Log.Level != "warn" {
				t.Errorf("untouched field changed: log.level %q", cfg.Log.Level)
			}
		})
	}
}

func TestListenerFlags(t *testing.T) {
	addr := "127.0.0.1:1999"
	empty := ""
	cfg, err := config.Load(config.Source{Flags: config.Overrides{MQTTAddr: &addr, WSAddr: &empty}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 1 || cfg.Listeners[0].Type != "tcp" || cfg.Listeners[0].Addr != addr {
		t.Fatalf("listeners %+v", cfg.Listeners)
	}
	cfg, err = config.Load(config.Source{Env: []string{"FERRY_WS_ADDR=127.0.0.1:2000", "FERRY_ADMIN_ADDR="}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 2 || cfg.Listeners[1].Addr != "127.0.0.1:2000" || *cfg.Admin.Addr != "" {
		t.Fatalf("listeners %+v admin %q", cfg.Listeners, *cfg.Admin.Addr)
	}
}

func FuzzConfigLoad(f *testing.F) {
	f.Add([]byte("listeners:\n  - {type: tcp, addr: \":1883\"}\nstorage: {sync: always}\n"))
	f.Add([]byte("mqtt:\n  max_qos: 1\nlimits: {max_packet_size: 100}\n"))
	f.Add([]byte("auth: {allow_anonymous: true}\nbogus: [1, 2\n"))
	f.Add([]byte("cluster:\n  replicas: 6\n  nats: {url: \"nats://a:1\", embedded: {routes: [\"nats://b:2\", x]}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse("fuzz.yaml", data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		_ = cfg.WithDefaults().Validate()
	})
}
