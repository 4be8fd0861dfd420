package config

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// envAliases are the variables named after flags rather than YAML paths.
var envAliases = map[string]func(*Overrides, string){
	"FERRY_MQTT_ADDR":  func(o *Overrides, v string) { o.MQTTAddr = &v },
	"FERRY_WS_ADDR":    func(o *Overrides, v string) { o.WSAddr = &v },
	"FERRY_ADMIN_ADDR": func(o *Overrides, v string) { o.AdminAddr = &v },
	"FERRY_DATA_DIR":   func(o *Overrides, v string) { o.DataDir = &v },
}

// applyEnv sets every scalar field named by a FERRY_ variable and records
// it in from. A list of strings is comma separated
// (FERRY_CLUSTER_NATS_EMBEDDED_ROUTES=nats://a:6222,nats://b:6222); lists
// of sections (listeners, bridges, acl) are set in the file only. A
// variable under an optional section the file left out (FERRY_CLUSTER_*)
// creates the section. It returns a warning for each FERRY_ variable that
// names no setting; FERRY_TEST_ variables are the test suite's.
func applyEnv(c *Config, env []string, from origins) ([]string, error) {
	vals := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			vals[k] = v
		}
	}
	if len(vals) == 0 {
		return nil, nil
	}
	known := map[string]bool{}
	var errs []error
	// walk sets the fields of struct v at path and says whether a
	// variable named one of them.
	var walk func(v reflect.Value, path string) bool
	walk = func(v reflect.Value, path string) bool {
		set := false
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if opts == "inline" && f.Type.Kind() == reflect.Struct {
				set = walk(v.Field(i), path) || set
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
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				set = walk(fv, p) || set
				continue
			}
			if f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct {
				// An optional section: nil until the file or a variable
				// sets one of its fields.
				sec := fv
				if fv.IsNil() {
					sec = reflect.New(f.Type.Elem())
				}
				if walk(sec.Elem(), p) {
					fv.Set(sec)
					set = true
				}
				continue
			}
			name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(p, ".", "_"))
			known[name] = true
			raw, ok := vals[name]
			if !ok {
				continue
			}
			set = true
			src := fmt.Sprintf("%s=%q", name, raw)
			from[p] = src
			if err := setScalar(fv, raw); err != nil {
				errs = append(errs, &FieldError{Source: src, Path: p, Err: err})
			}
		}
		return set
	}
	walk(reflect.ValueOf(c).Elem(), "")
	var o Overrides
	for name, set := range envAliases {
		known[name] = true
		if v, ok := vals[name]; ok {
			set(&o, v)
		}
	}
	o.apply(c, from, true)
	var warnings []string
	for name := range vals {
		if known[name] || strings.HasPrefix(name, EnvPrefix+"TEST_") {
			continue
		}
		w := fmt.Sprintf("environment variable %s is not a Ferry setting and is ignored", name)
		if near := nearest(name, known); near != "" {
			w += fmt.Sprintf(" (did you mean %s?)", near)
		}
		warnings = append(warnings, w)
	}
	sort.Strings(warnings)
	return warnings, errors.Join(errs...)
}

// nearest returns the name in names closest to s by edit distance, if it
// is close enough to be a typo.
func nearest(s string, names map[string]bool) string {
	best, bestD := "", 3
	for n := range names {
		if d := editDistance(s, n); d < bestD || (d == bestD && best != "" && n < best) {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
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
			if _, nerr := strconv.ParseFloat(raw, 64); nerr == nil {
				return fmt.Errorf("not a duration: %s has no unit: write %sms, %ss or %sm", raw, raw, raw, raw)
			}
			return fmt.Errorf("not a duration (like 100ms or 5s)")
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot be set from the environment: a list of sections is set in the file")
		}
		list := reflect.MakeSlice(v.Type(), 0, strings.Count(raw, ",")+1)
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				list = reflect.Append(list, reflect.ValueOf(s).Convert(v.Type().Elem()))
			}
		}
		v.Set(list)
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
