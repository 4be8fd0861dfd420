package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/bridge"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		permanent bool
	}{
		{"message too large", kerr.MessageTooLarge, true},
		{"invalid topic, wrapped", fmt.Errorf("produce: %w", kerr.InvalidTopicException), true},
		{"invalid record", kerr.InvalidRecord, true},
		{"request timed out", kerr.RequestTimedOut, false},
		{"not enough replicas", kerr.NotEnoughReplicas, false},
		{"leader not available", kerr.LeaderNotAvailable, false},
		{"topic authorization failed", kerr.TopicAuthorizationFailed, false},
		{"cluster authorization failed", kerr.ClusterAuthorizationFailed, false},
		{"record timeout", kgo.ErrRecordTimeout, false},
		{"client closed", kgo.ErrClientClosed, false},
		{"deadline", context.DeadlineExceeded, false},
		{"network", errors.New("dial tcp: connection refused"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := classify(tc.err)
			if got := bridge.IsPermanent(err); got != tc.permanent {
				t.Fatalf("IsPermanent(classify(%v)) = %v, want %v", tc.err, got, tc.permanent)
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
