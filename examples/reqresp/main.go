// Command reqresp shows MQTT 5 request/response with the paho.golang client.
//
// The server subscribes to a request topic (service/echo by default) and
// answers every request on the request's Response Topic, copying its
// Correlation Data and echoing its payload. The client subscribes to its own
// reply topic, sends -n requests (up to -inflight at a time), each with a
// fresh random Correlation Data, matches every reply to its request by that
// data, checks the echoed payload and prints the round-trip times.
//
//	go run ./examples/reqresp -broker tcp://127.0.0.1:1883 -mode server
//	go run ./examples/reqresp -broker tcp://127.0.0.1:1883 -mode client -n 20
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// options configures a server or a client run.
type options struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// Mode is "server" (answer requests) or "client" (send them).
	Mode string
	// Topic is where requests are published.
	Topic string
	// Requests is how many requests the client sends.
	Requests int
	// Inflight is how many requests the client keeps outstanding at once.
	Inflight int
	// Timeout bounds connecting and each request's wait for its reply.
	Timeout time.Duration
}

func (o options) validate() error {
	var errs []error
	u, err := url.Parse(o.Broker)
	if o.Broker == "" || err != nil || u.Host == "" {
		errs = append(errs, fmt.Errorf("broker %q: must be a URL like tcp://127.0.0.1:1883", o.Broker))
	}
	if o.Mode != "server" && o.Mode != "client" {
		errs = append(errs, fmt.Errorf("mode %q: must be server or client", o.Mode))
	}
	if o.Topic == "" || strings.ContainsAny(o.Topic, "+#") {
		errs = append(errs, fmt.Errorf("topic %q: must be a non-empty topic name without wildcards", o.Topic))
	}
	if o.Mode == "client" && o.Requests < 1 {
		errs = append(errs, fmt.Errorf("n %d: must be at least 1", o.Requests))
	}
	if o.Mode == "client" && o.Inflight < 1 {
		errs = append(errs, fmt.Errorf("inflight %d: must be at least 1", o.Inflight))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

func main() {
	var o options
	flag.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	flag.StringVar(&o.Mode, "mode", "client", "server (answer requests) or client (send them)")
	flag.StringVar(&o.Topic, "topic", "service/echo", "request topic")
	flag.IntVar(&o.Requests, "n", 10, "client: number of requests")
	flag.IntVar(&o.Inflight, "inflight", 4, "client: requests outstanding at once")
	flag.DurationVar(&o.Timeout, "timeout", 5*time.Second, "time allowed to connect and for each reply")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "reqresp:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends (server mode) or sends the requests and returns
// (client mode; an error if any request went unanswered or came back wrong).
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := newLogger(out)
	if o.Mode == "server" {
		return serve(ctx, o, log)
	}
	return request(ctx, o, log)
}

// serve answers requests on o.Topic until ctx ends.
func serve(ctx context.Context, o options, log *slog.Logger) error {
	// Replies are published from their own goroutines: a QoS 1 publish waits
	// for its PUBACK, which paho reads on the goroutine that is delivering
	// this request to us, so replying inline could deadlock.
	var (
		replies sync.WaitGroup
		mu      sync.Mutex
		closing bool // set once the connection is closed: no more replies.Add
	)
	defer func() {
		mu.Lock()
		closing = true
		mu.Unlock()
		replies.Wait()
	}()
	onRequest := func(pr paho.PublishReceived) (bool, error) {
		req := pr.Packet
		if req.Properties == nil || req.Properties.ResponseTopic == "" {
			log.Warn("request without response topic ignored", "topic", req.Topic)
			return true, nil
		}
		corr := req.Properties.CorrelationData
		log.Info("request", "topic", req.Topic, "response_topic", req.Properties.ResponseTopic, "correlation", hex.EncodeToString(corr))
		mu.Lock()
		defer mu.Unlock()
		if closing {
			return true, nil
		}
		replies.Add(1)
		go func() {
			defer replies.Done()
			rctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			_, err := pr.Client.Publish(rctx, &paho.Publish{
				Topic:   req.Properties.ResponseTopic,
				QoS:     1,
				Payload: req.Payload,
				Properties: &paho.PublishProperties{
					CorrelationData: corr,
					ContentType:     req.Properties.ContentType,
				},
			})
			if err != nil {
				log.Warn("reply not sent", "response_topic", req.Properties.ResponseTopic, "err", err)
				return
			}
			log.Info("replied", "response_topic", req.Properties.ResponseTopic, "correlation", hex.EncodeToString(corr))
		}()
		return true, nil
	}
	cm, err := connect(ctx, o, "reqresp-server", o.Topic, onRequest, log)
	if err != nil {
		return err
	}
	log.Info("serving", "topic", o.Topic)
	<-ctx.Done()
	log.Info("stopping")
	return disconnect(cm, o.Timeout)
}

// reply is what the receive callback hands to the waiting request.
type reply struct {
	payload []byte
	at      time.Time
}

// request sends o.Requests requests to o.Topic and waits for their replies.
func request(ctx context.Context, o options, log *slog.Logger) error {
	id := "reqresp-client-" + randomHex(4)
	replyTopic := "replies/" + id

	var (
		mu        sync.Mutex
		pending   = map[string]chan reply{} // by correlation data
		unmatched atomic.Int64
	)
	onReply := func(pr paho.PublishReceived) (bool, error) {
		at := time.Now()
		var corr []byte
		if pr.Packet.Properties != nil {
			corr = pr.Packet.Properties.CorrelationData
		}
		mu.Lock()
		ch, ok := pending[string(corr)]
		delete(pending, string(corr))
		mu.Unlock()
		if !ok {
			unmatched.Add(1)
			log.Warn("unmatched reply", "topic", pr.Packet.Topic, "correlation", hex.EncodeToString(corr))
			return true, nil
		}
		ch <- reply{payload: pr.Packet.Payload, at: at} // buffered, never blocks
		return true, nil
	}
	cm, err := connectAs(ctx, o, id, replyTopic, onReply, log)
	if err != nil {
		return err
	}
	defer func() { _ = disconnect(cm, o.Timeout) }()
	log.Info("sending", "requests", o.Requests, "topic", o.Topic, "response_topic", replyTopic, "inflight", o.Inflight)

	// once sends request seq and returns its round-trip time.
	once := func(seq int) (time.Duration, error) {
		corr := randomBytes(8)
		ch := make(chan reply, 1)
		mu.Lock()
		pending[string(corr)] = ch
		mu.Unlock()
		defer func() {
			mu.Lock()
			delete(pending, string(corr))
			mu.Unlock()
		}()

		payload := fmt.Appendf(nil, `{"seq":%d,"body":"hello %d"}`, seq, seq)
		rctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		start := time.Now()
		if _, err := cm.Publish(rctx, &paho.Publish{
			Topic:   o.Topic,
			QoS:     1,
			Payload: payload,
			Properties: &paho.PublishProperties{
				ResponseTopic:   replyTopic,
				CorrelationData: corr,
				ContentType:     "application/json",
			},
		}); err != nil {
			return 0, fmt.Errorf("request %d: publish: %w", seq, err)
		}
		select {
		case r := <-ch:
			if !bytes.Equal(r.payload, payload) {
				return 0, fmt.Errorf("request %d: reply %q does not echo %q", seq, r.payload, payload)
			}
			rtt := r.at.Sub(start).Round(time.Microsecond)
			log.Info("reply", "seq", seq, "correlation", hex.EncodeToString(corr), "rtt", rtt)
			return rtt, nil
		case <-rctx.Done():
			return 0, fmt.Errorf("request %d: no reply: %w", seq, rctx.Err())
		}
	}

	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, o.Inflight)
		rtts  = make([]time.Duration, o.Requests)
		errs  = make([]error, o.Requests)
		start = time.Now()
	)
send:
	for seq := range o.Requests {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			for ; seq < o.Requests; seq++ {
				errs[seq] = fmt.Errorf("request %d: not sent: %w", seq, ctx.Err())
			}
			break send
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rtts[seq], errs[seq] = once(seq)
		}()
	}
	wg.Wait()

	var (
		ok                int
		total, fast, slow time.Duration
		failures          []error
	)
	for i, err := range errs {
		if err != nil {
			failures = append(failures, err)
			continue
		}
		ok++
		total += rtts[i]
		if ok == 1 || rtts[i] < fast {
			fast = rtts[i]
		}
		slow = max(slow, rtts[i])
	}
	var avg time.Duration
	if ok > 0 {
		avg = total / time.Duration(ok)
	}
	log.Info("summary", "requests", o.Requests, "answered", ok, "failed", len(failures), "unmatched", unmatched.Load(),
		"rtt_min", fast, "rtt_avg", avg.Round(time.Microsecond), "rtt_max", slow, "elapsed", time.Since(start).Round(time.Microsecond))
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d requests failed: %w", len(failures), o.Requests, errors.Join(failures...))
	}
	return nil
}

// connect is connectAs with a random client id carrying prefix.
func connect(ctx context.Context, o options, prefix, filter string, onPublish func(paho.PublishReceived) (bool, error), log *slog.Logger) (*autopaho.ConnectionManager, error) {
	return connectAs(ctx, o, prefix+"-"+randomHex(4), filter, onPublish, log)
}

// connectAs connects an MQTT 5 client that subscribes to filter at QoS 1 on
// every (re)connection, and returns once the first subscription is in place.
func connectAs(ctx context.Context, o options, id, filter string, onPublish func(paho.PublishReceived) (bool, error), log *slog.Logger) (*autopaho.ConnectionManager, error) {
	u, err := url.Parse(o.Broker)
	if err != nil {
		return nil, fmt.Errorf("broker %q: %w", o.Broker, err)
	}
	subscribed := make(chan struct{})
	var once sync.Once
	cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewConstantBackoff(time.Second),
		ConnectTimeout:                o.Timeout,
		OnConnectError:                func(err error) { log.Warn("connect failed", "err", err) },
		// Called on every connection; the session is not kept, so the
		// subscription is renewed each time. autopaho asks this callback not
		// to block; the SUBACK wait is bounded, and paho's own rpc example
		// subscribes here the same way.
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			log.Info("connected", "broker", o.Broker, "client_id", id)
			sctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			if _, err := cm.Subscribe(sctx, &paho.Subscribe{
				Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}},
			}); err != nil {
				log.Error("subscribe failed", "topic", filter, "err", err)
				return
			}
			log.Info("subscribed", "topic", filter)
			once.Do(func() { close(subscribed) })
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          id,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){onPublish},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.Broker, err)
	}
	t := time.NewTimer(o.Timeout)
	defer t.Stop()
	select {
	case <-subscribed:
		return cm, nil
	case <-t.C:
		err = fmt.Errorf("connect %s and subscribe %s: not done within %s", o.Broker, filter, o.Timeout)
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

// randomBytes returns n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return b
}

// randomHex returns n random bytes as hex.
func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }

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
