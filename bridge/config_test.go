package bridge_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/bridge"
)

func TestRoutesFromYAML(t *testing.T) {
	rs := routes(t, `
- name: telemetry
  from: "devices/+/telemetry"
  to:
    nats: {url: "nats://127.0.0.1:4222", subject: "telemetry.{{.Segment 1}}", jetstream: true}
  delivery: at-least-once
- name: many
  from: ["a/#", "b/+"]
  to: {webhook: {url: "http://x"}}
  max_age: 90s
- name: commands
  direction: in
  from: {nats: {url: "nats://127.0.0.1:4222", subject: "commands.>"}}
  to: {topic: "devices/{{.Token 1}}/commands", qos: 1}
`)
	if len(rs) != 3 {
		t.Fatalf("%d routes", len(rs))
	}
	if rs[0].From.Filters[0] != "devices/+/telemetry" || rs[0].To.Connector != "nats" || rs[0].Delivery != bridge.AtLeastOnce {
		t.Fatalf("route 0 = %+v", rs[0])
	}
	if len(rs[1].From.Filters) != 2 || rs[1].MaxAge.Seconds() != 90 {
		t.Fatalf("route 1 = %+v", rs[1])
	}
	if rs[2].Direction != bridge.In || rs[2].From.Connector != "nats" || rs[2].To.Topic != "devices/{{.Token 1}}/commands" || rs[2].To.QoS != 1 {
		t.Fatalf("route 2 = %+v", rs[2])
	}
	if err := bridge.Routes(rs).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestRoutesValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each must start one line of the error
	}{
		{"bad name", `[{name: "Bad Name", from: "a", to: {fake: {}}}]`, []string{`[0].name: route "Bad Name": "Bad Name" must match`}},
		{"duplicate name", `[{name: a, from: "a", to: {fake: {}}}, {name: a, from: "b", to: {fake: {}}}]`, []string{`[1].name: duplicate route name "a"`}},
		{"bad filter", `[{name: a, from: ["ok/+", "a/#/b"], to: {fake: {}}}]`, []string{`[0].from[1]: route "a": invalid MQTT topic filter "a/#/b"`}},
		{"no target", `[{name: a, from: "a"}]`, []string{"[0].to: route \"a\": egress route needs a connector"}},
		{"per-key without key", `[{name: a, from: "a", to: {fake: {}}, ordering: per-key}]`, []string{"[0].key: route \"a\": ordering per-key needs a key template"}},
		{"bad key template", `[{name: a, from: "a", to: {fake: {}}, key: "{{.Nope}}"}]`, []string{"[0].key: route \"a\": template:"}},
		{"unclosed template", `[{name: a, direction: in, from: {fake: {}}, to: {topic: "x/{{.Token 1"}}]`, []string{"[0].to.topic: route \"a\": template:"}},
		{"ingress no topic", `[{name: a, direction: in, from: {fake: {}}, to: {topic: ""}}]`, []string{"[0].to.topic: route \"a\": ingress route needs"}},
		{"bounds", `[{name: a, from: "a", to: {fake: {}}, batch_size: 100000, max_attempts: -1, delivery: maybe}]`,
			[]string{"[0].batch_size: route \"a\": 100000 is more than allowed", "[0].max_attempts: route \"a\": -1 is less than allowed 1", `[0].delivery: route "a": "maybe"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := bridge.Routes(routes(t, tc.yaml)).Validate()
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tc.want {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(l, w)
				}
				if !found {
					t.Errorf("no line starts with %q in:\n%v", w, err)
				}
			}
			var fe *bridge.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("not a *FieldError: %T", err)
			}
		})
	}
}

func TestNewConnectorErrors(t *testing.T) {
	subjectErr := func(bridge.Spec, bridge.Deps) (bridge.Connector, error) {
		return nil, errors.Join(&bridge.FieldError{Path: "subject", Err: errors.New("template: bad")}, errors.New("url: required"))
	}
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown connector", `[{name: a, from: "a", to: {kafka: {}}}]`, []string{`[0].to.kafka: unknown connector "kafka"`}},
		{"factory errors get the route's path", `[{name: a, from: "a", to: {bad: {}}}]`, []string{"[0].to.bad.subject: route \"a\": template: bad", "[0].to.bad: route \"a\": url: required"}},
		{"ingress factory path", `[{name: a, direction: in, from: {bad: {}}, to: {topic: t}}]`, []string{"[0].from.bad.subject: route \"a\": template: bad"}},
		{"at-least-once needs outbox", `[{name: a, from: "a", to: {fake: {}}}]`, []string{"[0].delivery: route \"a\": at-least-once needs an outbox"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fake{}
			_, err := bridge.New(routes(t, tc.yaml), bridge.Deps{Publisher: &nopPublisher{},
				Factories: map[string]bridge.Factory{"fake": f.factory(), "bad": subjectErr}})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains("\n"+err.Error(), "\n"+w) {
					t.Errorf("no line starts with %q in:\n%v", w, err)
				}
			}
		})
	}
}

func TestValidateWith(t *testing.T) {
	rs := routes(t, `
- {name: ok, from: "a", to: {fake: {}}}
- {name: bad, from: "b", to: {bad: {}}}
`)
	bad := func(bridge.Spec, bridge.Deps) (bridge.Connector, error) {
		return nil, &bridge.FieldError{Path: "subject", Err: errors.New("template: boom")}
	}
	f := &fake{}
	err := bridge.Routes(rs).ValidateWith(map[string]bridge.Factory{"fake": f.factory(), "bad": bad})
	if err == nil || err.Error() != `[1].to.bad.subject: route "bad": template: boom` {
		t.Fatalf("err = %v", err)
	}
	if err := bridge.Routes(rs[:1]).ValidateWith(map[string]bridge.Factory{"fake": f.factory()}); err != nil {
		t.Fatal(err)
	}
}

type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, bridge.Message) error { return nil }

func TestTemplate(t *testing.T) {
	m := &bridge.Message{Topic: "devices/d1/telemetry", ClientID: "c1", Username: "u", QoS: 1, Route: "r", ID: "r-9",
		Subject: "commands.d7.reboot", UserProperties: []bridge.Property{{Key: "site", Value: "s1"}},
		Headers: map[string][]string{"Tenant": {"t1"}}}
	for _, tc := range []struct {
		text, want, err string
	}{
		{"static.subject", "static.subject", ""},
		{"telemetry.{{.Segment 1}}", "telemetry.d1", ""},
		{"{{.ClientID}}/{{.Username}}/{{.QoS}}/{{.ID}}", "c1/u/1/r-9", ""},
		{"{{.Property \"site\"}}-{{.Header \"Tenant\"}}", "s1-t1", ""},
		{"devices/{{.Token 1}}/{{.Token 2}}", "devices/d7/reboot", ""},
		{"{{.Segment 7}}", "", "out of range"},
	} {
		t.Run(tc.text, func(t *testing.T) {
			tp, err := bridge.ParseTemplate(tc.text)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tp.Execute(m)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"{{.Nope}}", "{{.Segment \"x\"}}", "{{"} {
		if _, err := bridge.ParseTemplate(bad); err == nil {
			t.Errorf("ParseTemplate(%q): no error", bad)
		}
	}
}

func TestEnvelope(t *testing.T) {
	for _, tc := range []struct {
		payload string
		want    string
	}{
		{`{"t":21.5}`, `"payload_encoding":"json","payload":{"t":21.5}`},
		{"\x00\x01", `"payload_encoding":"base64","payload":"AAE="`},
	} {
		b, err := bridge.Envelope(&bridge.Message{ID: "r-1", Topic: "a/b", Payload: []byte(tc.payload)})
		if err != nil || !strings.Contains(string(b), tc.want) || !strings.Contains(string(b), `"id":"r-1"`) {
			t.Errorf("envelope = %s, %v; want %s", b, err, tc.want)
		}
	}
}
