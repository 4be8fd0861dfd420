#!/usr/bin/env bash
# bench/connectors.sh: egress throughput of the bridge connectors, end to
# end at least once: MQTT QoS 1 publishes (ferry-bench fan-in, 10
# pipelining publishers, 64 B) into a Ferry process whose one route
# `bench/#` delivers to Redis Streams, RabbitMQ (publisher confirms,
# persistent messages, durable queue) or Kafka (kfake, acks=all).
#
# A run: fresh backend state, fresh Ferry (data dir, storage.sync), then
# ferry-bench publishes PUBS x N messages; the figure is N x PUBS divided by
# the time from the start of ferry-bench until the route's
# ferry_bridge_delivered_total (admin /metrics) reaches that count, i.e.
# until every message was acknowledged by the backend. Prints one line per
# run and a median per connector and sync mode.
#
# Environment (defaults in brackets):
#   CONNECTORS ["none redis rabbitmq kafka"]  none: a route that matches
#                            nothing, for Ferry's QoS 1 intake alone (its
#                            figure is ferry-bench's acknowledged rate)
#   SYNCS ["batch always"]   storage.sync modes
#   RUNS [3]                 runs per connector and mode (median reported)
#   N [20000]                messages per publisher
#   PUBS [10]                publishers
#   BATCH [256]              the route's batch_size
#   RABBITMQ_DIR             a node started with scripts/rabbitmq.sh
#                            (rabbitmq_start DIR); default: one is started
#                            in a temporary directory and stopped at exit
#   PPROF [0]                1: FERRY_ADMIN_PPROF=true and an 8 s CPU
#                            profile of Ferry per run into OUT
#   OUT [/tmp/ferry-connectors-<timestamp>]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

CONNECTORS=${CONNECTORS:-"none redis rabbitmq kafka"}
SYNCS=${SYNCS:-"batch always"}
RUNS=${RUNS:-3}
N=${N:-20000}
PUBS=${PUBS:-10}
BATCH=${BATCH:-256}
PPROF=${PPROF:-0}
OUT=${OUT:-${TMPDIR:-/tmp}/ferry-connectors-$(date -u +%Y%m%dT%H%M%SZ)}
TOTAL=$((N * PUBS))

log() { printf '%s\n' "$*" >&2; }

mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
own_rabbit=""
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ -n $own_rabbit ]]; then (rabbitmq_stop "$own_rabbit") >/dev/null 2>&1 || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/rabbitmq.sh disable=SC1091
. "$root/scripts/rabbitmq.sh"

free_port() {
	local p
	for _ in $(seq 200); do
		p=$((RANDOM % 20000 + 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

wait_port() {
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		if [[ -n ${fpid:-} ]] && ! kill -0 "$fpid" 2>/dev/null; then
			log "ferry exited; nothing listens on $1"
			return 1
		fi
		sleep 0.1
	done
	log "nothing listens on $1"
	return 1
}

log "building into $work"
go build -o "$work/ferry" ./cmd/ferry
go build -o "$work/ferry-bench" ./cmd/ferry-bench
if [[ " $CONNECTORS " == *" kafka "* ]]; then
	kfake_main="$(go list -m -f '{{.Dir}}' github.com/twmb/franz-go/pkg/kfake)/main.go"
	go build -o "$work/kfake" "$kfake_main" # the module's own command (build tag none)
fi

# stop PID: TERM, then wait.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# backend_start NAME: starts (or resets) the backend; sets TO (the route's
# connector section) and BPID (a process to stop after the run, or "").
backend_start() {
	BPID=""
	case $1 in
	none)
		TO="{webhook: {url: \"http://127.0.0.1:9/unused\"}}"
		;;
	redis)
		local port
		port=$(free_port)
		mkdir -p "$work/redis"
		rm -f "$work/redis/"*
		redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/redis" \
			>"$OUT/redis.log" 2>&1 &
		BPID=$!
		pids+=("$BPID")
		wait_port "$port"
		TO="{redis: {addr: \"127.0.0.1:$port\", stream: bench}}"
		;;
	rabbitmq)
		if [[ -z ${RABBITMQ_DIR:-} ]]; then
			own_rabbit="$work/rabbitmq"
			RABBITMQ_DIR=$own_rabbit
			log "starting rabbitmq-server in $RABBITMQ_DIR"
			(rabbitmq_start "$RABBITMQ_DIR") >"$OUT/rabbitmq-start.log" 2>&1
		fi
		# shellcheck disable=SC1091
		. "$RABBITMQ_DIR/ports"
		echo '{"queues":[{"name":"ferry-bench","vhost":"/","durable":true,"auto_delete":false,"arguments":{}}]}' >"$work/defs.json"
		rabbitmq_ctl "$RABBITMQ_DIR" -q import_definitions "$work/defs.json" >/dev/null
		rabbitmq_ctl "$RABBITMQ_DIR" -q purge_queue ferry-bench >/dev/null
		TO="{rabbitmq: {url: \"amqp://guest:guest@127.0.0.1:$RABBITMQ_TEST_AMQP_PORT/\", routing_key: ferry-bench}}"
		;;
	kafka)
		rm -rf "$work/kfake-data"
		# kfake's command listens on 9092-9094 (3 brokers), topic "foo".
		"$work/kfake" -pprof "" >"$OUT/kfake.log" 2>&1 &
		BPID=$!
		pids+=("$BPID")
		wait_port 9092
		TO="{kafka: {brokers: [\"127.0.0.1:9092\"], topic: foo}}"
		;;
	esac
}

# backend_count NAME: messages the backend holds (a cross-check).
backend_count() {
	case $1 in
	redis) redis-cli -p "$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' <<<"$TO")" XLEN bench ;;
	rabbitmq) rabbitmq_ctl "$RABBITMQ_DIR" -q list_queues name messages | awk '$1 == "ferry-bench" {print $2}' ;;
	*) echo "-" ;;
	esac
}

delivered() {
	curl -s "http://127.0.0.1:$admin/metrics" |
		awk '/^ferry_bridge_delivered_total\{.*route="bench"/ {print $2}' | head -1
}

now() { date +%s.%N; }

fpid=""
results="$OUT/results.txt"
: >"$results"
for conn in $CONNECTORS; do
	for sync in $SYNCS; do
		for run in $(seq "$RUNS"); do
			backend_start "$conn"
			cat >"$work/ferry.yaml" <<-EOF
				storage: {sync: $sync}
				bridges:
				  - name: bench
				    from: "$([[ $conn == none ]] && echo "none/#" || echo "bench/#")"
				    to: $TO
				    batch_size: $BATCH
			EOF
			pprof_env=()
			[[ $PPROF == 1 ]] && pprof_env=(env FERRY_ADMIN_PPROF=true)
			# A port can be taken between the check and the bind: try a few.
			for attempt in 1 2 3; do
				mqtt=$(free_port)
				admin=$(free_port)
				[[ $admin == "$mqtt" ]] && continue
				rm -rf "$work/data"
				"${pprof_env[@]}" "$work/ferry" -c "$work/ferry.yaml" --mqtt-addr "127.0.0.1:$mqtt" --ws-addr "" \
					--admin-addr "127.0.0.1:$admin" --data-dir "$work/data" --log-level warn \
					>"$OUT/ferry-$conn-$sync-$run.log" 2>&1 &
				fpid=$!
				pids+=("$fpid")
				if wait_port "$mqtt" && wait_port "$admin"; then break; fi
				stop "$fpid"
				fpid=""
				((attempt < 3)) || { log "ferry did not start: $OUT/ferry-$conn-$sync-$run.log"; exit 1; }
			done
			if [[ $PPROF == 1 ]]; then
				(sleep 1; curl -s "http://127.0.0.1:$admin/debug/pprof/profile?seconds=8" \
					>"$OUT/cpu-$conn-$sync-$run.prof") &
			fi
			t0=$(now)
			"$work/ferry-bench" -addr "127.0.0.1:$mqtt" -scenario fan-in -qos 1 -size 64 -pubs "$PUBS" -n "$N" \
				-broker-pid "$fpid" -progress 0 -drain 1s -format json \
				>"$OUT/bench-$conn-$sync-$run.json" 2>"$OUT/bench-$conn-$sync-$run.log" &
			bpid=$!
			d=0
			deadline=$(( $(date +%s) + 300 ))
			while [[ $conn != none ]]; do
				d=$(delivered)
				d=${d:-0}
				if awk -v d="$d" -v n="$TOTAL" 'BEGIN { exit !(d >= n) }'; then break; fi
				if (($(date +%s) > deadline)); then
					log "$conn $sync run $run: only $d of $TOTAL delivered after 300 s"
					break
				fi
				# A /metrics scrape walks the outbox (ferry_bridge_lag_seconds:
				# ~25 ms of CPU with a busy outbox): scrape once a second,
				# ten times a second for the last 10 %.
				if awk -v d="$d" -v n="$TOTAL" 'BEGIN { exit !(d >= 0.9 * n) }'; then sleep 0.1; else sleep 1; fi
			done
			t1=$(now)
			wait "$bpid" || log "ferry-bench failed: $OUT/bench-$conn-$sync-$run.log"
			intake=$(grep -o '"send_rate":[0-9.]*' "$OUT/bench-$conn-$sync-$run.json" | cut -d: -f2 | awk '{ printf "%.0f", $1 }')
			if [[ $conn == none ]]; then
				rate=$intake
			else
				rate=$(awk -v n="$d" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
			fi
			held=$(backend_count "$conn")
			line="$conn sync=$sync run=$run delivered=$d in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')s: $rate msg/s (backend holds $held; MQTT intake $intake msg/s)"
			log "$line"
			echo "$conn $sync $rate" >>"$results"
			stop "$fpid"
			fpid=""
			[[ -n $BPID ]] && stop "$BPID"
			wait 2>/dev/null || true
		done
	done
done

{
	echo "# Ferry bridge connectors, egress at least once"
	echo
	echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ) (UTC)"
	echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr), $(go version | cut -d' ' -f3)"
	echo "- command: \`CONNECTORS=\"$CONNECTORS\" SYNCS=\"$SYNCS\" RUNS=$RUNS N=$N PUBS=$PUBS BATCH=$BATCH bench/connectors.sh\`"
	echo
	echo "| connector | storage.sync | median msg/s | runs |"
	echo "|---|---|---|---|"
	for conn in $CONNECTORS; do
		for sync in $SYNCS; do
			awk -v c="$conn" -v s="$sync" '$1 == c && $2 == s { print $3 }' "$results" | sort -n |
				awk -v c="$conn" -v s="$sync" '{ v[NR] = $1 } END {
					if (NR == 0) exit
					m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
					all = v[1]; for (i = 2; i <= NR; i++) all = all ", " v[i]
					printf "| %s | %s | %.0f | %s |\n", c, s, m, all }'
		done
	done
	echo
	echo "Logs and ferry-bench results: $OUT"
} | tee "$OUT/report.md"
