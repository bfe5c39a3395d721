#!/usr/bin/env bash
# Instructions redis-server spends on the rate-limit script, per call and per check, counted by
# callgrind: what a check costs Redis.
#
#   bench/redis_instructions.sh              # the script in the work tree
#   REV=05340dd bench/redis_instructions.sh  # the script of an earlier commit, to compare
#
# Starts its own redis-server under `valgrind --tool=callgrind` on a free port, loads the script
# (the Lua files in the order `script.rs` concatenates them), and sends N calls of each shape
# with redis-benchmark, zeroing the counters before and dumping them after each shape:
#
#   hot-1    one GCRA check of one key
#   hot-32   32 identical GCRA checks of one key in one call (what coalescing sends for a hot key)
#   keys-8   8 GCRA checks of 8 different keys in one call (what a batch of random keys sends)
#
# Instruction counts do not depend on machine load. They include redis-server's own user-space
# work for each call (reading the command, the script, the reply), not the kernel's.
#
# Settings (environment): REV (a git revision; default the work tree), N (calls per shape,
# default 400), PORT (default: a free one).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-400}
REV=${REV:-}
for tool in valgrind callgrind_control redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
# shellcheck source=bench/ports.sh
source bench/ports.sh
PORT=${PORT:-$(free_port)}

DIR=rate-limit-core/src/store/redis
read_file() {
  if [[ -n $REV ]]; then git show "$REV:$DIR/$1"; else cat "$DIR/$1"; fi
}
# The Lua files, in the order of the `concat!` in script.rs.
files=$(read_file script.rs | sed -n 's/.*include_str!("\(.*\.lua\)").*/\1/p')
source_text=$(for f in $files; do read_file "$f"; done)
# Commits before runs of identical checks had no repeat count in an entry's header.
if grep -q "repeat count" <<<"$source_text"; then repeat=1; else repeat=0; fi
# Since c8968b4 the reply is one binary string, 41 bytes per check.
if grep -q "struct.pack" <<<"$source_text"; then binary=1; else binary=0; fi

OUT=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
  redis-server --port "$PORT" --save "" --appendonly no >"$OUT/valgrind.log" 2>&1 &
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
SHA=$(redis-cli -p "$PORT" SCRIPT LOAD "$source_text")
if [[ ! $SHA =~ ^[0-9a-f]{40}$ ]]; then
  echo "SCRIPT LOAD failed: $SHA" >&2
  exit 1
fi

# A GCRA limit that never denies: code, limit, burst, period (µs), then the emission interval
# of 1 µs as whole µs and ns left (since the buckets count in nanoseconds), or, in earlier
# scripts, the interval and tau in µs.
if grep -q "interval_ns" <<<"$source_text"; then
  GCRA="6 1000000000 1000000000 1000000 1 0"
else
  GCRA="6 1000000000 1000000000 1000000 1 1000000000"
fi
# One entry: number of limits, cost, commit, [repeat count,] the limit.
entry() {
  if ((repeat)); then echo "1 1 1 $1 $GCRA"; else echo "1 1 1 $GCRA"; fi
}
# The arguments of a call with one check of each KEY given, in order, as the client sends it:
# with repeat counts, identical checks in a row are one entry.
call_args() {
  local keys=() entries=() runs=() key
  for key in "$@"; do
    if ((repeat)) && ((${#keys[@]})) && [[ ${keys[-1]} == "$key" ]]; then
      runs[-1]=$((runs[-1] + 1))
    else
      keys+=("$key")
      runs+=(1)
    fi
  done
  for n in "${runs[@]}"; do
    read -ra e <<<"$(entry "$n")"
    entries+=("${e[@]}")
  done
  echo "${#keys[@]} ${keys[*]} '' ${entries[*]}"
}

# Instructions per call of the EVALSHA whose arguments are "$@", a call of CHECKS checks.
measure() {
  # A script that fails costs little: a count of its failure would be no figure at all. A
  # reply starting with E is an error, or (binary replies) a check's error record; a binary
  # reply must also hold a 41-byte record for every check, not only the first.
  redis-cli -p "$PORT" EVALSHA "$SHA" "$@" >"$OUT/reply" 2>&1
  if head -c 16 "$OUT/reply" | tr -d '\0' | grep -qE '^(E|NOSCRIPT|WRONGTYPE|\(error\))' ||
    { ((binary)) && (($(stat -c %s "$OUT/reply") != 41 * CHECKS + 1)); }; then
    echo "the script failed: $(head -c 200 "$OUT/reply" | tr -d '\0')" >&2
    exit 1
  fi
  redis-benchmark -p "$PORT" -n 50 -c 1 -q EVALSHA "$SHA" "$@" >/dev/null 2>&1
  callgrind_control -z "$VPID" >/dev/null 2>&1
  redis-benchmark -p "$PORT" -n "$N" -c 1 -q EVALSHA "$SHA" "$@" >/dev/null 2>&1
  callgrind_control -d "$VPID" >/dev/null 2>&1
  local dump total
  dump=$(ls -t "$OUT"/cg."$VPID".* | head -1)
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  echo $((total / N))
}

echo
echo "redis-server instructions per script call (callgrind, $N calls per shape${REV:+, script of $REV})"
echo
echo "| shape | checks per call | instructions per call | per check |"
echo "|---|---:|---:|---:|"
for shape in hot-1 hot-32 keys-8; do
  count=${shape#*-}
  keys=()
  for i in $(seq "$count"); do
    if [[ $shape == hot-* ]]; then keys+=("rl:{hot}:1"); else keys+=("rl:{k$i}:1"); fi
  done
  args=$(call_args "${keys[@]}")
  # The empty "now" argument ('') asks the script for the server's TIME.
  eval "set -- $args"
  per_call=$(CHECKS=$count measure "$@")
  echo "| $shape | $count | $per_call | $((per_call / count)) |"
done
