package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

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
// and validates. The error, if any, joins one *FieldError per problem.
func Load(src Source) (Config, error) {
	var cfg Config
	var idx lineIndex
	if src.Path != "" {
		data, err := os.ReadFile(src.Path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		cfg, idx, err = parse(src.Path, data)
		if err != nil {
			return Config{}, err
		}
	}
	if err := applyEnv(&cfg, src.Env); err != nil {
		return Config{}, err
	}
	src.Flags.apply(&cfg)
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, idx.annotate(src.Path, err)
	}
	return cfg, nil
}

// Parse decodes one YAML document strictly: unknown keys and wrong types are
// errors naming the field and line. Defaults are not applied.
func Parse(name string, data []byte) (Config, error) {
	cfg, _, err := parse(name, data)
	return cfg, err
}

func parse(name string, data []byte) (Config, lineIndex, error) {
	var cfg Config
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return cfg, nil, &FieldError{File: name, Line: yamlErrLine(err.Error()), Err: errors.New(stripLine(err.Error()))}
	}
	idx := indexNode(&root)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return cfg, idx, &FieldError{File: name, Line: yamlErrLine(err.Error()), Err: errors.New(stripLine(err.Error()))}
		}
		errs := make([]error, 0, len(te.Errors))
		for _, msg := range te.Errors {
			errs = append(errs, idx.typeError(name, msg))
		}
		return cfg, idx, errors.Join(errs...)
	}
	return cfg, idx, nil
}

var (
	lineRe     = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)
	notFoundRe = regexp.MustCompile(`field (\S+) not found in type`)
)

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

// typeError turns one of yaml.v3's "line N: ..." messages into a FieldError
// that names the field's full path.
func (idx lineIndex) typeError(file, msg string) *FieldError {
	line := yamlErrLine(msg)
	text := stripLine(msg)
	want := ""
	if m := notFoundRe.FindStringSubmatch(text); m != nil {
		want = m[1]
		text = "unknown field"
	}
	path := ""
	for _, e := range idx {
		if e.line != line {
			continue
		}
		if want != "" && e.key != want {
			continue
		}
		if len(e.path) > len(path) {
			path = e.path
		}
	}
	return &FieldError{File: file, Line: line, Path: path, Err: errors.New(text)}
}

// annotate adds file and line to every FieldError in err that it can place.
func (idx lineIndex) annotate(file string, err error) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var fe *FieldError
		if errors.As(e, &fe) && fe.Line == 0 && file != "" {
			if l := idx.line(fe.Path); l > 0 {
				fe.File, fe.Line = file, l
			}
		}
	}
	return errors.Join(errs...)
}

func (o Overrides) apply(c *Config) {
	if o.MQTTAddr != nil {
		c.Listeners = setListenerAddr(c.Listeners, ListenerTCP, *o.MQTTAddr)
	}
	if o.WSAddr != nil {
		c.Listeners = setListenerAddr(c.Listeners, ListenerWS, *o.WSAddr)
	}
	if o.AdminAddr != nil {
		a := *o.AdminAddr
		c.Admin.Addr = &a
	}
	if o.DataDir != nil {
		c.Storage.Dir = *o.DataDir
	}
	if o.LogLevel != nil {
		c.Log.Level = *o.LogLevel
	}
}

// setListenerAddr points the first listener of type typ at addr, adds one if
// there is none, or removes it when addr is empty. A nil list stands for the
// defaults, which are materialised first so the other default survives.
func setListenerAddr(ls []Listener, typ, addr string) []Listener {
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
		ls[i].Addr = addr
		return ls
	}
	if addr == "" {
		return ls
	}
	return append(ls, Listener{Type: typ, Addr: addr})
}

// envAliases are the variables named after flags rather than YAML paths.
var envAliases = map[string]func(*Overrides, string){
	"FERRY_MQTT_ADDR":  func(o *Overrides, v string) { o.MQTTAddr = &v },
	"FERRY_WS_ADDR":    func(o *Overrides, v string) { o.WSAddr = &v },
	"FERRY_ADMIN_ADDR": func(o *Overrides, v string) { o.AdminAddr = &v },
	"FERRY_DATA_DIR":   func(o *Overrides, v string) { o.DataDir = &v },
}

// applyEnv sets every scalar field named by a FERRY_ variable. Lists
// (listeners) are set in the file only.
func applyEnv(c *Config, env []string) error {
	vals := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			vals[k] = v
		}
	}
	if len(vals) == 0 {
		return nil
	}
	var errs []error
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if opts == "inline" && f.Type.Kind() == reflect.Struct {
				walk(v.Field(i), path)
				continue
			}
			if tag == "" || tag == "-" {
				continue
			}
			p := tag
			if path != "" {
				p = path + "." + tag
			}
			fv := v.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(fv, p)
				continue
			}
			name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(p, ".", "_"))
			raw, ok := vals[name]
			if !ok {
				continue
			}
			if err := setScalar(fv, raw); err != nil {
				errs = append(errs, &FieldError{Path: p, Err: fmt.Errorf("environment %s=%q: %w", name, raw, err)})
			}
		}
	}
	walk(reflect.ValueOf(c).Elem(), "")
	var o Overrides
	for name, set := range envAliases {
		if v, ok := vals[name]; ok {
			set(&o, v)
		}
	}
	o.apply(c)
	return errors.Join(errs...)
}

var durationType = reflect.TypeOf(time.Duration(0))

func setScalar(v reflect.Value, raw string) error {
	if v.Kind() == reflect.Pointer {
		nv := reflect.New(v.Type().Elem())
		if err := setScalar(nv.Elem(), raw); err != nil {
			return err
		}
		v.Set(nv)
		return nil
	}
	if v.Type() == durationType {
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("not a duration (like 100ms or 5s)")
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("not a boolean (true or false)")
		}
		v.SetBool(b)
	case reflect.Float64, reflect.Float32:
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return fmt.Errorf("not a number")
		}
		v.SetFloat(f)
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		n, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			return fmt.Errorf("not a non-negative integer")
		}
		v.SetUint(n)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return fmt.Errorf("not an integer")
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}
