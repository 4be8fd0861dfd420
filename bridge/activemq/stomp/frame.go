package stomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Commands, client and server.
const (
	CmdConnect     = "CONNECT"
	CmdStomp       = "STOMP"
	CmdConnected   = "CONNECTED"
	CmdSend        = "SEND"
	CmdSubscribe   = "SUBSCRIBE"
	CmdUnsubscribe = "UNSUBSCRIBE"
	CmdAck         = "ACK"
	CmdNack        = "NACK"
	CmdBegin       = "BEGIN"
	CmdCommit      = "COMMIT"
	CmdAbort       = "ABORT"
	CmdDisconnect  = "DISCONNECT"
	CmdMessage     = "MESSAGE"
	CmdReceipt     = "RECEIPT"
	CmdError       = "ERROR"
)

var commands = map[string]bool{
	CmdConnect: true, CmdStomp: true, CmdConnected: true, CmdSend: true, CmdSubscribe: true,
	CmdUnsubscribe: true, CmdAck: true, CmdNack: true, CmdBegin: true, CmdCommit: true,
	CmdAbort: true, CmdDisconnect: true, CmdMessage: true, CmdReceipt: true, CmdError: true,
}

// Default decoder limits; a zero field of Limits means the default.
const (
	// DefaultMaxLine bounds the command line and each header line, in
	// bytes, before unescaping.
	DefaultMaxLine = 64 << 10
	// DefaultMaxHeaders bounds the number of headers in a frame.
	DefaultMaxHeaders = 1000
	// DefaultMaxBody bounds a frame's body in bytes.
	DefaultMaxBody = 16 << 20
)

// Limits bound what a Reader accepts, so a broken or hostile peer cannot
// make it allocate without bound.
type Limits struct {
	MaxLine    int // DefaultMaxLine when 0
	MaxHeaders int // DefaultMaxHeaders when 0
	MaxBody    int // DefaultMaxBody when 0
}

func (l Limits) withDefaults() Limits {
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultMaxLine
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = DefaultMaxHeaders
	}
	if l.MaxBody <= 0 {
		l.MaxBody = DefaultMaxBody
	}
	return l
}

// Header is one frame header.
type Header struct {
	Key, Value string
}

// Frame is one STOMP frame. Headers keep their order and repetitions; per
// the spec only the first occurrence of a key counts (Get).
type Frame struct {
	Command string
	Headers []Header
	Body    []byte
}

// Get returns the value of the first header named key.
func (f *Frame) Get(key string) (string, bool) {
	for _, h := range f.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return "", false
}

// Value is Get without the second result.
func (f *Frame) Value(key string) string {
	v, _ := f.Get(key)
	return v
}

// escaped reports whether the frame's headers use STOMP 1.2 escaping: all
// frames but CONNECT and CONNECTED, which must be readable by peers of
// older versions.
func escaped(command string) bool {
	return command != CmdConnect && command != CmdConnected
}

// ErrProtocol is wrapped by every error a Reader or the encoder returns for
// bytes that are not a valid STOMP 1.2 frame (as opposed to I/O errors).
var ErrProtocol = errors.New("stomp: protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// Reader decodes frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	lim Limits
}

// NewReader returns a Reader on r with the limits lim.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 32<<10), lim: lim.withDefaults()}
}

// ReadFrame returns the next frame, skipping heart-beats (end-of-lines
// between frames). A malformed frame is an error wrapping ErrProtocol; the
// stream is then out of sync and should be closed. io.EOF means the stream
// ended between frames, io.ErrUnexpectedEOF inside one.
func (r *Reader) ReadFrame() (*Frame, error) {
	var cmd string
	for {
		line, err := r.line("command")
		if err != nil {
			return nil, err
		}
		if line != "" {
			cmd = line
			break
		}
	}
	if !commands[cmd] {
		return nil, protoErr("unknown command %q", truncate(cmd))
	}
	f := &Frame{Command: cmd}
	esc := escaped(cmd)
	for {
		line, err := r.line("header")
		if err != nil {
			return nil, unexpected(err)
		}
		if line == "" {
			break
		}
		if len(f.Headers) == r.lim.MaxHeaders {
			return nil, protoErr("%s frame has more than %d headers", cmd, r.lim.MaxHeaders)
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, protoErr("%s header line %q has no colon", cmd, truncate(line))
		}
		if esc {
			if k, err = unescape(k); err != nil {
				return nil, err
			}
			if v, err = unescape(v); err != nil {
				return nil, err
			}
		}
		f.Headers = append(f.Headers, Header{k, v})
	}
	if s, ok := f.Get("content-length"); ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, protoErr("%s frame has an invalid content-length %q", cmd, truncate(s))
		}
		if n > r.lim.MaxBody {
			return nil, protoErr("%s frame body of %d bytes exceeds the limit of %d", cmd, n, r.lim.MaxBody)
		}
		f.Body = make([]byte, n)
		if _, err := io.ReadFull(r.r, f.Body); err != nil {
			return nil, unexpected(err)
		}
		b, err := r.r.ReadByte()
		if err != nil {
			return nil, unexpected(err)
		}
		if b != 0 {
			return nil, protoErr("%s frame body of content-length %d is not followed by NUL", cmd, n)
		}
		return f, nil
	}
	for {
		chunk, err := r.r.ReadSlice(0)
		if len(f.Body)+len(chunk) > r.lim.MaxBody+1 {
			return nil, protoErr("%s frame body exceeds the limit of %d bytes", cmd, r.lim.MaxBody)
		}
		f.Body = append(f.Body, chunk...)
		if err == nil {
			f.Body = f.Body[:len(f.Body)-1]
			return f, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, unexpected(err)
		}
	}
}

// line reads one line, without its EOL ("\n" or "\r\n"), bounded by
// MaxLine. what names the line in errors.
func (r *Reader) line(what string) (string, error) {
	var buf []byte
	for {
		chunk, err := r.r.ReadSlice('\n')
		if len(buf)+len(chunk) > r.lim.MaxLine+2 {
			return "", protoErr("%s line longer than %d bytes", what, r.lim.MaxLine)
		}
		if err == nil && buf == nil {
			buf = chunk // the common case: no copy before trimming
		} else {
			buf = append(buf, chunk...)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
	buf = buf[:len(buf)-1]
	if n := len(buf); n > 0 && buf[n-1] == '\r' {
		buf = buf[:n-1]
	}
	if len(buf) > r.lim.MaxLine {
		return "", protoErr("%s line longer than %d bytes", what, r.lim.MaxLine)
	}
	if bytes.IndexByte(buf, '\r') >= 0 {
		return "", protoErr("%s line %q has a CR that is not part of its end-of-line", what, truncate(string(buf)))
	}
	return string(buf), nil
}

// unexpected turns io.EOF inside a frame into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// unescape decodes the STOMP 1.2 header escapes \r \n \c \\; any other
// backslash sequence is a protocol error, as the spec requires.
func unescape(s string) (string, error) {
	i := strings.IndexByte(s, '\\')
	if i < 0 {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "", protoErr("header %q ends with a lone backslash", truncate(s))
		}
		i++
		switch s[i] {
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		case 'c':
			b.WriteByte(':')
		case '\\':
			b.WriteByte('\\')
		default:
			return "", protoErr("header %q has the undefined escape \\%c", truncate(s), s[i])
		}
	}
	return b.String(), nil
}

// appendEscaped appends s with \ CR LF and : escaped.
func appendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\n':
			dst = append(dst, '\\', 'n')
		case ':':
			dst = append(dst, '\\', 'c')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// AppendFrame appends f's wire form (LF line ends, NUL terminator) to dst.
// Headers are written as given, escaped except in CONNECT and CONNECTED
// frames, where a header that cannot be written unescaped (CR or LF
// anywhere, a colon in the key) is an error. A body containing NUL needs
// a content-length header; a content-length header must match the body.
func AppendFrame(dst []byte, f *Frame) ([]byte, error) {
	if !commands[f.Command] {
		return dst, protoErr("unknown command %q", truncate(f.Command))
	}
	esc := escaped(f.Command)
	if s, ok := f.Get("content-length"); ok {
		if n, err := strconv.Atoi(s); err != nil || n != len(f.Body) {
			return dst, protoErr("%s frame has content-length %q but a body of %d bytes", f.Command, truncate(s), len(f.Body))
		}
	} else if bytes.IndexByte(f.Body, 0) >= 0 {
		return dst, protoErr("%s frame body contains NUL but the frame has no content-length", f.Command)
	}
	dst = append(dst, f.Command...)
	dst = append(dst, '\n')
	for _, h := range f.Headers {
		if esc {
			dst = appendEscaped(dst, h.Key)
			dst = append(dst, ':')
			dst = appendEscaped(dst, h.Value)
		} else {
			if strings.ContainsAny(h.Key, "\r\n:") || strings.ContainsAny(h.Value, "\r\n") {
				return dst, protoErr("%s header %q cannot be sent unescaped", f.Command, truncate(h.Key))
			}
			dst = append(dst, h.Key...)
			dst = append(dst, ':')
			dst = append(dst, h.Value...)
		}
		dst = append(dst, '\n')
	}
	dst = append(dst, '\n')
	dst = append(dst, f.Body...)
	return append(dst, 0), nil
}
