# Sourced by the bench scripts (run.sh, fleet.sh, million.sh): one fresh
# Redis of their own, with nothing saved.
#
# bench_redis LOGFILE starts it on a free-looking port in a new directory
# and waits until it answers; it sets port and dir. bench_redis_stop shuts
# it down and removes the directory: call it from the script's cleanup.
# bench_stop is the whole cleanup of a script that starts processes and
# keeps their PIDs in the array pids: it stops them, then Redis.
# bench_count NAME VALUE refuses VALUE, given as the variable NAME, unless
# it is a whole number above 0: before anything starts, in one line.
bench_count() {
  case "$2" in
    '' | *[!0-9]* | 0*)
      echo "bench: $1=$2: want a whole number above 0, without leading zeros" >&2
      exit 2
      ;;
  esac
}

bench_redis() {
  dir=$(mktemp -d)
  port=$((20000 + RANDOM % 10000))
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "${1:-$dir/redis.log}" >/dev/null
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: Redis on port $port did not answer within 5 s" >&2
  bench_redis_stop
  return 1
}

bench_redis_stop() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}

bench_stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bench_redis_stop
}
