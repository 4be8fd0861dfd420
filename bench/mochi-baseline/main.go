// Command mochi-baseline runs a bare mochi-mqtt broker (mqtt.New with
// default options, auth.AllowHook, one TCP listener, nothing else) so
// benchmarks can compare Ferry against the library it is built on.
//
//	mochi-baseline -addr 127.0.0.1:1883
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	addr := flag.String("addr", ":1883", "TCP listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "mochi-baseline:", err)
		os.Exit(1)
	}
}

// serve runs the broker until ctx ends. ready, when set, is called with
// the listening address once clients can connect.
func serve(ctx context.Context, addr string, ready func(addr string)) error {
	s := mqtt.New(nil)
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return fmt.Errorf("add allow hook: %w", err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	if err := s.AddListener(l); err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if err := s.Serve(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if ready != nil {
		ready(l.Address())
	}
	<-ctx.Done()
	// mochi's Close can wait forever on a client stuck mid-flow; a
	// benchmark harness needs the process gone, so give it a bound.
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("close: %w", err)
		}
		return nil
	case <-time.After(closeTimeout):
		return fmt.Errorf("close: not done after %s", closeTimeout)
	}
}

// closeTimeout bounds the graceful stop.
const closeTimeout = 5 * time.Second
