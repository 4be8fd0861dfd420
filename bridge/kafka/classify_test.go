package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/bridge"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		kind bridge.Kind
	}{
		{"message too large", kerr.MessageTooLarge, bridge.KindPermanent},
		{"invalid topic, wrapped", fmt.Errorf("produce: %w", kerr.InvalidTopicException), bridge.KindPermanent},
		{"invalid record", kerr.InvalidRecord, bridge.KindPermanent},
		{"request timed out", kerr.RequestTimedOut, bridge.KindUnavailable},
		{"not enough replicas", kerr.NotEnoughReplicas, bridge.KindUnavailable},
		{"not leader", kerr.NotLeaderForPartition, bridge.KindUnavailable},
		{"leader not available", kerr.LeaderNotAvailable, bridge.KindUnavailable},
		{"topic authorization failed", kerr.TopicAuthorizationFailed, bridge.KindUnavailable},
		{"cluster authorization failed", kerr.ClusterAuthorizationFailed, bridge.KindUnavailable},
		{"record timeout", kgo.ErrRecordTimeout, bridge.KindUnavailable},
		{"client closed", kgo.ErrClientClosed, bridge.KindUnavailable},
		{"deadline", context.DeadlineExceeded, bridge.KindUnavailable},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, bridge.KindUnavailable},
		{"something else", errors.New("kafka: odd"), bridge.KindUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := classify(tc.err)
			if got := bridge.KindOf(err); got != tc.kind {
				t.Fatalf("KindOf(classify(%v)) = %v, want %v", tc.err, got, tc.kind)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("classify lost the cause: %v", err)
			}
		})
	}
}

func TestCheckTopic(t *testing.T) {
	for _, tc := range []struct {
		topic string
		ok    bool
	}{
		{"telemetry", true},
		{"a.b_c-D9", true},
		{strings.Repeat("a", MaxTopicLen), true},
		{strings.Repeat("a", MaxTopicLen+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{"a b", false},
		{"a:b", false},
		{"é", false},
	} {
		t.Run(fmt.Sprintf("%.20q", tc.topic), func(t *testing.T) {
			if err := checkTopic(tc.topic); (err == nil) != tc.ok {
				t.Fatalf("checkTopic(%q) = %v, want ok %v", tc.topic, err, tc.ok)
			}
		})
	}
}
