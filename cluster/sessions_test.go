package cluster

import "testing"

// TestPurgePoint: a session's queue is purged below its oldest message
// still in flight, whatever order the acknowledgements come in.
func TestPurgePoint(t *testing.T) {
	tests := []struct {
		name  string
		acks  []uint16 // packet ids 1, 2, 3 carry sequences 3, 5, 7; the cursor is at 8
		purge uint64   // 0: nothing to purge yet
	}{
		{"oldest first", []uint16{1}, 5},
		{"newest first", []uint16{3}, 0},
		{"middle then oldest", []uint16{2, 1}, 7},
		{"all", []uint16{3, 1, 2}, 8},
		{"unknown packet id", []uint16{9}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := &sessions{toPurge: map[string]uint64{}, purgeKick: make(chan struct{}, 1)}
			o := &ownedSession{key: "k", cursor: 8, inflight: map[uint16]uint64{1: 3, 2: 5, 3: 7},
				order: []uint64{3, 5, 7}, settled: map[uint64]struct{}{}, purged: 3}
			for _, pid := range tt.acks {
				if seq, ok := o.inflight[pid]; ok {
					o.settle(pid, seq)
					ss.markDone(o)
				}
			}
			if got := ss.toPurge["k"]; got != tt.purge {
				t.Fatalf("purge below %d, want %d", got, tt.purge)
			}
		})
	}
}
