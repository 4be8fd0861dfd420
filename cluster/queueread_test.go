package cluster

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestReadQueue: a batched read of one session's queue returns its
// messages only, in order, from the sequence asked, at most as many as
// asked, and says when nothing more is stored. Any replica may answer,
// and one that has not applied the last writes yet answers with fewer:
// each read is asked again until it has them all.
func TestReadQueue(t *testing.T) {
	n := startCluster(t, 3)[0].node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// k1 gets 0..9, k2 a message between each of them.
	var k1 []uint64
	for i := range 10 {
		ack, err := n.js.Publish(ctx, queuePrefix+"k1", []byte("a"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		k1 = append(k1, ack.Sequence)
		if _, err := n.js.Publish(ctx, queuePrefix+"k2", []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		from    uint64
		max     int
		want    []int // indexes into k1
		wantEnd bool
	}{
		{"from the start", 0, 4, []int{0, 1, 2, 3}, false},
		{"all of it", 1, 100, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, true},
		{"from the middle", k1[6], 100, []int{6, 7, 8, 9}, true},
		{"between two of its messages", k1[6] + 1, 2, []int{7, 8}, false},
		{"exactly the rest", k1[8], 2, []int{8, 9}, false},
		{"past the end", k1[9] + 1, 10, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				got []queued
				end bool
				err error
			)
			for {
				got, end, err = n.readQueue(ctx, queuePrefix+"k1", tt.from, tt.max)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) >= len(tt.want) || ctx.Err() != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("read %d messages, want %d", len(got), len(tt.want))
			}
			for i, w := range tt.want {
				if got[i].seq != k1[w] || string(got[i].data) != "a"+strconv.Itoa(w) {
					t.Fatalf("message %d: seq %d %q, want seq %d %q", i, got[i].seq, got[i].data, k1[w], "a"+strconv.Itoa(w))
				}
			}
			if end != tt.wantEnd {
				t.Fatalf("end = %v, want %v", end, tt.wantEnd)
			}
		})
	}
	if got, end, err := n.readQueue(ctx, queuePrefix+"none", 1, 10); err != nil || len(got) != 0 || !end {
		t.Fatalf("empty queue: %d messages, end %v, err %v", len(got), end, err)
	}
}
