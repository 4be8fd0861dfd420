package outbox

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// gcLoop reclaims value-log space on a timer: the outbox writes and deletes
// every message, so without it the value log only grows.
func (o *Outbox) gcLoop() {
	defer o.wg.Done()
	t := time.NewTicker(o.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-o.quit:
			return
		case <-t.C:
			for {
				err := o.db.RunValueLogGC(0.5)
				if err == nil {
					continue
				}
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					o.log.Warn("outbox: value log gc", "dir", o.cfg.Dir, "err", err)
				}
				break
			}
		}
	}
}
