#!/usr/bin/env bash
# bench/cluster.sh: Ferry's cluster beside a single node, with ferry-bench.
# Called by `make bench-cluster`.
#
# Starts one single ferry node (no cluster section) and a cluster of three
# (n0, n1, n2; NATS embedded in each, routed to the other two; replicas 3),
# every node with bench/ferry.yaml's settings (authentication with an ACL, a
# bridge route) on its own free loopback ports and data directory, and waits
# until each has logged "ferry started". Then, for each case below, RUNS
# runs interleaved over three set-ups, all against the same running nodes:
#
#   single         publishers and subscribers on the single node: the
#                  same-node baseline
#   cluster-same   publishers and subscribers on n0
#   cluster-cross  publishers on n0, subscribers on n1 (ferry-bench -sub-addr)
#
# Last, once, the storm: STORM_CLIENTS persistent sessions, each subscribed
# to its own topic, on n0; n0 is killed with SIGKILL (STORM_MODE=kill); all
# sessions reconnect at once to n1 and n2 (round robin), and one QoS 1
# message per session, published on n1, must reach it, right after the move
# and again once the cluster has settled (bench/README.md).
#
# Nothing is pinned: the four ferry processes and the generator share the
# machine's CPUs (the report says so). Prints a markdown report: medians
# (min–max) per case and set-up, then the cluster targets with the
# measured ratios.
#
# Environment (defaults in brackets):
#   RUNS [3]              runs per case and set-up
#   DURATION [10s]        send phase per run
#   DRAIN [2s]            quiet period ending a run's drain
#   STORM_CLIENTS [10000] sessions in the storm
#   STORM_MODE [kill]     kill: n0 gets SIGKILL once the sessions are set up;
#                         close: the clients close their TCP connections
#                         (no DISCONNECT) and n0 stays up
#   STORM [1]             0 skips the storm
#   STORM_CHECKS [2]      rounds of one QoS 1 message per session after the
#                         move: right after it, and STORM_CHECK_INTERVAL
#                         [10s] later, once the cluster has settled
#   CASES [all]           space-separated case numbers to run, e.g. "1 3";
#                         "none" runs only the storm
#   START_TIMEOUT [60]    seconds to wait for every node's "ferry started"
#   OUT [bench/results-<UTC date>-cluster.jsonl]  JSON result lines (appended)
#   LOGS [/tmp/ferry-cluster-bench-<timestamp>]   nodes' configurations and
#                         logs, ferry-bench's stderr, report.md; kept
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
cmdline="$0 $*"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
DRAIN=${DRAIN:-2s}
STORM_CLIENTS=${STORM_CLIENTS:-10000}
STORM_MODE=${STORM_MODE:-kill}
STORM=${STORM:-1}
STORM_CHECKS=${STORM_CHECKS:-2}
STORM_CHECK_INTERVAL=${STORM_CHECK_INTERVAL:-10s}
CASES=${CASES:-}
START_TIMEOUT=${START_TIMEOUT:-60}
OUT=${OUT:-bench/results-$(date -u +%Y-%m-%d)-cluster.jsonl}
LOGS=${LOGS:-${TMPDIR:-/tmp}/ferry-cluster-bench-$(date -u +%Y%m%dT%H%M%SZ)}

# Labels ferry-bench summarize -cluster knows (internal/report).
SINGLE=single
SAME=cluster-same
CROSS=cluster-cross

# case table: tag | ferry-bench arguments. The tags are bench/run.sh's.
cases=(
	"fan-in QoS0 64B 10→1|-scenario fan-in -qos 0 -size 64 -pubs 10"
	"fan-in QoS1 64B 10→1|-scenario fan-in -qos 1 -size 64 -pubs 10"
	"latency QoS1 64B 2k msg/s|-scenario latency -qos 1 -size 64 -rate 2000"
)

log() { printf '%s\n' "$*" >&2; }

case $STORM_MODE in
kill | close) ;;
*) log "STORM_MODE=$STORM_MODE: want kill or close"; exit 2 ;;
esac

mkdir -p "$LOGS" "$(dirname "$OUT")"
work=$(mktemp -d)
pids=() # every ferry process started, in start order
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The storm's sessions are one descriptor each in ferry-bench and, on the
# node they are on, in ferry; both inherit this limit.
want_fds=$((STORM_CLIENTS + 4096))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want_fds ]]; then
	if [[ $STORM == 1 && $hard -lt $((STORM_CLIENTS + 100)) ]]; then
		log "hard open-files limit $hard is too low for STORM_CLIENTS=$STORM_CLIENTS (ulimit -Hn); lower it or raise the limit"
		exit 1
	fi
	ulimit -n "$hard"
else
	ulimit -n "$want_fds"
fi

log "building into $work/bin"
go build -o "$work/bin/ferry-bench" ./cmd/ferry-bench
if ! go build -o "$work/bin/ferry" ./cmd/ferry >"$LOGS/ferry-build.log" 2>&1; then
	log "./cmd/ferry does not build; see $LOGS/ferry-build.log"
	exit 1
fi
bench=$work/bin/ferry-bench

# free_port prints a loopback port nothing listens on and not handed out
# before, below the ephemeral range so that no client socket of an earlier
# run can be holding it.
taken=" "
free_port() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	for _ in $(seq 100); do
		p=$((RANDOM % (lo - 10000) + 10000))
		if [[ $taken != *" $p "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken+="$p "
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}

# write_config NAME MQTT_PORT ADMIN_PORT [CLUSTER SECTION...] writes the
# node's configuration: bench/ferry.yaml plus its listener, admin address,
# data directory and cluster section.
write_config() {
	local name=$1 mqtt=$2 admin=$3 conf="$LOGS/$1.yaml"
	{
		echo "# $name, written by bench/cluster.sh; bench/ferry.yaml follows."
		cat "$here/ferry.yaml"
		echo "listeners:"
		echo "  - {name: tcp, type: tcp, addr: \"127.0.0.1:$mqtt\"}"
		echo "admin:"
		echo "  addr: \"127.0.0.1:$admin\""
		echo "storage:"
		echo "  dir: \"$work/$name\""
		printf '%s\n' "${@:4}"
	} >"$conf"
	echo "$conf"
}

# start_node NAME CONF starts a node; sets node_pid.
start_node() {
	"$work/bin/ferry" -c "$2" >"$LOGS/$1.log" 2>&1 &
	node_pid=$!
	pids+=("$node_pid")
}

# wait_started NAME PID waits for the node's "ferry started" line.
wait_started() {
	local name=$1 pid=$2 logf="$LOGS/$1.log"
	for _ in $(seq $((START_TIMEOUT * 10))); do
		if grep -q 'ferry started' "$logf"; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$name exited at start; the end of $logf:"
			tail -n 20 "$logf" >&2
			return 1
		fi
		sleep 0.1
	done
	log "$name did not log \"ferry started\" within $START_TIMEOUT s; the end of $logf:"
	tail -n 20 "$logf" >&2
	return 1
}

# alive NAME PID fails, showing the end of its log, if the node has exited.
alive() {
	if ! kill -0 "$2" 2>/dev/null; then
		log "$1 (pid $2) has exited; the end of $LOGS/$1.log:"
		tail -n 30 "$LOGS/$1.log" >&2
		return 1
	fi
}

single_mqtt=$(free_port)
conf=$(write_config single "$single_mqtt" "$(free_port)")
start_node single "$conf"
single_pid=$node_pid

names=(n0 n1 n2)
declare -A mqtt nats_client nats_cluster admin pid
for n in "${names[@]}"; do
	mqtt[$n]=$(free_port)
	admin[$n]=$(free_port)
	nats_client[$n]=$(free_port)
	nats_cluster[$n]=$(free_port)
done
for n in "${names[@]}"; do
	routes=()
	for o in "${names[@]}"; do
		if [[ $o != "$n" ]]; then routes+=("nats://127.0.0.1:${nats_cluster[$o]}"); fi
	done
	conf=$(write_config "$n" "${mqtt[$n]}" "${admin[$n]}" \
		"cluster:" \
		"  node_id: $n" \
		"  replicas: 3" \
		"  nats:" \
		"    embedded:" \
		"      client_addr: \"127.0.0.1:${nats_client[$n]}\"" \
		"      cluster_addr: \"127.0.0.1:${nats_cluster[$n]}\"" \
		"      routes: [$(
			IFS=,
			echo "${routes[*]}"
		)]")
	# All at once: a node cannot finish starting before the JetStream
	# quorum is there.
	start_node "$n" "$conf"
	pid[$n]=$node_pid
done
log "waiting for single (pid $single_pid) and n0, n1, n2 (pids ${pid[n0]} ${pid[n1]} ${pid[n2]}); logs in $LOGS"
wait_started single "$single_pid"
for n in "${names[@]}"; do
	wait_started "$n" "${pid[$n]}"
done
cluster_pids="${pid[n0]},${pid[n1]},${pid[n2]}"

# one_run CASE_INDEX SETUP RUN appends one result line.
one_run() {
	local idx=$1 setup=$2 run=$3 tag args
	IFS='|' read -r tag args <<<"${cases[$idx]}"
	local target=()
	case $setup in
	"$SINGLE")
		alive single "$single_pid"
		target=(-addr "127.0.0.1:$single_mqtt" -broker-pid "$single_pid")
		;;
	"$SAME")
		for n in "${names[@]}"; do alive "$n" "${pid[$n]}"; done
		target=(-addr "127.0.0.1:${mqtt[n0]}" -broker-pid "$cluster_pids")
		;;
	"$CROSS")
		for n in "${names[@]}"; do alive "$n" "${pid[$n]}"; done
		target=(-addr "127.0.0.1:${mqtt[n0]}" -sub-addr "127.0.0.1:${mqtt[n1]}" -broker-pid "$cluster_pids")
		;;
	esac
	log "[$((idx + 1))/${#cases[@]}] $tag | $setup | run $run"
	# shellcheck disable=SC2086 # args is a word list by design
	if ! "$bench" "${target[@]}" -label "$setup" -tag "$tag" -d "$DURATION" -drain "$DRAIN" \
		-progress 0 -format json $args >>"$OUT" 2>>"$LOGS/ferry-bench.log"; then
		log "  ferry-bench failed; see $LOGS/ferry-bench.log"
	fi
}

from=0
if [[ -f $OUT ]]; then from=$(wc -l <"$OUT"); fi
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in "${!cases[@]}"; do
	if [[ -n $CASES && " $CASES " != *" $((i + 1)) "* ]]; then
		continue
	fi
	for run in $(seq "$RUNS"); do
		for setup in "$SINGLE" "$SAME" "$CROSS"; do
			one_run "$i" "$setup" "$run"
		done
	done
done

storm_tag="storm ${STORM_CLIENTS} sessions n0 → n1,n2"
if [[ $STORM == 1 ]]; then
	for n in "${names[@]}"; do alive "$n" "${pid[$n]}"; done
	kill_args=()
	if [[ $STORM_MODE == kill ]]; then
		kill_args=(-kill-pid "${pid[n0]}")
		storm_tag+=" (n0 killed)"
	else
		storm_tag+=" (connections closed)"
	fi
	log "storm: $STORM_CLIENTS sessions on n0, then $STORM_MODE, then all to n1,n2"
	# The outer 2>/dev/null keeps bash's "Killed" notice for n0 quiet.
	if ! { "$bench" -scenario storm -addr "127.0.0.1:${mqtt[n0]}" \
		-move-addrs "127.0.0.1:${mqtt[n1]},127.0.0.1:${mqtt[n2]}" "${kill_args[@]}" \
		-clients "$STORM_CLIENTS" -label cluster -tag "$storm_tag" -drain "$DRAIN" \
		-check-rounds "$STORM_CHECKS" -check-interval "$STORM_CHECK_INTERVAL" \
		-broker-pid "$cluster_pids" -progress 5s -format json >>"$OUT" 2>>"$LOGS/ferry-bench.log"; } 2>/dev/null; then
		log "  ferry-bench storm failed; see $LOGS/ferry-bench.log"
	fi
	if [[ $STORM_MODE == kill ]] && ! kill -0 "${pid[n0]}" 2>/dev/null; then
		# Reaped here (quietly: bash reports a killed job), and
		# forgotten: its pid may be reused.
		{ wait "${pid[n0]}"; } 2>/dev/null || true
		left=()
		for p in "${pids[@]}"; do
			if [[ $p != "${pid[n0]}" ]]; then left+=("$p"); fi
		done
		pids=("${left[@]}")
	fi
fi

{
	echo "# Ferry cluster benchmark"
	echo
	echo "- date: $started (UTC)"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr)"
	echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)'); $(go version | cut -d' ' -f3-)"
	echo "- command: \`RUNS=$RUNS DURATION=$DURATION DRAIN=$DRAIN STORM_CLIENTS=$STORM_CLIENTS STORM_MODE=$STORM_MODE STORM=$STORM STORM_CHECKS=$STORM_CHECKS STORM_CHECK_INTERVAL=$STORM_CHECK_INTERVAL CASES=\"$CASES\" $cmdline\`"
	echo "- set-ups: \`single\`: one ferry node without a cluster section; \`cluster-same\`: publishers and subscribers on n0 of a"
	echo "  three-node cluster (NATS embedded in each node, replicas 3); \`cluster-cross\`: publishers on n0, subscribers on n1."
	echo "  Every node runs bench/ferry.yaml's settings; all four run for the whole benchmark, idle when not measured."
	echo "- pinning: none. The three cluster nodes, the single node and the generator share the machine's $(nproc) CPUs"
	echo "  (unlike bench/run.sh, which pins the broker and the generator to a CPU each); broker CPU sums the three"
	echo "  cluster nodes' in the cluster set-ups"
	echo "- cells: median (min–max) over $RUNS runs; throughput is deliveries per second at the subscribers;"
	echo "  loss = acked (QoS 0: sent) messages never delivered after the drain"
	if [[ $STORM == 1 ]]; then
		echo "- storm: $STORM_CLIENTS persistent sessions (MQTT 3.1.1, clean=false, one QoS 1 subscription each) set up on n0;"
		if [[ $STORM_MODE == kill ]]; then
			echo "  n0 killed with SIGKILL, then all reconnect at once to n1 and n2 (round robin)."
		else
			echo "  their TCP connections closed without DISCONNECT (n0 stays up), then all reconnect at once to n1 and n2."
		fi
		echo "  Move = first reconnection attempt to last CONNACK; lost = CONNACK without session present, or none"
		echo "  within 60 s; then $STORM_CHECKS round(s), $STORM_CHECK_INTERVAL apart, of one QoS 1 message per session (published on n1) must arrive"
	fi
	echo
	tail -n +"$((from + 1))" "$OUT" | "$bench" summarize -cluster
	echo
	echo "Raw results: $OUT (lines $((from + 1))–$(wc -l <"$OUT")); configurations and logs: $LOGS"
} | tee "$LOGS/report.md"
