// Command broadcast shows publish/subscribe fan-out over MQTT 3.1.1 with the
// paho.mqtt.golang client: one publisher, -subscribers ordinary (not shared)
// subscribers on one topic, and every subscriber receives every message.
//
//	go run ./examples/broadcast -broker tcp://127.0.0.1:1883 -subscribers 5 -messages 10
//
// It connects and subscribes all subscribers, publishes -messages messages,
// waits until each subscriber has every one (or -timeout passes), prints what
// each received, and exits with an error if any message is missing.
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
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// options configures one broadcast run.
type options struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// Topic is the one topic everything is published to.
	Topic string
	// Subscribers is how many subscriber connections are opened.
	Subscribers int
	// Messages is how many messages are published.
	Messages int
	// QoS is used for the subscriptions and the publishes.
	QoS int
	// Interval is the pause between two publishes; zero publishes at once.
	Interval time.Duration
	// Timeout bounds connecting, subscribing, each publish and the wait for
	// all deliveries.
	Timeout time.Duration
}

func (o options) validate() error {
	var errs []error
	if o.Broker == "" {
		errs = append(errs, errors.New("broker: must not be empty"))
	}
	if o.Topic == "" || strings.ContainsAny(o.Topic, "+#") {
		errs = append(errs, fmt.Errorf("topic %q: must be a non-empty topic name without wildcards", o.Topic))
	}
	if o.Subscribers < 1 {
		errs = append(errs, fmt.Errorf("subscribers %d: must be at least 1", o.Subscribers))
	}
	if o.Messages < 1 {
		errs = append(errs, fmt.Errorf("messages %d: must be at least 1", o.Messages))
	}
	if o.QoS < 0 || o.QoS > 2 {
		errs = append(errs, fmt.Errorf("qos %d: must be 0, 1 or 2", o.QoS))
	}
	if o.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval %s: must not be negative", o.Interval))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

// message is the JSON payload of one broadcast message.
type message struct {
	// Run tells this run's messages from anyone else's on the same topic.
	Run string `json:"run"`
	Seq int    `json:"seq"`
}

func main() {
	var o options
	flag.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	flag.StringVar(&o.Topic, "topic", "broadcast/news", "topic to publish and subscribe to")
	flag.IntVar(&o.Subscribers, "subscribers", 5, "number of subscriber connections")
	flag.IntVar(&o.Messages, "messages", 10, "number of messages to publish")
	flag.IntVar(&o.QoS, "qos", 1, "QoS of subscriptions and publishes (0, 1 or 2)")
	flag.DurationVar(&o.Interval, "interval", 0, "pause between publishes")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Second, "time allowed to connect, publish and receive everything")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "broadcast:", err)
		os.Exit(1)
	}
}

// tally counts what one subscriber received, by sequence number.
type tally struct {
	mu   sync.Mutex
	seen map[int]int
}

func (t *tally) add(seq int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seen[seq]++
}

// check reports the received messages out of 0..n-1, those missing, and how
// many arrived more than once (possible at QoS 1).
func (t *tally) check(n int) (received int, missing []int, duplicates int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, count := range t.seen {
		received += count
		duplicates += count - 1
	}
	for seq := range n {
		if t.seen[seq] == 0 {
			missing = append(missing, seq)
		}
	}
	return received, missing, duplicates
}

// run subscribes, publishes and checks the fan-out, then disconnects all.
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := newLogger(out)
	runID := randomHex(4)
	qos := byte(o.QoS)

	var clients []mqtt.Client
	defer func() {
		for _, c := range clients {
			c.Disconnect(250)
		}
	}()
	connect := func(id string) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().
			AddBroker(o.Broker).
			SetClientID(id).
			SetCleanSession(true).
			SetConnectTimeout(o.Timeout).
			SetOrderMatters(false))
		if err := wait(ctx, o.Timeout, c.Connect()); err != nil {
			c.Disconnect(0)
			return nil, fmt.Errorf("connect %s as %s: %w", o.Broker, id, err)
		}
		clients = append(clients, c)
		return c, nil
	}

	tallies := make([]*tally, o.Subscribers)
	for i := range o.Subscribers {
		tl := &tally{seen: map[int]int{}}
		tallies[i] = tl
		c, err := connect(fmt.Sprintf("broadcast-%s-sub-%d", runID, i))
		if err != nil {
			return err
		}
		onMessage := func(_ mqtt.Client, m mqtt.Message) {
			var msg message
			if err := json.Unmarshal(m.Payload(), &msg); err != nil || msg.Run != runID {
				log.Warn("foreign message ignored", "subscriber", i, "topic", m.Topic())
				return
			}
			tl.add(msg.Seq)
		}
		if err := wait(ctx, o.Timeout, c.Subscribe(o.Topic, qos, onMessage)); err != nil {
			return fmt.Errorf("subscriber %d: subscribe %s: %w", i, o.Topic, err)
		}
	}
	log.Info("subscribers ready", "subscribers", o.Subscribers, "topic", o.Topic, "qos", qos)

	pub, err := connect(fmt.Sprintf("broadcast-%s-pub", runID))
	if err != nil {
		return err
	}
	for seq := range o.Messages {
		payload, err := json.Marshal(message{Run: runID, Seq: seq})
		if err != nil {
			return fmt.Errorf("encode message: %w", err)
		}
		if err := wait(ctx, o.Timeout, pub.Publish(o.Topic, qos, false, payload)); err != nil {
			return fmt.Errorf("publish %d: %w", seq, err)
		}
		if o.Interval > 0 {
			select {
			case <-time.After(o.Interval):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	log.Info("published", "messages", o.Messages, "topic", o.Topic)

	// Wait until every subscriber has everything, polling the tallies.
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
wait:
	for {
		complete := true
		for _, tl := range tallies {
			if _, missing, _ := tl.check(o.Messages); len(missing) > 0 {
				complete = false
				break
			}
		}
		if complete {
			break
		}
		select {
		case <-poll.C:
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}

	incomplete := 0
	for i, tl := range tallies {
		received, missing, dups := tl.check(o.Messages)
		if len(missing) > 0 {
			incomplete++
			log.Warn("subscriber incomplete", "subscriber", i, "received", received, "duplicates", dups, "missing", fmt.Sprint(missing))
			continue
		}
		log.Info("subscriber complete", "subscriber", i, "received", received, "duplicates", dups)
	}
	if incomplete > 0 {
		return fmt.Errorf("%d of %d subscribers missed messages", incomplete, o.Subscribers)
	}
	log.Info("every subscriber received every message", "subscribers", o.Subscribers, "messages", o.Messages)
	return nil
}

// wait blocks until tok completes, timeout passes or ctx ends.
func wait(ctx context.Context, timeout time.Duration, tok mqtt.Token) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no answer within %s", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
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
