#!/usr/bin/env bash
# go tool task bench-million: CONNS (1,000,000) WebSocket connections held
# at once on this machine, clients included. Each connection is subscribed
# to one shared topic and its own. The connections are spread over as many
# gateway processes as the open-files limit needs (PER_GATEWAY, 19,300,
# each), all on one fresh Redis, and dialed by as many client workers, each
# from source addresses of its own on 127.0.0.0/8.
#
# First it checks the machine (memory, kernel limits; as root it raises the
# limits that are short and says so). Then it measures: the time to connect
# all, gateway and client memory per connection, the kernel's (sockets,
# slab, TCP buffers) and the whole machine's; BROADCASTS (1) broadcast to
# every connection (two cores deliver about 70,000 events a second with
# the clients' reads, so one to a million takes about 15 s: more, GAP
# apart, queue behind each other unless GAP is longer); unicast events to a sample of the own
# topics (UNICAST_RATE, 2000/s, for UNICAST_FOR, 10s); and a resume storm:
# every connection dropped, one event published to the shared topic, and
# every client reconnecting with its cursors at once.
#
# The figures are printed as they come and as a table; the result as JSON
# (and a page of plots) goes to REPORT (.run/million-report).
# WSBUS_BIN runs another build (default ./bin/wsbus). Extra arguments go
# to wsbus bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${WSBUS_BIN:-./bin/wsbus}"
conns="${CONNS:-1000000}"
per="${PER_GATEWAY:-19300}"
. internal/bench/redis.sh
bench_count CONNS "$conns"
bench_count PER_GATEWAY "$per"
gateways="${GATEWAYS:-$(((conns + per - 1) / per))}"
bench_count GATEWAYS "$gateways"
report="${REPORT-.run/million-report}"

"$bin" bench --prepare-host --conns "$conns" --processes $((2 * gateways))

bench_redis
pids=()
trap bench_stop EXIT

# Every process runs with one P (GOMAXPROCS=1): over 100 Go processes on
# two cores, each with a P a core would spin its idle one looking for work
# (in a first run the load average was over 200, and a broadcast to all
# took a minute). Keepalive pings would start during the measured phases;
# they are set to start after them, as in go tool task bench.
export GOMAXPROCS="${GOMAXPROCS:-1}"
urls=()
for i in $(seq 1 "$gateways"); do
  gw=$((port + i))
  "$bin" serve --insecure --redis "redis://127.0.0.1:$port/0" --listen "127.0.0.1:$gw" \
    --upgrade-rate 1000000 --upgrade-burst 20000 --ping-interval 30m --log-level warn &
  pids+=($!)
  urls+=("ws://127.0.0.1:$gw/v1/ws")
done
for i in $(seq 1 "$gateways"); do
  gw=$((port + i))
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$gw/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$gw/readyz" >/dev/null || { echo "million: gateway $i on port $gw is not ready" >&2; exit 1; }
done
echo "million: $gateways gateways ready on ports $((port + 1))-$((port + gateways)), Redis on $port" >&2

"$bin" bench --redis "redis://127.0.0.1:$port/0" --url "$(IFS=,; echo "${urls[*]}")" \
  --gateway-pids "$(IFS=,; echo "${pids[*]}")" \
  --conns "$conns" --per-worker $(((conns + gateways - 1) / gateways)) --mix pair --baselines "" \
  --settle "${SETTLE:-20s}" --broadcasts "${BROADCASTS:-1}" --gap "${GAP:-1s}" \
  --unicast-rate "${UNICAST_RATE:-2000}" --unicast-for "${UNICAST_FOR:-10s}" --storm 1 \
  ${report:+--report "$report"} "$@"
