// Command commander is the operator's side of the device example: it sends a
// command to one device and/or watches every device's telemetry and status,
// over MQTT 3.1.1 with the paho.mqtt.golang client.
//
//	go run ./examples/commander -broker tcp://127.0.0.1:1883 -device dev1 -send reboot
//	go run ./examples/commander -broker tcp://127.0.0.1:1883 -watch
//	go run ./examples/commander -device dev1 -send reboot -watch
//
// With -send alone it publishes the command at QoS 1, waits for the broker's
// PUBACK and exits. With -watch (the default when nothing is sent) it
// subscribes to devices/+/telemetry and devices/+/status and prints what
// arrives until SIGINT/SIGTERM; combined with -send, the subscription is made
// first so the device's reaction is not missed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Topic filters watched with -watch.
const (
	telemetryFilter = "devices/+/telemetry"
	statusFilter    = "devices/+/status"
)

// options configures one commander run.
type options struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// Device is the id of the device a command is sent to.
	Device string
	// Send is the command payload; empty sends nothing.
	Send string
	// Watch keeps the commander subscribed to all devices' telemetry and
	// status until the context ends.
	Watch bool
	// Timeout bounds connecting, subscribing and publishing.
	Timeout time.Duration
}

func (o options) validate() error {
	var errs []error
	if o.Broker == "" {
		errs = append(errs, errors.New("broker: must not be empty"))
	}
	if o.Send != "" && (o.Device == "" || strings.ContainsAny(o.Device, "/+#")) {
		errs = append(errs, fmt.Errorf("device %q: must be non-empty without '/', '+' or '#' to send a command", o.Device))
	}
	if o.Send == "" && !o.Watch {
		errs = append(errs, errors.New("nothing to do: give -send, -watch or both"))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

func main() {
	var o options
	flag.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	flag.StringVar(&o.Device, "device", "", "device id to send the command to")
	flag.StringVar(&o.Send, "send", "", "command to publish to devices/<device>/commands")
	flag.BoolVar(&o.Watch, "watch", false, "print devices/+/telemetry and devices/+/status until interrupted (default when -send is not given)")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Second, "time allowed to connect, subscribe and publish")
	flag.Parse()
	if o.Send == "" {
		o.Watch = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "commander:", err)
		os.Exit(1)
	}
}

// run sends the command if any, then watches until ctx ends if asked to.
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := newLogger(out)

	onMessage := func(_ mqtt.Client, m mqtt.Message) {
		device, kind := splitTopic(m.Topic())
		switch kind {
		case "status":
			log.Info("status", "device", device, "status", string(m.Payload()), "retained", m.Retained())
		default:
			log.Info("telemetry", "device", device, "qos", m.Qos(), "payload", string(m.Payload()))
		}
	}
	opts := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID(fmt.Sprintf("commander-%08x", rand.Uint32())).
		SetCleanSession(true).
		SetConnectTimeout(o.Timeout).
		SetAutoReconnect(true).
		SetOrderMatters(false)
	// watching is closed once the first subscription is in place.
	watching := make(chan struct{})
	var once sync.Once
	if o.Watch {
		// Subscribing in the connect handler restores the (clean) session's
		// subscriptions after every reconnection too.
		opts.SetOnConnectHandler(func(c mqtt.Client) {
			tok := c.SubscribeMultiple(map[string]byte{telemetryFilter: 1, statusFilter: 1}, onMessage)
			if !tok.WaitTimeout(o.Timeout) || tok.Error() != nil {
				log.Error("subscribe failed", "err", tokenErr(tok))
				return
			}
			log.Info("watching", "filters", telemetryFilter+" "+statusFilter)
			once.Do(func() { close(watching) })
		})
	}
	c := mqtt.NewClient(opts)
	if err := wait(ctx, o.Timeout, c.Connect()); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("connect %s: %w", o.Broker, err)
	}
	defer c.Disconnect(250)
	log.Info("connected", "broker", o.Broker)
	if o.Watch {
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		select {
		case <-watching:
		case <-t.C:
			return fmt.Errorf("subscribe %s, %s: no answer within %s", telemetryFilter, statusFilter, o.Timeout)
		case <-ctx.Done():
			return nil
		}
	}

	if o.Send != "" {
		topic := "devices/" + o.Device + "/commands"
		if err := wait(ctx, o.Timeout, c.Publish(topic, 1, false, o.Send)); err != nil {
			return fmt.Errorf("publish %s: %w", topic, err)
		}
		log.Info("command sent", "topic", topic, "qos", 1, "command", o.Send)
	}
	if o.Watch {
		<-ctx.Done()
		log.Info("stopping")
	}
	return nil
}

// splitTopic returns the device id and the last level of devices/<id>/<kind>.
func splitTopic(topic string) (device, kind string) {
	parts := strings.Split(topic, "/")
	if len(parts) != 3 {
		return "", topic
	}
	return parts[1], parts[2]
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

// tokenErr is tok's error, or a timeout error if it has not completed.
func tokenErr(tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	default:
		return errors.New("timed out")
	}
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
