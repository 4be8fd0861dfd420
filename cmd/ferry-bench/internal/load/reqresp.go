package load

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// requester sends requests (MQTT 5 response topic + correlation data) and
// receives the echoed responses on one connection.
type requester struct {
	pub *publisher
	sub *subscriber
	// mismatched counts responses whose correlation data does not name
	// the request echoed in their payload; owned by the read loop.
	mismatched int64
}

// read handles responses and the acks for requests on one connection.
func (q *requester) read() error {
	p, s := q.pub, q.sub
	defer close(p.dead)
	c := p.conn
	dirty := false
	for {
		pk, err := c.Read()
		if err != nil {
			if p.r.closing.Load() {
				return nil
			}
			return fmt.Errorf("requester %d: %w", p.id, err)
		}
		switch pk.Type {
		case mqttc.PUBLISH:
			uniq := s.uniq.Load()
			if err := s.deliver(&pk, time.Now().UnixNano()); err != nil {
				return err
			}
			if h, ok := ParseHeader(pk.Payload); ok && h.Nonce == p.r.nonce {
				cd := pk.Props.CorrelationData
				if len(cd) != 8 || binary.BigEndian.Uint64(cd) != h.Seq || h.Publisher != p.id {
					q.mismatched++
				}
			}
			if s.uniq.Load() > uniq {
				p.release() // a fresh response frees one outstanding slot
			}
			if pk.QoS > 0 {
				if err := c.AckIncoming(&pk); err != nil {
					return err
				}
				dirty = true
			}
		case mqttc.PUBACK:
			p.markAcked(&pk)
		case mqttc.PUBREC:
			p.markAcked(&pk)
			if pk.Reason < 0x80 {
				if err := c.WriteAck(mqttc.PUBREL, pk.PacketID); err != nil {
					return err
				}
				dirty = true
			}
		case mqttc.PUBREL:
			if err := c.WriteAck(mqttc.PUBCOMP, pk.PacketID); err != nil {
				return err
			}
			dirty = true
		case mqttc.DISCONNECT:
			return fmt.Errorf("requester %d: %w: reason %#x", p.id, mqttc.ErrServerDiscon, pk.Reason)
		}
		if dirty && !c.ReadBuffered() {
			if err := c.Flush(); err != nil {
				return err
			}
			dirty = false
		}
	}
}

// respond is the responder's handler: echo the request's payload to its
// response topic with the same correlation data.
func respond(s *subscriber) func(pk *mqttc.Packet, h Header) error {
	var id uint16
	return func(pk *mqttc.Packet, _ Header) error {
		if len(pk.Props.ResponseTopic) == 0 {
			return fmt.Errorf("responder: request without response topic")
		}
		out := mqttc.Publish{Topic: pk.Props.ResponseTopic, QoS: s.r.cfg.QoS, Payload: pk.Payload}
		out.Props.CorrelationData = pk.Props.CorrelationData
		if out.QoS > 0 {
			id++
			if id == 0 {
				id = 1
			}
			out.PacketID = id
		}
		return s.conn.WritePublish(&out)
	}
}

func runReqResp(ctx context.Context, r *run, res *Result) error {
	cfg := r.cfg
	res.Publishers, res.Subscribers, res.Inflight = cfg.Publishers, 1, cfg.Outstanding
	base := cfg.TopicPrefix + "/" + cfg.Scenario
	responders, err := connectSubscribers(ctx, r, []string{base + "/req"}, "responder",
		func(s *subscriber) { s.onMessage = respond(s) })
	if err != nil {
		return err
	}
	responder := responders[0]
	respTopics := make([]string, cfg.Publishers)
	for i := range respTopics {
		respTopics[i] = fmt.Sprintf("%s/resp/%d", base, i)
	}
	// Requesters subscribe to their response topic before their read
	// loop starts, so they are connected here rather than as publishers.
	reqs := make([]*requester, cfg.Publishers)
	err = parallel(ctx, cfg.Publishers, cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c, err := r.dial(ctx, r.cfg.Addr, r.clientID("req", i))
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.Subscribe(sctx, 1, []mqttc.Subscription{{Filter: respTopics[i], QoS: cfg.QoS}}); err != nil {
			return fmt.Errorf("requester %d: %w", i, err)
		}
		p := newPublisher(r, i, c, base+"/req")
		p.sem = make(chan struct{}, cfg.Outstanding)
		p.window = true
		p.respTopic = []byte(respTopics[i])
		reqs[i] = &requester{pub: p, sub: &subscriber{r: r, idx: i, conn: c, filter: respTopics[i]}}
		return nil
	})
	if err != nil {
		return err
	}
	pubs := make([]*publisher, len(reqs))
	for i, q := range reqs {
		pubs[i] = q.pub
		r.goFn(q.read)
	}

	sentTotal := func() int64 {
		var n int64
		for _, p := range pubs {
			n += int64(p.sent.Load())
		}
		return n
	}
	recvTotal := func() int64 {
		var n int64
		for _, q := range reqs {
			n += q.sub.recv.Load()
		}
		return n
	}
	cpu := startCPU(cfg.brokerPIDs())
	start := time.Now()
	done := make(chan struct{})
	progress(r, start, sentTotal, recvTotal, done)
	sendDone := startSending(ctx, r, pubs, start)
	<-sendDone
	sendEnd := time.Now()
	// Every outstanding request either gets its response or is lost.
	ackDrain(ctx, cfg.Drain, pubs)
	res.GenCPU, res.GenCores = cpu.share()
	res.BrokerCPU = cpu.brokerCores()
	wall := time.Since(start)
	close(done)
	r.closeAll()

	res.SendSeconds, res.WallSeconds = sendEnd.Sub(start).Seconds(), wall.Seconds()
	var hist Histogram
	var last int64
	for _, q := range reqs {
		p, s := q.pub, q.sub
		sent := p.sent.Load()
		if p.timedOut.Load() {
			res.SendTimeouts++
		}
		res.Sent += int64(sent)
		res.Acked += p.ackedN.Load()
		res.Rejected += p.rejected.Load()
		st := s.stream(p.id)
		if cfg.QoS > 0 {
			res.Expected += p.acked.n
			res.Lost += st.set.missing(p.acked)
		} else {
			res.Expected += int64(sent)
			res.Lost += st.set.missingBelow(sent)
		}
		res.Unique += st.set.n
		res.Received += s.recv.Load()
		res.Dupes += s.dupes
		res.OutOfOrder += s.ooo
		res.Stale += s.stale
		res.Mismatched += q.mismatched
		hist.Merge(&s.hist)
		last = max(last, s.lastRecv.Load())
	}
	// Responses that reached a requester other than the one that asked
	// show up as stale there; requests the responder could not parse
	// as stale at the responder.
	res.Stale += responder.stale
	res.Requests = responder.uniq.Load()
	if res.Expected > 0 {
		res.LossPct = 100 * float64(res.Lost) / float64(res.Expected)
	}
	if res.SendSeconds > 0 {
		res.SendRate = float64(res.Sent) / res.SendSeconds
	}
	if last > 0 {
		if d := time.Duration(last - start.UnixNano()).Seconds(); d > 0 {
			res.RecvRate = float64(res.Received) / d
		}
	}
	res.Latency = latencyOf(&hist)
	return nil
}
