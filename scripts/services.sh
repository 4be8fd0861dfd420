# Sourced by scripts/test.sh: install, start and stop the real services the
# integration tests use, on private ports, and export their addresses as
# FERRY_TEST_* variables. Tests skip when a variable is missing, except under
# CI=true where a missing service fails them.

# Debian packages the tests need, and the command each provides.
SERVICE_PACKAGES=(mosquitto:mosquitto mosquitto-clients:mosquitto_pub)

services_install() {
  local missing=() p pkg cmd
  for p in "${SERVICE_PACKAGES[@]}"; do
    pkg=${p%%:*}; cmd=${p#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
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
}

SERVICES_DIR=""

services_start() {
  SERVICES_DIR=$(mktemp -d /tmp/ferry-services.XXXXXX)
  export FERRY_TEST_SERVICES_DIR=$SERVICES_DIR
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    export FERRY_TEST_MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  fi
  return 0
}

services_stop() {
  local pidfile
  for pidfile in "$SERVICES_DIR"/*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  [ -n "$SERVICES_DIR" ] && rm -rf "$SERVICES_DIR"
  return 0
}
