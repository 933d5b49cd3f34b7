#!/usr/bin/env bash
# The issue-3 fleet run: GATEWAYS (6) gateway processes on one fresh Redis,
# CONNS (100000) connections spread over them from worker processes, one
# broadcast topic. Usage: bash internal/bench/fleet.sh [wsbus bench flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
conns="${CONNS:-100000}"
gateways="${GATEWAYS:-6}"
. internal/bench/redis.sh
bench_count CONNS "$conns"
bench_count GATEWAYS "$gateways"
bench_redis
pids=()
trap bench_stop EXIT
urls=()
for i in $(seq 1 "$gateways"); do
  gw=$((port + i))
  ./bin/wsbus serve --insecure --redis "redis://127.0.0.1:$port/0" --listen "127.0.0.1:$gw" \
    --upgrade-rate 100000 --upgrade-burst 10000 --log-level warn &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw/readyz" >/dev/null && break; sleep 0.1; done
  urls+=("ws://127.0.0.1:$gw/v1/ws")
done
sleep 3 # let the partitions settle over the fleet
./bin/wsbus status --redis "redis://127.0.0.1:$port/0" | sed -n "1,$((gateways + 3))p"
./bin/wsbus bench --redis "redis://127.0.0.1:$port/0" --url "$(IFS=,; echo "${urls[*]}")" \
  --conns "$conns" --settle 20s --broadcasts 5 --gap 3s --storm 0 "$@"
