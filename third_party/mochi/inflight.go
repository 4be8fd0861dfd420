// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight holds a client's unfinished QoS 1/2 flows, keyed by packet id.
//
// MQTT numbers each direction's packets on its own (MQTT 5 2.2.1, 3.1.1
// 2.3.1): the client may use an identifier the server is using for its own
// unacknowledged PUBLISH. So the server's flows (its PUBLISH and PUBREL,
// what Get, Delete, Len and GetAll see) and the client's (the PUBREC the
// server answered a QoS 2 PUBLISH with, awaiting PUBREL: GetInbound and
// DeleteInbound) are kept apart. Set files a packet by its type.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]packets.Packet // the server's flows: PUBLISH, PUBREL
	inbound             map[uint16]packets.Packet // the client's flows: PUBREC, PUBACK, PUBCOMP
	receiveQuota        int32                     // remaining inbound qos quota for flow control
	sendQuota           int32                     // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                     // maximum allowed receive quota
	maximumSendQuota    int32                     // maximum allowed send quota
	// order numbers the server's flows as they were added (a flow keeps
	// its number when its packet is replaced, PUBLISH by PUBREL): GetAll
	// and so a session's resend follow it.
	order   map[uint16]uint64
	ordered uint64
	// resendUpTo: the last flow a resumed session inherited (markResend);
	// flows numbered after it were delivered to the new connection and go
	// out through its queue, not with the resend.
	resendUpTo uint64
	marked     bool
	// successor: the connection that inherited these flows (moveTo); a
	// delivery that comes late to the old connection goes there.
	successor atomic.Pointer[Client]
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint16]packets.Packet{},
		inbound:  map[uint16]packets.Packet{},
	}
}

// isInbound reports whether a packet the server holds belongs to a flow the
// client started: the server's answers to a client's PUBLISH.
func isInbound(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		return true
	}
	return false
}

// Set adds or updates an inflight packet by packet id, among the server's
// flows or the client's according to its type. It reports whether the id
// was free in that direction.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	if isInbound(&m) {
		_, ok := i.inbound[m.PacketID]
		i.inbound[m.PacketID] = m
		return !ok
	}
	return i.setLocked(m)
}

func (i *Inflight) setLocked(m packets.Packet) bool {
	_, ok := i.internal[m.PacketID]
	i.internal[m.PacketID] = m
	if !ok {
		if i.order == nil {
			i.order = make(map[uint16]uint64)
		}
		i.ordered++
		i.order[m.PacketID] = i.ordered
	}
	return !ok
}

// setDelivery files a new delivery (a server PUBLISH) like Set, unless the
// session has moved to another connection (moveTo): then it files nothing
// and returns that connection.
func (i *Inflight) setDelivery(m packets.Packet) (fresh bool, moved *Client) {
	i.Lock()
	defer i.Unlock()
	if next := i.successor.Load(); next != nil {
		return false, next
	}
	return i.setLocked(m), nil
}

// moveTo hands i's flows, with their order, to the Inflight of next, the
// connection inheriting the session, and seals i: from then on a delivery
// to the old connection (a publisher that looked the client up before the
// new one replaced it) goes to next instead of into flows nobody will send.
func (i *Inflight) moveTo(next *Client) {
	to := next.State.Inflight
	i.Lock()
	defer i.Unlock()
	to.Lock()
	defer to.Unlock()
	for k, v := range i.internal {
		to.internal[k] = v
	}
	for k, v := range i.inbound {
		to.inbound[k] = v
	}
	if len(i.order) > 0 && to.order == nil {
		to.order = make(map[uint16]uint64, len(i.order))
	}
	for k, v := range i.order {
		to.order[k] = v
	}
	to.ordered = max(to.ordered, i.ordered)
	// What next inherits is what it resends, marked under the same lock
	// as the move: from the successor link on, a late delivery to i is
	// filed in next as new and goes out through next's queue. Marked
	// later, such a delivery was also counted as inherited and written
	// twice, by the resend and by the queue, under the same packet id
	// (a QoS 2 subscriber that completed the flow in between took the
	// second copy for a new message).
	to.resendUpTo, to.marked = to.ordered, true
	// Moved, so gone from here: clearing the old client afterwards
	// (inheritClientSession) must not count them dropped (upstream cloned
	// them, and that clearing took each inherited flow off Info.Inflight
	// and told OnQosDropped about it).
	clear(i.internal)
	clear(i.inbound)
	clear(i.order)
	i.successor.Store(next)
}

// markResend notes that the flows held now are the ones a resumed session
// resends: anything filed later is new, and is written through the
// connection's queue. A mark moveTo set stays.
func (i *Inflight) markResend() {
	i.Lock()
	defer i.Unlock()
	if !i.marked {
		i.resendUpTo, i.marked = i.ordered, true
	}
}

// resent reports whether the flow pk, from GetAll, is one markResend
// noted (all are, without a mark).
func (i *Inflight) resent(pk *packets.Packet) bool {
	i.RLock()
	defer i.RUnlock()
	return !i.marked || i.order[pk.PacketID] <= i.resendUpTo
}

// GetInbound returns the state of the client's flow with packet id id.
func (i *Inflight) GetInbound(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()
	m, ok := i.inbound[id]
	return m, ok
}

// DeleteInbound ends the client's flow with packet id id and reports
// whether it existed.
func (i *Inflight) DeleteInbound(id uint16) bool {
	i.Lock()
	defer i.Unlock()
	_, ok := i.inbound[id]
	delete(i.inbound, id)
	return ok
}

// GetAllInbound returns the client's unfinished flows.
func (i *Inflight) GetAllInbound() []packets.Packet {
	i.RLock()
	defer i.RUnlock()
	m := make([]packets.Packet, 0, len(i.inbound))
	for _, v := range i.inbound {
		m = append(m, v)
	}
	sort.Slice(m, func(a, b int) bool { return m[a].PacketID < m[b].PacketID })
	return m
}

// Get returns the server's inflight packet with packet id id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return m, true
	}

	return packets.Packet{}, false
}

// Len returns the number of the server's unfinished flows.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, v := range i.internal {
		c.internal[k] = v
	}
	for k, v := range i.inbound {
		c.inbound[k] = v
	}
	if len(i.order) > 0 {
		c.order = make(map[uint16]uint64, len(i.order))
		for k, v := range i.order {
			c.order[k] = v
		}
	}
	c.ordered = i.ordered
	return c
}

// GetAll returns the server's unfinished flows.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || (immediate && v.Expiry < 0) {
			m = append(m, v)
		}
	}

	// In the order the flows began (upstream sorted by uint16(Created):
	// whole seconds, wrapping every 18 hours, so the messages of one second
	// were resent in any order).
	sort.Slice(m, func(a, b int) bool {
		return i.order[m[a].PacketID] < i.order[m[b].PacketID]
	})

	return m
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	m := i.GetAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// Delete ends the server's flow with packet id id. Returns true if it existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)
	delete(i.order, id)

	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
