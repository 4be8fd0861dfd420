# shellcheck shell=bash
# rabbitmq.sh: a private RabbitMQ for the tests, without the system service.
# Source it, then:
#
#   rabbitmq_start DIR   start (or restart, on the same ports) a node whose
#                        state, logs, cookie and config live in DIR; returns
#                        once it accepts AMQP and exports
#                        FERRY_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:PORT/
#                        and FERRY_TEST_RABBITMQ_DIR=DIR
#   rabbitmq_stop DIR    stop that node and its epmd
#   rabbitmq_ctl DIR ARGS...  rabbitmqctl against that node
#
# The node is ferry-test@localhost with its own epmd (ERL_EPMD_PORT), so it
# never meets a system RabbitMQ or port 5672. Ports are chosen free on the
# first start and kept in DIR/ports, so a restart listens where clients
# reconnect.

RABBITMQ_SERVER_BIN=${RABBITMQ_SERVER_BIN:-/usr/lib/rabbitmq/bin/rabbitmq-server}
RABBITMQ_CTL_BIN=${RABBITMQ_CTL_BIN:-/usr/lib/rabbitmq/bin/rabbitmqctl}

# _rabbitmq_free_port prints a TCP port nothing listens on, not in "$@".
_rabbitmq_free_port() {
	local p
	while :; do
		# 10000-29999: below Linux's ephemeral range (32768-60999), so an
		# outgoing connection cannot take the port between this check and a
		# slow server's bind (a JVM takes seconds).
		p=$((10000 + RANDOM % 20000))
		case " $* " in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
}

# _rabbitmq_env DIR: sets the node's environment in the current shell.
_rabbitmq_env() {
	local dir=$1
	# shellcheck disable=SC1091
	. "$dir/ports"
	export HOME="$dir"
	export RABBITMQ_NODENAME=ferry-test@localhost
	export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
	export RABBITMQ_NODE_PORT="$RABBITMQ_TEST_AMQP_PORT"
	export RABBITMQ_DIST_PORT="$RABBITMQ_TEST_DIST_PORT"
	export ERL_EPMD_PORT="$RABBITMQ_TEST_EPMD_PORT"
	export ERL_EPMD_ADDRESS=127.0.0.1
	export RABBITMQ_MNESIA_BASE="$dir/mnesia"
	export RABBITMQ_LOG_BASE="$dir/log"
	export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
	export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
	export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
	export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
	export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
}

# rabbitmq_ctl DIR ARGS...: rabbitmqctl against DIR's node.
rabbitmq_ctl() {
	local dir=$1
	shift
	(_rabbitmq_env "$dir" && "$RABBITMQ_CTL_BIN" -n "$RABBITMQ_NODENAME" "$@")
}

rabbitmq_start() {
	local dir=${1:?usage: rabbitmq_start DIR}
	mkdir -p "$dir/mnesia" "$dir/log" || return 1
	dir=$(cd "$dir" && pwd) || return 1
	if [ ! -f "$dir/ports" ]; then
		local amqp dist epmd
		amqp=$(_rabbitmq_free_port)
		dist=$(_rabbitmq_free_port "$amqp")
		epmd=$(_rabbitmq_free_port "$amqp" "$dist")
		printf 'RABBITMQ_TEST_AMQP_PORT=%s\nRABBITMQ_TEST_DIST_PORT=%s\nRABBITMQ_TEST_EPMD_PORT=%s\n' \
			"$amqp" "$dist" "$epmd" >"$dir/ports"
	fi
	printf 'loopback_users = none\nlog.console = false\nlog.file.level = warning\n' >"$dir/rabbitmq.conf"
	echo '[].' >"$dir/advanced.config"
	echo '[].' >"$dir/enabled_plugins"
	: >"$dir/rabbitmq-env.conf"
	(
		_rabbitmq_env "$dir" || exit 1
		epmd -port "$ERL_EPMD_PORT" -address 127.0.0.1 -daemon || exit 1
		"$RABBITMQ_SERVER_BIN" >>"$dir/log/server.out" 2>&1 </dev/null &
		echo $! >"$dir/server.pid"
	) || return 1
	local i
	for i in $(seq 1 300); do
		if (
			_rabbitmq_env "$dir"
			exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_NODE_PORT"
		) 2>/dev/null; then
			(_rabbitmq_env "$dir" && "$RABBITMQ_CTL_BIN" -n "$RABBITMQ_NODENAME" -q await_startup -t 60) >/dev/null 2>&1
			# shellcheck disable=SC1091
			. "$dir/ports"
			export FERRY_TEST_RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$RABBITMQ_TEST_AMQP_PORT/"
			export FERRY_TEST_RABBITMQ_DIR="$dir"
			return 0
		fi
		if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
			echo "rabbitmq_start: rabbitmq-server exited; see $dir/log" >&2
			tail -n 20 "$dir/log/server.out" >&2
			rabbitmq_stop "$dir"
			return 1
		fi
		sleep 0.1
	done
	echo "rabbitmq_start: not accepting AMQP after 30s; see $dir/log" >&2
	rabbitmq_stop "$dir"
	return 1
}

rabbitmq_stop() {
	local dir=${1:?usage: rabbitmq_stop DIR}
	[ -f "$dir/ports" ] || return 0
	dir=$(cd "$dir" && pwd) || return 1
	rabbitmq_ctl "$dir" -q stop >/dev/null 2>&1
	local pid i
	pid=$(cat "$dir/server.pid" 2>/dev/null)
	if [ -n "$pid" ]; then
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			[ "$i" = 50 ] && kill "$pid" 2>/dev/null
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null
		rm -f "$dir/server.pid"
	fi
	(_rabbitmq_env "$dir" && epmd -port "$ERL_EPMD_PORT" -kill) >/dev/null 2>&1
	return 0
}
