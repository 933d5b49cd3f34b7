#!/usr/bin/env bash
# go tool task soak: the soak, on loopback only. A fresh Redis on a
# free port, 2 gateways, CONNS (10000) connections spread over both, RATE
# (300) events/s over TOPICS (1000) topics, CHURN (20) topic switches/s, for
# DURATION (30m); every RESTART_EVERY (5m) one gateway, in turn, gets
# SIGTERM and is started again on its port, and its clients come back with
# their cursors. `wsbus bench --soak` checks every event at every client
# and reads the gateways at the start and the end; its exit status is this
# script's. Durations are a whole number of s, m or h. Arguments go to
# wsbus bench (e.g. --json). The gateways' and Redis's logs, and the
# gateways' goroutine profiles at the start and the end readings, are kept
# in LOGS (default: a new directory under /tmp, named at the end).
# Everything started here is stopped on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds() { # 90s, 3m, 1h -> seconds
  local n=${1%[smh]}
  if ! [[ $n =~ ^[0-9]+$ ]]; then
    echo "soak: duration $1: want a whole number of s, m or h" >&2
    return 1
  fi
  case $1 in
  *s) echo "$n" ;;
  *m) echo $((n * 60)) ;;
  *h) echo $((n * 3600)) ;;
  *) echo "soak: duration $1: want a unit, s, m or h" >&2 && return 1 ;;
  esac
}
duration=${DURATION:-30m}
every=${RESTART_EVERY:-5m}
duration_s=$(seconds "$duration")
every_s=$(seconds "$every")
((every_s > 0)) || { echo "soak: RESTART_EVERY must be positive" >&2; exit 2; }

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=
for _ in $(seq 100); do # Redis on port, gateway i on port+i, its pprof on port+2+i
  p=$((20000 + RANDOM % 10000))
  if ! in_use "$p" && ! in_use $((p + 1)) && ! in_use $((p + 2)) && ! in_use $((p + 3)) && ! in_use $((p + 4)); then
    port=$p
    break
  fi
done
[ -n "$port" ] || { echo "soak: no five free ports found" >&2; exit 1; }

dir=$(mktemp -d)
logs=${LOGS:-$(mktemp -d /tmp/wsbus-soak.XXXXXX)}
mkdir -p "$logs"
pids=(x "" "") # gateway 1 and 2
bench=""

stop_gateway() { # SIGTERM (a drain), up to 60 s for it, then SIGKILL
  local i=$1 pid=${pids[$1]}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "soak: gateway $i still up 60 s after SIGTERM: killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  pids[i]=""
}

start_gateway() {
  local i=$1 gw=$((port + $1))
  echo "=== $(date -u +%T.%3N) start" >>"$logs/gateway$i.log"
  ./bin/wsbus serve --insecure --redis "redis://127.0.0.1:$port/0?client_name=soak-gw$i" \
    --listen "127.0.0.1:$gw" --debug-addr "127.0.0.1:$((gw + 2))" --upgrade-rate 100000 --upgrade-burst 10000 \
    >>"$logs/gateway$i.log" 2>&1 &
  pids[i]=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$gw/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "soak: gateway $i is not ready after 10 s; see $logs/gateway$i.log" >&2
  return 1
}

cleanup() {
  if [ -n "$bench" ]; then
    kill -TERM "$bench" 2>/dev/null || true # its workers end when their stdin closes
    wait "$bench" 2>/dev/null || true
  fi
  stop_gateway 1
  stop_gateway 2
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
  echo "soak: logs in $logs" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$logs/redis.log"
for _ in $(seq 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
start_gateway 1
start_gateway 2

ready="$dir/ready"
./bin/wsbus bench --soak --redis "redis://127.0.0.1:$port/0" \
  --url "ws://127.0.0.1:$((port + 1))/v1/ws,ws://127.0.0.1:$((port + 2))/v1/ws" --client-names soak-gw1,soak-gw2 \
  --debug-addrs "127.0.0.1:$((port + 3)),127.0.0.1:$((port + 4))" --profile-dir "$logs" \
  --conns "${CONNS:-10000}" --topics "${TOPICS:-1000}" --rate "${RATE:-300}" --churn "${CHURN:-20}" \
  --duration "$duration" --settle 15s --ready-file "$ready" "$@" &
bench=$!

# The restart clock starts when the bench's steady phase does (its
# connections open and the gateways read); the last restart leaves at
# least 30 s before the end.
for _ in $(seq 6000); do
  [ -e "$ready" ] && break
  kill -0 "$bench" 2>/dev/null || break
  sleep 0.1
done
if [ -e "$ready" ]; then
  t0=$(date +%s)
  k=1
  while ((k * every_s + 30 <= duration_s)); do
    while (($(date +%s) < t0 + k * every_s)) && kill -0 "$bench" 2>/dev/null; do sleep 1; done
    kill -0 "$bench" 2>/dev/null || break
    i=$(((k - 1) % 2 + 1))
    echo "soak: $(date -u +%T.%3N) restarting gateway $i" >&2
    stop_gateway "$i"
    start_gateway "$i"
    echo "soak: $(date -u +%T.%3N) gateway $i is ready again" >&2
    k=$((k + 1))
  done
fi
status=0
wait "$bench" || status=$?
bench=""
exit "$status"
