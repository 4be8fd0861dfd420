package bridge

import (
	"strconv"
	"time"
)

// Property is one MQTT 5 user property or backend header.
type Property struct {
	Key   string
	Value string
}

// Message is one message crossing the bridge, in either direction.
//
// Egress (MQTT → backend): the broker fills Topic, Payload, QoS, Retain,
// ClientID, Username and UserProperties; the bridge sets Route, Seq, ID and
// Created. Ingress (backend → MQTT): the connector fills Subject, Headers
// and Payload (and ID when the backend has one); the bridge renders Topic,
// QoS and Retain and hands the message to the Publisher.
type Message struct {
	// Route is the name of the route that carries the message.
	Route string
	// Seq is the message's position in its route's outbox (egress).
	Seq uint64
	// ID is stable across retries and restarts ("<route>-<seq>" for egress)
	// so a backend can de-duplicate redeliveries.
	ID string

	Topic          string
	Payload        []byte
	QoS            byte
	Retain         bool
	ClientID       string
	Username       string
	UserProperties []Property
	// Created is when the bridge accepted the message.
	Created time.Time

	// Subject is the backend's subject, key or path (ingress).
	Subject string
	// Headers are the backend's headers (ingress).
	Headers map[string][]string
}

// MessageID is the stable id of message seq on route.
func MessageID(route string, seq uint64) string {
	return route + "-" + strconv.FormatUint(seq, 10)
}

// Size is the number of bytes the message's variable fields take; it is
// what the at-most-once queue and the batch byte limit count.
func (m *Message) Size() int {
	n := len(m.Topic) + len(m.Payload) + len(m.ClientID) + len(m.Username) + len(m.ID)
	for _, p := range m.UserProperties {
		n += len(p.Key) + len(p.Value)
	}
	return n
}

// clone returns a copy of m that shares no slices or maps with it.
func (m Message) clone() Message {
	m.Payload = append([]byte(nil), m.Payload...)
	if m.UserProperties != nil {
		m.UserProperties = append([]Property(nil), m.UserProperties...)
	}
	if m.Headers != nil {
		h := make(map[string][]string, len(m.Headers))
		for k, v := range m.Headers {
			h[k] = append([]string(nil), v...)
		}
		m.Headers = h
	}
	return m
}

// DeadLetter is a message a route gave up on, with the reason.
type DeadLetter struct {
	Message
	// Reason is the last delivery error's text.
	Reason string
	// Attempts is how many deliveries were tried in the process that gave up.
	Attempts int
	// Failed is when the message was dead-lettered.
	Failed time.Time
}
