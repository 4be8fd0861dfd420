package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testutil"
)

const waitFor = 10 * time.Second

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		o       options
		wantErr string
	}{
		{"worker", options{Broker: "tcp://h:1", Mode: "worker", Group: "g", Workers: 2, Timeout: time.Second}, ""},
		{"producer", options{Broker: "tcp://h:1", Mode: "producer", Jobs: 1, Timeout: time.Second}, ""},
		{"bad mode", options{Broker: "tcp://h:1", Mode: "both", Timeout: time.Second}, "mode"},
		{"no workers", options{Broker: "tcp://h:1", Mode: "worker", Group: "g", Timeout: time.Second}, "workers 0"},
		{"group with slash", options{Broker: "tcp://h:1", Mode: "worker", Group: "a/b", Workers: 1, Timeout: time.Second}, "group"},
		{"negative work", options{Broker: "tcp://h:1", Mode: "worker", Group: "g", Workers: 1, Work: -1, Timeout: time.Second}, "work"},
		{"no jobs", options{Broker: "tcp://h:1", Mode: "producer", Timeout: time.Second}, "jobs 0"},
		{"broker not a URL", options{Broker: "h:1", Mode: "producer", Jobs: 1, Timeout: time.Second}, "broker"},
		{"zero timeout", options{Broker: "tcp://h:1", Mode: "producer", Jobs: 1}, "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("validate() = %v, want error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

var (
	doneLine    = regexp.MustCompile(`msg="job done" worker=(\d+) job=(\S+)`)
	stoppedLine = regexp.MustCompile(`msg="worker stopped" worker=(\d+) jobs_handled=(\d+)`)
	publishLine = regexp.MustCompile(`msg="job published" job=(\S+)`)
)

// TestEachJobHandledOnce runs a pool and a producer: every published job must
// be done exactly once, and by more than one worker.
func TestEachJobHandledOnce(t *testing.T) {
	const workers, jobs = 3, 30
	b := testutil.StartBroker(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		out     syncBuffer
		runErr  error
		stopped = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		runErr = run(ctx, options{Broker: b.URL, Mode: "worker", Group: "workers", Workers: workers, Work: time.Millisecond, Timeout: waitFor}, &out)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	testutil.Eventually(t, waitFor, "workers ready", func() bool {
		return strings.Contains(out.String(), `msg="workers ready"`)
	})

	var prodOut syncBuffer
	pctx, pcancel := context.WithTimeout(context.Background(), waitFor)
	defer pcancel()
	if err := run(pctx, options{Broker: b.URL, Mode: "producer", Jobs: jobs, Timeout: waitFor}, &prodOut); err != nil {
		t.Fatalf("producer run() = %v", err)
	}
	published := map[string]bool{}
	for _, m := range publishLine.FindAllStringSubmatch(prodOut.String(), -1) {
		published[m[1]] = true
	}
	if len(published) != jobs {
		t.Fatalf("producer reported %d distinct jobs, want %d:\n%s", len(published), jobs, prodOut.String())
	}

	testutil.Eventually(t, waitFor, "all jobs done", func() bool {
		return len(doneLine.FindAllString(out.String(), -1)) >= jobs
	})
	// Stop the pool so that any late duplicate would have shown up.
	cancel()
	select {
	case <-stopped:
	case <-time.After(waitFor):
		t.Fatal("worker run did not return after cancel")
	}
	if runErr != nil {
		t.Fatalf("worker run() = %v", runErr)
	}

	doneBy := map[string][]string{} // job -> workers
	perWorker := map[string]int{}
	for _, m := range doneLine.FindAllStringSubmatch(out.String(), -1) {
		doneBy[m[2]] = append(doneBy[m[2]], m[1])
		perWorker[m[1]]++
	}
	for j := range published {
		if got := doneBy[j]; len(got) != 1 {
			t.Errorf("job %s done by workers %v, want exactly one", j, got)
		}
	}
	for j := range doneBy {
		if !published[j] {
			t.Errorf("job %s done but never published", j)
		}
	}
	if len(perWorker) < 2 {
		t.Errorf("all jobs went to worker(s) %v, want the work spread over several", perWorker)
	}
	// The shutdown summary agrees with the per-job lines.
	total := 0
	for _, m := range stoppedLine.FindAllStringSubmatch(out.String(), -1) {
		n, _ := strconv.Atoi(m[2])
		if n != perWorker[m[1]] {
			t.Errorf("worker %s reports %d jobs, its job lines say %d", m[1], n, perWorker[m[1]])
		}
		total += n
	}
	if total != jobs {
		t.Errorf("workers report %d jobs in total, want %d\n%s", total, jobs, out.String())
	}
}

// TestMQTT311MemberSharesTheWork adds an MQTT 3.1.1 client to the group, as
// mosquitto_sub -V mqttv311 -t '$share/workers/jobs/#' would be: the MQTT 5
// pool and it split the jobs, each job going to exactly one of them.
func TestMQTT311MemberSharesTheWork(t *testing.T) {
	// 60 jobs over 3 members: the chance the broker's choice skips one member
	// entirely is (2/3)^60, about 3e-11.
	const workers, jobs = 2, 60
	b := testutil.StartBroker(t)

	var (
		mu     sync.Mutex
		byV311 = map[string]int{} // job id -> deliveries
	)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("v311-member").
		SetProtocolVersion(4).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	jobID := regexp.MustCompile(`"id":"([^"]+)"`)
	tok := c.Subscribe("$share/workers/jobs/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		if id := jobID.FindSubmatch(m.Payload()); id != nil {
			mu.Lock()
			byV311[string(id[1])]++
			mu.Unlock()
		}
	})
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := run(ctx, options{Broker: b.URL, Mode: "worker", Group: "workers", Workers: workers, Timeout: waitFor}, &out); err != nil {
			t.Errorf("worker run() = %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	testutil.Eventually(t, waitFor, "workers ready", func() bool {
		return strings.Contains(out.String(), `msg="workers ready"`)
	})

	var prodOut syncBuffer
	if err := run(ctx, options{Broker: b.URL, Mode: "producer", Jobs: jobs, Timeout: waitFor}, &prodOut); err != nil {
		t.Fatalf("producer run() = %v", err)
	}
	var published []string
	for _, m := range publishLine.FindAllStringSubmatch(prodOut.String(), -1) {
		published = append(published, m[1])
	}

	countPool := func() map[string]int {
		n := map[string]int{}
		for _, m := range doneLine.FindAllStringSubmatch(out.String(), -1) {
			n[m[2]]++
		}
		return n
	}
	testutil.Eventually(t, waitFor, "every job delivered", func() bool {
		pool := countPool()
		mu.Lock()
		defer mu.Unlock()
		for _, j := range published {
			if pool[j]+byV311[j] == 0 {
				return false
			}
		}
		return true
	})

	pool := countPool()
	mu.Lock()
	defer mu.Unlock()
	for _, j := range published {
		if n := pool[j] + byV311[j]; n != 1 {
			t.Errorf("job %s delivered %d times (pool %d, 3.1.1 member %d), want once", j, n, pool[j], byV311[j])
		}
	}
	if len(byV311) == 0 || len(byV311) == jobs {
		t.Errorf("3.1.1 member got %d of %d jobs, want a share", len(byV311), jobs)
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of run and the
// reads of the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
