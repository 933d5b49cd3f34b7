#!/usr/bin/env bash
# go tool task bench: a short bench run (under 3 minutes) against a fresh gateway
# on its own Redis: CONNS (default 19000, the size of the benchmark targets)
# connections on one topic, and the same to the two baselines and Centrifugo.
# Every server's connections stay open until its last phase: the 20
# broadcasts take turns over the servers, each event 500 ms after the one
# before and only once its receipts are in, so that every server is
# measured over the same stretch of the run and alone on the machine
# (bench.go, broadcast, says why).
# GATEWAY_BIN runs another build's gateway under the same bench client;
# PPROF_ADDR (e.g. 127.0.0.1:6060) serves its pprof profiles there.
# Centrifugo (CENTRIFUGO_BIN, default bin/centrifugo-v6.9.1/centrifugo from
# go tool task centrifugo) is measured beside them when it is there, on the same
# Redis with its Redis engine, history and recovery on in the namespace
# bench; CENTRIFUGO_BIN= (empty) leaves it out.
# CAPACITY=1 adds the capacity phase for every server (about 1 to 2
# minutes each at 19,000: outside the 3 minutes of the default run).
# The report (figures, memory and latency plots) goes to REPORT
# (.run/bench-report; empty: none), its path printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns="${CONNS:-19000}"
report="${REPORT-.run/bench-report}"
. internal/bench/redis.sh
bench_count CONNS "$conns"
bench_redis
gw=$((port + 1))
# Keepalive pings (which neither baseline sends) are set to start after the
# measured phases, which hold the connections up to 3 minutes (about 10
# with CAPACITY=1); PING_INTERVAL=25s measures the default with them in.
"${GATEWAY_BIN:-./bin/wsbus}" serve --insecure --redis "redis://127.0.0.1:$port/0" --listen "127.0.0.1:$gw" \
  --upgrade-rate 100000 --upgrade-burst 10000 --ping-interval "${PING_INTERVAL:-30m}" --log-level warn \
  ${PPROF_ADDR:+--debug-addr "$PPROF_ADDR"} &
gateway=$!
centrifugo=
cleanup() {
  kill "$gateway" $centrifugo 2>/dev/null; wait "$gateway" $centrifugo 2>/dev/null
  bench_redis_stop
}
trap cleanup EXIT
peer=()
cf_bin="${CENTRIFUGO_BIN-./bin/centrifugo-v6.9.1/centrifugo}"
if [ -n "$cf_bin" ] && [ -x "$cf_bin" ]; then
  cf=$((port + 2))
  key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  # Its pings too start after the measured phases, as the gateway's do.
  cat >"$dir/centrifugo.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $cf},
  "log": {"level": "warn"},
  "engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:$port"]}},
  "client": {"allow_anonymous_connect_without_token": true, "ping_interval": "${PING_INTERVAL:-30m}", "pong_timeout": "8s"},
  "channel": {"namespaces": [{
    "name": "bench", "history_size": 1000, "history_ttl": "1800s", "force_recovery": true,
    "allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true
  }]},
  "http_api": {"key": "$key"},
  "prometheus": {"enabled": true},
  "health": {"enabled": true},
  "usage_stats": {"disabled": true}
}
EOF
  "$cf_bin" --config "$dir/centrifugo.json" &
  centrifugo=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$cf/health" >/dev/null && break; sleep 0.1; done
  peer=(--baselines naive,floor,centrifugo --centrifugo-url "ws://127.0.0.1:$cf/connection/websocket" --centrifugo-api-key "$key")
elif [ -z "$cf_bin" ]; then
  echo "bench: Centrifugo left out (CENTRIFUGO_BIN is empty)" >&2
else
  echo "bench: no Centrifugo at $cf_bin: go tool task centrifugo builds it (CENTRIFUGO_BIN= leaves it out)" >&2
fi
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$gw/readyz" >/dev/null && break; sleep 0.1; done
./bin/wsbus bench --redis "redis://127.0.0.1:$port/0" --url "ws://127.0.0.1:$gw/v1/ws" \
  --conns "$conns" --settle 12s --broadcasts 20 --gap 500ms ${report:+--report "$report"} \
  ${CAPACITY:+--capacity} "${peer[@]}" "$@"
