package broker

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// resendHook resends unacknowledged QoS 1/2 messages to a connected MQTT
// 3.1.1 client whose connection has been quiet for limits.resend_after:
// nothing sent to it and nothing acknowledged by it. mochi resends only
// when a session resumes, so a PUBLISH or PUBACK lost on a half-broken path
// would wait for the next reconnect. MQTT 5 forbids resending on a live
// connection (MQTT-4.4.0-1): its clients are left alone.
type resendHook struct {
	mqtt.HookBase
	after   time.Duration
	clients sync.Map // *mqtt.Client -> *resendState
	resent  atomic.Uint64
}

type resendState struct {
	lastSend atomic.Int64 // unix nanoseconds
	lastAck  atomic.Int64
}

func (h *resendHook) ID() string { return "ferry-resend" }

func (h *resendHook) Provides(b byte) bool {
	return b == mqtt.OnPacketSent || b == mqtt.OnQosComplete || b == mqtt.OnDisconnect
}

func (h *resendHook) state(cl *mqtt.Client) *resendState {
	if v, ok := h.clients.Load(cl); ok {
		return v.(*resendState)
	}
	v, _ := h.clients.LoadOrStore(cl, new(resendState))
	return v.(*resendState)
}

// OnPacketSent notes when a QoS 1/2 PUBLISH or a PUBREL last went out.
func (h *resendHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if cl.Properties.ProtocolVersion >= 5 || cl.Net.Inline {
		return
	}
	if (pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0) || pk.FixedHeader.Type == packets.Pubrel {
		h.state(cl).lastSend.Store(time.Now().UnixNano())
	}
}

// OnQosComplete notes the client's last acknowledgement.
func (h *resendHook) OnQosComplete(cl *mqtt.Client, _ packets.Packet) {
	if cl.Properties.ProtocolVersion >= 5 || cl.Net.Inline {
		return
	}
	h.state(cl).lastAck.Store(time.Now().UnixNano())
}

// OnDisconnect forgets the connection.
func (h *resendHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.clients.Delete(cl) }

// sweep resends what quiet connections have left unacknowledged.
func (h *resendHook) sweep(now time.Time) {
	quiet := now.Add(-h.after).UnixNano()
	h.clients.Range(func(k, v any) bool {
		cl, st := k.(*mqtt.Client), v.(*resendState)
		if cl.Closed() || st.lastSend.Load() > quiet || st.lastAck.Load() > quiet {
			return true
		}
		n := 0
		for _, pk := range cl.State.Inflight.GetAll(false) {
			switch {
			case pk.FixedHeader.Type == packets.Publish && pk.Expiry >= 0:
				pk.FixedHeader.Dup = true // [MQTT-3.3.1-1]
			case pk.FixedHeader.Type == packets.Pubrel:
			default:
				continue // inbound QoS 2 states, and messages waiting for send quota
			}
			if cl.WritePacket(pk) != nil {
				return true
			}
			n++
		}
		if n > 0 {
			h.resent.Add(uint64(n))
			st.lastSend.Store(now.UnixNano())
		}
		return true
	})
}

// run sweeps every half resend interval until quit closes.
func (h *resendHook) run(quit <-chan struct{}, done func()) {
	defer done()
	t := time.NewTicker(h.after / 2)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case now := <-t.C:
			h.sweep(now)
		}
	}
}
