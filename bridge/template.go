package bridge

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/template"
)

// Template is a name template over a Message: a Go text/template whose dot
// has these methods:
//
//	.Topic .ClientID .Username .QoS .Retain .ID .Route .Subject
//	.Segment i    MQTT topic level i (0-based): "a/b/c" → .Segment 1 = "b"
//	.Token i      backend subject token i (0-based, split on '.', else '/')
//	.Property k   first MQTT user property named k ("" if none)
//	.Header k     first backend header named k ("" if none)
//
// A template without actions is a constant and costs nothing to execute.
type Template struct {
	text string
	t    *template.Template // nil when text is constant
}

// errOutOfRange is returned when a template asks for a level or token the
// message does not have; at load time it is not an error.
var errOutOfRange = errors.New("out of range")

// ParseTemplate parses text and checks it against a sample message, so an
// unknown method or a wrong argument type is reported at load time.
func ParseTemplate(text string) (*Template, error) {
	if !strings.Contains(text, "{{") {
		return &Template{text: text}, nil
	}
	t, err := template.New("name").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	tp := &Template{text: text, t: t}
	sample := &Message{Topic: "a/b/c/d/e/f/g/h", Subject: "a.b.c.d.e.f.g.h", ClientID: "c", Username: "u", Route: "r", ID: "r-1"}
	if _, err := tp.Execute(sample); err != nil && !errors.Is(err, errOutOfRange) {
		return nil, err
	}
	return tp, nil
}

// String returns the template's text.
func (t *Template) String() string { return t.text }

// Constant reports whether the template has no actions.
func (t *Template) Constant() bool { return t.t == nil }

// Execute renders the template over m.
func (t *Template) Execute(m *Message) (string, error) {
	if t.t == nil {
		return t.text, nil
	}
	var b strings.Builder
	if err := t.t.Execute(&b, view{m}); err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	return b.String(), nil
}

// view is the template's dot; its methods are the template language.
type view struct{ m *Message }

func (v view) Topic() string    { return v.m.Topic }
func (v view) ClientID() string { return v.m.ClientID }
func (v view) Username() string { return v.m.Username }
func (v view) QoS() int         { return int(v.m.QoS) }
func (v view) Retain() bool     { return v.m.Retain }
func (v view) ID() string       { return v.m.ID }
func (v view) Route() string    { return v.m.Route }
func (v view) Subject() string  { return v.m.Subject }

func (v view) Segment(i int) (string, error) {
	return nth(v.m.Topic, '/', i)
}

func (v view) Token(i int) (string, error) {
	sep := byte('.')
	if !strings.Contains(v.m.Subject, ".") && strings.Contains(v.m.Subject, "/") {
		sep = '/'
	}
	return nth(v.m.Subject, sep, i)
}

func (v view) Property(k string) string {
	for _, p := range v.m.UserProperties {
		if p.Key == k {
			return p.Value
		}
	}
	return ""
}

func (v view) Header(k string) string {
	if vs := v.m.Headers[k]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// nth returns the i-th sep-separated part of s.
func nth(s string, sep byte, i int) (string, error) {
	if i < 0 {
		return "", fmt.Errorf("index %d: %w", i, errOutOfRange)
	}
	for n := 0; ; n++ {
		j := strings.IndexByte(s, sep)
		if n == i {
			if j < 0 {
				return s, nil
			}
			return s[:j], nil
		}
		if j < 0 {
			return "", fmt.Errorf("index %s of %q: %w", strconv.Itoa(i), s, errOutOfRange)
		}
		s = s[j+1:]
	}
}
