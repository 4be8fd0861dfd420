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
		"client_writes_pending", "overflow_policy", "overflow_wait", "read_buffer_size", "write_buffer_size", "close_linger", "connect_timeout", "write_timeout", "resend_after", "max_topic_length", "max_topic_levels", "max_subscriptions", "publish_rate", "publish_burst", "publish_byte_rate", "rate_action", "client_id_max_length", "client_id_pattern", "max_goroutines", "max_heap_bytes", "storage", "dir",
		"sync", "sync_interval", "gc_interval", "gc_discard_ratio", "memtable_size", "auth", "password_file", "acl_file", "acl", "allow_anonymous", "jwt",
		"hs256_secret_file", "public_key_files", "jwks_file", "username_claim", "audience", "issuer", "http",
		"url", "timeout", "cache_ttl", "cache_size", "tls_username", "admin", "token", "pprof", "log",
		"level", "format", "shutdown", "bridges", "bridge_identity"} {
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
			[]string{"ferry.yaml:2: mqtt.max_qos: cannot unmarshal"}},
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
		})
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
