package bridge

import (
	"errors"
	"fmt"
	"strconv"
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
