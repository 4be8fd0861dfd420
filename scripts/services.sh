# Sourced by scripts/test.sh: install, start and stop the real services the
# integration tests use, on private ports, and export their addresses as
# FERRY_TEST_* variables. Tests skip when a variable is missing, except under
# CI=true where a missing service fails them.

# Debian packages the tests need, and the command each provides.
# activemq depends on default-jre-headless, so --no-install-recommends
# still brings a JRE.
# chromium runs the dashboard's browser test (headless, driven by chromedp).
# systemd-analyze checks deploy/systemd/ferry.service; prometheus ships
# promtool, which checks and unit-tests deploy/prometheus/alerts.yml.
# nats-server: the cluster tests start their own NATS clusters
# (testutil.StartNATSCluster), one per test, never a shared server.
SERVICE_PACKAGES=(mosquitto:mosquitto mosquitto-clients:mosquitto_pub redis-server:redis-server
  rabbitmq-server:/usr/lib/rabbitmq/bin/rabbitmq-server activemq:/usr/share/activemq/bin/activemq.jar
  chromium:chromium systemd:systemd-analyze prometheus:promtool nats-server:nats-server)

# shellcheck source=scripts/rabbitmq.sh
. "$(dirname "${BASH_SOURCE[0]}")/rabbitmq.sh"
# shellcheck source=scripts/activemq.sh
. "$(dirname "${BASH_SOURCE[0]}")/activemq.sh"

services_install() {
  local missing=() p pkg cmd
  for p in "${SERVICE_PACKAGES[@]}"; do
    pkg=${p%%:*}; cmd=${p#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "$cmd" ] || [ -f "$cmd" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "services: missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    return 0 # tests that need them skip (or fail under CI=true)
  fi
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    echo "services: apt-get install ${missing[*]} failed" >&2; return 1; }
  # Debian's postinst may start the packaged daemons on their public
  # ports; the tests start their own on private ports.
  pkill -x mosquitto 2>/dev/null || true
  pkill -x redis-server 2>/dev/null || true
  # Debian's rabbitmq-server starts a node on 5672 when it can; ours runs
  # on free ports with its own epmd.
  if [[ " ${missing[*]} " == *" rabbitmq-server "* ]]; then
    pkill -f 'beam.*rabbit' 2>/dev/null || true
    pkill -x epmd 2>/dev/null || true
  fi
  # Only promtool is wanted from prometheus: its postinst may start the
  # server on :9090.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v invoke-rc.d >/dev/null 2>&1; then
    invoke-rc.d prometheus stop >/dev/null 2>&1 || true
  fi
  # Debian's nats-server enables a systemd unit that runs it (as user nats)
  # on 4222; the tests start their own on private ports.
  if [[ " ${missing[*]} " == *" nats-server "* ]]; then
    if command -v invoke-rc.d >/dev/null 2>&1; then invoke-rc.d nats-server stop >/dev/null 2>&1 || true; fi
    pkill -x -u nats nats-server 2>/dev/null || true
  fi
  # Debian's activemq may start its "main" instance (OpenWire on 61616).
  if [[ " ${missing[*]} " == *" activemq "* ]]; then
    if command -v invoke-rc.d >/dev/null 2>&1; then invoke-rc.d activemq stop >/dev/null 2>&1 || true; fi
    pkill -f 'activemq\.jar start xbean:activemq\.xml' 2>/dev/null || true
  fi
}

# free_port prints a loopback TCP port nothing listens on.
free_port() {
  local p
  for _ in $(seq 200); do
    # 10000-29999: below Linux's ephemeral range (32768-60999), so an
    # outgoing connection cannot take the port between this check and a
    # slow server's bind (a JVM takes seconds).
    p=$((10000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# wait_for CMD...: retry CMD for up to 20 s.
wait_for() {
  local i
  for i in $(seq 200); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

SERVICES_DIR=""

services_start() {
  SERVICES_DIR=$(mktemp -d /tmp/ferry-services.XXXXXX)
  export FERRY_TEST_SERVICES_DIR=$SERVICES_DIR
  # ActiveMQ (a JVM) is the slowest to start: launch it first, in the
  # background, and wait for its port after the others are up.
  local activemq=""
  if [ -f "$ACTIVEMQ_JAR" ] && command -v java >/dev/null 2>&1; then
    if activemq_launch "$SERVICES_DIR/activemq" >"$SERVICES_DIR/activemq-start.log" 2>&1; then
      activemq=yes
    else
      echo "services: activemq did not start:" >&2; tail -20 "$SERVICES_DIR/activemq-start.log" >&2; return 1
    fi
  fi
  if command -v chromium >/dev/null 2>&1; then
    export FERRY_TEST_CHROMIUM=$(command -v chromium)
  fi
  if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    export FERRY_TEST_NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
  fi
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    export FERRY_TEST_MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  fi
  if command -v redis-server >/dev/null 2>&1; then
    local port
    port=$(free_port) || { echo "services: no free port for redis-server" >&2; return 1; }
    mkdir -p "$SERVICES_DIR/redis"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$SERVICES_DIR/redis" >"$SERVICES_DIR/redis.log" 2>&1 &
    echo $! >"$SERVICES_DIR/redis.pid"
    if ! wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"; then
      echo "services: redis-server did not start:" >&2; cat "$SERVICES_DIR/redis.log" >&2; return 1
    fi
    export FERRY_TEST_REDIS_ADDR=127.0.0.1:$port
    echo "== redis-server on $FERRY_TEST_REDIS_ADDR"
  fi
  if [ -x "$RABBITMQ_SERVER_BIN" ]; then
    # In a subshell: rabbitmq_start sets HOME (for the Erlang cookie),
    # which must not leak into the go commands (module and build caches).
    local dir="$SERVICES_DIR/rabbitmq"
    mkdir -p "$dir"
    if ! ( rabbitmq_start "$dir" >"$SERVICES_DIR/rabbitmq-start.log" 2>&1 &&
           printf '%s\n' "$FERRY_TEST_RABBITMQ_URL" >"$SERVICES_DIR/rabbitmq.url" ); then
      echo "services: rabbitmq-server did not start:" >&2; tail -20 "$SERVICES_DIR/rabbitmq-start.log" >&2; return 1
    fi
    export FERRY_TEST_RABBITMQ_URL=$(cat "$SERVICES_DIR/rabbitmq.url")
    export FERRY_TEST_RABBITMQ_DIR=$dir
    echo "== rabbitmq-server on $FERRY_TEST_RABBITMQ_URL"
  fi
  if [ -n "$activemq" ]; then
    if ! activemq_wait "$SERVICES_DIR/activemq" >>"$SERVICES_DIR/activemq-start.log" 2>&1; then
      echo "services: activemq did not start:" >&2; tail -20 "$SERVICES_DIR/activemq-start.log" >&2; return 1
    fi
    echo "== activemq (STOMP) on $FERRY_TEST_ACTIVEMQ_STOMP"
  fi
  return 0
}

services_stop() {
  local pidfile
  if [ -n "$SERVICES_DIR" ] && [ -f "$SERVICES_DIR/rabbitmq/ports" ]; then
    ( rabbitmq_stop "$SERVICES_DIR/rabbitmq" ) >/dev/null 2>&1 || true
  fi
  if [ -n "$SERVICES_DIR" ] && [ -f "$SERVICES_DIR/activemq/server.pid" ]; then
    ( activemq_stop "$SERVICES_DIR/activemq" ) >/dev/null 2>&1 || true
  fi
  for pidfile in "$SERVICES_DIR"/*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  [ -n "$SERVICES_DIR" ] && rm -rf "$SERVICES_DIR"
  return 0
}
