#!/usr/bin/env bash
# User-space instructions per statement of pgsift, counted by callgrind: a
# number that does not move with the machine's noise, for comparing two
# builds of the hot path. pgsift runs under valgrind against the shared bench
# harness's PostgreSQL (start it with /work/shared/bench/pg_up.sh); pgbench -S
# drives it. The count covers everything pgsift does between the two
# markers: the steady state (the difference of a short and a long run, so
# the pgbench clients' logins cancel out) and, for reference, the short run
# with its logins.
#
# Usage:
#   cargo build --release && scripts/instructions.sh            # -M extended, 16 clients
#   PROTO=simple CLIENTS=1 POOL_MODE=transaction scripts/instructions.sh
# Env: PGSIFT_BIN (target/release/pgsift), PROTO (extended), CLIENTS (16),
#      TXNS per client (300), POOL_MODE (session), N_PLUS_ONE (true), PORT (16460), ADMIN (127.0.0.1:19960),
#      OUT (callgrind output prefix, /tmp/pgsift-callgrind), CALLGRIND_OPTS (more valgrind options)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_HARNESS=${BENCH_HARNESS:-/work/shared/bench}
. "$BENCH_HARNESS/env.sh"
. "$REPO/scripts/pgsift_config.sh"
BIN=${PGSIFT_BIN:-$REPO/target/release/pgsift}
PROTO=${PROTO:-extended}; CLIENTS=${CLIENTS:-16}; TXNS=${TXNS:-300}
POOL_MODE=${POOL_MODE:-session}; PORT=${PORT:-16460}; ADMIN=${ADMIN:-127.0.0.1:19960}
OUT=${OUT:-/tmp/pgsift-callgrind}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
cfg=$(mktemp /tmp/pgsift-instr-XXXX.yaml)
pgsift_bench_config "$PORT" "$ADMIN" "$POOL_MODE" 20 1000 warn "${N_PLUS_ONE:-true}" > "$cfg"
rm -f "$OUT".[0-9]* "$OUT.log"
"$BIN" check --config "$cfg" >/dev/null
log="$OUT.log"
# shellcheck disable=SC2086 # CALLGRIND_OPTS: extra options, e.g. --dump-instr=yes
valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --callgrind-out-file="$OUT.%p" "$BIN" --config "$cfg" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$cfg"' EXIT
ready=0
for _ in $(seq 300); do
  curl -sf "http://$ADMIN/readyz" >/dev/null && { ready=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
[ "$ready" = 1 ] || { echo "pgsift under valgrind did not become ready; its output:" >&2; cat "$log" >&2; exit 1; }
pgb() { pgbench -h 127.0.0.1 -p "$PORT" -U "$BENCH_USER" -n -S -M "$PROTO" -c "$CLIENTS" -j 2 "$@" bench; }
pgb -t 50 >/dev/null 2>&1   # warm: statement analyses, pool
# Two runs of TXNS and 3 × TXNS transactions per client, each from fresh
# connections: their difference is the steady state, logins excluded.
count() {
  callgrind_control -z "$pid" >/dev/null 2>&1
  pgb -t "$1" 2>&1 | grep -E "failed|tps" >&2 || true
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  f=$(ls -t "$OUT".[0-9]* | head -1)
  callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}'
}
short=$(count "$TXNS")
long=$(count "$((3 * TXNS))")
f=$(ls -t "$OUT".[0-9]* | head -1)
echo "pgsift $(git -C "$REPO" rev-parse --short HEAD) -M $PROTO, $CLIENTS clients, $POOL_MODE mode:" \
  "$(( (long - short) / (CLIENTS * 2 * TXNS) )) user-space instructions per statement in the steady state," \
  "$((short / (CLIENTS * TXNS))) with the logins of a $TXNS-transaction run (profile of the longer run: $f)"
