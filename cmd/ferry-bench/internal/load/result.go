package load

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Result is one scenario's measurements, encoded as one JSON line.
type Result struct {
	Scenario string `json:"scenario"`
	Broker   string `json:"broker,omitempty"`
	Tag      string `json:"tag,omitempty"`
	Addr     string `json:"addr"`
	// SubAddr is where the subscribers connected, when the scenario has
	// subscribers; it differs from Addr in a cross-node run.
	SubAddr     string    `json:"sub_addr,omitempty"`
	Start       time.Time `json:"start"`
	MQTT        string    `json:"mqtt"`
	QoS         int       `json:"qos"`
	Payload     int       `json:"payload_bytes"`
	Publishers  int       `json:"publishers,omitempty"`
	Subscribers int       `json:"subscribers,omitempty"`
	Inflight    int       `json:"inflight,omitempty"`
	TargetRate  float64   `json:"target_rate,omitempty"`
	Persistent  bool      `json:"persistent,omitempty"`
	TLS         bool      `json:"tls,omitempty"`
	// SendSeconds is the send phase; WallSeconds includes the drain.
	SendSeconds float64 `json:"send_s"`
	WallSeconds float64 `json:"wall_s"`

	// Sent counts PUBLISHes written (requests for reqresp); Acked those
	// the broker acknowledged (QoS 1/2). Expected is the deliveries the
	// subscribers should have seen: acked (or, at QoS 0, sent) messages
	// times the subscribers each one is routed to.
	Sent     int64 `json:"sent"`
	Acked    int64 `json:"acked,omitempty"`
	Rejected int64 `json:"rejected,omitempty"`
	Expected int64 `json:"expected"`
	// Received counts deliveries (duplicates included), Unique distinct
	// (publisher, seq) per subscriber. Lost is expected but never
	// received after the drain period.
	Received   int64   `json:"received"`
	Unique     int64   `json:"unique"`
	Lost       int64   `json:"lost"`
	LossPct    float64 `json:"loss_pct"`
	Dupes      int64   `json:"dupes"`
	OutOfOrder int64   `json:"out_of_order"`
	Stale      int64   `json:"stale,omitempty"`
	// SendTimeouts counts publishers whose last write was still blocked
	// cfg.Drain after the send phase ended: the broker stopped reading.
	SendTimeouts int `json:"send_timeouts,omitempty"`
	// Mismatched counts reqresp responses whose correlation data does not
	// name the request, and storm check messages delivered to a session
	// other than the one they were published for.
	Mismatched int64 `json:"mismatched,omitempty"`
	// Requests counts requests that reached the responder (reqresp), to
	// tell a lost request from a lost response.
	Requests int64 `json:"requests_received,omitempty"`
	// SendRate is Sent per send-phase second; RecvRate is deliveries per
	// second from start to the last delivery.
	SendRate float64 `json:"send_rate"`
	RecvRate float64 `json:"recv_rate"`
	// Latency is one-way publish-to-delivery (round trip for reqresp).
	Latency *LatencyMS `json:"latency_ms,omitempty"`

	// Idle scenario.
	Clients        int     `json:"clients,omitempty"`
	Connected      int     `json:"connected,omitempty"`
	Alive          int     `json:"alive,omitempty"`
	ConnectSeconds float64 `json:"connect_s,omitempty"`
	ConnectRate    float64 `json:"connect_rate,omitempty"`
	BrokerPID      int     `json:"broker_pid,omitempty"`
	// BrokerPIDs lists every broker process whose CPU use BrokerCPU sums,
	// when there are several (a cluster's nodes).
	BrokerPIDs      []int `json:"broker_pids,omitempty"`
	RSSBeforeBytes  int64 `json:"rss_before_bytes,omitempty"`
	RSSAfterBytes   int64 `json:"rss_after_bytes,omitempty"`
	RSSPerConnBytes int64 `json:"rss_per_conn_bytes,omitempty"`

	// Storm scenario: Clients sessions are set up on Addr (Connected of
	// them, in ConnectSeconds), their node goes away (MoveMode "kill":
	// KilledPID got SIGKILL and every connection saw its end within
	// GoneSeconds; "close": the clients closed their TCP connections
	// without DISCONNECT), then all reconnect at once to MoveAddrs.
	// MoveSeconds runs from the first reconnection attempt to the last
	// CONNACK. Resumed sessions got CONNACK with session present;
	// SessionsLost = NotPresent (CONNACK without session present) +
	// MoveFailed (no CONNACK within the move timeout, retries included).
	// Retried counts clients that needed more than one attempt, Retries
	// the failed attempts; DroppedAfterMove connections the broker ended
	// after their CONNACK, before the run closed them. A dropped session
	// reconnects as a client would (same address, retries until the move
	// timeout): Reconnected counts those back, LostAfterMove those that
	// came back without their session or not at all. Then, in each of
	// Checks (rounds), one QoS 1 message is published to each session's
	// topic from CheckAddr; the totals over the rounds: Sent, Acked,
	// Expected (acked), Unique (delivered to the right session), Lost
	// (acked, never delivered; LostByAddr by the address the session moved
	// to), Dupes, and Mismatched (delivered to another session). A round's
	// wait ends when every acked message is delivered, after CheckWait
	// without a delivery, or at the move timeout.
	MoveAddrs        []string       `json:"move_addrs,omitempty"`
	MoveMode         string         `json:"move_mode,omitempty"`
	KilledPID        int            `json:"killed_pid,omitempty"`
	GoneSeconds      float64        `json:"gone_s,omitempty"`
	MoveSeconds      float64        `json:"move_s,omitempty"`
	MoveRate         float64        `json:"move_rate,omitempty"`
	Resumed          int            `json:"resumed,omitempty"`
	NotPresent       int            `json:"not_present,omitempty"`
	MoveFailed       int            `json:"move_failed,omitempty"`
	SessionsLost     int            `json:"sessions_lost,omitempty"`
	Retried          int            `json:"retried,omitempty"`
	Retries          int            `json:"retries,omitempty"`
	DroppedAfterMove int            `json:"dropped_after_move,omitempty"`
	Reconnected      int            `json:"reconnected_after_move,omitempty"`
	LostAfterMove    int            `json:"lost_after_move,omitempty"`
	MoveLatency      *LatencyMS     `json:"move_latency_ms,omitempty"`
	CheckAddr        string         `json:"check_addr,omitempty"`
	Checks           []StormCheck   `json:"checks,omitempty"`
	LostByAddr       map[string]int `json:"lost_by_move_addr,omitempty"`

	// GenCPU is the generator's own CPU use (user+sys) over the wall time
	// divided by the cores it may run on: near 1 means the generator, not
	// the broker, may be the limit.
	GenCPU   float64 `json:"gen_cpu"`
	GenCores int     `json:"gen_cores"`
	// BrokerCPU is the broker's CPU use (user+sys, from /proc/PID/stat)
	// over the same interval, in cores, summed over BrokerPIDs; reported
	// with BrokerPID.
	BrokerCPU float64 `json:"broker_cpu,omitempty"`

	Errors    []string `json:"errors,omitempty"`
	ErrorsAll int      `json:"errors_total,omitempty"`
}

// LatencyMS are latency percentiles in milliseconds.
type LatencyMS struct {
	Samples uint64  `json:"samples"`
	Mean    float64 `json:"mean"`
	P50     float64 `json:"p50"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
}

func latencyOf(h *Histogram) *LatencyMS {
	if h.Count() == 0 {
		return nil
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return &LatencyMS{
		Samples: h.Count(), Mean: ms(h.Mean()),
		P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)), Max: ms(h.Max()),
	}
}

// cpuMeter measures this process's CPU time, and optionally the brokers',
// over an interval.
type cpuMeter struct {
	wall time.Time
	cpu  time.Duration
	// pids are the broker processes readable at the start, before their
	// CPU time then.
	pids   []int
	before []time.Duration
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// mainstream Linux architecture.
const clockTicks = 100

// procCPU returns user+sys CPU time of process pid.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("load: read broker cpu: %w", err)
	}
	// The command name may contain spaces; fields resume after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("load: parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("load: parse /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("load: parse /proc/%d/stat times", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// brokerPIDs lists BrokerPID (when set) and OtherBrokerPIDs.
func (c Config) brokerPIDs() []int {
	var pids []int
	if c.BrokerPID > 0 {
		pids = append(pids, c.BrokerPID)
	}
	for _, p := range c.OtherBrokerPIDs {
		if p > 0 {
			pids = append(pids, p)
		}
	}
	return pids
}

func startCPU(brokerPIDs []int) cpuMeter {
	m := cpuMeter{wall: time.Now(), cpu: processCPU()}
	for _, pid := range brokerPIDs {
		if d, err := procCPU(pid); err == nil {
			m.pids, m.before = append(m.pids, pid), append(m.before, d)
		}
	}
	return m
}

// brokerCores is the brokers' CPU use since start in cores, summed over
// the processes still readable (a killed process stays readable until its
// parent reaps it), 0 without a broker pid.
func (m cpuMeter) brokerCores() float64 {
	wall := time.Since(m.wall)
	if len(m.pids) == 0 || wall <= 0 {
		return 0
	}
	var used time.Duration
	for i, pid := range m.pids {
		if d, err := procCPU(pid); err == nil {
			used += d - m.before[i]
		}
	}
	return float64(used) / float64(wall)
}

// share returns CPU used / wall / usable cores, and the core count
// (runtime.NumCPU honours the affinity mask, so taskset is reflected).
func (m cpuMeter) share() (float64, int) {
	wall := time.Since(m.wall)
	cores := runtime.NumCPU()
	if wall <= 0 {
		return 0, cores
	}
	return float64(processCPU()-m.cpu) / float64(wall) / float64(cores), cores
}

// ReadRSS returns VmRSS of process pid in bytes.
func ReadRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("load: read rss: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("load: parse %q: %w", line, err)
			}
			return kb * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("load: read rss: %w", err)
	}
	return 0, fmt.Errorf("load: no VmRSS in /proc/%d/status", pid)
}

// WriteTable writes results as an aligned human-readable table; storm
// results get a table of their own after it.
func WriteTable(w io.Writer, rs []Result) error {
	var storms []Result
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tbroker\tqos\tbytes\tpub/sub\tsent/s\trecv/s\tloss%\tdupes\tooo\tp50ms\tp99ms\tmaxms\tconn/s\tRSS/conn\tgen cpu\tbroker cpu\t")
	for _, r := range rs {
		if r.Scenario == Storm {
			storms = append(storms, r)
			continue
		}
		lat := [3]string{"-", "-", "-"}
		if r.Latency != nil {
			lat = [3]string{ff(r.Latency.P50, 2), ff(r.Latency.P99, 2), ff(r.Latency.Max, 2)}
		}
		clients := fmt.Sprintf("%d/%d", r.Publishers, r.Subscribers)
		conn, rss := "-", "-"
		if r.Scenario == Idle {
			clients = fmt.Sprintf("%d idle", r.Clients)
			conn = ff(r.ConnectRate, 0)
			if r.RSSPerConnBytes > 0 {
				rss = fmt.Sprintf("%.1fKB", float64(r.RSSPerConnBytes)/1024)
			}
		}
		broker := brokerName(r)
		bcpu := brokerCPU(r)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Scenario, broker, r.QoS, r.Payload, clients, ff(r.SendRate, 0), ff(r.RecvRate, 0),
			ff(r.LossPct, 2), r.Dupes, r.OutOfOrder, lat[0], lat[1], lat[2], conn, rss,
			fmt.Sprintf("%.0f%%x%d", r.GenCPU*100, r.GenCores), bcpu)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(storms) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "storm\tbroker\tmode\tsessions\tset up\tconnect s\tgone s\tmove s\tresumed\tnot present\tfailed\tretried\tdropped\tlost after\treconnect p50ms\tp99ms\tdelivered\tacked\tlast delivery s\tmisrouted\tdupes\tgen cpu\tbroker cpu\t")
	for _, r := range storms {
		lat := [2]string{"-", "-"}
		if r.MoveLatency != nil {
			lat = [2]string{ff(r.MoveLatency.P50, 1), ff(r.MoveLatency.P99, 1)}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%s\t%d\t%d\t%s\t%s\t\n",
			r.Addr+" → "+strings.Join(r.MoveAddrs, ","), brokerName(r), r.MoveMode, r.Clients, r.Connected,
			ff(r.ConnectSeconds, 2), ff(r.GoneSeconds, 2), ff(r.MoveSeconds, 2), r.Resumed, r.NotPresent, r.MoveFailed,
			r.Retried, r.DroppedAfterMove, r.LostAfterMove, lat[0], lat[1], r.Unique, r.Acked, checkSeconds(r), r.Mismatched, r.Dupes,
			fmt.Sprintf("%.0f%%x%d", r.GenCPU*100, r.GenCores), brokerCPU(r))
	}
	return tw.Flush()
}

// brokerName is the label, or the address; with subscribers elsewhere,
// both addresses.
func brokerName(r Result) string {
	name := r.Broker
	if name == "" {
		name = r.Addr
	}
	if r.SubAddr != "" && r.SubAddr != r.Addr {
		name += fmt.Sprintf(" (pub %s, sub %s)", r.Addr, r.SubAddr)
	}
	return name
}

// checkSeconds lists each check round's time to its last delivery.
func checkSeconds(r Result) string {
	if len(r.Checks) == 0 {
		return "-"
	}
	var s []string
	for _, c := range r.Checks {
		s = append(s, ff(c.Seconds, 2))
	}
	return strings.Join(s, ",")
}

func brokerCPU(r Result) string {
	if r.BrokerCPU <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", r.BrokerCPU*100)
}

func ff(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
