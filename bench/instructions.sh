#!/usr/bin/env bash
# Instructions per request of the tower layer, counted by callgrind (GitHub issue 7).
#
#   bench/instructions.sh
#
# Runs the example `layer_cost` (tower-ratelimit/examples/layer_cost.rs), which sends requests
# through an axum router in-process with no socket and no runtime, under
# `valgrind --tool=callgrind`, once with N and once with 2N requests, and prints the difference
# divided by N: the instructions one request costs, with start-up cancelled out. Instruction
# counts do not depend on what else the machine is doing, so the figures repeat from run to run.
# They leave out what the kernel and hyper spend on a request (see bench/http.sh for that).
#
# Settings (environment): REQUESTS (N, default 20000), MODES (default "bare memory-hot
# memory-10k"; also "headers": no limiter, only the five rate-limit fields the layer writes, as
# fixed values).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REQUESTS=${REQUESTS:-20000}
MODES=${MODES:-bare memory-hot memory-10k}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/examples/layer_cost"
OUT="$TARGET_DIR/bench-instructions"

if ! command -v valgrind >/dev/null; then
  echo "valgrind not found: apt-get install valgrind" >&2
  exit 1
fi
cargo build --release -p tower-ratelimit --example layer_cost
mkdir -p "$OUT"

# Instructions of one run of MODE with COUNT requests.
count() {
  local mode=$1 count=$2
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode-$count.out" "$BIN" "$mode" "$count" 2>&1 |
    awk '/Collected :/ { print $NF }'
}

declare -A PER
for mode in $MODES; do
  small=$(count "$mode" "$REQUESTS")
  large=$(count "$mode" $((2 * REQUESTS)))
  PER[$mode]=$(((large - small) / REQUESTS))
done

echo
echo "callgrind, instructions per request ((count at $((2 * REQUESTS)) - count at $REQUESTS) / $REQUESTS)"
echo
echo "| mode | instructions per request | vs bare | added by the layer |"
echo "|------|-------------------------:|--------:|-------------------:|"
for mode in $MODES; do
  bare=${PER[bare]:-0}
  awk -v m="$mode" -v n="${PER[$mode]}" -v b="$bare" 'BEGIN {
    if (b > 0) printf "| %s | %d | %.2f | %d |\n", m, n, n / b, n - b
    else printf "| %s | %d | n/a | n/a |\n", m, n
  }'
done
