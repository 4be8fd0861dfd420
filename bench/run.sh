#!/usr/bin/env bash
# bench/run.sh: side-by-side benchmark of Ferry, bare mochi and Mosquitto
# with ferry-bench. Called by `make bench`.
#
# For every case below and every broker, RUNS runs are interleaved
# (case 1: ferry, mochi, mosquitto, ferry, ...), each against a freshly
# started broker pinned to CPU 0 while the generator is pinned to CPU 1;
# then one unpinned run per case and broker. Prints a markdown report with
# the median and min–max of the runs, the machine and the exact command.
#
# Environment (defaults in brackets):
#   RUNS [5]            pinned runs per case and broker
#   DURATION [10s]      send phase per run
#   DRAIN [2s]          quiet period ending a run's drain
#   IDLE_CLIENTS [10000] connections in the idle case
#   IDLE_HOLD [5s]      how long the idle connections are held before RSS is read
#   BROKERS ["ferry mochi mosquitto"]
#   CASES [all]         space-separated case numbers to run, e.g. "1 5"
#   UNPINNED [1]        0 skips the unpinned runs
#   OUT [/tmp/ferry-bench-<timestamp>]  where results.jsonl, report.md and logs go
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
cmdline="$0 $*"

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
DRAIN=${DRAIN:-2s}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
IDLE_HOLD=${IDLE_HOLD:-5s}
BROKERS=${BROKERS:-"ferry mochi mosquitto"}
CASES=${CASES:-}
UNPINNED=${UNPINNED:-1}
OUT=${OUT:-${TMPDIR:-/tmp}/ferry-bench-$(date -u +%Y%m%dT%H%M%SZ)}

# case table: tag | ferry-bench arguments [| brokers it applies to (default
# all) | environment of the broker]. The storage cases are Ferry's alone:
# neither bare mochi nor Mosquitto as its users run it stores messages
# before it acknowledges them.
cases=(
	"fan-in QoS0 64B 10→1|-scenario fan-in -qos 0 -size 64 -pubs 10"
	"fan-in QoS0 1KiB 10→1|-scenario fan-in -qos 0 -size 1024 -pubs 10"
	"fan-in QoS1 64B 10→1|-scenario fan-in -qos 1 -size 64 -pubs 10"
	"fan-in QoS1 1KiB 10→1|-scenario fan-in -qos 1 -size 1024 -pubs 10"
	"pairs QoS0 64B ×100|-scenario pairs -qos 0 -size 64 -pubs 100"
	"pairs QoS1 64B ×100|-scenario pairs -qos 1 -size 64 -pubs 100"
	"fan-out QoS0 64B 1→100 (deliveries/s)|-scenario fan-out -qos 0 -size 64 -pubs 1 -subs 100"
	"latency QoS1 64B 2k msg/s|-scenario latency -qos 1 -size 64 -rate 2000"
	"idle ${IDLE_CLIENTS} connections|-scenario idle -clients ${IDLE_CLIENTS}"
	"fan-in QoS1 64B clean sessions, sync always|-scenario fan-in -qos 1 -size 64 -pubs 10|ferry|FERRY_STORAGE_SYNC=always"
	"fan-in QoS1 64B persistent sessions, sync always|-scenario fan-in -qos 1 -size 64 -pubs 10 -clean=false|ferry|FERRY_STORAGE_SYNC=always"
	"fan-in QoS2 64B persistent sessions, sync always|-scenario fan-in -qos 2 -size 64 -pubs 10 -clean=false|ferry|FERRY_STORAGE_SYNC=always"
)

# case_field CASE_INDEX N prints field N (1-based) of a case.
case_field() {
	local IFS='|'
	# shellcheck disable=SC2206 # splitting on | is the point
	local f=(${cases[$1]})
	echo "${f[$(($2 - 1))]:-}"
}

# case_for CASE_INDEX BROKER says whether the case applies to BROKER.
case_for() {
	local only
	only=$(case_field "$1" 3)
	[[ -z $only || " $only " == *" $2 "* ]]
}

log() { printf '%s\n' "$*" >&2; }

mkdir -p "$OUT/logs"
work=$(mktemp -d)
broker_pid=""
cleanup() {
	stop_broker
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Many connections need many descriptors; both broker and generator inherit
# this limit.
want_fds=$((IDLE_CLIENTS + 4096))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want_fds ]]; then
	log "warning: hard fd limit $hard < $want_fds; the idle case may hit it"
	ulimit -n "$hard"
else
	ulimit -n "$want_fds"
fi

log "building into $work/bin"
go build -o "$work/bin/ferry-bench" ./cmd/ferry-bench
(cd bench/mochi-baseline && go build -o "$work/bin/mochi-baseline" .)
available=()
for b in $BROKERS; do
	case $b in
	ferry)
		if go build -o "$work/bin/ferry" ./cmd/ferry >"$OUT/logs/ferry-build.log" 2>&1; then
			available+=(ferry)
		else
			log "skipping ferry: ./cmd/ferry does not build (see $OUT/logs/ferry-build.log)"
		fi
		;;
	mochi) available+=(mochi) ;;
	mosquitto)
		if command -v mosquitto >/dev/null; then
			available+=(mosquitto)
		else
			log "skipping mosquitto: not installed (apt-get install mosquitto)"
		fi
		;;
	*) log "unknown broker $b"; exit 2 ;;
	esac
done
if [[ ${#available[@]} -eq 0 ]]; then
	log "no broker to benchmark"
	exit 1
fi

pin_broker=(taskset -c 0)
pin_gen=(taskset -c 1)
if [[ $(nproc) -lt 2 ]] || ! command -v taskset >/dev/null; then
	log "warning: fewer than 2 CPUs or no taskset; pinned runs are not pinned"
	pin_broker=()
	pin_gen=()
fi

# free_port prints a loopback port nothing listens on, below the ephemeral
# range so that no client socket of an earlier run can be holding it.
free_port() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	for _ in $(seq 100); do
		p=$((RANDOM % (lo - 10000) + 10000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}

# start_broker NAME PORT PINNED [ENV...] starts a fresh broker and waits
# until it accepts connections; sets broker_pid.
start_broker() {
	local name=$1 port=$2 pinned=$3 pin=() logf="$OUT/logs/$1-$2.log"
	local envs=("${@:4}")
	if [[ $pinned == 1 ]]; then pin=("${pin_broker[@]}"); fi
	pin=(env "${envs[@]}" "${pin[@]}")
	case $name in
	ferry)
		local data="$work/ferry-data-$port"
		"${pin[@]}" "$work/bin/ferry" -c "$here/ferry.yaml" --mqtt-addr "127.0.0.1:$port" --ws-addr "" --admin-addr "" \
			--data-dir "$data" --log-level warn >"$logf" 2>&1 &
		;;
	mochi)
		"${pin[@]}" "$work/bin/mochi-baseline" -addr "127.0.0.1:$port" >"$logf" 2>&1 &
		;;
	mosquitto)
		# As its users run it: Mosquitto's defaults (Nagle on, an in-flight
		# window of 20, no persistence), but for a queue limit high enough
		# that it drops nothing by configuration.
		cat >"$work/mosquitto-$port.conf" <<-EOF
			listener $port 127.0.0.1
			allow_anonymous true
			max_queued_messages 1000000
			log_dest stderr
			log_type error
			log_type warning
		EOF
		"${pin[@]}" mosquitto -c "$work/mosquitto-$port.conf" >"$logf" 2>&1 &
		;;
	esac
	broker_pid=$!
	for _ in $(seq 200); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		if ! kill -0 "$broker_pid" 2>/dev/null; then
			log "$name exited at start; see $logf"
			broker_pid=""
			return 1
		fi
		sleep 0.05
	done
	log "$name did not listen on $port within 10 s"
	return 1
}

# stop_broker stops the broker, killing it if it has not exited in 10 s.
stop_broker() {
	if [[ -n $broker_pid ]]; then
		kill "$broker_pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$broker_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$broker_pid" 2>/dev/null || true
		wait "$broker_pid" 2>/dev/null || true
		broker_pid=""
	fi
}

# one_run CASE_INDEX BROKER PINNED RUN appends one result line.
one_run() {
	local idx=$1 name=$2 pinned=$3 run=$4
	local tag args envs
	tag=$(case_field "$idx" 1)
	args=$(case_field "$idx" 2)
	read -r -a envs <<<"$(case_field "$idx" 4)"
	local port label=$name pin=() extra=() started=0
	if [[ $pinned == 1 ]]; then pin=("${pin_gen[@]}"); else label="$name (unpinned)"; fi
	# A port can be taken between the check and the bind: try a few.
	for _ in 1 2 3; do
		port=$(free_port)
		if start_broker "$name" "$port" "$pinned" "${envs[@]}"; then
			started=1
			break
		fi
	done
	if [[ $started == 0 ]]; then
		log "  skipping: $name did not start"
		return 0
	fi
	if [[ $args == *"-scenario idle"* ]]; then
		extra=(-broker-pid "$broker_pid" -d "$IDLE_HOLD")
	else
		extra=(-broker-pid "$broker_pid" -d "$DURATION")
	fi
	log "[$((idx + 1))/${#cases[@]}] $tag | $label | run $run"
	# shellcheck disable=SC2086 # args is a word list by design
	if ! "${pin[@]}" "$work/bin/ferry-bench" -addr "127.0.0.1:$port" -label "$label" -tag "$tag" \
		-drain "$DRAIN" -progress 0 -format json $args "${extra[@]}" \
		>>"$OUT/results.jsonl" 2>>"$OUT/logs/ferry-bench.log"; then
		log "  ferry-bench failed; see $OUT/logs/ferry-bench.log"
	fi
	stop_broker
}

selected=()
for i in "${!cases[@]}"; do
	if [[ -z $CASES ]] || [[ " $CASES " == *" $((i + 1)) "* ]]; then
		selected+=("$i")
	fi
done

: >"$OUT/results.jsonl"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in "${selected[@]}"; do
	for run in $(seq "$RUNS"); do
		for b in "${available[@]}"; do
			if case_for "$i" "$b"; then
				one_run "$i" "$b" 1 "$run"
			fi
		done
	done
	if [[ $UNPINNED == 1 ]]; then
		for b in "${available[@]}"; do
			if case_for "$i" "$b"; then
				one_run "$i" "$b" 0 1
			fi
		done
	fi
done

{
	echo "# Ferry benchmark"
	echo
	echo "- date: $started (UTC)"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr)"
	echo "- command: \`RUNS=$RUNS DURATION=$DURATION DRAIN=$DRAIN IDLE_CLIENTS=$IDLE_CLIENTS IDLE_HOLD=$IDLE_HOLD BROKERS=\"$BROKERS\" CASES=\"$CASES\" UNPINNED=$UNPINNED $cmdline\`"
	echo "- brokers: ${available[*]}; $(go version | cut -d' ' -f3-); $(mosquitto -h 2>/dev/null | head -1 || true)"
	echo "- pinned: broker \`${pin_broker[*]:-none}\`, generator \`${pin_gen[*]:-none}\`; \"(unpinned)\" columns are one run without taskset"
	echo "- cells: median (min–max) over $RUNS runs; throughput is deliveries per second at the subscribers;"
	echo "  loss = acked (QoS 0: sent) messages never delivered after the drain; broker CPU = its user+sys / wall (1 core = 100%);"
	echo "  gen CPU = generator user+sys / wall / its cores: near 100% the generator, not the broker, may be the limit"
	echo
	"$work/bin/ferry-bench" summarize "$OUT/results.jsonl"
	echo
	echo "Raw results: $OUT/results.jsonl"
} | tee "$OUT/report.md"
