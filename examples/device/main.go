// Command device simulates an IoT device speaking MQTT 3.1.1 through the
// paho.mqtt.golang client.
//
// On every (re)connection it subscribes to devices/<id>/commands and publishes
// a retained "online" to devices/<id>/status. Its last will is a retained
// "offline" on the same topic, so when the connection dies without a
// DISCONNECT the broker tells everyone. It publishes JSON telemetry at QoS 1
// to devices/<id>/telemetry every -interval while connected (a sample taken
// offline is skipped) and prints each command it
// receives. On SIGINT/SIGTERM it publishes "offline" itself and disconnects
// cleanly (a clean DISCONNECT discards the will).
//
//	go run ./examples/device -broker tcp://127.0.0.1:1883 -id dev1 -interval 2s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// options configures one simulated device.
type options struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// ID names the device; its topics are devices/<ID>/... and its MQTT
	// client id is device-<ID>.
	ID string
	// Interval is the time between two telemetry messages.
	Interval time.Duration
}

func (o options) validate() error {
	var errs []error
	if o.Broker == "" {
		errs = append(errs, errors.New("broker: must not be empty"))
	}
	if o.ID == "" || strings.ContainsAny(o.ID, "/+#") {
		errs = append(errs, fmt.Errorf("id %q: must be non-empty without '/', '+' or '#'", o.ID))
	}
	if o.Interval <= 0 {
		errs = append(errs, fmt.Errorf("interval %s: must be positive", o.Interval))
	}
	return errors.Join(errs...)
}

// telemetry is the JSON document published on devices/<id>/telemetry.
type telemetry struct {
	Device       string    `json:"device"`
	Seq          uint64    `json:"seq"`
	Time         time.Time `json:"time"`
	TemperatureC float64   `json:"temperature_c"`
	HumidityPct  float64   `json:"humidity_pct"`
}

// Status payloads on devices/<id>/status.
const (
	statusOnline  = "online"
	statusOffline = "offline"
)

// opTimeout bounds each wait for the broker outside the telemetry loop: the
// subscription and status publishes on connect, and the goodbye.
const opTimeout = 3 * time.Second

func main() {
	var o options
	flag.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	flag.StringVar(&o.ID, "id", "dev1", "device id (topics devices/<id>/...)")
	flag.DurationVar(&o.Interval, "interval", 5*time.Second, "time between telemetry messages")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "device:", err)
		os.Exit(1)
	}
}

// run connects the device and publishes telemetry until ctx ends, then says
// goodbye. It returns an error only if the options are invalid or the first
// connection fails; later connection losses are retried.
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := newLogger(out)
	var (
		telemetryTopic = "devices/" + o.ID + "/telemetry"
		statusTopic    = "devices/" + o.ID + "/status"
		commandTopic   = "devices/" + o.ID + "/commands"
	)

	onCommand := func(_ mqtt.Client, m mqtt.Message) {
		log.Info("command received", "topic", m.Topic(), "qos", m.Qos(), "command", string(m.Payload()))
	}
	// Runs (on its own goroutine) after every successful (re)connection. The
	// session is clean, so the subscription must be made again each time;
	// subscribing before announcing "online" means anyone who sees "online"
	// can already send commands. ready is closed after the first attempt, so
	// telemetry starts after the announcement.
	ready := make(chan struct{})
	var readyOnce sync.Once
	// online is set once a (re)connection is set up, cleared when it is
	// lost. Telemetry is sent only while it is set: a sample taken offline
	// is skipped, not queued. paho resends what it holds after a reconnect
	// (resume) on the same goroutines that send new messages, and a
	// publish made while it does races with it (paho.mqtt.golang #703, a
	// data race the race detector reports); once this handler has made two
	// round trips, the resend is over.
	var online atomic.Bool
	onConnect := func(c mqtt.Client) {
		defer readyOnce.Do(func() { close(ready) })
		log.Info("connected", "broker", o.Broker, "client_id", "device-"+o.ID)
		if tok := c.Subscribe(commandTopic, 1, onCommand); !tok.WaitTimeout(opTimeout) || tok.Error() != nil {
			log.Error("subscribe failed", "topic", commandTopic, "err", tokenErr(tok))
			return
		}
		log.Info("subscribed", "topic", commandTopic)
		if tok := c.Publish(statusTopic, 1, true, statusOnline); !tok.WaitTimeout(opTimeout) || tok.Error() != nil {
			log.Error("status not published", "topic", statusTopic, "err", tokenErr(tok))
			return
		}
		online.Store(true)
		log.Info("status published", "topic", statusTopic, "status", statusOnline, "retained", true)
	}

	opts := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID("device-"+o.ID).
		SetCleanSession(true).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		SetWill(statusTopic, statusOffline, 1, true).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(10 * time.Second).
		// Handlers only log, so they may run concurrently.
		SetOrderMatters(false).
		SetOnConnectHandler(onConnect).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			online.Store(false)
			log.Warn("connection lost, reconnecting", "err", err)
		})
	c := mqtt.NewClient(opts)
	log.Info("connecting", "broker", o.Broker, "will_topic", statusTopic, "will", statusOffline)
	if err := wait(ctx, c.Connect()); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("connect %s: %w", o.Broker, err)
	}

	select {
	case <-ready:
	case <-ctx.Done():
	}
	sensor := newSensor()
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	for seq := uint64(1); ctx.Err() == nil; seq++ {
		temp, hum := sensor.read()
		doc, err := json.Marshal(telemetry{Device: o.ID, Seq: seq, Time: time.Now().UTC(), TemperatureC: temp, HumidityPct: hum})
		if err != nil {
			return fmt.Errorf("encode telemetry: %w", err)
		}
		// A message in flight when the connection is lost is kept by paho
		// and resent once it is back, so this wait may last until then.
		if !online.Load() {
			log.Info("offline: telemetry sample skipped", "seq", seq)
		} else if err := wait(ctx, c.Publish(telemetryTopic, 1, false, doc)); err != nil {
			if ctx.Err() == nil {
				log.Warn("telemetry not sent", "seq", seq, "err", err)
			}
		} else {
			log.Info("telemetry sent", "topic", telemetryTopic, "seq", seq, "temperature_c", temp, "humidity_pct", hum)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}

	// A clean DISCONNECT makes the broker drop the will, so announce "offline"
	// ourselves first.
	log.Info("stopping", "status", statusOffline)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if err := wait(sctx, c.Publish(statusTopic, 1, true, statusOffline)); err != nil {
		log.Warn("offline status not published", "err", err)
	}
	c.Disconnect(250)
	log.Info("disconnected")
	return nil
}

// wait blocks until tok completes or ctx ends.
func wait(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
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

// sensor produces plausible readings: a slow random walk around room climate.
type sensor struct{ temp, hum float64 }

func newSensor() *sensor { return &sensor{temp: 21, hum: 45} }

func (s *sensor) read() (tempC, humPct float64) {
	s.temp = clamp(s.temp+rand.NormFloat64()*0.2, -20, 60)
	s.hum = clamp(s.hum+rand.NormFloat64()*0.5, 0, 100)
	return round1(s.temp), round1(s.hum)
}

func clamp(v, lo, hi float64) float64 { return max(lo, min(hi, v)) }

func round1(v float64) float64 { return math.Round(v*10) / 10 }

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
