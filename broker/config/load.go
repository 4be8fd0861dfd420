package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/cluster"
	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable Ferry reads. A field's
// variable is the prefix and its YAML path in upper case with "_" for ".":
// storage.sync_interval is FERRY_STORAGE_SYNC_INTERVAL.
const EnvPrefix = "FERRY_"

// Overrides are the values set by command-line flags; nil means not set.
// They win over the environment and the file.
type Overrides struct {
	// MQTTAddr replaces the first tcp listener's address; "" removes it.
	MQTTAddr *string
	// WSAddr replaces the first ws listener's address; "" removes it.
	WSAddr *string
	// AdminAddr replaces admin.addr; "" disables the admin listener.
	AdminAddr *string
	// DataDir replaces storage.dir.
	DataDir *string
	// LogLevel replaces log.level.
	LogLevel *string
	// NodeID replaces cluster.node_id, creating the cluster section if
	// there is none (which then needs its nats from the file or the
	// environment).
	NodeID *string
}

// Source is what Load reads.
type Source struct {
	// Path of the YAML file; empty means none (built-in defaults).
	Path string
	// Env is the environment as os.Environ returns it.
	Env []string
	// Flags are the command-line overrides.
	Flags Overrides
}

// Load reads the file, applies the environment and flags, fills defaults
// and validates. The error, if any, joins one *FieldError per problem, all
// of them: a bad value in one place does not hide another elsewhere.
func Load(src Source) (Config, error) {
	cfg, _, err := LoadWithWarnings(src)
	return cfg, err
}

// LoadWithWarnings is Load that also returns warnings: settings that look
// meant for Ferry but that it ignores, such as a FERRY_ variable that names
// no field (FERRY_STORAGE_SYNK). They are returned even with an error.
//
// Relative file paths in the file (certificates, keys, CA bundles, password,
// ACL and key files) are relative to the file's directory; those given by
// the environment or flags, and storage.dir, to the working directory.
func LoadWithWarnings(src Source) (Config, []string, error) {
	var cfg Config
	var idx lineIndex
	var errs []error
	if src.Path != "" {
		data, err := os.ReadFile(src.Path)
		if err != nil {
			return Config{}, nil, fmt.Errorf("config: %w", err)
		}
		var fatal bool
		cfg, idx, fatal, err = parse(src.Path, data)
		if fatal {
			return Config{}, nil, err // not YAML: nothing more can be said
		}
		if err != nil {
			errs = append(errs, err) // fields that did not decode; check the rest
		}
		dir := filepath.Dir(src.Path)
		cfg.resolvePaths(dir)
		if data, ok := resolveConnectorFiles(data, dir); ok {
			// Connector sections are decoded by their connectors: their
			// files are resolved in the YAML itself. Errors were reported
			// by the first decode, with the file's own lines.
			if c, _, fatal, _ := parse(src.Path, data); !fatal {
				cfg.Bridges = c.Bridges
			}
		}
	}
	from := origins{}
	warnings, err := applyEnv(&cfg, src.Env, from)
	if err != nil {
		errs = append(errs, err)
	}
	src.Flags.apply(&cfg, from, false)
	for i, l := range cfg.Listeners {
		if l.from != "" {
			from[fmt.Sprintf("listeners[%d].addr", i)] = l.from
		}
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		errs = append(errs, withoutRepeats(idx.annotate(src.Path, err, from), errs))
	}
	if len(errs) > 0 {
		return Config{}, warnings, joinAll(errs)
	}
	return cfg, warnings, nil
}

// joinAll joins errs into one flat list in reading order: what the
// environment and flags set first, then the file's problems by line.
func joinAll(errs []error) error {
	var out []error
	for _, e := range errs {
		if e != nil {
			out = append(out, flatten(e)...)
		}
	}
	rank := func(e error) (int, int) {
		var fe *FieldError
		switch {
		case !errors.As(e, &fe):
			return 3, 0
		case fe.Source != "":
			return 0, 0
		case fe.Line > 0:
			return 1, fe.Line
		}
		return 2, 0
	}
	sort.SliceStable(out, func(i, j int) bool {
		ri, li := rank(out[i])
		rj, lj := rank(out[j])
		return ri < rj || (ri == rj && li < lj)
	})
	return errors.Join(out...)
}

// withoutRepeats drops from err the problems of fields that did not decode
// (reported in decoded): a field left at its zero value by a decoding
// error would be reported a second time by Validate.
func withoutRepeats(err error, decoded []error) error {
	var bad []string
	for _, e := range decoded {
		for _, fe := range fieldErrors(e) {
			if fe.Path != "" {
				bad = append(bad, fe.Path)
			}
		}
	}
	var out []error
	for _, e := range flatten(err) {
		repeat := false
		var fe *FieldError
		for _, p := range bad {
			if errors.As(e, &fe) && (fe.Path == p || strings.HasPrefix(p, fe.Path+".") || strings.HasPrefix(fe.Path, p+".")) {
				repeat = true
				break
			}
		}
		if !repeat {
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}

// fieldErrors lists the *FieldError values joined in err.
func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
		}
	}
	return out
}

// origins maps the YAML path of each value set by the environment or a
// flag to how it was set, so that an error names the variable or flag
// instead of the file.
type origins map[string]string

// resolvePaths makes the relative paths of files Ferry reads relative to
// dir, the configuration file's directory: a file that names cert.pem means
// the one beside it, wherever ferry was started from.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		abs(&l.Cert)
		abs(&l.Key)
		abs(&l.ClientCA)
	}
	a := &c.Auth
	abs(&a.PasswordFile)
	abs(&a.ACLFile)
	abs(&a.JWT.HS256SecretFile)
	abs(&a.JWT.JWKSFile)
	for i := range a.JWT.PublicKeyFiles {
		abs(&a.JWT.PublicKeyFiles[i])
	}
	if c.Cluster != nil {
		abs(&c.Cluster.NATS.CredsFile)
	}
}

// resolveConnectorFiles rewrites the relative paths in the bridges'
// connector sections (the values of their *_file keys: password_file,
// secret_file, passcode_file) to be relative to dir, and says whether it
// changed anything.
func resolveConnectorFiles(data []byte, dir string) ([]byte, bool) {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || len(root.Content) == 0 {
		return data, false
	}
	changed := false
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if v.Kind == yaml.ScalarNode && strings.HasSuffix(k.Value, "_file") && v.Value != "" && !filepath.IsAbs(v.Value) {
					v.Value = filepath.Join(dir, v.Value)
					changed = true
				}
				walk(v)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c)
			}
		}
	}
	top := root.Content[0]
	for i := 0; top.Kind == yaml.MappingNode && i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "bridges" || top.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		for _, route := range top.Content[i+1].Content {
			for j := 0; route.Kind == yaml.MappingNode && j+1 < len(route.Content); j += 2 {
				if side := route.Content[j].Value; side == "to" || side == "from" {
					walk(route.Content[j+1])
				}
			}
		}
	}
	if !changed {
		return data, false
	}
	out, err := yaml.Marshal(&root)
	if err != nil {
		return data, false
	}
	return out, true
}

// Parse decodes one YAML document strictly: unknown keys and wrong types are
// errors naming the field and line. Defaults are not applied.
func Parse(name string, data []byte) (Config, error) {
	cfg, _, _, err := parse(name, data)
	return cfg, err
}

// parse decodes data. fatal is true when data is not YAML at all; otherwise
// the error lists the fields that did not decode, and cfg holds the rest.
func parse(name string, data []byte) (cfg Config, idx lineIndex, fatal bool, err error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return cfg, nil, true, &FieldError{File: name, Line: syntaxLine(data, yamlErrLine(err.Error())), Err: errors.New(stripLine(err.Error()))}
	}
	idx = indexNode(&root)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return cfg, idx, true, &FieldError{File: name, Line: yamlErrLine(err.Error()), Err: errors.New(stripLine(err.Error()))}
		}
		errs := make([]error, 0, len(te.Errors))
		for _, msg := range te.Errors {
			errs = append(errs, idx.typeError(name, msg))
		}
		return cfg, idx, false, errors.Join(errs...)
	}
	return cfg, idx, false, nil
}

// syntaxLine finds the line of a YAML syntax error. yaml.v3 reports the
// line where the enclosing block starts (a misindented key on line 9 is
// reported on the "storage:" line above it), so the error's line is taken
// to be the one after the longest prefix of the file that still parses.
// Files too long for that keep yaml.v3's line.
func syntaxLine(data []byte, reported int) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > 2000 {
		return reported
	}
	var n yaml.Node
	for k := len(lines) - 1; k > 0; k-- {
		if yaml.Unmarshal(bytes.Join(lines[:k], nil), &n) == nil {
			return k + 1
		}
	}
	return 1
}

var (
	lineRe     = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)
	notFoundRe = regexp.MustCompile(`^field (\S+) not found in type`)
	// yamlMsgRe finds yaml.v3's messages inside a connector's error.
	yamlMsgRe   = regexp.MustCompile(`line (\d+): ([^\n]+)`)
	unmarshalRe = regexp.MustCompile("^cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// explainYAML rewrites one of yaml.v3's decoding messages for an operator:
// no Go type names. key is the unknown field's name, if that is the
// problem.
func explainYAML(msg string) (text, key string) {
	if m := notFoundRe.FindStringSubmatch(msg); m != nil {
		return "unknown field", m[1]
	}
	m := unmarshalRe.FindStringSubmatch(msg)
	if m == nil {
		if strings.HasPrefix(msg, "cannot unmarshal !!map") {
			return "want a single value, not a mapping", ""
		}
		if strings.HasPrefix(msg, "cannot unmarshal !!seq") {
			return "want a single value, not a list", ""
		}
		return msg, ""
	}
	tag, val, typ := m[1], m[2], m[3]
	switch {
	case typ == "time.Duration" && (tag == "int" || tag == "float"):
		return fmt.Sprintf("%s has no unit: write a duration such as %sms, %ss or %sm", val, val, val, val), ""
	case typ == "time.Duration":
		return fmt.Sprintf("%q is not a duration (such as 100ms, 5s or 1h30m)", val), ""
	case typ == "bool":
		return fmt.Sprintf("%q is not true or false", val), ""
	case strings.HasPrefix(typ, "uint"):
		return fmt.Sprintf("%q is not a non-negative integer", val), ""
	case strings.HasPrefix(typ, "int"):
		return fmt.Sprintf("%q is not an integer", val), ""
	case strings.HasPrefix(typ, "float"):
		return fmt.Sprintf("%q is not a number", val), ""
	case strings.HasPrefix(typ, "[]"):
		return fmt.Sprintf("want a list, got %q", val), ""
	case typ == "string":
		return fmt.Sprintf("want a string, got %q", val), ""
	}
	return fmt.Sprintf("want a mapping of fields, got %q", val), ""
}

func yamlErrLine(msg string) int {
	m := lineRe.FindStringSubmatch(msg)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func stripLine(msg string) string {
	return strings.TrimPrefix(lineRe.ReplaceAllString(msg, ""), "yaml: ")
}

// lineIndex maps YAML paths (storage.sync, listeners[1].addr) to lines.
type lineIndex []indexEntry

type indexEntry struct {
	path string
	key  string
	line int
}

func indexNode(root *yaml.Node) lineIndex {
	var idx lineIndex
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				idx = append(idx, indexEntry{path: p, key: k.Value, line: k.Line})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				idx = append(idx, indexEntry{path: p, line: c.Line})
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return idx
}

func (idx lineIndex) line(path string) int {
	for _, e := range idx {
		if e.path == path {
			return e.line
		}
	}
	return 0
}

// origin says where the value at path came from: the variable or flag
// that set it (src), or else its line in the file. A value neither set (a
// required field left out, a default found wrong) is blamed on the nearest
// enclosing one that was: cluster.nats.embedded.cluster_addr missing, on the
// embedded: line; cluster.nats.embedded.routes[1], on
// FERRY_CLUSTER_NATS_EMBEDDED_ROUTES if that set the list. Both are empty
// when nothing around path was set.
func (idx lineIndex) origin(path string, from origins) (src string, line int) {
	for path != "" {
		if src, ok := from[path]; ok {
			return src, 0
		}
		if line := idx.line(path); line > 0 {
			return "", line
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return "", 0
}

// typeError turns one of yaml.v3's "line N: ..." messages into a FieldError
// that names the field's full path.
func (idx lineIndex) typeError(file, msg string) *FieldError {
	line := yamlErrLine(msg)
	text, want := explainYAML(stripLine(msg))
	// Several fields may share the line (a flow mapping): a value of the
	// wrong type is the innermost key's; a scalar that got a mapping, and
	// a section refused as a whole (a route's "to"), the outermost's.
	outer := !unmarshalRe.MatchString(stripLine(msg)) && !strings.HasPrefix(text, "cannot")
	path := ""
	for _, e := range idx {
		if e.line != line || (want != "" && e.key != want) || (outer && e.key == "") {
			continue
		}
		if path == "" || (outer && len(e.path) < len(path)) || (!outer && len(e.path) > len(path)) {
			path = e.path
		}
	}
	return &FieldError{File: file, Line: line, Path: path, Err: errors.New(text)}
}

// annotate says where each FieldError in err came from: the variable or
// flag that set the value, or else the file and line.
func (idx lineIndex) annotate(file string, err error, from origins) error {
	errs := flatten(err)
	for _, e := range errs {
		var fe *FieldError
		if !errors.As(e, &fe) || fe.Line != 0 {
			continue
		}
		if fe.relLine > 0 || fe.key != "" {
			line := 0
			fe.Path, line = idx.inSection(fe.Path, fe.relLine, fe.key)
			if line > 0 && file != "" {
				fe.File, fe.Line = file, line
			}
			continue
		}
		src, line := idx.origin(fe.Path, from)
		if src != "" {
			fe.Source = src
		} else if line > 0 && file != "" {
			fe.File, fe.Line = file, line
		}
	}
	return errors.Join(errs...)
}

// inSection places a problem yaml.v3 found in the section at base (a
// connector's, decoded on its own): rel is its line within the section,
// key the unknown field's name if that is the problem. It returns the
// field's path and line in the file.
func (idx lineIndex) inSection(base string, rel int, key string) (string, int) {
	first := 0
	for _, e := range idx {
		if strings.HasPrefix(e.path, base+".") && (first == 0 || e.line < first) {
			first = e.line
		}
	}
	if first == 0 {
		return base, idx.line(base)
	}
	approx := first + rel - 1
	best, bestLine, bestDist := base, 0, -1
	for _, e := range idx {
		if !strings.HasPrefix(e.path, base+".") && !strings.HasPrefix(e.path, base+"[") {
			continue
		}
		if key != "" && e.key != key {
			continue
		}
		d := e.line - approx
		if d < 0 {
			d = -d
		}
		if bestDist < 0 || d < bestDist || (d == bestDist && len(e.path) > len(best)) {
			best, bestLine, bestDist = e.path, e.line, d
		}
	}
	if bestDist < 0 {
		return base, approx
	}
	return best, bestLine
}

func (o Overrides) apply(c *Config, from origins, env bool) {
	src := func(flag, variable, v string) string {
		if env {
			return fmt.Sprintf("%s=%q", variable, v)
		}
		return fmt.Sprintf("--%s=%q", flag, v)
	}
	if o.MQTTAddr != nil {
		c.Listeners = setListenerAddr(c.Listeners, ListenerTCP, *o.MQTTAddr, src("mqtt-addr", "FERRY_MQTT_ADDR", *o.MQTTAddr))
	}
	if o.WSAddr != nil {
		c.Listeners = setListenerAddr(c.Listeners, ListenerWS, *o.WSAddr, src("ws-addr", "FERRY_WS_ADDR", *o.WSAddr))
	}
	if o.AdminAddr != nil {
		a := *o.AdminAddr
		c.Admin.Addr = &a
		from["admin.addr"] = src("admin-addr", "FERRY_ADMIN_ADDR", a)
	}
	if o.DataDir != nil {
		c.Storage.Dir = *o.DataDir
		from["storage.dir"] = src("data-dir", "FERRY_DATA_DIR", *o.DataDir)
	}
	if o.LogLevel != nil {
		c.Log.Level = *o.LogLevel
		from["log.level"] = src("log-level", "FERRY_LOG_LEVEL", *o.LogLevel)
	}
	if o.NodeID != nil {
		if c.Cluster == nil {
			c.Cluster = &cluster.Config{}
		}
		c.Cluster.NodeID = *o.NodeID
		from["cluster.node_id"] = src("node-id", "FERRY_CLUSTER_NODE_ID", *o.NodeID)
	}
}

// setListenerAddr points the first listener of type typ at addr, adds one if
// there is none, or removes it when addr is empty; from says who asked. A
// nil list stands for the defaults, which are materialised first so the
// other default survives.
func setListenerAddr(ls []Listener, typ, addr, from string) []Listener {
	if ls == nil {
		ls = Default().Listeners
		for i := range ls {
			ls[i].Name = ""
			ls[i].Path = ""
		}
	}
	for i := range ls {
		if ls[i].Type != typ {
			continue
		}
		if addr == "" {
			return append(append([]Listener{}, ls[:i]...), ls[i+1:]...)
		}
		ls[i].Addr, ls[i].from = addr, from
		return ls
	}
	if addr == "" {
		return ls
	}
	return append(ls, Listener{Type: typ, Addr: addr, from: from})
}
