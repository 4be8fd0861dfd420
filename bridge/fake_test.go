package bridge_test

import (
	"context"
	"errors"
	"sync"

	"github.com/ferrymq/ferry/bridge"
)

// fake is an in-memory connector: Deliver records batches, unless fail
// (checked per message, in order) returns an error; gate, when non-nil,
// blocks Deliver of a message until it returns.
type fake struct {
	mu        sync.Mutex
	got       []bridge.Message
	batches   int
	attempts  int
	fail      func(m bridge.Message, attempt int) error
	gate      func(ctx context.Context, m bridge.Message) error
	in        chan bridge.Message // ingress source
	handleErr []error
	closed    int
	startErr  error
	// probe, when set, answers Probe (nil: the backend is up).
	probe func() error
	// recvFail, when set, makes Receive return its error at once.
	recvFail func() error
	probes   int
	// receiving counts the Receive calls running now.
	receiving int
}

var _ bridge.Connector = (*fake)(nil)
var _ bridge.Receiver = (*fake)(nil)
var _ bridge.Prober = (*fake)(nil)

func (f *fake) Probe(context.Context) error {
	f.mu.Lock()
	f.probes++
	probe := f.probe
	f.mu.Unlock()
	if probe == nil {
		return nil
	}
	return probe()
}

func (f *fake) Name() string                  { return "fake" }
func (f *fake) Start(context.Context) error   { return f.startErr }
func (f *fake) Close(_ context.Context) error { f.mu.Lock(); f.closed++; f.mu.Unlock(); return nil }

func (f *fake) Deliver(ctx context.Context, batch []bridge.Message) error {
	f.mu.Lock()
	f.attempts++
	attempt, fail, gate := f.attempts, f.fail, f.gate
	f.mu.Unlock()
	for _, m := range batch {
		if gate != nil {
			if err := gate(ctx, m); err != nil {
				return err
			}
		}
		if fail != nil {
			if err := fail(m, attempt); err != nil {
				return err
			}
		}
	}
	f.mu.Lock()
	f.got = append(f.got, batch...)
	f.batches++
	f.mu.Unlock()
	return nil
}

func (f *fake) Receive(ctx context.Context, h bridge.Handler) error {
	f.mu.Lock()
	fail := f.recvFail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(); err != nil {
			return err
		}
	}
	f.set(func(f *fake) { f.receiving++ })
	defer f.set(func(f *fake) { f.receiving-- })
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-f.in:
			err := h(ctx, m)
			f.mu.Lock()
			f.handleErr = append(f.handleErr, err)
			f.mu.Unlock()
		}
	}
}

func (f *fake) delivered() []bridge.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]bridge.Message(nil), f.got...)
}

func (f *fake) set(fn func(*fake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fake) factory() bridge.Factory {
	return func(bridge.Spec, bridge.Deps) (bridge.Connector, error) { return f, nil }
}

var errTransient = errors.New("backend unavailable")
