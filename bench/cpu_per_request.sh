#!/usr/bin/env bash
# CPU time per request of the bench server (user and kernel) and, in redis mode, of
# redis-server, read from /proc while wrk loads the server: where the cost is.
#
#   bench/cpu_per_request.sh [MODE ...]      # default: bare memory governor redis
#
# Modes are bench_server's (bench/src/bin/bench_server.rs); HEADER_STYLE is passed on to it.
#
# In the Redis modes (redis, redis-unbatched, redis-as-trl, trl-redis) it starts a redis-server of its own and
# also prints how many checks each script call carried (requests over FCALL and EVALSHA calls,
# from INFO commandstats), and the time Redis spent running scripts per request (their
# commandstats microseconds, commands the scripts called included; the rest of redis-server's
# time is reading commands, writing replies and its own timers). Compare trl-redis
# (tower-rate-limit-redis) with KEYS=random only: its largest quota denies one hot key under load.
# Each mode: the server (and redis-server) on CPU 0, wrk on CPU 1, a 2 s warm-up, then an 8 s
# run whose CPU ticks are divided by the requests wrk completed. Settings (environment):
# KEYS=hot (one key, default) or random (bench/random_keys.lua), CONNECTIONS (default 32),
# DURATION (default 8s).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KEYS=${KEYS:-hot}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-8s}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SERVER="$TARGET_DIR/release/bench_server"
MODES=("$@")
[[ ${#MODES[@]} -eq 0 ]] && MODES=(bare memory governor redis)

for tool in wrk taskset; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
cargo build --release -p bench --bin bench_server >&2

if [[ $KEYS == hot ]]; then
  load=(-H 'X-Client-ID: hot')
else
  load=(-s bench/random_keys.lua)
fi

# shellcheck source=bench/ports.sh
source bench/ports.sh

# The user and kernel CPU time of a process, in clock ticks.
ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

# Script calls (FCALL and EVALSHA) served so far by the redis-server on port $1, and the
# microseconds Redis spent running them, commands they called included (from INFO
# commandstats: Redis times each command it runs, on the wall clock).
calls() {
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    awk -F'[=,]' '/^cmdstat_(fcall|evalsha):/ { n += $2; u += $4 } END { print n + 0, u + 0 }'
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

hz=$(getconf CLK_TCK)
echo "| mode | keys | requests/s | server user µs/req | server kernel µs/req | redis-server µs/req | of which user / kernel | in scripts µs/req | checks per script call |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in "${MODES[@]}"; do
  redis_pid="" redis_url=""
  if [[ $mode == redis* || $mode == trl-redis ]]; then
    rport=$(free_port)
    taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize no --logfile /dev/null >/dev/null &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_port "$rport"
    redis_url="redis://127.0.0.1:$rport"
  fi
  port=$(free_port)
  BENCH_MODE=$mode PORT=$port REDIS_URL=$redis_url taskset -c 0 "$SERVER" >/dev/null &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$port"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "${load[@]}" "http://127.0.0.1:$port/" >/dev/null
  read -r su1 ss1 < <(ticks "$server_pid")
  ru1=0 rs1=0 c1=0 t1=0
  [[ -n $redis_pid ]] && read -r ru1 rs1 < <(ticks "$redis_pid") && read -r c1 t1 < <(calls "$rport")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${load[@]}" "http://127.0.0.1:$port/")
  read -r su2 ss2 < <(ticks "$server_pid")
  ru2=0 rs2=0 c2=0 t2=0
  [[ -n $redis_pid ]] && read -r ru2 rs2 < <(ticks "$redis_pid") && read -r c2 t2 < <(calls "$rport")
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/Requests\/sec:/ { print $2 }' <<<"$out")
  awk -v m="$mode" -v k="$KEYS" -v n="$requests" -v rps="$rps" -v hz="$hz" \
    -v u=$((su2 - su1)) -v s=$((ss2 - ss1)) -v ru=$((ru2 - ru1)) -v rs=$((rs2 - rs1)) -v c=$((c2 - c1)) \
    -v t=$((t2 - t1)) \
    -v redis="$redis_pid" 'BEGIN {
      us = 1e6 / hz / n
      printf "| %s | %s | %.0f | %.1f | %.1f | %s | %s | %s | %s |\n", m, k, rps, u * us, s * us,
        (redis == "" ? "n/a" : sprintf("%.1f", (ru + rs) * us)),
        (redis == "" ? "n/a" : sprintf("%.1f / %.1f", ru * us, rs * us)),
        (redis == "" ? "n/a" : sprintf("%.1f", t / n)),
        (redis == "" || c == 0 ? "n/a" : sprintf("%.1f", n / c))
    }'
  kill "$server_pid" 2>/dev/null || true
  [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
done
