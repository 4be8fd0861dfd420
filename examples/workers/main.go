// Command workers shows competing consumers on an MQTT 5 shared subscription
// with the paho.golang client.
//
// In worker mode it opens -workers connections, each subscribed at QoS 1 to
// $share/<group>/jobs/#. The broker hands each job published under jobs/ to
// exactly one member of the group, so the pool splits the work between them
// (point-to-point delivery, like a work queue). In producer mode it publishes
// -jobs jobs to jobs/<n> at QoS 1 and exits.
//
//	go run ./examples/workers -broker tcp://127.0.0.1:1883 -mode worker -workers 3
//	go run ./examples/workers -broker tcp://127.0.0.1:1883 -mode producer -jobs 20
//
// Subscribers outside the group (say mosquitto_sub -t 'jobs/#') still get
// every job: sharing only splits deliveries inside one group.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// jobTopicPrefix is where jobs are published; workers share jobs/#.
const jobTopicPrefix = "jobs/"

// options configures a worker pool or a producer run.
type options struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// Mode is "worker" (consume jobs) or "producer" (publish them).
	Mode string
	// Group is the shared subscription's group name.
	Group string
	// Workers is how many competing connections worker mode opens.
	Workers int
	// Work is how long a worker pretends to work on each job.
	Work time.Duration
	// Jobs is how many jobs producer mode publishes.
	Jobs int
	// Timeout bounds connecting, subscribing and each publish.
	Timeout time.Duration
}

func (o options) validate() error {
	var errs []error
	u, err := url.Parse(o.Broker)
	if o.Broker == "" || err != nil || u.Host == "" {
		errs = append(errs, fmt.Errorf("broker %q: must be a URL like tcp://127.0.0.1:1883", o.Broker))
	}
	switch o.Mode {
	case "worker":
		if o.Group == "" || strings.ContainsAny(o.Group, "/+#") {
			errs = append(errs, fmt.Errorf("group %q: must be non-empty without '/', '+' or '#'", o.Group))
		}
		if o.Workers < 1 {
			errs = append(errs, fmt.Errorf("workers %d: must be at least 1", o.Workers))
		}
		if o.Work < 0 {
			errs = append(errs, fmt.Errorf("work %s: must not be negative", o.Work))
		}
	case "producer":
		if o.Jobs < 1 {
			errs = append(errs, fmt.Errorf("jobs %d: must be at least 1", o.Jobs))
		}
	default:
		errs = append(errs, fmt.Errorf("mode %q: must be worker or producer", o.Mode))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

// job is the JSON payload of one job.
type job struct {
	ID   string `json:"id"`
	Seq  int    `json:"seq"`
	Task string `json:"task"`
}

func main() {
	var o options
	flag.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	flag.StringVar(&o.Mode, "mode", "worker", "worker (consume jobs) or producer (publish them)")
	flag.StringVar(&o.Group, "group", "workers", "worker: shared subscription group ($share/<group>/jobs/#)")
	flag.IntVar(&o.Workers, "workers", 3, "worker: number of competing connections")
	flag.DurationVar(&o.Work, "work", 100*time.Millisecond, "worker: simulated time spent on each job")
	flag.IntVar(&o.Jobs, "jobs", 10, "producer: number of jobs to publish")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Second, "time allowed to connect, subscribe and publish")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "workers:", err)
		os.Exit(1)
	}
}

// run works until ctx ends (worker mode) or publishes the jobs and returns
// (producer mode).
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := newLogger(out)
	if o.Mode == "producer" {
		return produce(ctx, o, log)
	}
	return work(ctx, o, log)
}

// work runs o.Workers competing consumers until ctx ends.
func work(ctx context.Context, o options, log *slog.Logger) error {
	filter := "$share/" + o.Group + "/" + jobTopicPrefix + "#"
	tag := randomHex(3) // keeps client ids unique across processes
	var (
		mu      sync.Mutex
		handled = make([]int, o.Workers)
		conns   []*autopaho.ConnectionManager
	)
	defer func() {
		for _, cm := range conns {
			_ = disconnect(cm, o.Timeout)
		}
		mu.Lock()
		defer mu.Unlock()
		for w, n := range handled {
			log.Info("worker stopped", "worker", w, "jobs_handled", n)
		}
	}()

	for w := range o.Workers {
		// Jobs for one worker arrive one at a time on paho's delivery
		// goroutine; blocking it while "working" is what makes this worker
		// busy, and the QoS 1 acknowledgement goes out when we return.
		onJob := func(pr paho.PublishReceived) (bool, error) {
			var j job
			if err := json.Unmarshal(pr.Packet.Payload, &j); err != nil {
				log.Warn("bad job ignored", "worker", w, "topic", pr.Packet.Topic, "err", err)
				return true, nil
			}
			log.Info("job received", "worker", w, "job", j.ID, "topic", pr.Packet.Topic)
			start := time.Now()
			t := time.NewTimer(o.Work)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				log.Warn("job abandoned", "worker", w, "job", j.ID)
				return true, nil
			}
			mu.Lock()
			handled[w]++
			mu.Unlock()
			log.Info("job done", "worker", w, "job", j.ID, "took", time.Since(start).Round(time.Millisecond))
			return true, nil
		}
		cm, err := connect(ctx, o, fmt.Sprintf("worker-%s-%d", tag, w), filter, onJob, log)
		if err != nil {
			return fmt.Errorf("worker %d: %w", w, err)
		}
		conns = append(conns, cm)
	}
	log.Info("workers ready", "workers", o.Workers, "filter", filter)
	<-ctx.Done()
	log.Info("stopping")
	return nil
}

// produce publishes o.Jobs jobs at QoS 1.
func produce(ctx context.Context, o options, log *slog.Logger) error {
	cm, err := connect(ctx, o, "producer-"+randomHex(3), "", nil, log)
	if err != nil {
		return err
	}
	defer func() { _ = disconnect(cm, o.Timeout) }()
	batch := randomHex(3) // job ids stay unique across producer runs
	for seq := range o.Jobs {
		j := job{ID: fmt.Sprintf("%s-%d", batch, seq), Seq: seq, Task: "resize image " + fmt.Sprint(seq)}
		payload, err := json.Marshal(j)
		if err != nil {
			return fmt.Errorf("encode job: %w", err)
		}
		topic := jobTopicPrefix + fmt.Sprint(seq)
		pctx, cancel := context.WithTimeout(ctx, o.Timeout)
		_, err = cm.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
		cancel()
		if err != nil {
			return fmt.Errorf("publish job %s: %w", j.ID, err)
		}
		log.Info("job published", "job", j.ID, "topic", topic)
	}
	log.Info("all jobs published", "jobs", o.Jobs)
	return nil
}

// connect connects an MQTT 5 client and returns once it is connected and, if
// filter is set, subscribed to it at QoS 1. The session is not kept, so the
// subscription is renewed on every reconnection.
func connect(ctx context.Context, o options, id, filter string, onPublish func(paho.PublishReceived) (bool, error), log *slog.Logger) (*autopaho.ConnectionManager, error) {
	u, err := url.Parse(o.Broker)
	if err != nil {
		return nil, fmt.Errorf("broker %q: %w", o.Broker, err)
	}
	ready := make(chan struct{})
	var once sync.Once
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewConstantBackoff(time.Second),
		ConnectTimeout:                o.Timeout,
		OnConnectError:                func(err error) { log.Warn("connect failed", "client_id", id, "err", err) },
		// autopaho asks this callback not to block; the SUBACK wait is
		// bounded, and paho's own rpc example subscribes here the same way.
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			log.Info("connected", "client_id", id)
			if filter != "" {
				sctx, cancel := context.WithTimeout(ctx, o.Timeout)
				defer cancel()
				if _, err := cm.Subscribe(sctx, &paho.Subscribe{
					Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}},
				}); err != nil {
					log.Error("subscribe failed", "client_id", id, "topic", filter, "err", err)
					return
				}
				log.Info("subscribed", "client_id", id, "topic", filter)
			}
			once.Do(func() { close(ready) })
		},
		ClientConfig: paho.ClientConfig{ClientID: id},
	}
	if onPublish != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onPublish}
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.Broker, err)
	}
	t := time.NewTimer(o.Timeout)
	defer t.Stop()
	select {
	case <-ready:
		return cm, nil
	case <-t.C:
		err = fmt.Errorf("connect %s as %s: not ready within %s", o.Broker, id, o.Timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = disconnect(cm, o.Timeout)
	return nil, err
}

// disconnect closes cm cleanly, waiting at most timeout.
func disconnect(cm *autopaho.ConnectionManager, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := cm.Disconnect(ctx); err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	return nil
}

// randomHex returns n random bytes as hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}

// newLogger prints one key=value line per event, with a short timestamp.
func newLogger(out io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000"))
			}
			return a
		},
	}))
}
