#!/usr/bin/env bash
# Instructions redis-server spends per decision, counted by callgrind, with the checks sent
# through the public API (`RedisStore::check`), so that the figure does not depend on the
# script's arguments.
#
#   bench/redis_instructions.sh                      # every shape, every algorithm
#   ALGORITHMS=gcra SHAPES=lone bench/redis_instructions.sh
#
# Starts its own redis-server under `valgrind --tool=callgrind` on a free port (with `hz 1`, so
# that its timer work, which grows with the time callgrind takes rather than with the calls,
# stays out of the figures), and for each shape and algorithm runs `redis_server_cost`
# (bench/src/bin/redis_server_cost.rs): the program warms up (loading the library, creating the
# state), the counters are zeroed, it sends N checks, and the counters are dumped. Printed:
# instructions per decision, and the checks per FCALL (from the server's command statistics).
#
#   lone      one check at a time, each a call of its own
#   hot-32    rounds of 32 concurrent checks of one key (one call each)
#   keys-32   rounds of 32 concurrent checks of 32 different keys (one call each)
#   new-32    as keys-32, each round's 32 keys new to the server (clients whose state expired;
#             not in the default SHAPES)
#   hot-N, keys-N, new-N   the same with N (1 to 32) checks a round: `keys-8 keys-32` tells a
#             call's own cost from a check's
#
# Algorithms: each with a limit that never denies, and `sliding_window_log-denied` (a full log
# of 1,000 entries, every measured check denied). Instruction counts do not depend on machine
# load; they include redis-server's whole user-space work for each call (reading the command,
# the script, the reply), not the kernel's.
#
# Settings (environment): N (checks per measurement, default 640), SHAPES, ALGORITHMS, PORT
# (default: a free one), PROFILE (cargo profile of the program, default release; the server's
# count does not depend on it), KEEP (a directory to copy each measurement's callgrind output
# to, as cg-SHAPE-ALGORITHM.out, for `callgrind_annotate --inclusive=yes`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-640}
SHAPES=${SHAPES:-lone hot-32 keys-32}
ALGORITHMS=${ALGORITHMS:-gcra token_bucket leaky_bucket fixed_window sliding_window sliding_window_log sliding_window_log-denied}
PROFILE=${PROFILE:-release}
KEEP=${KEEP:-}
for tool in valgrind callgrind_control redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
# shellcheck source=bench/ports.sh
source bench/ports.sh
PORT=${PORT:-$(free_port)}

cargo build --quiet --profile "$PROFILE" -p bench --bin redis_server_cost
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $PROFILE in dev) BIN=$TARGET_DIR/debug/redis_server_cost ;; *) BIN=$TARGET_DIR/$PROFILE/redis_server_cost ;; esac

OUT=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
  redis-server --port "$PORT" --save "" --appendonly no --hz 1 >"$OUT/valgrind.log" 2>&1 &
VPID=$!
cleanup() {
  kill "$VPID" 2>/dev/null || true
  wait "$VPID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
for _ in $(seq 100); do
  redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
  sleep 0.3
done

# FCALLs the server has run.
fcalls() {
  redis-cli -p "$PORT" INFO commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_fcall:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}

# Instructions per decision and checks per call for one shape and algorithm.
measure() {
  local shape=$1 algorithm=$2 line calls total dump
  redis-cli -p "$PORT" FLUSHALL >/dev/null
  coproc PROGRAM { "$BIN" "redis://127.0.0.1:$PORT" "$shape" "$algorithm" "$N"; }
  read -r line <&"${PROGRAM[0]}"
  [[ $line == ready ]] || { echo "$shape $algorithm: $line" >&2; exit 1; }
  calls=$(fcalls)
  callgrind_control -z "$VPID" >/dev/null 2>&1
  echo go >&"${PROGRAM[1]}"
  read -r line <&"${PROGRAM[0]}"
  callgrind_control -d "$VPID" >/dev/null 2>&1
  calls=$(($(fcalls) - calls))
  echo go >&"${PROGRAM[1]}"
  wait "$PROGRAM_PID" || { echo "$shape $algorithm: the program failed ($line)" >&2; exit 1; }
  dump=$(ls -t "$OUT"/cg."$VPID".* | head -1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  [[ -n $KEEP ]] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/cg-$shape-$algorithm.out"
  echo "$((total / N)) $((N / calls))"
}

echo
echo "redis-server instructions per decision (callgrind, $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), $N checks each)"
echo
header="| algorithm |"
rule="|---|"
for shape in $SHAPES; do
  header+=" $shape |"
  rule+="---:|"
done
echo "$header"
echo "$rule"
for algorithm in $ALGORITHMS; do
  row="| $algorithm |"
  for shape in $SHAPES; do
    if [[ $shape == new-* && $algorithm == sliding_window_log-denied ]]; then
      # A key new to the server has an empty log: nothing to deny.
      row+=" n/a |"
      continue
    fi
    read -r per_check per_call < <(measure "$shape" "$algorithm")
    row+=" $per_check ($per_call/call) |"
  done
  echo "$row"
done
