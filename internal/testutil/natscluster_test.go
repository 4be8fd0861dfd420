package testutil

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNATSClusterSurvivesLosingOneServer: an R3 stream on 3 servers keeps
// taking and serving messages with its leader killed (quorum 2 of 3), and
// the restarted server catches up.
func TestNATSClusterSurvivesLosingOneServer(t *testing.T) {
	start := time.Now()
	c := StartNATSCluster(t, 3)
	t.Logf("cluster ready in %s", time.Since(start).Round(time.Millisecond))
	if got := len(strings.Split(c.URLs(), ",")); got != 3 {
		t.Fatalf("URLs() = %q: %d URLs, want 3", c.URLs(), got)
	}

	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to %s: %v", c.URLs(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}
	publish := func(data string) {
		t.Helper()
		retry(t, 15*time.Second, "publish "+data, func() error {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			// The message id makes a retry of a publish whose ack was lost
			// a duplicate the stream drops.
			_, err := js.Publish(pctx, "t.x", []byte(data), jetstream.WithMsgID(data))
			return err
		})
	}
	read := func(seq uint64, want string) {
		t.Helper()
		retry(t, 15*time.Second, fmt.Sprintf("read message %d", seq), func() error {
			gctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			m, err := stream.GetMsg(gctx, seq)
			if err != nil {
				return err
			}
			if string(m.Data) != want {
				t.Fatalf("message %d is %q, want %q", seq, m.Data, want)
			}
			return nil
		})
	}

	publish("before")
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	victim := c.Index(info.Cluster.Leader)
	if victim < 0 {
		t.Fatalf("stream leader %q is none of the servers", info.Cluster.Leader)
	}

	// A frozen follower does not stop the stream either. (Not the server
	// the client is connected to: that one would hold its publishes.)
	follower := -1
	for i := range 3 {
		if i != victim && c.URL(i) != nc.ConnectedUrl() {
			follower = i
			break
		}
	}
	if follower < 0 {
		t.Fatalf("no follower the client (on %s) is not connected to", nc.ConnectedUrl())
	}
	c.Stop(follower)
	publish("frozen")
	c.Cont(follower)

	killed := time.Now()
	c.Kill(victim)
	publish("after")
	read(1, "before")
	read(2, "frozen")
	read(3, "after")
	t.Logf("stream leader %s killed; publish and read went on after %s",
		c.Name(victim), time.Since(killed).Round(time.Millisecond))

	restarted := time.Now()
	c.Start(victim)
	retry(t, 15*time.Second, c.Name(victim)+" current in the stream again", func() error {
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err := stream.Info(ictx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 3 {
			return fmt.Errorf("stream has %d messages, want 3", info.State.Msgs)
		}
		if info.Cluster.Leader == c.Name(victim) {
			return nil
		}
		for _, r := range info.Cluster.Replicas {
			if r.Name == c.Name(victim) && r.Current && !r.Offline {
				return nil
			}
		}
		return fmt.Errorf("%s not a current replica: leader %s, replicas %+v", c.Name(victim), info.Cluster.Leader, info.Cluster.Replicas)
	})
	t.Logf("%s restarted and current after %s", c.Name(victim), time.Since(restarted).Round(time.Millisecond))
	if !strings.Contains(c.Log(victim), "restarting "+c.Name(victim)) {
		t.Errorf("%s's log does not record the restart:\n%s", c.Name(victim), c.Log(victim))
	}
}

func TestNATSClusterConfig(t *testing.T) {
	c := newNATSCluster(t, "nats-server", 3)
	ports := map[int]string{}
	for i, s := range c.servers {
		for _, p := range []int{s.clientPort, s.clusterPort, s.httpPort} {
			if prev, dup := ports[p]; dup {
				t.Errorf("port %d given twice (%s and %s)", p, prev, s.name)
			}
			ports[p] = s.name
		}
		if want := fmt.Sprintf("nats://127.0.0.1:%d", s.clientPort); c.URL(i) != want {
			t.Errorf("URL(%d) = %q, want %q", i, c.URL(i), want)
		}
		conf := c.config(i)
		for _, want := range []string{
			"server_name: n" + fmt.Sprint(i+1) + "\n",
			fmt.Sprintf("listen: \"127.0.0.1:%d\"", s.clientPort),
			fmt.Sprintf("listen: \"127.0.0.1:%d\"", s.clusterPort),
			fmt.Sprintf("http: \"127.0.0.1:%d\"", s.httpPort),
			"name: " + NATSClusterName,
			"no_advertise: true",
		} {
			if !strings.Contains(conf, want) {
				t.Errorf("server %d config lacks %q:\n%s", i, want, conf)
			}
		}
		for j, o := range c.servers {
			route := fmt.Sprintf("nats://127.0.0.1:%d", o.clusterPort)
			if got := strings.Contains(conf, route); got != (i != j) {
				t.Errorf("server %d config has route to server %d: %v, want %v:\n%s", i, j, got, i != j, conf)
			}
		}
	}
	if got, want := c.URLs(), c.URL(0)+","+c.URL(1)+","+c.URL(2); got != want {
		t.Errorf("URLs() = %q, want %q", got, want)
	}
}

// retry calls fn until it returns nil, failing the test with fn's last
// error after timeout.
func retry(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		if errors.Is(err, context.Canceled) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
