package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
)

var (
	// ErrOutboxFull is returned by Offer when a durable route's outbox is at
	// its max_bytes bound and the route's when_full policy is "block". The
	// message was not accepted by any route; the caller should refuse the
	// publish (MQTT 5: PUBACK 0x97 quota exceeded; MQTT 3: no PUBACK) so
	// the client sends it again later.
	ErrOutboxFull = errors.New("bridge: outbox full")
	// ErrClosed is returned by Offer, Replay and outbox calls after Close.
	ErrClosed = errors.New("bridge: closed")
	// ErrUnknownRoute is returned by DeadLetters and Replay for a route
	// name that is not configured.
	ErrUnknownRoute = errors.New("bridge: unknown route")
	// ErrNoDeadLetters is returned by DeadLetters, Replay and
	// PurgeDeadLetters for a route without a dead-letter store (not an
	// at-least-once egress route).
	ErrNoDeadLetters = errors.New("bridge: route has no dead letters (not an at-least-once egress route)")
)

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent wraps err so that the route worker dead-letters the message
// instead of retrying it (HTTP 4xx other than 408/429, an invalid target
// name, a payload the backend refuses). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was made by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Kind is what a delivery (or receive) error says about the backend, which
// decides what the route worker does with it.
type Kind int

// Kinds of errors. Each connector classifies its own client library's
// errors with Permanent and Unavailable; KindOf also recognises the
// standard library's network errors as unavailable.
const (
	// KindUnknown is neither: the route worker asks the backend whether it
	// is up (Prober) and counts the failure against max_attempts only when
	// it is; a route without a Prober counts it only while it is up.
	KindUnknown Kind = iota
	// KindUnavailable: the backend takes no message now (cannot connect,
	// timeout, connection lost, not leader, shutting down, HTTP 5xx, 408,
	// 429). The route goes down and holds its messages; no attempt is
	// counted, however long it lasts.
	KindUnavailable
	// KindPermanent: the backend refuses this message; retrying cannot fix
	// it. The message is dead-lettered.
	KindPermanent
)

// String returns "unknown", "unavailable" or "permanent".
func (k Kind) String() string {
	switch k {
	case KindUnavailable:
		return "unavailable"
	case KindPermanent:
		return "permanent"
	default:
		return "unknown"
	}
}

// unavailableError marks an error that says the backend is not reachable
// or not serving.
type unavailableError struct{ err error }

func (u *unavailableError) Error() string { return u.err.Error() }
func (u *unavailableError) Unwrap() error { return u.err }

// Unavailable wraps err so that the route worker treats it as the backend
// being down (KindUnavailable) rather than a failure of the messages in
// hand. Unavailable(nil) is nil; a Permanent error stays permanent.
func Unavailable(err error) error {
	if err == nil || IsPermanent(err) || IsUnavailable(err) {
		return err
	}
	return &unavailableError{err: err}
}

// IsUnavailable reports whether err, or an error it wraps, was made by
// Unavailable.
func IsUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u)
}

// KindOf classifies err: a Permanent mark wins over an Unavailable one;
// unmarked network errors (NetworkError) are unavailable; anything else is
// unknown.
func KindOf(err error) Kind {
	switch {
	case err == nil:
		return KindUnknown
	case IsPermanent(err):
		return KindPermanent
	case IsUnavailable(err), NetworkError(err):
		return KindUnavailable
	default:
		return KindUnknown
	}
}

// NetworkError reports whether err is a transport failure of the standard
// library: a dial, read or write error (connection refused, reset, no
// route, DNS), an unexpected EOF or a closed connection, or a timeout
// (context.DeadlineExceeded, os.ErrDeadlineExceeded, a net.Error that
// times out). Connectors use it to classify their client's errors.
func NetworkError(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	var op *net.OpError
	var dns *net.DNSError
	var errno syscall.Errno
	switch {
	case errors.As(err, &op), errors.As(err, &dns):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return true
	case errors.As(err, &errno):
		return errno == syscall.ECONNREFUSED || errno == syscall.ECONNRESET || errno == syscall.ECONNABORTED ||
			errno == syscall.EPIPE || errno == syscall.ETIMEDOUT || errno == syscall.EHOSTUNREACH || errno == syscall.ENETUNREACH
	}
	return false
}

// FieldError is one configuration problem. Path is relative to the bridges
// list, e.g. "[1].to.nats.subject", so the caller can prefix its own path;
// Route, when known, is the route's name, shown after the path.
type FieldError struct {
	Path  string
	Route string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Route != "" {
		return e.Path + ": route " + strconv.Quote(e.Route) + ": " + e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErr is shorthand for a *FieldError with a formatted message.
func fieldErr(path, format string, args ...any) error {
	return &FieldError{Path: path, Err: fmt.Errorf(format, args...)}
}

// FieldErrors collects a connector section's configuration problems, each
// naming its field (a FieldError); errors.Join(errs...) reports them all.
type FieldErrors []error

// Add records a problem of the field at path.
func (e *FieldErrors) Add(path, format string, args ...any) {
	*e = append(*e, fieldErr(path, format, args...))
}

// PrefixErrors returns err with prefix prepended to the Path of every
// *FieldError joined in it; other errors become a FieldError at prefix. It
// lets a connector report "subject: ..." and the bridge turn it into
// "[1].to.nats.subject: ...".
func PrefixErrors(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, 0, len(list))
	for _, e := range list {
		var fe *FieldError
		if errors.As(e, &fe) && fe == e {
			p := prefix
			if fe.Path != "" {
				p = prefix + "." + fe.Path
			}
			out = append(out, &FieldError{Path: p, Err: fe.Err})
			continue
		}
		out = append(out, &FieldError{Path: prefix, Err: e})
	}
	return errors.Join(out...)
}

// withRoute sets Route on every *FieldError joined in err that has none.
func withRoute(route string, err error) error {
	if err == nil || route == "" {
		return err
	}
	list := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	}
	for _, e := range list {
		var fe *FieldError
		if errors.As(e, &fe) && fe.Route == "" {
			fe.Route = route
		}
	}
	return err
}
