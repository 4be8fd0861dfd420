package broker

import (
	"cmp"
	"net/http"
	"slices"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainedPreview is how much of a payload a list of retained messages
// carries: lists stay small whatever the payloads; GET
// /api/v1/retained/message has the whole of one.
const retainedPreview = 1 << 10

type retainedJSON struct {
	Topic       string  `json:"topic"`
	QoS         byte    `json:"qos"`
	Size        int     `json:"size"`
	Created     *string `json:"created"`
	ContentType string  `json:"content_type"`
	// PayloadBase64 is the payload, PayloadText the same if it is valid
	// UTF-8 (else omitted); in a list both hold the first KiB only, and
	// Truncated says they were cut.
	PayloadBase64 []byte  `json:"payload_base64"`
	PayloadText   *string `json:"payload_text,omitempty"`
	Truncated     bool    `json:"truncated"`
}

func retainedOf(pk packets.Packet, limit int) retainedJSON {
	out := retainedJSON{Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Size: len(pk.Payload),
		ContentType: pk.Properties.ContentType, PayloadBase64: pk.Payload}
	if pk.Created > 0 {
		out.Created = rfc3339(time.Unix(pk.Created, 0))
	}
	if limit > 0 && len(pk.Payload) > limit {
		cut := limit
		// Cut on a rune boundary so a long text stays text.
		for cut > limit-utf8.UTFMax && !utf8.RuneStart(pk.Payload[cut]) {
			cut--
		}
		out.PayloadBase64, out.Truncated = pk.Payload[:cut], true
	}
	if utf8.Valid(out.PayloadBase64) {
		s := string(out.PayloadBase64)
		out.PayloadText = &s
	}
	return out
}

// apiRetainedList lists the retained messages whose topic matches filter
// (default #, which per MQTT leaves out $ topics).
func (b *Broker) apiRetainedList(w http.ResponseWriter, r *http.Request) error {
	p, err := pageOf(r, "retained")
	if err != nil {
		return err
	}
	filter := "#"
	if f, ok := r.URL.Query()["filter"]; ok {
		filter = f[0]
	}
	if !validFilter(filter) {
		return badParam("filter", "%q is not a valid topic filter", filter)
	}
	pks := b.mochi.Topics.Messages(filter)
	slices.SortFunc(pks, func(a, c packets.Packet) int { return cmp.Compare(a.TopicName, c.TopicName) })
	pg := paginate(pks, func(pk packets.Packet) string { return pk.TopicName }, p)
	out := list[retainedJSON]{Items: make([]retainedJSON, 0, len(pg.Items)), NextCursor: pg.NextCursor}
	for _, pk := range pg.Items {
		out.Items = append(out.Items, retainedOf(pk, retainedPreview))
	}
	return writeJSON(w, http.StatusOK, out)
}

// retainedTopic reads and checks the topic query parameter.
func retainedTopic(r *http.Request) (string, error) {
	topic := r.URL.Query().Get("topic")
	if topic == "" || !mqtt.IsValidFilter(topic, true) {
		return "", badParam("topic", "%q is not a topic name (required; no wildcards)", topic)
	}
	return topic, nil
}

func (b *Broker) apiRetainedGet(w http.ResponseWriter, r *http.Request) error {
	topic, err := retainedTopic(r)
	if err != nil {
		return err
	}
	pk, ok := b.mochi.Topics.Retained.Get(topic)
	if !ok {
		return notFound("topic", "no retained message on %q", topic)
	}
	return writeJSON(w, http.StatusOK, retainedOf(pk, 0))
}

// apiRetainedDelete deletes a retained message, in memory and in storage,
// as an empty retained publish would, but without delivering that empty
// message to the topic's subscribers.
func (b *Broker) apiRetainedDelete(w http.ResponseWriter, r *http.Request) error {
	topic, err := retainedTopic(r)
	if err != nil {
		return err
	}
	if _, ok := b.mochi.Topics.Retained.Get(topic); !ok {
		return notFound("topic", "no retained message on %q", topic)
	}
	if b.cluster != nil {
		// The cluster's bucket is the retained messages' store: every
		// node clears it from there.
		if err := b.cluster.DeleteRetained(r.Context(), topic); err != nil {
			return err
		}
		atomic.StoreInt64(&b.mochi.Info.Retained, int64(b.mochi.Topics.Retained.Len()))
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	n := b.mochi.Topics.RetainMessage(pk)
	if b.storage != nil {
		b.storage.OnRetainMessage(nil, pk, n)
	}
	atomic.StoreInt64(&b.mochi.Info.Retained, int64(b.mochi.Topics.Retained.Len()))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
