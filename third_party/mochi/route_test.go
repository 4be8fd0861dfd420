// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// routeHook records the routes of publishes on r/x, skips the subscriber
// named skip, holds each acknowledgement on gate, and records the publish
// ids of the copies queued for subscribers.
type routeHook struct {
	HookBase
	skip string
	gate *gate

	mu       sync.Mutex
	routes   map[uint64][]string // publish id: subscribers routed to
	queued   map[string][]uint64 // subscriber: publish ids of its OnQosPublish copies
	released map[uint64]bool     // publish ids OnPublished saw
}

func (h *routeHook) ID() string { return "route" }
func (h *routeHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck || b == OnRoute || b == OnQosPublish || b == OnPublished
}
func (h *routeHook) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *routeHook) OnACLCheck(*Client, string, bool) bool              { return true }

func (h *routeHook) OnRoute(cl *Client, pk packets.Packet, r *Route) error {
	if pk.TopicName != "r/x" {
		return nil
	}
	h.mu.Lock()
	h.routes[pk.PublishID] = slices.Sorted(maps.Keys(r.Subscriptions()))
	h.mu.Unlock()
	r.Skip(h.skip)
	cl.HoldAck(h.gate)
	return nil
}

func (h *routeHook) OnQosPublish(cl *Client, pk packets.Packet, _ int64, _ int) {
	h.mu.Lock()
	h.queued[cl.ID] = append(h.queued[cl.ID], pk.PublishID)
	h.mu.Unlock()
}

func (h *routeHook) OnPublished(_ *Client, pk packets.Packet) {
	h.mu.Lock()
	h.released[pk.PublishID] = true
	h.mu.Unlock()
}

// TestRouteBeforeAcknowledgement: a client's PUBLISH is routed once, before
// its acknowledgement. OnRoute sees every subscriber, ordinary and the
// chosen member of a shared group, on a topic whether or not it has shared
// subscribers (upstream's only such hook, OnSelectSubscribers, ran only for
// topics with shared subscribers, and after the PUBACK); it may hold the
// acknowledgement and keep a subscriber out of the delivery. Two identical
// messages get different publish ids, which the subscribers' copies keep.
func TestRouteBeforeAcknowledgement(t *testing.T) {
	s := newLifecycleServer()
	h := &routeHook{skip: "skipped", gate: newGate(), routes: map[uint64][]string{},
		queued: map[string][]uint64{}, released: map[uint64]bool{}}
	require.NoError(t, s.AddHook(h, nil))
	addr := serveTCP(t, s)

	kept, _ := connect(t, addr, 5, "kept", true, 0)
	kept.subscribe(1, "r/#")
	skipped, _ := connect(t, addr, 5, "skipped", true, 0)
	skipped.subscribe(1, "r/x", "barrier")
	member, _ := connect(t, addr, 5, "member", true, 0)
	member.subscribe(1, "$share/g/r/+")
	pub, _ := connect(t, addr, 5, "pub", true, 0)

	for id := uint16(1); id <= 2; id++ {
		pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: id, TopicName: "r/x", Payload: []byte("same")})
	}
	require.Eventually(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.routes) == 2
	}, lifecycleWait, time.Millisecond)
	select {
	case pk := <-pub.in:
		t.Fatalf("%s before the hook's write was done", packets.PacketNames[pk.FixedHeader.Type])
	default:
	}
	close(h.gate.ch)
	for id := uint16(1); id <= 2; id++ {
		require.Equal(t, id, pub.expect(packets.Puback).PacketID)
	}
	for _, p := range []*peer{kept, member} {
		for range 2 {
			require.Equal(t, "same", string(p.expect(packets.Publish).Payload))
		}
	}
	require.NoError(t, s.Publish("barrier", nil, false, 0))
	require.Equal(t, "barrier", skipped.expect(packets.Publish).TopicName, "the skipped subscriber got the message")

	h.mu.Lock()
	defer h.mu.Unlock()
	ids := slices.Sorted(maps.Keys(h.routes))
	require.Len(t, ids, 2)
	require.NotEqual(t, ids[0], ids[1])
	for _, id := range ids {
		require.Equal(t, []string{"kept", "member", "skipped"}, h.routes[id])
		require.True(t, h.released[id])
	}
	require.Equal(t, ids, h.queued["kept"])
	require.Equal(t, ids, h.queued["member"])
	require.Empty(t, h.queued["skipped"])
}

// deliveryHook holds each QoS 2 delivery to a client on the gate its
// payload names, from OnQosPublish.
type deliveryHook struct {
	HookBase
	gates map[string]*gate
	held  atomic.Int32
}

func (h *deliveryHook) ID() string { return "delivery-hold" }
func (h *deliveryHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck || b == OnQosPublish
}
func (h *deliveryHook) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *deliveryHook) OnACLCheck(*Client, string, bool) bool              { return true }
func (h *deliveryHook) OnQosPublish(cl *Client, pk packets.Packet, _ int64, _ int) {
	if g := h.gates[string(pk.Payload)]; g != nil && pk.FixedHeader.Type == packets.Publish {
		if cl.HoldDelivery(pk.PacketID, g) {
			h.held.Add(1)
		}
	}
}

// TestHoldDelivery: a PUBLISH whose delivery a hook holds from
// OnQosPublish leaves only once the hook's write is done, the deliveries
// after it wait behind it, and the publisher is not blocked meanwhile (its
// other messages reach other subscribers). A failed hold withholds the
// PUBLISH and closes the subscriber's connection; the message stays in
// flight for the session's resend. Upstream had no such hold: a storage
// hook could only block the publisher's goroutine for the write.
func TestHoldDelivery(t *testing.T) {
	s := newLifecycleServer()
	failed := newGate()
	failed.err = errors.New("disk full")
	close(failed.ch)
	h := &deliveryHook{gates: map[string]*gate{"slow": newGate(), "failed": failed}}
	require.NoError(t, s.AddHook(h, nil))
	addr := serveTCP(t, s)

	sub, _ := connect(t, addr, 5, "sub", false, 60)
	sub.subscribe(1, "held/#")
	other, _ := connect(t, addr, 5, "other", true, 0)
	other.subscribe(1, "free/#")

	require.NoError(t, s.Publish("held/1", []byte("slow"), false, 2))
	require.NoError(t, s.Publish("held/2", []byte("after"), false, 2))
	require.NoError(t, s.Publish("free/1", []byte("free"), false, 1))
	require.Equal(t, "free", string(other.expect(packets.Publish).Payload), "the publisher was blocked by the hold")
	select {
	case pk := <-sub.in:
		t.Fatalf("%s %q before the hook's write was done", packets.PacketNames[pk.FixedHeader.Type], pk.Payload)
	case <-time.After(50 * time.Millisecond):
	}
	close(h.gates["slow"].ch)
	require.Equal(t, "slow", string(sub.expect(packets.Publish).Payload))
	require.Equal(t, "after", string(sub.expect(packets.Publish).Payload))

	require.NoError(t, s.Publish("held/3", []byte("failed"), false, 2))
	for _, pk := range sub.expectClosed() {
		require.NotEqual(t, "failed", string(pk.Payload), "written although its hold failed")
	}
	cl, ok := s.Clients.Get("sub")
	require.True(t, ok)
	found := false
	for _, pk := range cl.State.Inflight.GetAll(false) {
		found = found || string(pk.Payload) == "failed"
	}
	require.True(t, found, "the withheld message is no longer in flight")
	require.Equal(t, int32(2), h.held.Load(), "holds accepted")
	require.False(t, cl.HoldDelivery(1, newGate()), "accepted outside OnQosPublish")
}
