// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
type ReadFn func(*Client, packets.Packet) error

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// deleteIf removes the client under id only if it is c: a connection that
// ends must not remove the newer connection that took its client id over.
func (cl *Clients) deleteIf(id string, c *Client) bool {
	cl.Lock()
	defer cl.Unlock()
	if cl.internal[id] != c {
		return false
	}
	delete(cl.internal, id)
	return true
}

// idLocks serializes what changes the session of one client id: a new
// connection taking the session over, the end of the connection that held
// it, and its expiry. Without it a quick reconnect lost subscriptions: the
// old connection's clean-up unsubscribed by client id after the new one had
// inherited them, or deleted the new client from Clients.
type idLocks struct {
	mu sync.Mutex
	m  map[string]*idLock
}

type idLock struct {
	sync.Mutex
	refs int // goroutines holding or waiting for it
}

// lock locks client id and returns its unlock.
func (l *idLocks) lock(id string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*idLock)
	}
	k := l.m[id]
	if k == nil {
		k = new(idLock)
		l.m[id] = k
	}
	k.refs++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	// len, not cl.Len(): a second RLock by the same goroutine deadlocks
	// once a writer waits between the two (upstream #488).
	clients := make([]*Client, 0, len(cl.internal))
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// connSet tracks the connection handlers that are running (attachClient),
// so that Close can stop even a client that is not in Clients yet, and
// admits none once Close has begun. The WaitGroup is added to under the same
// lock that sets closing, so every Add happens before Close's Wait: an Add
// from zero concurrent with Wait is a race (upstream #424).
type connSet struct {
	mu      sync.Mutex
	closing bool
	live    map[*Client]connState
}

type connState struct {
	listener    string
	established bool // the client is in Clients: Close disconnects it from there
}

// enter registers cl's handler on listener in wg, or returns false if the
// server is closing.
func (s *connSet) enter(cl *Client, listener string, wg *sync.WaitGroup) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.live == nil {
		s.live = make(map[*Client]connState)
	}
	s.live[cl] = connState{listener: listener}
	wg.Add(1)
	return true
}

// leave ends what enter began.
func (s *connSet) leave(cl *Client, wg *sync.WaitGroup) {
	s.mu.Lock()
	delete(s.live, cl)
	s.mu.Unlock()
	wg.Done()
}

// close admits no more handlers.
func (s *connSet) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
}

// establish notes that cl has been added to Clients.
func (s *connSet) establish(cl *Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.live[cl]; ok {
		st.established = true
		s.live[cl] = st
	}
}

// connecting returns the clients on listener id whose connection is not
// established yet.
func (s *connSet) connecting(id string) []*Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Client
	for cl, st := range s.live {
		if st.listener == id && !st.established {
			out = append(out, cl)
		}
	}
	return out
}

// len returns the number of handlers running.
func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn     net.Conn      // the net.Conn used to establish the connection
	bconn    *bufio.Reader // a buffered net.Conn for reading packets
	Remote   string        // the remote address of the client
	Listener string        // listener id of the client
	Inline   bool          // if true, the client is the built-in 'inline' embedded client
	// Relay marks an inline client that relays messages another server of
	// a cluster accepted: they are delivered here with their retain flag
	// (for subscribers with Retain As Published) but not retained here,
	// where the cluster keeps retained messages itself.
	Relay bool
	done  func(error) // called once the connection has ended (Attach)
}

// end calls done with the error that ended the connection.
func (c *ClientConnection) end(err error) {
	if c.done != nil {
		c.done(err)
	}
}

// ClientProperties contains the properties which define the client behaviour.
type ClientProperties struct {
	Props           packets.Properties
	Will            Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
type ClientState struct {
	TopicAliases    TopicAliases       // a map of topic aliases
	stopCause       atomic.Value       // reason for stopping
	Inflight        *Inflight          // a map of in-flight qos messages
	Subscriptions   *Subscriptions     // a map of the subscription filters a client maintains
	disconnected    int64              // the time the client disconnected in unix time, for calculating expiry
	outbound        outQueue           // packets to write (outqueue.go)
	endOnce         sync.Once          // only end once
	isTakenOver     atomic.Bool        // used to identify orphaned clients
	handled         chan struct{}      // closed when the connection's handler has returned; nil without one
	handed          map[uint16]bool    // ids of the PUBLISHes in flight when the connection ended (so sent, or maybe sent)
	packetID        uint32             // the current highest packetID
	open            context.Context    // indicate that the client is open for packet exchange
	cancelOpen      context.CancelFunc // cancel function for open context
	outboundQty     int32              // number of messages currently in the outbound queue
	flows           atomic.Uint64      // QoS 1/2 packets sent to the client and acknowledgements from it (resend.go)
	quietSeen       uint64             // flows at the last sweep of resendLoop, which alone reads it
	quietSweeps     int                // sweeps since flows last moved
	acks            ackHolds           // acknowledgements held for hooks' writes (ackhold.go)
	deadlineNext    int64              // Unix nanoseconds before which refreshDeadline leaves the deadline; 0: set it now. Its reader alone uses it
	reading         bool               // Read is running: deliveries it makes may leave waking their writers to it (outqueue.go)
	flushTo         []*Client          // clients this reader queued for without waking their writers; its own goroutine alone uses it
	atReadEnd       []func()           // run at the end of the read buffer (AtReadEnd); its own goroutine alone uses it
	refused         *packets.Code      // set by RefuseSession in OnSessionEstablish
	park            parkState          // the poller's registration while idle (park.go)
	counted         atomic.Bool        // counted in Info.ClientsConnected
	finish          sync.Once          // the connection's handling ends once
	feed            feedState          // the feed of a StoredQueue's messages (storedfeed.go)
	Keepalive       uint16             // the number of seconds the connection can wait
	ServerKeepalive bool               // keepalive was set by the server
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			TopicAliases:  NewTopicAliases(o.options.Capabilities.TopicAliasMaximum),
			open:          ctx,
			cancelOpen:    cancel,
			Keepalive:     defaultKeepalive,
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}

	if c != nil {
		cl.Net = ClientConnection{
			Conn:   c,
			bconn:  bufio.NewReaderSize(c, o.options.ClientNetReadBufferSize),
			Remote: c.RemoteAddr().String(),
		}
	}

	return cl
}

// WriteLoop returns once the client is closed. Upstream it ran for the
// client's whole life, writing its outbound queue; the queue now starts a
// writer only while it holds something (outqueue.go). Kept for the API.
func (cl *Client) WriteLoop() {
	<-cl.State.open.Done()
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = pk.Connect.Username
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props = pk.Properties.Copy(false)

	if cl.Properties.Props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
		cl.Properties.Props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
	}

	if pk.Connect.Keepalive <= minimumKeepalive {
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", cl.ID,
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.Props.ReceiveMaximum))            // client receive max
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(cl.Properties.Props.TopicAliasMaximum)

	cl.ID = pk.Connect.ClientIdentifier
	if cl.ID == "" {
		cl.ID = xid.New().String() // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.Props.AssignedClientID = cl.ID
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = Will{
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           pk.Connect.WillPayload,
			TopicName:         pk.Connect.WillTopic,
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              pk.Connect.WillProperties.User,
		}
		if pk.Properties.SessionExpiryIntervalFlag &&
			pk.Properties.SessionExpiryInterval < pk.Connect.WillProperties.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = pk.Properties.SessionExpiryInterval
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read/write deadline for the net.Conn connection.
//
// It moves the deadline at most every slack (an eighth of the keepalive's
// window of 1.5 × keepalive, at most a second), and then slack further
// than the window, so a silent client is closed between 1.5 × keepalive
// and that plus slack after its last packet, never before [MQTT-3.1.2-22].
// Upstream moved it for every packet read: a runtime timer update (and a
// lock in a wrapping connection) that took 7 % of a core under fan-in.
func (cl *Client) refreshDeadline(keepalive uint16) {
	if cl.Net.Conn == nil {
		return
	}
	now := time.Now()
	if next := cl.State.deadlineNext; next != 0 && now.UnixNano() < next {
		return
	}
	if keepalive == 0 {
		_ = cl.Net.Conn.SetDeadline(time.Time{})
		cl.State.deadlineNext = math.MaxInt64 // none to move
		return
	}
	window := time.Duration(keepalive+keepalive/2) * time.Second
	slack := min(window/8, time.Second)
	_ = cl.Net.Conn.SetDeadline(now.Add(window + slack))
	cl.State.deadlineNext = now.Add(slack).UnixNano()
}

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
func (cl *Client) NextPacketID() (i uint32, err error) {
	cl.Lock()
	defer cl.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if _, ok := cl.State.Inflight.Get(uint16(i)); !ok {
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	if cl.State.Inflight.Len() == 0 {
		return nil
	}

	for _, tk := range cl.State.Inflight.GetAll(false) {
		if !cl.State.Inflight.resent(&tk) {
			continue // delivered since the session was inherited: it is in the queue
		}
		// Only the server's own flows are resent: its PUBLISH and its
		// PUBREL [MQTT-4.4.0-1]. A PUBREC belongs to the client's flow and
		// waits for the client to resend PUBREL (upstream resent it).
		// A PUBLISH keeps the DUP flag it has in Inflight: set if it was
		// sent (or handed to a connection) before, clear for a message
		// queued while the client was away [MQTT-3.3.1-1] [MQTT-3.3.1-3]
		// (upstream set it on all, so first deliveries after a reconnect
		// or restart looked like duplicates).
		switch tk.FixedHeader.Type {
		case packets.Publish, packets.Pubrel:
		default:
			continue
		}

		// resends 1: this is no new message for storage hooks, whatever
		// its DUP flag.
		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 1)
		err := cl.WritePacket(tk)
		if err != nil {
			return err
		}
	}

	return nil
}

// noteHanded records which PUBLISHes the ending connection held in flight:
// they were written to it, or queued to be, so they go out again with DUP
// set. One waiting for send quota (Expiry -1) was not.
func (cl *Client) noteHanded() {
	handed := make(map[uint16]bool)
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish && pk.Expiry >= 0 {
			handed[pk.PacketID] = true
		}
	}
	cl.State.handed = handed
}

// adoptInflight readies the PUBLISHes cl inherited from prev, whose
// session it takes over, for cl's connection. Those in flight when prev's
// connection ended get DUP set. Topic aliases are scoped to a network
// connection [MQTT-3.3.2-7]: prev's outbound aliases are replaced by their
// topics (upstream resent a message queued while the client was away with
// only an alias the new connection never saw). Inflight must be cl's own
// copy still.
func (cl *Client) adoptInflight(prev *Client) {
	var aliases map[uint16]string
	if prev.State.TopicAliases.Outbound != nil {
		aliases = prev.State.TopicAliases.Outbound.topics()
	}
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		changed := false
		// Without a connection (restored from storage) the flag is as stored.
		if !pk.FixedHeader.Dup && prev.State.handed[pk.PacketID] {
			pk.FixedHeader.Dup, changed = true, true
		}
		if pk.Properties.TopicAliasFlag {
			if pk.TopicName == "" {
				pk.TopicName = aliases[pk.Properties.TopicAlias]
			}
			if pk.TopicName != "" {
				pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag, changed = 0, false, true
			}
		}
		if changed {
			cl.State.Inflight.Set(pk)
		}
	}
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	for _, tk := range cl.State.Inflight.GetAll(false) {
		expired := tk.ProtocolVersion == 5 && tk.Expiry > 0 && tk.Expiry < now // [MQTT-3.3.2-5]

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := maximumExpiry > 0 && now-tk.Created > maximumExpiry

		if expired || enforced {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosDropped(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
				deleted = append(deleted, tk.PacketID)
			}
		}
	}

	return deleted
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
func (cl *Client) Read(packetHandler ReadFn) (err error) {
	cl.State.reading = true
	defer func() {
		// Parked, the client is the poller's, and may already be read
		// again on another goroutine; nothing was deferred (the loop
		// flushes before it waits).
		if !errors.Is(err, errParked) {
			cl.State.reading = false
			cl.flushDeferred()
		}
	}()
	for {
		if (len(cl.State.flushTo) > 0 || len(cl.State.atReadEnd) > 0) && !cl.packetBuffered() {
			cl.flushDeferred() // the next read may wait
		}
		if cl.Closed() {
			return nil
		}

		parked, err := cl.waitIdle()
		if parked {
			return errParked
		}
		if err != nil {
			return err
		}
		fh := new(packets.FixedHeader)
		err = cl.ReadFixedHeader(fh)
		if err != nil {
			return err
		}

		pk, err := cl.ReadPacket(fh)
		if err != nil {
			return err
		}

		err = packetHandler(cl, pk) // Process inbound packet.
		if err != nil {
			return err
		}
	}
}

// packetBuffered says whether the read buffer holds a whole packet, which
// the reader can take without waiting for the network.
func (cl *Client) packetBuffered() bool {
	b := cl.Net.bconn
	if b == nil {
		return false
	}
	n := b.Buffered()
	if n < 2 {
		return false
	}
	head, _ := b.Peek(min(n, 5))
	remaining, shift := 0, 0
	for i := 1; i < len(head); i++ {
		remaining |= int(head[i]&0x7f) << shift
		if head[i]&0x80 == 0 {
			return n >= i+1+remaining
		}
		shift += 7
	}
	return false // the length is not all here, or is malformed: the read will tell
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {
		if err != nil {
			cl.State.stopCause.Store(err)
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
		if cl.State.cancelOpen != nil {
			cl.State.cancelOpen()
		}

		// Closed is set before a parked connection is woken, and woken
		// before its socket is closed (park.go).
		if cl.State.park.rc != nil && cl.ops.parker != nil {
			cl.ops.parker.wake(cl)
		}
		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.Close() // omit close error
		}
	})
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if cl.State.stopCause.Load() == nil {
		return nil
	}
	return cl.State.stopCause.Load().(error)
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	return cl.State.open == nil || cl.State.open.Err() != nil
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.isTakenOver.Load()
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	if cl.Net.bconn == nil {
		return ErrConnectionClosed
	}

	b, err := cl.Net.bconn.ReadByte()
	if err != nil {
		return err
	}

	err = fh.Decode(b)
	if err != nil {
		return err
	}

	var bu int
	fh.Remaining, bu, err = packets.DecodeLength(cl.Net.bconn)
	if err != nil {
		return err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (pk packets.Packet, err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh
	// The decoded packet keeps slices of px (topic, payload): px is its
	// own. Upstream read into one buffer and decoded a copy of it: two
	// allocations and two copies of every payload.
	n := pk.FixedHeader.Remaining
	var px []byte
	if cl.Net.bconn.Buffered() >= n {
		b, _ := cl.Net.bconn.Peek(n)
		px = make([]byte, len(b)) // with the copy: allocated, not zeroed
		copy(px, b)
		_, _ = cl.Net.bconn.Discard(n)
	} else {
		px = make([]byte, n)
		if _, err := io.ReadFull(cl.Net.bconn, px); err != nil {
			return pk, err
		}
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(n))
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq:
	case packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err != nil {
		return pk, err
	}

	if !cl.ops.hooks.readsPacket(pk.FixedHeader.Type) {
		return pk, nil
	}
	cl.startCollectingRead(&pk)
	pk, err = cl.ops.hooks.OnPacketRead(cl, pk)
	cl.State.acks.readWaits = cl.stopCollecting()
	if err != nil {
		settleWaits(cl.takeReadWaits())
	}
	return
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	if pk.FixedHeader.Type == packets.Publish {
		if queued, err := cl.writeInOrder(pk); queued {
			return err
		}
	}

	buf := new(bytes.Buffer)
	pk, err := cl.encodePacket(pk, buf)
	if err != nil {
		return err
	}

	n, err := cl.writeSocket(buf.Bytes())
	if err != nil {
		return err
	}

	cl.countSent(&pk, int64(n))
	cl.ops.hooks.OnPacketSent(cl, pk, buf.Bytes())
	return nil
}

// countSent adds a written packet to the server's counters.
func (cl *Client) countSent(pk *packets.Packet, n int64) {
	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 || pk.FixedHeader.Type == packets.Pubrel {
		cl.State.flows.Add(1)
	}
}

// encodePacket appends pk, as this client is to receive it, to buf and
// returns it as encoded. On an error buf is left as it was.
func (cl *Client) encodePacket(pk packets.Packet, buf *bytes.Buffer) (packets.Packet, error) {
	start := buf.Len()
	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	}

	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || cl.Properties.Props.RequestResponseInfo == 0x1 || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}

	pk = cl.ops.hooks.OnPacketEncode(cl, pk)

	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	default:
		err = fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
	if err != nil {
		buf.Truncate(start)
		return pk, err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()-start) > pk.Mods.MaxSize {
		buf.Truncate(start)
		return pk, packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}
	return pk, nil

}
