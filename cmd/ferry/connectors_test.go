package main

// Fault tests of the Redis, RabbitMQ and Kafka connectors through a real
// Ferry process (issue 5). What the connector packages already test with
// the bridge in process (backend stopped mid-stream and restarted, a
// refused message dead-lettered with its reason) is not repeated here;
// these tests add what needs a process: kill -9 with messages in the
// outbox, and kill -9 while an ingress route consumes.

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	amqp "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/internal/testutil"
)

// backend is one connector's backend as the Ferry-process tests see it.
type backend struct {
	// to is the egress route's connector section (YAML flow mapping).
	to string
	// from is the ingress route's connector section.
	from string
	// down makes the backend unreachable for Ferry; up undoes it.
	down, up func(t *testing.T)
	// egressed counts, per payload, the messages Ferry delivered.
	egressed func(t *testing.T) map[string]int
	// put adds messages with these payloads to the ingress source.
	put func(t *testing.T, payloads []string)
	// ingressKilled, when set, runs after the ingress route's Ferry was
	// killed, before it restarts.
	ingressKilled func(t *testing.T)
}

// connectorBackends are the backends under test, each started for one
// test; a backend that is not available skips (fails under CI=true).
var connectorBackends = []struct {
	name  string
	start func(t *testing.T) *backend
}{
	{"redis", redisBackend},
	{"rabbitmq", rabbitBackend},
	{"kafka", kafkaBackend},
}

// redisBackend is a redis-server of the test's own (AOF, fsync always),
// stopped and restarted on the same port and directory; egress goes to
// stream "telemetry", ingress reads stream "commands".
func redisBackend(t *testing.T) *backend {
	rs := testutil.StartRedis(t)
	rc := rs.Client(t)
	t.Cleanup(func() { _ = rc.Close() })
	return &backend{
		to:   fmt.Sprintf(`{redis: {addr: %q, stream: telemetry, timeout: 1s}}`, rs.Addr),
		from: fmt.Sprintf(`{redis: {addr: %q, stream: commands, start_id: "0", block: 100ms, timeout: 1s}}`, rs.Addr),
		down: func(t *testing.T) { rs.Stop(t) },
		up:   func(t *testing.T) { rs.Start(t) },
		egressed: func(t *testing.T) map[string]int {
			byPayload, _, _ := streamPayloads(t, rc, "telemetry")
			return byPayload
		},
		put: func(t *testing.T, payloads []string) {
			pipe := rc.Pipeline()
			for _, p := range payloads {
				pipe.XAdd(context.Background(), &goredis.XAddArgs{Stream: "commands", Values: []string{"payload", p}})
			}
			if _, err := pipe.Exec(context.Background()); err != nil {
				t.Fatalf("XADD: %v", err)
			}
		},
	}
}

// rabbitBackend is the RabbitMQ that `make test` started
// (FERRY_TEST_RABBITMQ_URL). Other packages' tests share it and one of
// them restarts it, so this one never stops it (Ferry reaches it through a
// proxy that down cuts) and the test's own client redials when its
// connection is lost. Egress publishes to a fresh durable queue through
// the default exchange; ingress consumes another.
func rabbitBackend(t *testing.T) *backend {
	raw := testutil.Need(t, "FERRY_TEST_RABBITMQ_URL", "source scripts/rabbitmq.sh; rabbitmq_start DIR")
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		t.Fatalf("FERRY_TEST_RABBITMQ_URL: %v", err)
	}
	proxy := testutil.StartProxy(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	host, port, _ := net.SplitHostPort(proxy.Addr)
	uri.Host = host
	uri.Port, _ = strconv.Atoi(port)
	proxied := uri.String()

	// channel runs fn on a channel of a new connection, redialing until
	// fn returns nil (errors are the server going away) or 20 s passed.
	channel := func(t *testing.T, what string, fn func(*amqp.Channel) error) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, "rabbitmq: "+what, func() bool {
			conn, err := amqp.Dial(raw)
			if err != nil {
				return false
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err == nil {
				err = fn(ch)
			}
			return err == nil
		})
	}
	stamp := fmt.Sprintf("ferrytest.%d.%d", os.Getpid(), time.Now().UnixNano())
	out, in := stamp+".telemetry", stamp+".commands"
	channel(t, "declare queues", func(ch *amqp.Channel) error {
		for _, q := range []string{out, in} {
			if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
				return err
			}
		}
		return nil
	})
	t.Cleanup(func() {
		if conn, err := amqp.Dial(raw); err == nil {
			if ch, err := conn.Channel(); err == nil {
				for _, q := range []string{out, in} {
					_, _ = ch.QueueDelete(q, false, false, false)
				}
			}
			_ = conn.Close()
		}
	})

	// The consumer counts the egress queue's messages (auto-ack), redialing
	// after a lost connection until the test ends.
	var mu sync.Mutex
	got := map[string]int{}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			if conn, err := amqp.Dial(raw); err == nil {
				closed := conn.NotifyClose(make(chan *amqp.Error, 1))
				if ch, err := conn.Channel(); err == nil {
					if deliveries, err := ch.Consume(out, "", true, false, false, false, nil); err == nil {
					consume:
						for {
							select {
							case d, ok := <-deliveries:
								if !ok {
									break consume
								}
								mu.Lock()
								got[string(d.Body)]++
								mu.Unlock()
							case <-stop:
								_ = conn.Close()
								return
							}
						}
					}
				}
				_ = conn.Close()
				<-closed
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return &backend{
		to:   fmt.Sprintf(`{rabbitmq: {url: %q, routing_key: %q, timeout: 1s}}`, proxied, out),
		from: fmt.Sprintf(`{rabbitmq: {url: %q, queue: %q}}`, raw, in),
		down: func(*testing.T) { proxy.Cut() },
		up:   func(*testing.T) { proxy.Restore() },
		egressed: func(*testing.T) map[string]int {
			mu.Lock()
			defer mu.Unlock()
			c := make(map[string]int, len(got))
			for k, v := range got {
				c[k] = v
			}
			return c
		},
		put: func(t *testing.T, payloads []string) {
			channel(t, "publish "+in, func(ch *amqp.Channel) error {
				if err := ch.Confirm(false); err != nil {
					return err
				}
				confirms := ch.NotifyPublish(make(chan amqp.Confirmation, len(payloads)))
				for _, p := range payloads {
					if err := ch.PublishWithContext(context.Background(), "", in, false, false,
						amqp.Publishing{Body: []byte(p), MessageId: p, DeliveryMode: amqp.Persistent}); err != nil {
						return err
					}
				}
				for range payloads {
					if c, ok := <-confirms; !ok || !c.Ack {
						return fmt.Errorf("publish to %s not confirmed", in)
					}
				}
				return nil
			})
		},
	}
}

// kafkaCluster is an in-process kfake cluster persisting to a directory,
// so that it can be stopped and started again on the same port with its
// data; Ferry, a child process, connects to its address.
type kafkaCluster struct {
	c    *kfake.Cluster
	port int
	dir  string
}

func (k *kafkaCluster) start(t *testing.T) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DataDir(k.dir), kfake.Ports(k.port),
		kfake.SeedTopics(1, "telemetry", "commands"))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	k.c = c
}

func (k *kafkaCluster) stop(*testing.T) {
	if k.c != nil {
		k.c.Close()
		k.c = nil
	}
}

func (k *kafkaCluster) addr() string { return fmt.Sprintf("127.0.0.1:%d", k.port) }

// kafkaBackend is a kfake cluster of the test's own; egress produces to
// topic telemetry, ingress consumes topic commands (group ferry-<route>).
func kafkaBackend(t *testing.T) *backend {
	k := &kafkaCluster{port: testutil.FreePort(t), dir: t.TempDir()}
	k.start(t)
	t.Cleanup(func() { k.stop(t) })
	var consumer *kgo.Client
	got := map[string]int{}
	t.Cleanup(func() {
		if consumer != nil {
			consumer.Close()
		}
	})
	return &backend{
		to:   fmt.Sprintf(`{kafka: {brokers: [%q], topic: telemetry, timeout: 1s}}`, k.addr()),
		from: fmt.Sprintf(`{kafka: {brokers: [%q], topic: commands, timeout: 2s}}`, k.addr()),
		down: k.stop,
		up:   k.start,
		ingressKilled: func(t *testing.T) {
			kafkaForgetMembers(t, k.addr(), "ferry-commands")
		},
		egressed: func(t *testing.T) map[string]int {
			if consumer == nil {
				var err error
				consumer, err = kgo.NewClient(kgo.SeedBrokers(k.addr()), kgo.ConsumeTopics("telemetry"),
					kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
				if err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			for _, r := range consumer.PollFetches(ctx).Records() {
				got[string(r.Value)]++
			}
			return got
		},
		put: func(t *testing.T, payloads []string) {
			cl, err := kgo.NewClient(kgo.SeedBrokers(k.addr()))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			rs := make([]*kgo.Record, len(payloads))
			for i, p := range payloads {
				rs[i] = &kgo.Record{Topic: "commands", Value: []byte(p)}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
				t.Fatalf("produce: %v", err)
			}
		},
	}
}

// metric reads one route's sample of a metric from Ferry's admin endpoint
// (-1 when absent).
func metric(t *testing.T, admin, name, route string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + name + `\{[^}]*route="` + regexp.QuoteMeta(route) + `"[^}]*\} (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

// payloads returns prefix%05d for i in [from, to).
func payloads(prefix string, from, to int) []string {
	p := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		p = append(p, fmt.Sprintf("%s%05d", prefix, i))
	}
	return p
}

// checkAll fails unless got holds every payload of want and nothing else;
// it returns the number of duplicates.
func checkAll(t *testing.T, got map[string]int, want []string) int {
	t.Helper()
	dups, missing := 0, 0
	for _, p := range want {
		switch n := got[p]; {
		case n == 0:
			missing++
			if missing <= 10 {
				t.Errorf("%s missing", p)
			}
		default:
			dups += n - 1
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d messages missing", missing, len(want))
	}
	if len(got) != len(want) {
		t.Fatalf("%d distinct payloads, want %d", len(got), len(want))
	}
	return dups
}

// TestConnectorEgressKill: with the backend unreachable, 800 QoS 1
// messages are PUBACKed (so they are in the outbox: the route's queue
// depth says so), then Ferry is killed -9; the backend comes back, Ferry
// restarts on the same data directory, and every one of the 1,000
// messages (200 delivered before the outage) reaches the backend.
func TestConnectorEgressKill(t *testing.T) {
	for _, bc := range connectorBackends {
		t.Run(bc.name, func(t *testing.T) {
			be := bc.start(t)
			cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: telemetry
    from: "devices/#"
    to: %s
    backoff: {initial: 20ms, max: 200ms}
`, be.to))
			bin := testutil.BuildFerry(t)
			args := []string{"-c", cfg, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "127.0.0.1:0",
				"--data-dir", filepath.Join(t.TempDir(), "data")}
			p := testutil.StartFerry(t, bin, args...)
			pub := connectPaho(t, p.Addr("tcp0"), "sensor", true, nil)
			const before, total = 200, 1000
			want := payloads("m", 0, total)
			publishQoS1(t, pub, "devices/sensor/telemetry", 0, before)
			testutil.Eventually(t, 20*time.Second, "the first 200 delivered", func() bool {
				return len(be.egressed(t)) >= before
			})
			be.down(t)
			publishQoS1(t, pub, "devices/sensor/telemetry", before, total)
			depth := metric(t, p.Addr("admin"), "ferry_bridge_queue_depth", "telemetry")
			if depth < 1 {
				t.Fatalf("queue depth %v before the kill, want the outage's messages in the outbox", depth)
			}
			pub.Disconnect(0)
			p.Signal(t, syscall.SIGKILL)
			_ = p.Wait(t, 10*time.Second)

			be.up(t)
			testutil.StartFerry(t, bin, args...) // on the same data directory
			var got map[string]int
			testutil.Eventually(t, 30*time.Second, "all 1,000 messages in the backend", func() bool {
				got = be.egressed(t)
				return len(got) >= total
			})
			dups := checkAll(t, got, want)
			t.Logf("%v messages in the outbox at the kill; %d duplicates in the backend", depth, dups)
		})
	}
}

// TestConnectorIngressKill: 2,000 messages wait in the backend (a Redis
// stream, a RabbitMQ queue, a Kafka topic) for an ingress route to the
// MQTT topic commands/in, which a persistent QoS 1 subscriber reads. Ferry
// is killed -9 while it consumes, then restarted on the same data
// directory and address: the subscriber, reconnecting to its session,
// gets every message. What Ferry had published but not yet acknowledged
// to the backend comes again: duplicates are counted and bounded.
func TestConnectorIngressKill(t *testing.T) {
	for _, bc := range connectorBackends {
		t.Run(bc.name, func(t *testing.T) {
			be := bc.start(t)
			cfg := writeConfig(t, fmt.Sprintf(`storage: {sync: always}
bridges:
  - name: commands
    direction: in
    from: %s
    to: {topic: commands/in, qos: 1}
    backoff: {initial: 20ms, max: 200ms}
`, be.from))
			bin := testutil.BuildFerry(t)
			addr := testutil.FreeAddr(t)
			args := []string{"-c", cfg, "--mqtt-addr", addr, "--ws-addr", "", "--admin-addr", "",
				"--data-dir", filepath.Join(t.TempDir(), "data")}
			p := testutil.StartFerry(t, bin, args...)

			var mu sync.Mutex
			got := map[string]int{}
			received := 0
			sub := connectPaho(t, addr, "consumer", false, func(_ paho.Client, m paho.Message) {
				mu.Lock()
				got[string(m.Payload())]++
				received++
				mu.Unlock()
			})
			if tok := sub.Subscribe("commands/in", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			count := func() (distinct, all int) {
				mu.Lock()
				defer mu.Unlock()
				return len(got), received
			}

			const total = 2000
			want := payloads("c", 0, total)
			be.put(t, want)
			testutil.Eventually(t, 20*time.Second, "ingress under way", func() bool {
				d, _ := count()
				return d >= 100
			})
			p.Signal(t, syscall.SIGKILL)
			_ = p.Wait(t, 10*time.Second)
			atKill, _ := count()
			if atKill >= total {
				t.Fatalf("all %d messages were consumed before the kill: the test proves nothing", total)
			}
			if be.ingressKilled != nil {
				be.ingressKilled(t)
			}
			testutil.StartFerry(t, bin, args...) // same address and data directory
			testutil.Eventually(t, 30*time.Second, "every message at the subscriber", func() bool {
				d, _ := count()
				return d >= total
			})
			mu.Lock()
			dups := checkAll(t, got, want)
			mu.Unlock()
			t.Logf("killed after %d of %d messages; %d duplicates at the subscriber", atKill, total, dups)
			// Redelivered: what the killed Ferry published but had not
			// acknowledged to the backend (Redis: one XREADGROUP count,
			// RabbitMQ: the prefetch window, Kafka: one poll), plus what
			// it had not yet delivered to the subscriber.
			if dups > 200 {
				t.Fatalf("%d duplicates, more than the in-flight windows allow", dups)
			}
		})
	}
}

// kafkaForgetMembers removes every member from a consumer group, as the
// session timeout (45 s) would for the members of a killed process, so
// that a restarted consumer is assigned the partitions at once.
func kafkaForgetMembers(t *testing.T, addr, group string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dreq := kmsg.NewPtrDescribeGroupsRequest()
	dreq.Groups = []string{group}
	dresp, err := dreq.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("describe group: %v", err)
	}
	lreq := kmsg.NewPtrLeaveGroupRequest()
	lreq.Group = group
	for _, g := range dresp.Groups {
		for _, mem := range g.Members {
			lm := kmsg.NewLeaveGroupRequestMember()
			lm.MemberID = mem.MemberID
			lreq.Members = append(lreq.Members, lm)
		}
	}
	if len(lreq.Members) == 0 {
		return
	}
	if _, err := lreq.RequestWith(ctx, cl); err != nil {
		t.Fatalf("leave group: %v", err)
	}
}

// TestConnectorKafkaDeadLetterReason: a record Kafka refuses permanently
// (MESSAGE_TOO_LARGE) is dead-lettered with that reason, which `ferry dlq
// list` shows, and the next message is delivered. (The Redis and RabbitMQ
// packages assert the reason of their refusals, WRONGTYPE and NO_ROUTE;
// the Kafka package counts the dead letter only.)
func TestConnectorKafkaDeadLetterReason(t *testing.T) {
	k := &kafkaCluster{port: testutil.FreePort(t), dir: t.TempDir()}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(k.port), kfake.SeedTopics(1, "telemetry"),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := writeConfig(t, fmt.Sprintf(`bridges:
  - name: telemetry
    from: "devices/#"
    to: {kafka: {brokers: [%q], topic: telemetry, timeout: 2s}}
    backoff: {initial: 10ms, max: 50ms}
`, k.addr()))
	p := startFerry(t, "-c", cfg)
	pub := connectPaho(t, p.Addr("tcp0"), "sensor", true, nil)
	big := make([]byte, 16<<10)
	_, _ = rand.Read(big) // incompressible: over message.max.bytes after compression too
	for _, payload := range []any{big, "small"} {
		if tok := pub.Publish("devices/sensor/telemetry", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	admin := p.Addr("admin")
	var out string
	testutil.Eventually(t, 20*time.Second, "the oversized message dead-lettered", func() bool {
		code, o, _ := runCmd(t, "", nil, "dlq", "list", "telemetry", "--admin-addr", admin)
		out = o
		return code == 0 && strings.Contains(o, "devices/sensor/telemetry")
	})
	if !strings.Contains(out, "MESSAGE_TOO_LARGE") {
		t.Errorf("dlq list does not show the reason: %q", out)
	}
	testutil.Eventually(t, 20*time.Second, "the next message delivered", func() bool {
		return metric(t, admin, "ferry_bridge_delivered_total", "telemetry") == 1
	})
}
