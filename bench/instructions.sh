#!/usr/bin/env bash
# Instructions each layer adds to a request, counted by callgrind: ours with each header style
# against tower_governor with and without its headers, one hot key and 10,000 keys.
#
#   bench/instructions.sh
#
# Runs `layer_cost` (bench/src/bin/layer_cost.rs), which sends requests through an axum router
# in-process with no socket and no runtime, under `valgrind --tool=callgrind`, once with N and
# once with 2N requests, and takes the difference divided by N: the instructions one request
# costs, with start-up cancelled out. Only the request loop (`send_all`) is counted, so that
# start-up work whose cost varies from run to run (calibrating quanta's clock, which ours and
# governor's read) stays out even when it does not cancel. "Added" is that figure minus the
# bare router's with the same keys. Instruction counts do not depend on what else the machine
# is doing; hashing seeds move them by about 1% between runs. They leave out what the kernel
# and hyper spend on a request (bench/http.sh measures that).
#
# Settings (environment):
#   MODES     layers, in table order (default: every one): bare, memory:none, memory:legacy,
#             memory:ietf, memory:both (ours, default algorithm), memory-gcra:none (ours with
#             GCRA, governor's algorithm), governor-no-headers, governor, headers (no limiter:
#             the five fields ours writes by default, as fixed values). bare is always measured.
#   KEYS      key shapes (default "hot 10k")
#   REQUESTS  N (default 20000)
#   RUNS      runs of the whole table (default 2); the table shows the median per cell
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODES=${MODES:-bare memory:none memory-gcra:none governor-no-headers memory:legacy governor memory:ietf memory:both headers}
KEYS=${KEYS:-hot 10k}
REQUESTS=${REQUESTS:-20000}
RUNS=${RUNS:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/layer_cost"
OUT="$TARGET_DIR/bench-instructions"

if ! command -v valgrind >/dev/null; then
  echo "valgrind not found: apt-get install valgrind" >&2
  exit 1
fi
[[ " $MODES " == *" bare "* ]] || MODES="bare $MODES"
cargo build --release -p bench --bin layer_cost
mkdir -p "$OUT"

# "INSTRUCTIONS FIELDS" of one run of MODE with KEYS and COUNT requests.
count() {
  local mode=$1 keys=$2 count=$3 name="${1//:/-}-$2-$3"
  valgrind --tool=callgrind --toggle-collect='layer_cost::send_all' \
    --callgrind-out-file="$OUT/$name.out" \
    "$BIN" "$mode" "$keys" "$count" >"$OUT/$name.stdout" 2>"$OUT/$name.log" || {
    echo "layer_cost $mode $keys $count failed:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
  }
  echo "$(awk '/Collected :/ { print $NF }' "$OUT/$name.log")" \
    "$(awk -F': ' '/^rate-limit fields:/ { print $2 }' "$OUT/$name.stdout")"
}

# The median of the numbers on stdin, rounded down.
median() { sort -g | awk '{ v[NR] = $1 } END { print int((NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# How the table names a mode.
label() {
  local governor
  governor=$(awk '/^name = "tower_governor"/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
  case $1 in
    bare) echo "axum router, no layer" ;;
    memory:none) echo "ours, \`HeaderStyle::None\`" ;;
    memory-gcra:none) echo "ours with GCRA, \`HeaderStyle::None\`" ;;
    memory:legacy) echo "ours, \`HeaderStyle::Legacy\`" ;;
    memory:ietf) echo "ours, \`HeaderStyle::Ietf\`" ;;
    memory:both | memory) echo "ours, \`HeaderStyle::Both\` (default)" ;;
    governor-no-headers) echo "tower_governor $governor, no headers" ;;
    governor) echo "tower_governor $governor, \`use_headers()\`" ;;
    headers) echo "the five fields, fixed, no limiter" ;;
    *) echo "$1" ;;
  esac
}

declare -A SAMPLES FIELDS PER
for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    for keys in $KEYS; do
      read -r small fields < <(count "$mode" "$keys" "$REQUESTS")
      read -r large _ < <(count "$mode" "$keys" $((2 * REQUESTS)))
      per=$(((large - small) / REQUESTS))
      echo "run $run: $mode, $keys: $per instructions per request" >&2
      SAMPLES[$mode/$keys]+="$per "
      FIELDS[$mode]=$fields
    done
  done
done
for cell in "${!SAMPLES[@]}"; do
  PER[$cell]=$(printf '%s\n' ${SAMPLES[$cell]} | median)
done

echo
echo "callgrind, instructions per request ((count at $((2 * REQUESTS)) - count at $REQUESTS) / $REQUESTS), median of $RUNS runs"
echo
header="| layer | rate-limit fields written |"
rule="|---|---:|"
for keys in $KEYS; do
  header+=" per request, $keys | added, $keys |"
  rule+="---:|---:|"
done
echo "$header"
echo "$rule"
for mode in $MODES; do
  row="| $(label "$mode") | ${FIELDS[$mode]} |"
  for keys in $KEYS; do
    per=${PER[$mode/$keys]}
    if [[ $mode == bare ]]; then
      row+=" $per | |"
    else
      row+=" $per | $((per - PER[bare/$keys])) |"
    fi
  done
  echo "$row"
done | sed -E ':a; s/([0-9])([0-9]{3})([ |,])/\1,\2\3/; ta'
