#!/usr/bin/env bash
# Instructions the client side of a RedisStore check costs, counted by callgrind: what the
# application pays per check, apart from the kernel and Redis.
#
#   bench/redis_client_instructions.sh              # the work tree
#   REV=adfbe26 bench/redis_client_instructions.sh  # an earlier commit, to compare
#
# Starts its own redis-server on a free port, then runs `redis_client_cost`
# (bench/src/bin/redis_client_cost.rs) under `valgrind --tool=callgrind`, once with N and once
# with 2N checks, and prints the difference divided by N: the instructions one check
# costs in the client process (building the command, the dispatcher, parsing the reply, the
# runtime's wake-ups), with start-up cancelled out. Kernel work is not counted.
#
# Shapes: `lone` (each check a call of its own: the same work every run) and `hot-32` (32 tasks
# on one key sharing calls: how many share one depends on timing, so this figure moves more);
# and floors, what a plain `GET` costs apart from the store: `get-own` (through the store's own
# `RedisConnection`), `get-manager` (through the `redis` crate's `ConnectionManager`) and
# `get-raw` (on a bare `TcpStream`).
#
# With REV, the commit is checked out in a temporary worktree, this tree's program is copied
# into it (it uses only `RedisStore`'s public API; into rate-limit-core's examples for a commit
# from before the bench crate), and it is built there.
#
# Settings (environment): CHECKS (N, default 5000), SHAPES (default "lone hot-32"), REV (a git
# revision; default the work tree), KEEP (a directory to copy callgrind's outputs to, for
# `callgrind_annotate --inclusive=yes KEEP/cg-lone-10000.out`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHECKS=${CHECKS:-5000}
SHAPES=${SHAPES:-lone hot-32}
REV=${REV:-}
KEEP=${KEEP:-}
TARGET_DIR=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
for tool in valgrind callgrind_annotate redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done

OUT=$(mktemp -d)
RPID=""
WORKTREE=""
cleanup() {
  [[ -n $RPID ]] && { kill "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; }
  [[ -n $WORKTREE ]] && git worktree remove --force "$WORKTREE" 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT

SRC=.
PROGRAM=bench/src/bin/redis_client_cost.rs
BUILD=(-p bench --bin redis_client_cost)
BUILT=release/redis_client_cost
if [[ -n $REV ]]; then
  WORKTREE="$OUT/tree"
  git worktree add --detach "$WORKTREE" "$REV" >&2
  if [[ -d $WORKTREE/bench/src/bin ]]; then
    cp "$PROGRAM" "$WORKTREE/$PROGRAM"
  else
    mkdir -p "$WORKTREE/rate-limit-core/examples"
    cp "$PROGRAM" "$WORKTREE/rate-limit-core/examples/"
    if ! grep -q 'name = "redis_client_cost"' "$WORKTREE/rate-limit-core/Cargo.toml"; then
      printf '\n[[example]]\nname = "redis_client_cost"\nrequired-features = ["redis"]\n' \
        >>"$WORKTREE/rate-limit-core/Cargo.toml"
    fi
    BUILD=(-p rate-limit-core --features redis --example redis_client_cost)
    BUILT=release/examples/redis_client_cost
  fi
  SRC=$WORKTREE
  TARGET_DIR="$TARGET_DIR/rev-$REV"
fi
(cd "$SRC" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release "${BUILD[@]}" >&2)
BIN="$TARGET_DIR/$BUILT"

# shellcheck source=bench/ports.sh
source bench/ports.sh
PORT=$(free_port)
redis-server --port "$PORT" --save "" --appendonly no --dir "$OUT" >"$OUT/redis.log" 2>&1 &
RPID=$!
wait_port "$PORT"
URL="redis://127.0.0.1:$PORT"

# Instructions of one run of SHAPE with COUNT checks, less the clock's calibration at start-up
# (`quanta::Clock::new`, behind the deny cache's `SystemClock`), whose length varies from run to
# run by a few hundred instructions per check.
count() {
  local shape=$1 count=$2 out total calibration
  out="$OUT/cg-$shape-$count.out"
  total=$(valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" "$URL" "$count" "$shape" 2>&1 | awk '/Collected :/ { print $NF }')
  calibration=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
    awk '/quanta::Clock::new/ { gsub(",", "", $1); print $1; exit }')
  echo $((total - ${calibration:-0}))
}

echo
echo "callgrind, client instructions per check ((count at $((2 * CHECKS)) - count at $CHECKS) / $CHECKS)${REV:+, at $REV}"
echo
echo "| shape | instructions per check | checks per script call |"
echo "|---|---:|---:|"
for shape in $SHAPES; do
  redis-cli -p "$PORT" CONFIG RESETSTAT >/dev/null
  small=$(count "$shape" "$CHECKS")
  large=$(count "$shape" $((2 * CHECKS)))
  calls=$(redis-cli -p "$PORT" INFO commandstats |
    sed -n 's/^cmdstat_fcall:calls=\([0-9]*\),.*/\1/p')
  per_call=$(awk -v c="$((3 * CHECKS))" -v n="${calls:-0}" 'BEGIN { if (n > 0) printf "%.1f", c / n; else print "n/a" }')
  echo "| $shape | $(((large - small) / CHECKS)) | $per_call |"
done
if [[ -n $KEEP ]]; then
  mkdir -p "$KEEP"
  cp "$OUT"/cg-*.out "$KEEP"/
fi
