package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/ferrymq/ferry/internal/tmpfs"
)

// diskFullConfig: 1 MiB memtables make a small store on a 48 MiB tmpfs.
// The limit is twice the default (10 memtables, what Badger needs to flush
// and compact), so the test can hold the disk well below it, against the
// space Badger's flushes give back, without eating into what Badger needs.
const diskFullConfig = `
storage:
  sync: always
  memtable_size: 1048576
  min_free_space: 20971520
`

// belowLimit is the free space the test holds the disk at while it checks
// the refusals: 8 MiB under the limit, 12 MiB over the default.
const belowLimit = 12 << 20

// TestDiskFull fills a 48 MiB tmpfs under a real ferry with messages for
// an offline persistent session (issue 12 item 5: Badger used to die of
// SIGBUS in table.CreateTable, and again on restart). Below
// min_free_space, MQTT 5 publishers get PUBACK 0x97 and MQTT 3 publishers
// no PUBACK, /readyz is 503 with the reason and one warning is logged;
// the broker stays up, takes messages again once space is freed, restarts
// after kill -9 on a disk that is still almost full, and then delivers
// every message it acknowledged.
func TestDiskFull(t *testing.T) {
	mnt := tmpfs.Mount(t, "48m")
	bin := testutil.BuildFerry(t)
	cfg := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(cfg, []byte(diskFullConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreeAddr(t)
	args := []string{"-c", cfg, "--mqtt-addr", addr, "--ws-addr", "", "--admin-addr", "127.0.0.1:0", "--data-dir", filepath.Join(mnt, "data")}
	proc := testutil.StartFerry(t, bin, args...)

	// Fill the disk up to 28 MiB free: the store fills the rest.
	filler := filepath.Join(mnt, "filler")
	tmpfs.Fill(t, filler, 28<<20)

	sub := testutil.DialRaw(t, addr, 5)
	connectPersistent(t, sub, "full-sub")
	sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "full/#", Qos: 1}}})
	sub.Expect(packets.Suback)
	_ = sub.Conn.Close() // offline: everything is queued on disk

	pub := testutil.DialRaw(t, addr, 5)
	pub.Connect("full-pub", packets.Properties{})
	payload := make([]byte, 32<<10)
	for i := range payload { // incompressible, as Badger's tables are compressed
		payload[i] = byte(i*7919>>3 ^ i>>11)
	}
	acked := map[uint64]bool{}
	var seq uint64
	publish := func(r *testutil.Raw) packets.Packet {
		t.Helper()
		seq++
		binary.BigEndian.PutUint64(payload, seq)
		r.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(seq%60000 + 1),
			TopicName: "full/t", Payload: payload})
		pk, err := r.Read(10 * time.Second)
		if err != nil || pk.FixedHeader.Type != packets.Puback {
			log := proc.Log()
			t.Fatalf("message %d: no PUBACK (%v); broker log (end):\n%s", seq, err, log[max(0, len(log)-3000):])
		}
		return pk
	}
	refused := false
	for range 3000 {
		ack := publish(pub)
		if ack.ReasonCode == packets.ErrQuotaExceeded.Code {
			refused = true
			break
		}
		if ack.ReasonCode != 0 {
			t.Fatalf("PUBACK reason 0x%02x, want 0x00 or 0x97", ack.ReasonCode)
		}
		acked[seq] = true
	}
	if !refused {
		t.Fatalf("%d messages acknowledged on a 48 MiB disk, none refused", len(acked))
	}
	t.Logf("%d messages of 32 KiB acknowledged before the first 0x97; %d bytes free", len(acked), tmpfs.Free(t, mnt))
	// Badger's flushes free some space at once: keep the disk well below
	// the limit for the checks that follow.
	tmpfs.Fill(t, filler, belowLimit)
	testutil.Eventually(t, 5*time.Second, "/readyz 503 naming the full disk", func() bool {
		code, body := readyz(t, proc)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "disk almost full")
	})
	// One warning per episode: none more while the disk stays full.
	warnings := strings.Count(proc.Log(), "disk almost full")
	if warnings == 0 {
		t.Fatalf("no warning about the full disk:\n%s", proc.Log())
	}
	// MQTT 3: no PUBACK, so the client resends later.
	v3 := testutil.DialRaw(t, addr, 4)
	v3.Connect("full-pub-v3", packets.Properties{})
	v3.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: "full/t", Payload: payload})
	if pk, err := v3.Read(time.Second); err == nil {
		t.Fatalf("MQTT 3 publisher got %s (reason 0x%02x) on a full disk, want no acknowledgement", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		log := proc.Log()
		t.Fatalf("MQTT 3 publisher: %v; %d bytes free; broker log (end):\n%s", err, tmpfs.Free(t, mnt), log[max(0, len(log)-3000):])
	}
	// What the bridge ingress and the publish API bring in at QoS 1 is
	// refused too (mochi would drop it silently): the sender keeps it.
	resp, err := http.Post("http://"+proc.Addr("admin")+"/api/v1/publish", "application/json",
		strings.NewReader(`{"topic": "full/api", "payload": "x", "qos": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "disk almost full") {
		t.Fatalf("POST /api/v1/publish on a full disk: %d %s, want 503 naming the full disk", resp.StatusCode, body)
	}
	if n := strings.Count(proc.Log(), "disk almost full"); n != warnings {
		t.Fatalf("%d more warnings about the full disk while it stayed full:\n%s", n-warnings, proc.Log())
	}

	// Space back: ready again and taking messages, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "/readyz 200 once space is back", func() bool {
		code, _ := readyz(t, proc)
		return code == http.StatusOK
	})
	for range 5 {
		if ack := publish(pub); ack.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x after space came back", ack.ReasonCode)
		}
		acked[seq] = true
	}

	// Almost full again, then kill -9 and restart there.
	tmpfs.Fill(t, filler, belowLimit)
	proc.Signal(t, syscall.SIGKILL)
	_ = proc.Wait(t, 10*time.Second)
	if strings.Contains(proc.Log(), "SIGBUS") {
		t.Fatalf("SIGBUS:\n%s", proc.Log())
	}
	proc = testutil.StartFerry(t, bin, args...)
	if code, _ := readyz(t, proc); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d after a restart on a full disk, want 503", code)
	}
	sub = testutil.DialRaw(t, addr, 5)
	connectPersistent(t, sub, "full-sub")
	got := map[uint64]bool{}
	for len(got) < len(acked) {
		pk, err := sub.Read(10 * time.Second)
		if err != nil {
			t.Fatalf("after the restart: %d of %d acknowledged messages delivered: %v\n%s", len(got), len(acked), err, proc.Log())
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		got[binary.BigEndian.Uint64(pk.Payload)] = true
		sub.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	for s := range acked {
		if !got[s] {
			t.Fatalf("acknowledged message %d lost", s)
		}
	}
	if strings.Contains(proc.Log(), "SIGBUS") {
		t.Fatalf("SIGBUS:\n%s", proc.Log())
	}
}

// connectPersistent connects r (MQTT 5) with clean start off and a
// session that outlives the connection.
func connectPersistent(t *testing.T, r *testutil.Raw, id string) {
	t.Helper()
	r.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:     packets.ConnectParams{ClientIdentifier: id, Keepalive: 60},
		Properties:  packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true},
	})
	if ack := r.Expect(packets.Connack); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x", ack.ReasonCode)
	}
}

// readyz returns the status and body of the broker's /readyz.
func readyz(t *testing.T, p *testutil.Proc) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.Addr("admin") + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
