package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/ferrymq/ferry/bridge"
)

func TestKindOf(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name string
		err  error
		want bridge.Kind
	}{
		{"nil", nil, bridge.KindUnknown},
		{"plain", errors.New("odd"), bridge.KindUnknown},
		{"permanent", bridge.Permanent(errors.New("http 400")), bridge.KindPermanent},
		{"unavailable", bridge.Unavailable(errors.New("not leader")), bridge.KindUnavailable},
		{"permanent wins", bridge.Permanent(bridge.Unavailable(errors.New("x"))), bridge.KindPermanent},
		{"unavailable of permanent stays permanent", bridge.Unavailable(bridge.Permanent(errors.New("x"))), bridge.KindPermanent},
		{"connection refused, wrapped", fmt.Errorf("redis: XADD s: %w", refused), bridge.KindUnavailable},
		{"bare errno", syscall.ECONNRESET, bridge.KindUnavailable},
		{"deadline", fmt.Errorf("flush: %w", context.DeadlineExceeded), bridge.KindUnavailable},
		{"i/o timeout", os.ErrDeadlineExceeded, bridge.KindUnavailable},
		{"eof", io.EOF, bridge.KindUnavailable},
		{"unexpected eof", io.ErrUnexpectedEOF, bridge.KindUnavailable},
		{"closed", net.ErrClosed, bridge.KindUnavailable},
		{"dns", &net.DNSError{Err: "no such host", Name: "x"}, bridge.KindUnavailable},
		{"canceled is not an outage", context.Canceled, bridge.KindUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := bridge.KindOf(tc.err); got != tc.want {
				t.Fatalf("KindOf(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if bridge.Unavailable(nil) != nil || bridge.Permanent(nil) != nil {
		t.Fatal("wrapping nil is not nil")
	}
}
