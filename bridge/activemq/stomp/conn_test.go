package stomp

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeServer accepts one connection and runs serve on it; the listener
// and the connection are closed at cleanup, after serve returned.
func fakeServer(t *testing.T, serve func(r *Reader, c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(NewReader(c, Limits{}), c)
	}()
	t.Cleanup(func() { _ = l.Close(); <-done })
	return l.Addr().String()
}

// connected reads the CONNECT frame and answers CONNECTED with heart-beat
// hb ("" for none).
func connected(t *testing.T, r *Reader, c net.Conn, hb string) bool {
	f, err := r.ReadFrame()
	if err != nil || f.Command != CmdConnect || f.Value("accept-version") != "1.2" {
		t.Errorf("handshake: %+v, %v", f, err)
		return false
	}
	h := []Header{{"version", "1.2"}}
	if hb != "" {
		h = append(h, Header{"heart-beat", hb})
	}
	return write(c, &Frame{Command: CmdConnected, Headers: h}) == nil
}

func write(c net.Conn, f *Frame) error {
	b, err := AppendFrame(nil, f)
	if err != nil {
		return err
	}
	_, err = c.Write(b)
	return err
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestHeartbeatTimeout: a server that answers CONNECTED and then goes
// silent is detected after three times its heart-beat interval; the SEND waiting
// for its receipt fails with ErrConnectionLost, and the client kept
// sending heart-beats while idle.
func TestHeartbeatTimeout(t *testing.T) {
	var eols atomic.Int64
	addr := fakeServer(t, func(r *Reader, c net.Conn) {
		if !connected(t, r, c, "50,50") {
			return
		}
		buf := make([]byte, 4096)
		for { // read (count heart-beats), never answer
			n, err := c.Read(buf)
			eols.Add(int64(strings.Count(string(buf[:n]), "\n")))
			if err != nil {
				return
			}
		}
	})
	c, err := Dial(ctxTimeout(t, 5*time.Second), addr, Options{HeartBeat: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if send, read := c.HeartBeats(); send != 50*time.Millisecond || read != 150*time.Millisecond {
		t.Fatalf("negotiated send %s, read timeout %s", send, read)
	}
	start := time.Now()
	rs, err := c.SendAll(context.Background(), []Message{{Destination: "/queue/a", Body: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	err = rs[0].Wait(ctxTimeout(t, 5*time.Second))
	if !errors.Is(err, ErrConnectionLost) || !errors.Is(err, ErrHeartbeatTimeout) {
		t.Fatalf("receipt: %v, want connection lost by heart-beat timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("detected after %s", d)
	}
	<-c.Done()
	if !errors.Is(c.Err(), ErrHeartbeatTimeout) {
		t.Fatalf("Err() = %v", c.Err())
	}
	if eols.Load() == 0 {
		t.Fatal("the client sent no heart-beat")
	}
}

// TestServerErrors: ERROR frames become *ServerError values: one naming a
// SEND's receipt fails that SEND only, one naming nothing ends the
// connection, one in reply to CONNECT fails Connect.
func TestServerErrors(t *testing.T) {
	t.Run("refused send", func(t *testing.T) {
		addr := fakeServer(t, func(r *Reader, c net.Conn) {
			if !connected(t, r, c, "") {
				return
			}
			for {
				f, err := r.ReadFrame()
				if err != nil {
					return
				}
				id := f.Value("receipt")
				reply := &Frame{Command: CmdReceipt, Headers: []Header{{"receipt-id", id}}}
				if f.Value("destination") == "/queue/forbidden" {
					reply = &Frame{Command: CmdError, Headers: []Header{{"receipt-id", id}, {"message", "not authorized: queue://forbidden"}},
						Body: []byte("java.lang.SecurityException: not authorized\n\tat somewhere")}
				}
				if write(c, reply) != nil {
					return
				}
			}
		})
		c, err := Dial(ctxTimeout(t, 5*time.Second), addr, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rs, err := c.SendAll(ctxTimeout(t, 5*time.Second), []Message{
			{Destination: "/queue/ok", Body: []byte("1")}, {Destination: "/queue/forbidden", Body: []byte("2")}, {Destination: "/queue/ok", Body: []byte("3")}})
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rs {
			err := r.Wait(ctxTimeout(t, 5*time.Second))
			var se *ServerError
			switch {
			case i == 1 && (!errors.As(err, &se) || se.Message != "not authorized: queue://forbidden" || !strings.Contains(se.Body, "SecurityException") || se.ReceiptID != r.ID()):
				t.Fatalf("refused send: %v (%+v)", err, se)
			case i == 1 && errors.Is(err, ErrConnectionLost):
				t.Fatalf("refused send reported as connection lost: %v", err)
			case i != 1 && err != nil:
				t.Fatalf("send %d: %v", i, err)
			}
		}
		want := "stomp: server error: not authorized: queue://forbidden: java.lang.SecurityException: not authorized"
		if got := (&ServerError{Message: "not authorized: queue://forbidden", Body: "java.lang.SecurityException: not authorized\n\tat x"}).Error(); got != want {
			t.Fatalf("Error() = %q, want %q", got, want)
		}
		if err := c.Send(ctxTimeout(t, 5*time.Second), Message{Destination: "/queue/ok"}); err != nil {
			t.Fatalf("the connection did not survive a refused send: %v", err)
		}
	})
	t.Run("connection error", func(t *testing.T) {
		addr := fakeServer(t, func(r *Reader, c net.Conn) {
			if !connected(t, r, c, "") {
				return
			}
			if _, err := r.ReadFrame(); err != nil {
				return
			}
			_ = write(c, &Frame{Command: CmdError, Headers: []Header{{"message", "shutting down"}}})
			_, _ = r.ReadFrame() // until the client closes
		})
		c, err := Dial(ctxTimeout(t, 5*time.Second), addr, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Send(ctxTimeout(t, 5*time.Second), Message{Destination: "/queue/a"})
		var se *ServerError
		if !errors.Is(err, ErrConnectionLost) || !errors.As(err, &se) || se.Message != "shutting down" {
			t.Fatalf("send: %v", err)
		}
		<-c.Done()
		if !errors.As(c.Err(), &se) {
			t.Fatalf("Err() = %v", c.Err())
		}
		if _, err := c.SendAll(context.Background(), []Message{{Destination: "/queue/a"}}); !errors.Is(err, ErrConnectionLost) {
			t.Fatalf("send after the end: %v", err)
		}
	})
	t.Run("refused connect", func(t *testing.T) {
		addr := fakeServer(t, func(r *Reader, c net.Conn) {
			if _, err := r.ReadFrame(); err != nil {
				return
			}
			_ = write(c, &Frame{Command: CmdError, Headers: []Header{{"message", "bad credentials"}}, Body: []byte("User name [x] or password is invalid.")})
		})
		_, err := Dial(ctxTimeout(t, 5*time.Second), addr, Options{Login: "x", Passcode: "y"})
		var se *ServerError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "bad credentials: User name [x] or password is invalid.") {
			t.Fatalf("dial: %v", err)
		}
	})
	t.Run("handshake timeout", func(t *testing.T) {
		addr := fakeServer(t, func(r *Reader, c net.Conn) {
			_, _ = r.ReadFrame()
			_, _ = r.ReadFrame() // never answers; returns when the client gives up
		})
		_, err := Dial(ctxTimeout(t, 100*time.Millisecond), addr, Options{})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial: %v", err)
		}
	})
}
