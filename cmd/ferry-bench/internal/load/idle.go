package load

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/cmd/ferry-bench/internal/mqttc"
)

// runIdle opens cfg.Clients connections that then stay silent, measuring
// the connect rate and, given a broker pid, the broker's RSS growth. At the
// end every connection is pinged to count those still alive.
func runIdle(ctx context.Context, r *run, res *Result) error {
	cfg := r.cfg
	res.Clients, res.BrokerPID = cfg.Clients, cfg.BrokerPID
	if cfg.BrokerPID > 0 {
		rss, err := ReadRSS(cfg.BrokerPID)
		if err != nil {
			return err
		}
		res.RSSBeforeBytes = rss
	}
	cpu := startCPU(cfg.brokerPIDs())
	start := time.Now()
	conns := make([]*mqttc.Conn, cfg.Clients)
	var connected atomic.Int64
	done := make(chan struct{})
	progress(r, start, connected.Load, func() int64 { return 0 }, done)
	// A refused or failed connection is a result, not a reason to stop.
	_ = parallel(ctx, cfg.Clients, cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c, err := r.dial(ctx, r.cfg.Addr, r.clientID("idle", i))
		if err != nil {
			r.fail(err)
			return nil
		}
		conns[i] = c
		connected.Add(1)
		return nil
	})
	connectDur := time.Since(start)
	res.Connected = int(connected.Load())
	res.ConnectSeconds = connectDur.Seconds()
	if connectDur > 0 {
		res.ConnectRate = float64(res.Connected) / connectDur.Seconds()
	}

	hold := time.NewTimer(cfg.Duration)
	select {
	case <-hold.C:
	case <-ctx.Done():
		hold.Stop()
	}
	if cfg.BrokerPID > 0 {
		rss, err := ReadRSS(cfg.BrokerPID)
		if err != nil {
			r.fail(err)
		} else {
			res.RSSAfterBytes = rss
			if res.Connected > 0 {
				res.RSSPerConnBytes = (rss - res.RSSBeforeBytes) / int64(res.Connected)
			}
		}
	}

	var alive atomic.Int64
	_ = parallel(ctx, cfg.Clients, cfg.ConnectConcurrency, func(ctx context.Context, i int) error {
		c := conns[i]
		if c == nil {
			return nil
		}
		if err := c.WritePing(); err != nil {
			return nil
		}
		if err := c.Flush(); err != nil {
			return nil
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			pk, err := c.Read()
			if err != nil {
				return nil
			}
			if pk.Type == mqttc.PINGRESP {
				alive.Add(1)
				return nil
			}
		}
	})
	res.Alive = int(alive.Load())
	res.GenCPU, res.GenCores = cpu.share()
	res.BrokerCPU = cpu.brokerCores()
	res.SendSeconds, res.WallSeconds = 0, time.Since(start).Seconds()
	close(done)
	return nil
}
