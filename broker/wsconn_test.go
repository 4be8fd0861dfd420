package broker

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestWebSocketDeadlineWhileWriting: a write deadline set while the
// client's writer writes (conn.Close does, to end a blocked write) is no
// data race. gorilla keeps its deadline in a field its writes read
// unlocked: the race detector reported Close against a write in a
// fresh-clone CI run. Under -race this fails on the old wsConn.
func TestWebSocketDeadlineWhileWriting(t *testing.T) {
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer close(done)
		c := &wsConn{Conn: ws}
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			for range 200 {
				if _, err := c.Write(make([]byte, 1024)); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		}()
		for range 200 {
			_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
		}
		<-wrote
		_ = ws.Close()
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	n := 0
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
		n++
	}
	<-done
	if n != 200 {
		t.Fatalf("read %d messages, want 200", n)
	}
}
