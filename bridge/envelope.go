package bridge

import (
	"encoding/base64"
	"encoding/json"
	"time"
)

// envelope is the JSON form of a message (payload: envelope, webhooks).
type envelope struct {
	ID              string          `json:"id"`
	Route           string          `json:"route"`
	Topic           string          `json:"topic"`
	ClientID        string          `json:"client_id,omitempty"`
	Username        string          `json:"username,omitempty"`
	QoS             byte            `json:"qos"`
	Retain          bool            `json:"retain,omitempty"`
	Timestamp       string          `json:"timestamp"`
	UserProperties  []jsonProperty  `json:"user_properties,omitempty"`
	PayloadEncoding string          `json:"payload_encoding"`
	Payload         json.RawMessage `json:"payload"`
}

type jsonProperty struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Envelope returns m as a JSON object:
//
//	{"id":"telemetry-42","route":"telemetry","topic":"devices/d1/telemetry",
//	 "client_id":"d1","qos":1,"timestamp":"2026-01-02T03:04:05.123Z",
//	 "user_properties":[{"key":"k","value":"v"}],
//	 "payload_encoding":"json","payload":{"t":21.5}}
//
// The payload is embedded as JSON when it is valid JSON
// (payload_encoding "json"), else as a base64 string ("base64").
func Envelope(m *Message) ([]byte, error) {
	e := envelope{
		ID: m.ID, Route: m.Route, Topic: m.Topic, ClientID: m.ClientID, Username: m.Username,
		QoS: m.QoS, Retain: m.Retain, Timestamp: m.Created.UTC().Format(time.RFC3339Nano),
	}
	for _, p := range m.UserProperties {
		e.UserProperties = append(e.UserProperties, jsonProperty(p))
	}
	if len(m.Payload) > 0 && json.Valid(m.Payload) {
		e.PayloadEncoding, e.Payload = "json", m.Payload
	} else {
		b, _ := json.Marshal(base64.StdEncoding.EncodeToString(m.Payload))
		e.PayloadEncoding, e.Payload = "base64", b
	}
	return json.Marshal(e)
}
