package stomp

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// catalogueLimits are the limits every catalogue case is decoded with.
var catalogueLimits = Limits{MaxLine: 64, MaxHeaders: 4, MaxBody: 64}

// catalogue holds wire bytes with the frames, or the error, they decode
// to: shared by TestReadFrame and the fuzz seeds.
var catalogue = []struct {
	name string
	wire string
	want []Frame
	err  string // substring; "EOF" cases are matched with errors.Is
}{
	{name: "connected from ActiveMQ, colons unescaped",
		wire: "CONNECTED\nserver:ActiveMQ/5.17.2\nheart-beat:1000,1000\nversion:1.2\n\n\x00\n",
		want: []Frame{{Command: "CONNECTED", Headers: []Header{{"server", "ActiveMQ/5.17.2"}, {"heart-beat", "1000,1000"}, {"version", "1.2"}}}}},
	{name: "connect keeps backslashes",
		wire: "CONNECT\npasscode:a\\cb\n\n\x00",
		want: []Frame{{Command: "CONNECT", Headers: []Header{{"passcode", "a\\cb"}}}}},
	{name: "send unescapes key and value",
		wire: "SEND\nk\\c1:v\\r\\n\\c\\\\\n\n\x00",
		want: []Frame{{Command: "SEND", Headers: []Header{{"k:1", "v\r\n:\\"}}}}},
	{name: "content-length body holds NUL",
		wire: "MESSAGE\ncontent-length:3\n\na\x00b\x00",
		want: []Frame{{Command: "MESSAGE", Headers: []Header{{"content-length", "3"}}, Body: []byte("a\x00b")}}},
	{name: "body up to NUL",
		wire: "ERROR\nmessage:no\n\nnot allowed\x00",
		want: []Frame{{Command: "ERROR", Headers: []Header{{"message", "no"}}, Body: []byte("not allowed")}}},
	{name: "CRLF line ends",
		wire: "RECEIPT\r\nreceipt-id:r1\r\n\r\n\x00",
		want: []Frame{{Command: "RECEIPT", Headers: []Header{{"receipt-id", "r1"}}}}},
	{name: "heart-beats between frames",
		wire: "\n\r\n\nRECEIPT\nreceipt-id:a\n\n\x00\n\r\nRECEIPT\nreceipt-id:b\n\n\x00\n",
		want: []Frame{{Command: "RECEIPT", Headers: []Header{{"receipt-id", "a"}}}, {Command: "RECEIPT", Headers: []Header{{"receipt-id", "b"}}}}},
	{name: "repeated header kept in order",
		wire: "MESSAGE\nfoo:1\nfoo:2\n\n\x00",
		want: []Frame{{Command: "MESSAGE", Headers: []Header{{"foo", "1"}, {"foo", "2"}}}}},
	{name: "value with a raw colon",
		wire: "MESSAGE\na:b:c\n\n\x00",
		want: []Frame{{Command: "MESSAGE", Headers: []Header{{"a", "b:c"}}}}},
	{name: "empty stream", wire: "", err: "EOF"},
	{name: "only heart-beats", wire: "\n\n\r\n", err: "EOF"},
	{name: "truncated headers", wire: "SEND\na:b\n", err: "unexpected EOF"},
	{name: "truncated body", wire: "SEND\n\nabc", err: "unexpected EOF"},
	{name: "truncated content-length body", wire: "SEND\ncontent-length:9\n\nabc", err: "unexpected EOF"},
	{name: "unknown command", wire: "HELLO\n\n\x00", err: `unknown command "HELLO"`},
	{name: "header without colon", wire: "SEND\nfoo\n\n\x00", err: `SEND header line "foo" has no colon`},
	{name: "undefined escape", wire: "SEND\na:\\t\n\n\x00", err: `undefined escape \t`},
	{name: "lone backslash", wire: "SEND\na:x\\\n\n\x00", err: "ends with a lone backslash"},
	{name: "invalid content-length", wire: "SEND\ncontent-length:x\n\n\x00", err: `invalid content-length "x"`},
	{name: "negative content-length", wire: "SEND\ncontent-length:-1\n\n\x00", err: `invalid content-length "-1"`},
	{name: "content-length body not followed by NUL", wire: "SEND\ncontent-length:1\n\nab\x00", err: "is not followed by NUL"},
	{name: "content-length over the limit", wire: "SEND\ncontent-length:65\n\n\x00", err: "body of 65 bytes exceeds the limit of 64"},
	{name: "body over the limit", wire: "SEND\n\n" + strings.Repeat("x", 65) + "\x00", err: "body exceeds the limit of 64 bytes"},
	{name: "header line over the limit", wire: "SEND\na:" + strings.Repeat("x", 63) + "\n\n\x00", err: "header line longer than 64 bytes"},
	{name: "command line over the limit", wire: strings.Repeat("S", 70) + "\n\n\x00", err: "command line longer than 64 bytes"},
	{name: "too many headers", wire: "SEND\na:1\nb:2\nc:3\nd:4\ne:5\n\n\x00", err: "more than 4 headers"},
	{name: "bare CR in a header", wire: "SEND\na:b\rc\n\n\x00", err: "has a CR that is not part of its end-of-line"},
}

func TestReadFrame(t *testing.T) {
	for _, tc := range catalogue {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tc.wire), catalogueLimits)
			var got []Frame
			var err error
			for {
				var f *Frame
				if f, err = r.ReadFrame(); err != nil {
					break
				}
				got = append(got, *f)
			}
			if len(tc.want) > 0 && !errors.Is(err, io.EOF) {
				t.Fatalf("after %d frames: %v", len(got), err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(tc.want)) {
				t.Fatalf("frames\n got %+v\nwant %+v", got, tc.want)
			}
			switch {
			case tc.err == "EOF":
				if err != io.EOF {
					t.Fatalf("err = %v, want io.EOF", err)
				}
			case tc.err == "unexpected EOF":
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
				}
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrProtocol) {
					t.Fatalf("err = %v, want ErrProtocol with %q", err, tc.err)
				}
			}
		})
	}
}

// normalize makes nil and empty bodies and header lists compare equal.
func normalize(fs []Frame) []Frame {
	out := make([]Frame, len(fs))
	for i, f := range fs {
		if len(f.Body) == 0 {
			f.Body = nil
		}
		if len(f.Headers) == 0 {
			f.Headers = nil
		}
		out[i] = f
	}
	return out
}

func TestFrameGet(t *testing.T) {
	f := Frame{Headers: []Header{{"a", "1"}, {"a", "2"}}}
	if v, ok := f.Get("a"); !ok || v != "1" {
		t.Fatalf("Get(a) = %q, %v; the first occurrence counts", v, ok)
	}
	if _, ok := f.Get("b"); ok {
		t.Fatal("Get(b) found a missing header")
	}
}

func TestAppendFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Frame
		wire string
		err  string
	}{
		{name: "send escapes",
			f:    Frame{Command: "SEND", Headers: []Header{{"k:1", "a\r\nb:c\\d"}}, Body: []byte("x")},
			wire: "SEND\nk\\c1:a\\r\\nb\\cc\\\\d\n\nx\x00"},
		{name: "connect does not escape",
			f:    Frame{Command: "CONNECT", Headers: []Header{{"passcode", "a:b\\c"}}},
			wire: "CONNECT\npasscode:a:b\\c\n\n\x00"},
		{name: "content-length with NUL body",
			f:    Frame{Command: "SEND", Headers: []Header{{"content-length", "2"}}, Body: []byte{0, 1}},
			wire: "SEND\ncontent-length:2\n\n\x00\x01\x00"},
		{name: "connect with a newline", f: Frame{Command: "CONNECT", Headers: []Header{{"login", "a\nb"}}}, err: "cannot be sent unescaped"},
		{name: "connected with a colon in a key", f: Frame{Command: "CONNECTED", Headers: []Header{{"a:b", "c"}}}, err: "cannot be sent unescaped"},
		{name: "NUL body without content-length", f: Frame{Command: "SEND", Body: []byte{0}}, err: "contains NUL but the frame has no content-length"},
		{name: "wrong content-length", f: Frame{Command: "SEND", Headers: []Header{{"content-length", "3"}}, Body: []byte("ab")}, err: `content-length "3" but a body of 2 bytes`},
		{name: "unknown command", f: Frame{Command: "send"}, err: `unknown command "send"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendFrame(nil, &tc.f)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.wire {
				t.Fatalf("wire %q, want %q", b, tc.wire)
			}
			back, err := NewReader(bytes.NewReader(b), Limits{}).ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize([]Frame{*back}), normalize([]Frame{tc.f})) {
				t.Fatalf("round trip %+v, want %+v", back, tc.f)
			}
		})
	}
}
