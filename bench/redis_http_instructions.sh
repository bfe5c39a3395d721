#!/usr/bin/env bash
# Instructions redis-server spends per HTTP request, counted by callgrind while wrk loads
# bench_server with 10k random keys: the HTTP workload's own mix (keys created, expired and
# found again; the checks per call that concurrency gives), where `redis_instructions.sh` runs
# fixed shapes.
#
#   bench/redis_http_instructions.sh [MODE ...]     # default: redis redis-as-trl trl-redis
#
# For each mode (bench_server's Redis modes), starts redis-server under
# `valgrind --tool=callgrind` (default `hz`, so its expiry cycle counts) and bench_server beside
# it, warms up for 3 s, zeroes the counters, runs wrk (one thread, 32 connections, random keys
# from bench/random_keys.lua) for DURATION, and prints per request: all of redis-server's
# instructions, those in script calls (`fcallCommand` or `evalShaCommand`, inclusive), of those
# the ones in commands the script called (`scriptCall`, inclusive: MGET, SET, ...), and the
# checks per script call. Under callgrind Redis runs some 50 times slower, so far fewer requests
# are served than at full speed: more of the keys have expired when they come again, and more
# checks share a call.
#
# Settings (environment): DURATION (default 20s), HEADER_STYLE (passed on), KEEP (a directory to
# copy callgrind's output to, as KEEP/cg-MODE.out, for `callgrind_annotate --inclusive=yes`),
# VALGRIND_ARGS (more callgrind options, e.g. "--cache-sim=yes --branch-sim=yes").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-20s}
KEEP=${KEEP:-}
read -r -a VALGRIND_EXTRA <<<"${VALGRIND_ARGS:-}"
MODES=("$@")
[[ ${#MODES[@]} -eq 0 ]] && MODES=(redis redis-as-trl trl-redis)
for tool in valgrind callgrind_control callgrind_annotate redis-server redis-cli wrk; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
cargo build --release -p bench --bin bench_server >&2
SERVER=${CARGO_TARGET_DIR:-target}/release/bench_server

# shellcheck source=bench/ports.sh
source bench/ports.sh
OUT=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# The inclusive count of the first function matching $2 in callgrind_annotate's listing $1.
inclusive() {
  awk -v f="$2" '!found && $0 ~ f { gsub(",", "", $1); print $1; found = 1 } END { if (!found) print 0 }' "$1"
}

echo "| mode | requests | instructions / request | in script calls | of which commands called | checks per script call |"
echo "|---|---:|---:|---:|---:|---:|"
for mode in "${MODES[@]}"; do
  rport=$(free_port)
  valgrind --tool=callgrind "${VALGRIND_EXTRA[@]}" --callgrind-out-file="$OUT/cg-$mode.%p" \
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    >"$OUT/valgrind-$mode.log" 2>&1 &
  vpid=$!
  pids=("$vpid")
  for _ in $(seq 100); do
    redis-cli -p "$rport" ping >/dev/null 2>&1 && break
    sleep 0.3
  done
  port=$(free_port)
  BENCH_MODE=$mode PORT=$port REDIS_URL="redis://127.0.0.1:$rport" "$SERVER" >/dev/null &
  pids+=($!)
  wait_port "$port"
  wrk -t1 -c32 -d3s -s bench/random_keys.lua "http://127.0.0.1:$port/" >/dev/null
  redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
  callgrind_control -z "$vpid" >/dev/null 2>&1
  out=$(wrk -t1 -c32 -d"$DURATION" -s bench/random_keys.lua "http://127.0.0.1:$port/")
  callgrind_control -d "$vpid" >/dev/null 2>&1
  calls=$(redis-cli -p "$rport" INFO commandstats | tr -d '\r' |
    awk -F'[=,]' '/^cmdstat_(fcall|evalsha):/ { n += $2 } END { print n + 0 }')
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  dump=$(ls -t "$OUT"/cg-"$mode"."$vpid".* | head -1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  callgrind_annotate --inclusive=yes --threshold=100 "$dump" >"$OUT/listing" 2>/dev/null
  [[ -n $KEEP ]] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/cg-$mode.out"
  script=$(inclusive "$OUT/listing" ':(fcallCommand|evalShaCommand) ')
  commands=$(inclusive "$OUT/listing" ':scriptCall ')
  if [[ $script == 0 || $commands == 0 ]]; then
    echo "$mode: no fcallCommand/evalShaCommand or scriptCall in the profile: a redis-server" \
      "without symbols?" >&2
    exit 1
  fi
  awk -v m="$mode" -v n="$requests" -v t="$total" -v s="$script" -v c="$commands" -v k="$calls" \
    'BEGIN { printf "| %s | %d | %.0f | %.0f | %.0f | %.1f |\n", m, n, t / n, s / n, c / n, (k > 0 ? n / k : 0) }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
