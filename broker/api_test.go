package broker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/ferrymq/ferry/broker/config"
	"github.com/ferrymq/ferry/internal/testutil"
)

// api calls the admin API and returns the status and body; token "" sends
// no Authorization header.
func api(t testing.TB, b *testutil.Broker, token, method, path, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.AdminURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// apiJSON calls the API, checks the status and decodes the answer into v
// (when not nil).
func apiJSON(t testing.TB, b *testutil.Broker, method, path, body string, want int, v any) {
	t.Helper()
	code, out := api(t, b, "", method, path, body)
	if code != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, out)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, out)
		}
	}
}

type apiClientItem struct {
	ClientID        string  `json:"client_id"`
	Username        string  `json:"username"`
	Address         string  `json:"address"`
	Listener        string  `json:"listener"`
	ProtocolVersion int     `json:"protocol_version"`
	Connected       bool    `json:"connected"`
	ConnectedSince  *string `json:"connected_since"`
	Keepalive       int     `json:"keepalive"`
	SessionExpiry   *int    `json:"session_expiry"`
	Queued          int     `json:"queued"`
	BytesIn         int     `json:"bytes_in"`
	BytesOut        int     `json:"bytes_out"`
	Subscriptions   []struct {
		Filter string `json:"filter"`
		QoS    int    `json:"qos"`
	} `json:"subscriptions"`
}

type apiSessionItem struct {
	ClientID      string  `json:"client_id"`
	Connected     bool    `json:"connected"`
	Subscriptions int     `json:"subscriptions"`
	Queued        int     `json:"queued"`
	QueuedBytes   int     `json:"queued_bytes"`
	ExpiresAt     *string `json:"expires_at"`
}

type apiPage[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}

// session returns the session of id from GET /api/v1/sessions, false if
// it is not listed.
func session(t testing.TB, b *testutil.Broker, id string) (apiSessionItem, bool) {
	t.Helper()
	var p apiPage[apiSessionItem]
	apiJSON(t, b, "GET", "/api/v1/sessions?limit=1000", "", 200, &p)
	for _, s := range p.Items {
		if s.ClientID == id {
			return s, true
		}
	}
	return apiSessionItem{}, false
}

// TestAPIClientsAndKick: clients are listed and filtered with what an
// operator needs; a kick really disconnects (MQTT 5: DISCONNECT 0x98) and
// keeps a persistent session, listed offline with its queue; a kick with
// discard_session deletes the session for good.
func TestAPIClientsAndKick(t *testing.T) {
	b := testutil.StartBroker(t)
	id := uniq(t, "dev")
	reasons := make(chan byte, 1)
	dev := connect5(t, b, id, &paho5.Connect{CleanStart: true, Username: "alice", UsernameFlag: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(600)}}, func(cc *paho5.ClientConfig) {
		cc.OnServerDisconnect = func(d *paho5.Disconnect) { reasons <- d.ReasonCode }
	})
	dev.sub(t, paho5.SubscribeOptions{Topic: "cmd/" + id, QoS: 1})
	other := connect3(t, b, 4, uniq(t, "other"))
	other.pub(t, "cmd/"+id, 1, false, "hello")
	dev.in.wait1(t, "cmd/"+id)

	for _, tc := range []struct {
		name, query string
		want        []string
	}{
		{"all", "", []string{id, other.clientID}},
		{"by id substring", "?q=" + id[len(id)-6:], []string{id}},
		{"by username, any case", "?q=ALIC", []string{id}},
		{"connected", "?connected=true", []string{id, other.clientID}},
		{"disconnected", "?connected=false", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p apiPage[apiClientItem]
			apiJSON(t, b, "GET", "/api/v1/clients"+tc.query, "", 200, &p)
			var got []string
			for _, c := range p.Items {
				got = append(got, c.ClientID)
			}
			if fmt.Sprint(got) != fmt.Sprint(sorted(tc.want)) {
				t.Fatalf("clients %v, want %v", got, sorted(tc.want))
			}
		})
	}

	var c apiClientItem
	apiJSON(t, b, "GET", "/api/v1/clients/"+id, "", 200, &c)
	if c.Username != "alice" || c.ProtocolVersion != 5 || !c.Connected || c.ConnectedSince == nil || c.Keepalive != 60 ||
		c.SessionExpiry == nil || *c.SessionExpiry != 600 || c.Listener != "tcp" || !strings.HasPrefix(c.Address, "127.0.0.1:") ||
		c.BytesIn == 0 || c.BytesOut == 0 {
		t.Errorf("client %+v", c)
	}
	if len(c.Subscriptions) != 2 || c.Subscriptions[0].Filter != "cmd/"+id || c.Subscriptions[0].QoS != 1 {
		t.Errorf("subscriptions %+v, want cmd/%s at QoS 1 and the flush topic", c.Subscriptions, id)
	}

	// Kick: the client is told why, and its session stays.
	apiJSON(t, b, "POST", "/api/v1/clients/"+id+"/disconnect", "", 204, nil)
	select {
	case rc := <-reasons:
		if rc != 0x98 {
			t.Errorf("DISCONNECT reason 0x%02x, want 0x98 (administrative action)", rc)
		}
	case <-time.After(waitFor):
		t.Fatal("the kicked client got no DISCONNECT")
	}
	select {
	case <-dev.Done():
	case <-time.After(waitFor):
		t.Fatal("the kicked client is still connected")
	}
	waitOffline(t, b, id)
	for i := range 3 {
		other.pub(t, "cmd/"+id, 1, false, fmt.Sprintf("queued %d", i))
	}
	testutil.Eventually(t, waitFor, "offline session listed with 3 queued", func() bool {
		s, ok := session(t, b, id)
		return ok && !s.Connected && s.Queued == 3 && s.QueuedBytes > 0 && s.Subscriptions == 2 && s.ExpiresAt != nil
	})
	apiJSON(t, b, "GET", "/api/v1/clients?connected=false", "", 200, new(apiPage[apiClientItem]))

	// Kick with discard_session: the session is gone, here and on reconnect.
	apiJSON(t, b, "POST", "/api/v1/clients/"+id+"/disconnect", `{"discard_session":true}`, 204, nil)
	waitGone(t, b, id)
	if _, ok := session(t, b, id); ok {
		t.Fatal("discarded session still listed")
	}
	again := connect5(t, b, id, &paho5.Connect{CleanStart: false,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(600)}}, nil)
	if again.ack.SessionPresent {
		t.Fatal("reconnect found the discarded session")
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestAPISubscribeUnsubscribe: a subscription added through the API makes
// publishes reach the client; removed, they no longer do.
func TestAPISubscribeUnsubscribe(t *testing.T) {
	b := testutil.StartBroker(t)
	dev := connect5(t, b, uniq(t, "dev"), nil, nil)
	pub := connect3(t, b, 4, uniq(t, "pub"))
	topic := "api/" + dev.clientID + "/x"

	var sub struct {
		ClientID string `json:"client_id"`
		Filter   string `json:"filter"`
		QoS      int    `json:"qos"`
	}
	apiJSON(t, b, "POST", "/api/v1/clients/"+dev.clientID+"/subscriptions", `{"filter":"api/+/x","qos":1}`, 201, &sub)
	if sub.ClientID != dev.clientID || sub.Filter != "api/+/x" || sub.QoS != 1 {
		t.Fatalf("created %+v", sub)
	}
	var subs apiPage[struct {
		ClientID string `json:"client_id"`
		Filter   string `json:"filter"`
	}]
	apiJSON(t, b, "GET", "/api/v1/subscriptions?filter=api/%2B/x", "", 200, &subs)
	if len(subs.Items) != 1 || subs.Items[0].ClientID != dev.clientID {
		t.Fatalf("subscriptions by filter: %+v", subs.Items)
	}
	pub.pub(t, topic, 1, false, "one")
	if m := dev.in.wait1(t, topic); m.Payload != "one" || m.QoS != 1 {
		t.Fatalf("got %+v", m)
	}

	apiJSON(t, b, "DELETE", "/api/v1/clients/"+dev.clientID+"/subscriptions?filter=api/%2B/x", "", 204, nil)
	pub.pub(t, topic, 1, false, "two")
	barrier(t, pub, dev)
	if got := dev.in.on(topic); len(got) != 1 {
		t.Fatalf("after unsubscribe the client got %+v", got)
	}
	apiJSON(t, b, "GET", "/api/v1/subscriptions?client_id="+dev.clientID, "", 200, &subs)
	if len(subs.Items) != 1 || subs.Items[0].Filter != flushPrefix+dev.clientID+"/#" {
		t.Fatalf("subscriptions of the client: %+v", subs.Items)
	}
}

// TestAPIRetained: retained messages are listed by filter, read whole, and
// deleted for good: a new subscriber does not get a deleted one.
func TestAPIRetained(t *testing.T) {
	b := testutil.StartBroker(t)
	pub := connect5(t, b, uniq(t, "pub"), nil, nil)
	pub.pub(t, &paho5.Publish{Topic: "ret/a", QoS: 1, Retain: true, Payload: []byte("text a"),
		Properties: &paho5.PublishProperties{ContentType: "text/plain"}})
	pub.pub(t, &paho5.Publish{Topic: "ret/b", QoS: 0, Retain: true, Payload: []byte{0xff, 0x00}})
	pub.pub(t, &paho5.Publish{Topic: "ret/big", QoS: 0, Retain: true, Payload: bytes.Repeat([]byte("é"), 1000)})
	pub.pub(t, &paho5.Publish{Topic: "other/c", QoS: 0, Retain: true, Payload: []byte("c")})

	type item struct {
		Topic         string  `json:"topic"`
		QoS           int     `json:"qos"`
		Size          int     `json:"size"`
		ContentType   string  `json:"content_type"`
		PayloadBase64 []byte  `json:"payload_base64"`
		PayloadText   *string `json:"payload_text"`
		Truncated     bool    `json:"truncated"`
	}
	var p apiPage[item]
	testutil.Eventually(t, waitFor, "3 retained messages under ret/#", func() bool {
		apiJSON(t, b, "GET", "/api/v1/retained?filter=ret/%23", "", 200, &p)
		return len(p.Items) == 3
	})
	a, bin, big := p.Items[0], p.Items[1], p.Items[2]
	if a.Topic != "ret/a" || a.QoS != 1 || a.ContentType != "text/plain" || a.PayloadText == nil || *a.PayloadText != "text a" {
		t.Errorf("ret/a: %+v", a)
	}
	if bin.Topic != "ret/b" || bin.PayloadText != nil || !bytes.Equal(bin.PayloadBase64, []byte{0xff, 0}) {
		t.Errorf("binary ret/b: %+v", bin)
	}
	if big.Size != 2000 || !big.Truncated || big.PayloadText == nil || len(*big.PayloadText) > 1024 || !strings.HasPrefix(*big.PayloadText, "éé") {
		t.Errorf("ret/big: size %d truncated %v text of %d bytes", big.Size, big.Truncated, len(big.PayloadBase64))
	}
	var whole item
	apiJSON(t, b, "GET", "/api/v1/retained/message?topic=ret/big", "", 200, &whole)
	if whole.Truncated || len(whole.PayloadBase64) != 2000 {
		t.Errorf("GET one: truncated %v, %d bytes", whole.Truncated, len(whole.PayloadBase64))
	}

	apiJSON(t, b, "DELETE", "/api/v1/retained?topic=ret/a", "", 204, nil)
	apiJSON(t, b, "GET", "/api/v1/retained/message?topic=ret/a", "", 404, nil)
	sub := connect5(t, b, uniq(t, "sub"), nil, nil)
	sub.sub(t, paho5.SubscribeOptions{Topic: "ret/#", QoS: 1})
	sub.in.waitN(t, "ret/big", 1)
	sub.in.waitN(t, "ret/b", 1)
	barrier(t, sub, sub)
	if got := sub.in.on("ret/a"); len(got) != 0 {
		t.Fatalf("a new subscriber got the deleted retained message: %+v", got)
	}
}

// TestAPIPaging: a list walked page by page with next_cursor returns every
// item once, in order.
func TestAPIPaging(t *testing.T) {
	b := testutil.StartBroker(t)
	var want []string
	for i := range 5 {
		c := connect3(t, b, 4, uniq(t, fmt.Sprintf("c%d", i)))
		want = append(want, c.clientID)
	}
	var got []string
	cursor, pages := "", 0
	for {
		var p apiPage[apiClientItem]
		apiJSON(t, b, "GET", "/api/v1/clients?limit=2&cursor="+cursor, "", 200, &p)
		pages++
		for _, c := range p.Items {
			got = append(got, c.ClientID)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(sorted(want)) {
		t.Fatalf("%d pages of %v, want 3 of %v", pages, got, sorted(want))
	}
}

// TestAPIBadInput: bad input is a 4xx problem object naming the parameter,
// never a 500.
func TestAPIBadInput(t *testing.T) {
	b := testutil.StartBroker(t)
	dev := connect3(t, b, 4, uniq(t, "dev"))
	clientPath := "/api/v1/clients/" + dev.clientID
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		param                    string
	}{
		{"unknown client", "GET", "/api/v1/clients/nobody", "", 404, "id"},
		{"kick unknown client", "POST", "/api/v1/clients/nobody/disconnect", "", 404, "id"},
		{"bad filter", "GET", "/api/v1/subscriptions?filter=a/%23/b", "", 400, "filter"},
		{"bad retained filter", "GET", "/api/v1/retained?filter=a%23", "", 400, "filter"},
		{"bad cursor", "GET", "/api/v1/clients?cursor=%21%21", "", 400, "cursor"},
		{"cursor of another list", "GET", "/api/v1/retained?cursor=Y2xpZW50czp4", "", 400, "cursor"},
		{"limit 0", "GET", "/api/v1/clients?limit=0", "", 400, "limit"},
		{"limit 5000", "GET", "/api/v1/sessions?limit=5000", "", 400, "limit"},
		{"limit not a number", "GET", "/api/v1/retained?limit=ten", "", 400, "limit"},
		{"connected not a bool", "GET", "/api/v1/clients?connected=maybe", "", 400, "connected"},
		{"subscribe bad filter", "POST", clientPath + "/subscriptions", `{"filter":"a/#/b","qos":1}`, 400, "filter"},
		{"subscribe qos 3", "POST", clientPath + "/subscriptions", `{"filter":"a","qos":3}`, 400, "qos"},
		{"subscribe without qos", "POST", clientPath + "/subscriptions", `{"filter":"a"}`, 400, "qos"},
		{"subscribe unknown field", "POST", clientPath + "/subscriptions", `{"filter":"a","qos":1,"x":1}`, 400, "body"},
		{"subscribe bad json", "POST", clientPath + "/subscriptions", `{`, 400, "body"},
		{"shared no_local", "POST", clientPath + "/subscriptions", `{"filter":"$share/g/a","qos":1,"no_local":true}`, 400, "no_local"},
		{"unsubscribe unknown filter", "DELETE", clientPath + "/subscriptions?filter=none", "", 404, "filter"},
		{"unsubscribe bad filter", "DELETE", clientPath + "/subscriptions?filter=", "", 400, "filter"},
		{"retained wildcard topic", "GET", "/api/v1/retained/message?topic=a/%2B", "", 400, "topic"},
		{"retained without topic", "DELETE", "/api/v1/retained", "", 400, "topic"},
		{"retained missing", "GET", "/api/v1/retained/message?topic=none", "", 404, "topic"},
		{"delete missing retained", "DELETE", "/api/v1/retained?topic=none", "", 404, "topic"},
		{"pause without bridges", "POST", "/api/v1/bridges/nope/pause", "", 404, "route"},
		{"dead letters without bridges", "GET", "/api/v1/bridges/nope/deadletters", "", 404, "route"},
		{"publish wildcard", "POST", "/api/v1/publish", `{"topic":"a/#","payload":"x"}`, 400, "topic"},
		{"kick bad body", "POST", clientPath + "/disconnect", `{"discard":true}`, 400, "body"},
		{"unknown endpoint", "GET", "/api/v1/nothing", "", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := api(t, b, "", tc.method, tc.path, tc.body)
			var p struct {
				Status int    `json:"status"`
				Title  string `json:"title"`
				Detail string `json:"detail"`
				Param  string `json:"param"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("status %d, body %q is not a problem object: %v", code, body, err)
			}
			if code != tc.status || p.Status != code || p.Param != tc.param || p.Detail == "" || p.Title == "" {
				t.Fatalf("status %d %+v, want %d naming %q", code, p, tc.status, tc.param)
			}
			if tc.param != "" && tc.status == 400 && !strings.Contains(p.Detail, tc.param) {
				t.Errorf("detail %q does not name %q", p.Detail, tc.param)
			}
		})
	}
}

// TestAPIAuth: with admin.token set every API path needs it; probes do not.
func TestAPIAuth(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Admin.Token = "s3cret" })
	for _, tc := range []struct {
		name, token, path string
		want              int
	}{
		{"no token", "", "/api/v1/clients", 401},
		{"wrong token", "guess", "/api/v1/clients", 401},
		{"no token on the document", "", "/api/v1/openapi.json", 401},
		{"no token on an unknown path", "", "/api/v1/nothing", 401},
		{"the token", "s3cret", "/api/v1/clients", 200},
		{"probe without token", "", "/readyz", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := api(t, b, tc.token, "GET", tc.path, "")
			if code != tc.want {
				t.Fatalf("status %d, want %d: %s", code, tc.want, body)
			}
			if code == 401 && !bytes.Contains(body, []byte(`"status":401`)) {
				t.Errorf("401 body is not a problem object: %s", body)
			}
		})
	}
}

// TestAPIInfoAndStats: info names the listeners (the WebSocket one for
// browsers); stats counts what clients did.
func TestAPIInfoAndStats(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) {
		c.Listeners = append(c.Listeners, config.Listener{Name: "ws", Type: config.ListenerWS, Addr: "127.0.0.1:0", Path: "/mqtt"})
	})
	var info struct {
		Version   string `json:"version"`
		StartedAt string `json:"started_at"`
		Listeners []struct {
			ID, Type, Addr string
		} `json:"listeners"`
		Websocket *struct {
			Addr string `json:"addr"`
			Path string `json:"path"`
			TLS  bool   `json:"tls"`
		} `json:"websocket"`
	}
	apiJSON(t, b, "GET", "/api/v1/info", "", 200, &info)
	if info.Version == "" || info.StartedAt == "" || len(info.Listeners) != 2 || info.Listeners[0].Addr != b.Addr ||
		info.Websocket == nil || info.Websocket.Path != "/mqtt" || info.Websocket.Addr != b.B.Addr("ws") {
		t.Fatalf("info %+v", info)
	}
	type stats struct {
		Connections int            `json:"connections"`
		MessagesIn  int            `json:"messages_in"`
		BytesIn     int            `json:"bytes_in"`
		Retained    int            `json:"retained"`
		Drops       map[string]int `json:"drops"`
		Storage     struct {
			SizeBytes int64 `json:"size_bytes"`
		} `json:"storage"`
	}
	var before, after stats
	apiJSON(t, b, "GET", "/api/v1/stats", "", 200, &before)
	c := connect3(t, b, 4, uniq(t, "c"))
	c.pub(t, "stats/x", 1, true, "x")
	ok := false
	for deadline := time.Now().Add(waitFor); !ok && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		apiJSON(t, b, "GET", "/api/v1/stats", "", 200, &after)
		ok = after.Connections == before.Connections+1 && after.MessagesIn > before.MessagesIn &&
			after.BytesIn > before.BytesIn && after.Retained > 0 && after.Storage.SizeBytes > 0
	}
	if !ok {
		t.Fatalf("stats do not count the client and its message: before %+v, after %+v", before, after)
	}
	if _, ok := after.Drops["client_queue_full"]; !ok {
		t.Errorf("drops %v: no client_queue_full reason", after.Drops)
	}
}

// TestAPIBridgePauseResumePurge: a paused route holds what arrives and
// delivers it on resume; dead letters are purged for good.
func TestAPIBridgePauseResumePurge(t *testing.T) {
	sink := &webhookSink{}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	b := testutil.StartBroker(t, withBridges(t, fmt.Sprintf(`
bridges:
  - name: hooks
    from: "dev/+/t"
    to: {webhook: {url: %q, batch_size: 1, unsigned: true}}
    backoff: {initial: 10ms, max: 50ms}
`, hs.URL)))
	type route struct {
		Route       string `json:"route"`
		State       string `json:"state"`
		Delivered   int    `json:"delivered"`
		Dead        int    `json:"dead"`
		LagMessages int    `json:"lag_messages"`
		OutboxBytes int    `json:"outbox_bytes"`
	}
	status := func() route {
		var p apiPage[route]
		apiJSON(t, b, "GET", "/api/v1/bridges", "", 200, &p)
		if len(p.Items) != 1 || p.Items[0].Route != "hooks" {
			t.Fatalf("bridges %+v", p.Items)
		}
		return p.Items[0]
	}
	if s := status(); s.State != "connected" {
		t.Fatalf("fresh route %+v", s)
	}
	apiJSON(t, b, "POST", "/api/v1/bridges/hooks/pause", "", 204, nil)
	dev := connect3(t, b, 4, uniq(t, "dev"))
	for i := range 3 {
		dev.pub(t, "dev/1/t", 1, false, fmt.Sprintf("m%d", i)) // acked: in the outbox
	}
	if s := status(); s.State != "paused" || s.LagMessages != 3 || s.OutboxBytes == 0 || sink.count() != 0 {
		t.Fatalf("paused route %+v, webhook got %d", s, sink.count())
	}
	apiJSON(t, b, "POST", "/api/v1/bridges/hooks/resume", "", 204, nil)
	testutil.Eventually(t, 10*time.Second, "3 deliveries after resume", func() bool { return sink.count() == 3 })
	testutil.Eventually(t, waitFor, "route connected, counted, empty", func() bool {
		s := status()
		return s.State == "connected" && s.Delivered == 3 && s.LagMessages == 0
	})

	sink.status.Store(400)
	dev.pub(t, "dev/1/t", 1, false, "refused")
	var dls []struct {
		Seq uint64 `json:"seq"`
	}
	testutil.Eventually(t, 10*time.Second, "the refused message is dead-lettered", func() bool {
		apiJSON(t, b, "GET", "/api/v1/bridges/hooks/deadletters", "", 200, &dls)
		return len(dls) == 1
	})
	var purged struct {
		Purged int `json:"purged"`
	}
	apiJSON(t, b, "DELETE", "/api/v1/bridges/hooks/deadletters", fmt.Sprintf(`{"seqs":[%d]}`, dls[0].Seq), 200, &purged)
	if purged.Purged != 1 {
		t.Fatalf("purged %d", purged.Purged)
	}
	apiJSON(t, b, "GET", "/api/v1/bridges/hooks/deadletters", "", 200, &dls)
	if len(dls) != 0 || status().Dead != 1 {
		t.Fatalf("after purge: %+v, route %+v", dls, status())
	}
	apiJSON(t, b, "POST", "/api/v1/bridges/nope/pause", "", 404, nil)
}

// TestAPIConfigRedacted: the effective configuration is shown without its
// secrets: tokens, connector secrets, HTTP headers, URL passwords.
func TestAPIConfigRedacted(t *testing.T) {
	b := testutil.StartBroker(t, func(c *config.Config) { c.Admin.Token = "tok-SECRET" },
		withBridges(t, `
bridges:
  - name: hooks
    from: "dev/#"
    to: {webhook: {url: "http://user:pw-SECRET@127.0.0.1:9/in", secret: "whsec_U0VDUkVUU0VDUkVU", headers: {X-Api-Key: "hdr-SECRET"}}}
`))
	code, body := api(t, b, "tok-SECRET", "GET", "/api/v1/config", "")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	if bytes.Contains(body, []byte("SECRET")) || bytes.Contains(body, []byte("U0VDUkVU")) {
		t.Fatalf("a secret in the configuration shown: %s", body)
	}
	var cfg map[string]any
	if err := json.Unmarshal(body, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"token":"REDACTED"`, `"secret":"REDACTED"`, `"X-Api-Key":"REDACTED"`, `user:REDACTED@127.0.0.1:9/in`, `"dev/#"`, `"listeners"`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("configuration lacks %s: %s", want, body)
		}
	}
}

// TestAPIClientIDEscaped: a client id with a slash or a space is reached
// with its path segment escaped.
func TestAPIClientIDEscaped(t *testing.T) {
	b := testutil.StartBroker(t)
	id := uniq(t, "site/7 dev")
	connect3(t, b, 4, id)
	var c apiClientItem
	apiJSON(t, b, "GET", "/api/v1/clients/"+url.PathEscape(id), "", 200, &c)
	if c.ClientID != id {
		t.Fatalf("got client %q, want %q", c.ClientID, id)
	}
	apiJSON(t, b, "POST", "/api/v1/clients/"+url.PathEscape(id)+"/disconnect", "", 204, nil)
	waitGone(t, b, id)
}
