package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// mochiLogger gives mochi a logger that lets each distinct warning through
// at most once a second. mochi logs some warnings per message (a full
// client queue, a full in-flight window); under load that would flood the
// log and cost more than the message. The drops are counted in metrics.
//
// mochi's info lines are its own lifecycle ("added hook" and "stopping
// hook" for each hook, "attached listener", "mochi mqtt starting" with
// mochi's version): Ferry logs what an operator needs of that itself, so
// they are demoted to debug. Refused bad packets are rate-limited by mochi
// itself, with a count of what it held back, so they pass as they are.
func mochiLogger(l *slog.Logger) *slog.Logger {
	return slog.New(&limitHandler{Handler: l.Handler().WithAttrs([]slog.Attr{slog.String("component", "mochi")}),
		state: &limitState{last: map[string]time.Time{}}})
}

type limitHandler struct {
	slog.Handler
	state *limitState
}

type limitState struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (h *limitHandler) Enabled(ctx context.Context, l slog.Level) bool {
	if l == slog.LevelInfo {
		l = slog.LevelDebug
	}
	return h.Handler.Enabled(ctx, l)
}

func (h *limitHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo {
		r.Level = slog.LevelDebug
	}
	if r.Level >= slog.LevelWarn && r.Message != mqtt.LogRefusedMessage && r.Message != mqtt.LogSuppressedMessage {
		h.state.mu.Lock()
		prev, seen := h.state.last[r.Message]
		if seen && r.Time.Sub(prev) < time.Second {
			h.state.mu.Unlock()
			return nil
		}
		if len(h.state.last) > 1024 {
			clear(h.state.last) // messages are a fixed set in mochi; this only bounds surprises
		}
		h.state.last[r.Message] = r.Time
		h.state.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func (h *limitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitHandler{Handler: h.Handler.WithAttrs(as), state: h.state}
}

func (h *limitHandler) WithGroup(name string) slog.Handler {
	return &limitHandler{Handler: h.Handler.WithGroup(name), state: h.state}
}
