#!/usr/bin/env bash
# HTTP load benchmark of the rate limiter: what each limiter costs an axum server, as
# requests/s and p99 latency relative to the same server with no limiter.
#
#   bench/http.sh
#   MODES="bare memory:none governor-no-headers memory governor" bench/http.sh
#
# Modes (see bench/src/bin/bench_server.rs): bare (no limiter), memory (our layer on a
# MemoryStore), governor (tower_governor, keyed, the same never-denying quota, use_headers()),
# governor-no-headers (the same without its headers), redis (our layer on a RedisStore, against
# a redis-server this script starts on a free port), redis-unbatched (one EVALSHA per request)
# headers (no limiter: only the five rate-limit fields our layer writes by default, as fixed
# values) and trl-redis (tower-rate-limit-redis, a one-key GCRA script per request, against the
# same redis-server; its largest quota denies one hot key under load, so read its 10k-key rows). A mode written NAME:STYLE (memory:none, redis:legacy) runs our layer with that
# HeaderStyle (none, legacy, ietf, both); without one, HEADER_STYLE from the environment, or both.
# Each mode is loaded with one hot key and with 10,000 random keys (bench/random_keys.lua), in
# ROUNDS interleaved rounds (round 1 runs every mode, then round 2 ...); the table shows the
# median of the rounds. Only 127.0.0.1 is loaded, and every run is bounded by DURATION.
#
# Settings (environment): DURATION (wrk -d, default 10s), WARMUP (default 2s, not measured),
# CONNECTIONS (default 32), ROUNDS (default 2), MODES (default "bare memory governor redis"),
# REDIS_CPU (default "server": redis-server shares the server's CPU; "wrk": it shares wrk's, so
# that the server's CPU carries only what the limiter costs the application), HEADER_STYLE (our
# layer's headers where a mode names none; default both).
# A mode written NAME@REV (for example redis@main~3) runs the bench server of git revision REV,
# built in a worktree, in mode NAME: a before and an after loaded in the same interleaved rounds.
# Raw wrk output is kept in target/bench-http/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-bare memory governor redis}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT="$TARGET_DIR/bench-http"
SERVER="$TARGET_DIR/release/bench_server"

log() { printf '%s\n' "$*" >&2; }

# --- processes this script starts, stopped on exit --------------------------------------------
server_pid=""
redis_port=""
redis_pid=""

stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}

worktrees=()
cleanup() {
  stop_server
  for tree in "${worktrees[@]}"; do
    git worktree remove --force "$tree/tree" 2>/dev/null || true
    rm -rf "$tree"
  done
  if [[ -n "$redis_port" ]]; then
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_port=""
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools --------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "wrk not found: installing it with apt-get"
  sudo=""
  [[ $EUID -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq wrk >/dev/null
fi
wants_redis=0
for mode in $MODES; do
  [[ ${mode%%@*} == redis* || ${mode%%@*} == trl-redis ]] && wants_redis=1
done
if ((wants_redis)) && ! command -v redis-server >/dev/null; then
  log "redis mode needs redis-server (apt-get install redis-server)"
  exit 1
fi

# One core for the server (and Redis), the other for wrk, when there are two to pin to.
REDIS_CPU=${REDIS_CPU:-server}
server_cpu=()
wrk_cpu=()
redis_cpu=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  server_cpu=(taskset -c 0)
  wrk_cpu=(taskset -c 1)
  case $REDIS_CPU in
    server)
      redis_cpu=(taskset -c 0)
      pinning="taskset: server and redis-server on CPU 0, wrk on CPU 1"
      ;;
    wrk)
      redis_cpu=(taskset -c 1)
      pinning="taskset: server on CPU 0, redis-server and wrk on CPU 1"
      ;;
    *)
      log "REDIS_CPU=$REDIS_CPU: expected server or wrk"
      exit 2
      ;;
  esac
else
  pinning="no taskset or a single CPU: processes are not pinned"
fi

cargo build --release -p bench --bin bench_server
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The bench server of each revision named in MODES, built once in a worktree of its own. A
# revision is named in files by its commit hash, so `main~2` or `origin/main` are fine too.
# COMMIT maps each revision to its short hash; its server is $OUT/bench_server-<hash>.
declare -A COMMIT
for mode in $MODES; do
  [[ $mode == *@* ]] || continue
  rev=${mode#*@}
  [[ -z ${COMMIT[$rev]:-} ]] || continue
  commit=$(git rev-parse --short "$rev^{commit}")
  tree=$(mktemp -d)
  worktrees+=("$tree")
  git worktree add --detach "$tree/tree" "$commit" >&2
  # Older revisions kept the bench server among the examples.
  if [[ -f $tree/tree/bench/src/bin/bench_server.rs ]]; then
    target=(-p bench --bin bench_server) built=release/bench_server
  else
    target=(-p examples --example bench_server) built=release/examples/bench_server
  fi
  CARGO_TARGET_DIR="$OUT/rev-target" cargo build --release \
    --manifest-path "$tree/tree/Cargo.toml" "${target[@]}"
  cp "$OUT/rev-target/$built" "$OUT/bench_server-$commit"
  COMMIT[$rev]=$commit
done

# A mode's name in file names: the revision part as its commit hash.
file_name() {
  local mode=$1
  if [[ $mode == *@* ]]; then
    echo "${mode%%@*}@${COMMIT[${mode#*@}]}"
  else
    echo "$mode"
  fi
}

# shellcheck source=bench/ports.sh
source bench/ports.sh

# --- redis --------------------------------------------------------------------------------------
redis_url=""
if ((wants_redis)); then
  port=$(free_port)
  # In the foreground of a background job (not --daemonize), so that cleanup can wait for it.
  "${redis_cpu[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --logfile "$OUT/redis.log" >/dev/null &
  redis_pid=$!
  redis_port=$port
  wait_port "$port"
  redis_url="redis://127.0.0.1:$port"
fi

# --- runs ---------------------------------------------------------------------------------------
# wrk's own limit is -d; `timeout` is a backstop if it hangs.
secs() { local d=$1; case $d in *m) echo $((${d%m} * 60)) ;; *s) echo "${d%s}" ;; *) echo "$d" ;; esac; }
backstop=$(($(secs "$DURATION") + 15))

# run MODE KEYS ROUND PORT: one measured wrk run, its output kept in $OUT.
run() {
  local mode=$1 keys=$2 round=$3 port=$4 args
  if [[ $keys == hot ]]; then
    args=(-H 'X-Client-ID: hot')
  else
    args=(-s bench/random_keys.lua)
  fi
  timeout "$backstop" "${wrk_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${args[@]}" \
    "http://127.0.0.1:$port/" >/dev/null
  timeout "$backstop" "${wrk_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "${args[@]}" "http://127.0.0.1:$port/" >"$OUT/$(file_name "$mode")-$keys-$round.txt"
}

log "pinning: $pinning"
log "load: $(uptime)"
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    port=$(free_port)
    log "round $round: $mode on 127.0.0.1:$port"
    server=$SERVER
    [[ $mode == *@* ]] && server=$OUT/bench_server-${COMMIT[${mode#*@}]}
    name=${mode%%@*} style=""
    [[ $name == *:* ]] && style=${name#*:} && name=${name%%:*}
    BENCH_MODE=$name HEADER_STYLE=${style:-${HEADER_STYLE:-}} PORT=$port REDIS_URL=$redis_url \
      "${server_cpu[@]}" "$server" >/dev/null &
    server_pid=$!
    wait_port "$port"
    for keys in hot random; do
      run "$mode" "$keys" "$round" "$port"
    done
    stop_server
  done
done

# --- table --------------------------------------------------------------------------------------
# Requests/s and p99 (in ms) of one wrk output file, and its non-2xx and socket errors.
parse() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /Requests\/sec:/ { rps = $2 }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { errors += $NF }
    /Socket errors:/ { for (i = 4; i <= NF; i += 2) errors += $i }
    END { printf "%s %s %d\n", rps, p99, errors }
  ' "$1"
}

# The median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A RPS P99 ERR
for mode in $MODES; do
  for keys in hot random; do
    rps_list="" p99_list="" errors=0
    for round in $(seq 1 "$ROUNDS"); do
      read -r rps p99 err < <(parse "$OUT/$(file_name "$mode")-$keys-$round.txt")
      rps_list+="$rps"$'\n'
      p99_list+="$p99"$'\n'
      errors=$((errors + err))
    done
    RPS[$mode-$keys]=$(printf '%s' "$rps_list" | median)
    P99[$mode-$keys]=$(printf '%s' "$p99_list" | median)
    ERR[$mode-$keys]=$errors
  done
done

echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency, median of $ROUNDS interleaved rounds; $pinning"
echo
echo "| mode | keys | requests/s | p99 latency | vs bare (req/s) | errors |"
echo "|------|------|-----------:|------------:|----------------:|-------:|"
for mode in $MODES; do
  for keys in hot random; do
    label=$([[ $keys == hot ]] && echo "1 hot" || echo "10k random")
    bare=${RPS[bare-$keys]:-}
    ratio=$(awk -v r="${RPS[$mode-$keys]}" -v b="$bare" \
      'BEGIN { if (b > 0) printf "%.2f", r / b; else print "n/a" }')
    printf '| %s | %s | %.0f | %.2f ms | %s | %d |\n' "$mode" "$label" "${RPS[$mode-$keys]}" \
      "${P99[$mode-$keys]}" "$ratio" "${ERR[$mode-$keys]}"
  done
done
