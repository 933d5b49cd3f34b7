#!/usr/bin/env bash
# Runs three gateway nodes against a local Redis (go tool task fleet).
# Usage: deploy/local-fleet.sh [REDIS_PORT]; Ctrl-C stops the nodes.
set -euo pipefail
redis="redis://127.0.0.1:${1:-6379}/0"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  ./bin/wsbus serve --insecure --redis "$redis" --listen "127.0.0.1:808$i" --node-id "node$i" \
    > >(sed "s/^/[node$i] /") 2>&1 &
  pids+=($!)
done
sleep 2
cat <<MSG

  Three nodes share the bus; connect to any of them:
    http://127.0.0.1:8081/   http://127.0.0.1:8082/   http://127.0.0.1:8083/
  Who owns what:  ./bin/wsbus status --redis $redis
  Kill one (kill -9 its pid) and its partitions move within the lease TTL.

MSG
wait
