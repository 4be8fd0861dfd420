# shellcheck shell=bash
# activemq.sh: a private ActiveMQ 5.x for the tests, without the system
# service (Debian's package `activemq`). Source it, then:
#
#   activemq_launch DIR  write DIR's configuration and start the broker in
#                        the background; returns at once (it takes ~15 s)
#   activemq_wait DIR    return once it accepts STOMP (up to 90 s) and export
#                        FERRY_TEST_ACTIVEMQ_STOMP=127.0.0.1:PORT and
#                        FERRY_TEST_ACTIVEMQ_DIR=DIR
#   activemq_start DIR   activemq_launch, then activemq_wait: start (or
#                        restart, on the same port, with the same KahaDB);
#                        a no-op but the wait when it is running
#   activemq_stop DIR    stop it (SIGTERM, then SIGKILL after 10 s)
#
# The broker has a STOMP transport connector only (no OpenWire on 61616, no
# web console, no JMX connector), KahaDB in DIR/data, and two users:
# ferry/ferry (group users: read, write and admin on queues and topics
# named ferry.> and on ActiveMQ.DLQ) and admin/admin (also group admins,
# the only one allowed on restricted.>). So a SEND to /queue/restricted.x
# by ferry is refused with an ERROR frame: what the tests use as a real
# permanent refusal. The port is chosen free on the first start and kept in
# DIR/port, so a restart listens where clients reconnect. DIR/start.sh and
# DIR/stop.sh are written too, for tests that restart the broker.

ACTIVEMQ_HOME=${ACTIVEMQ_HOME:-/usr/share/activemq}
ACTIVEMQ_JAR=${ACTIVEMQ_JAR:-$ACTIVEMQ_HOME/bin/activemq.jar}

# _activemq_free_port prints a TCP port nothing listens on.
_activemq_free_port() {
	local p
	while :; do
		# 10000-29999: below Linux's ephemeral range (32768-60999), so an
		# outgoing connection cannot take the port between this check and a
		# slow server's bind (a JVM takes seconds).
		p=$((10000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
}

# _activemq_config DIR PORT: writes DIR/conf.
_activemq_config() {
	local dir=$1 port=$2
	mkdir -p "$dir/conf" "$dir/data" || return 1
	cat >"$dir/conf/activemq.xml" <<EOF
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="ferry-test" useJmx="false"
          dataDirectory="$dir/data" schedulerSupport="false">
    <!-- Tests leave messages on their queues; producer flow control would
         stall later tests once the memory limit is reached. -->
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <policyEntry queue="&gt;" producerFlowControl="false" memoryLimit="8 mb"/>
          <policyEntry topic="&gt;" producerFlowControl="false" memoryLimit="8 mb"/>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory="$dir/data/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="128 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="4 gb"/></storeUsage>
        <tempUsage><tempUsage limit="256 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>
          <authenticationUser username="ferry" password="ferry" groups="users"/>
          <authenticationUser username="admin" password="admin" groups="users,admins"/>
        </users>
      </simpleAuthenticationPlugin>
      <authorizationPlugin>
        <map>
          <authorizationMap>
            <authorizationEntries>
              <authorizationEntry queue="ferry.>" read="users" write="users" admin="users"/>
              <authorizationEntry topic="ferry.>" read="users" write="users" admin="users"/>
              <authorizationEntry queue="ActiveMQ.DLQ" read="users" write="users" admin="users"/>
              <authorizationEntry queue="restricted.>" read="admins" write="admins" admin="admins"/>
              <authorizationEntry topic="ActiveMQ.Advisory.>" read="users" write="users" admin="users"/>
            </authorizationEntries>
          </authorizationMap>
        </map>
      </authorizationPlugin>
    </plugins>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$port?transport.closeAsync=false"/>
    </transportConnectors>
  </broker>
</beans>
EOF
	# Debian's build logs through log4j 1.2.
	cat >"$dir/conf/log4j.properties" <<'EOF'
log4j.rootLogger=WARN, logfile
log4j.logger.org.apache.activemq.broker.BrokerService=INFO
log4j.appender.logfile=org.apache.log4j.FileAppender
log4j.appender.logfile.file=${activemq.data}/activemq.log
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
	printf '#!/usr/bin/env bash\n. %q && activemq_start %q\n' "$(_activemq_self)" "$dir" >"$dir/start.sh"
	printf '#!/usr/bin/env bash\n. %q && activemq_stop %q\n' "$(_activemq_self)" "$dir" >"$dir/stop.sh"
	chmod +x "$dir/start.sh" "$dir/stop.sh"
}

# _activemq_self prints this file's absolute path.
_activemq_self() {
	local f=${BASH_SOURCE[0]}
	(cd "$(dirname "$f")" && printf '%s/%s\n' "$(pwd)" "$(basename "$f")")
}

activemq_launch() {
	local dir=${1:?usage: activemq_launch DIR}
	mkdir -p "$dir" || return 1
	dir=$(cd "$dir" && pwd) || return 1
	if [ ! -f "$ACTIVEMQ_JAR" ]; then
		echo "activemq_launch: $ACTIVEMQ_JAR not found (apt-get install activemq)" >&2
		return 1
	fi
	if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
		return 0 # already running: starting twice must not start a second JVM
	fi
	[ -f "$dir/port" ] || _activemq_free_port >"$dir/port"
	_activemq_config "$dir" "$(cat "$dir/port")" || return 1
	# The flags /usr/bin/activemq passes on Java 9+; the heap is bounded: the
	# tests share the machine.
	java -Xms128m -Xmx512m -Djava.awt.headless=true \
		-Dorg.apache.activemq.UseDedicatedTaskRunner=false \
		--add-reads=java.xml=java.logging \
		--add-opens java.base/java.security=ALL-UNNAMED \
		--add-opens java.base/java.net=ALL-UNNAMED \
		--add-opens java.base/java.lang=ALL-UNNAMED \
		--add-opens java.base/java.util=ALL-UNNAMED \
		--add-opens java.naming/javax.naming.spi=ALL-UNNAMED \
		--add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED \
		--add-opens java.base/java.util.concurrent=ALL-UNNAMED \
		--add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
		-Dlog4j.configuration="file:$dir/conf/log4j.properties" \
		-Dactivemq.classpath="$dir/conf" \
		-Dactivemq.home="$ACTIVEMQ_HOME" \
		-Dactivemq.base="$dir" \
		-Dactivemq.conf="$dir/conf" \
		-Dactivemq.data="$dir/data" \
		-jar "$ACTIVEMQ_JAR" start "xbean:file:$dir/conf/activemq.xml" \
		>>"$dir/server.out" 2>&1 </dev/null &
	echo $! >"$dir/server.pid"
}

activemq_wait() {
	local dir=${1:?usage: activemq_wait DIR}
	dir=$(cd "$dir" && pwd) || return 1
	local port pid
	port=$(cat "$dir/port") || return 1
	pid=$(cat "$dir/server.pid") || return 1
	for _ in $(seq 1 900); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			export FERRY_TEST_ACTIVEMQ_STOMP="127.0.0.1:$port"
			export FERRY_TEST_ACTIVEMQ_DIR="$dir"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "activemq_wait: the broker exited; see $dir/server.out and $dir/data/activemq.log" >&2
			tail -n 20 "$dir/server.out" >&2
			return 1
		fi
		sleep 0.1
	done
	echo "activemq_wait: no STOMP on port $port after 90s; see $dir/server.out" >&2
	activemq_stop "$dir"
	return 1
}

activemq_start() {
	local dir=${1:?usage: activemq_start DIR}
	activemq_launch "$dir" && activemq_wait "$dir"
}

activemq_stop() {
	local dir=${1:?usage: activemq_stop DIR}
	[ -f "$dir/server.pid" ] || return 0
	local pid
	pid=$(cat "$dir/server.pid")
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null
	fi
	rm -f "$dir/server.pid"
	return 0
}
