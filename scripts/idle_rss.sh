#!/usr/bin/env bash
# Memory of pgsift with many idle clients (transaction pooling).
#
# Starts the shared bench PostgreSQL if needed (/work/shared/bench/pg_up.sh), starts pgsift in
# transaction mode (pool_size 20, max_client_conn 20000, user bench/bench), records its VmRSS,
# logs in COUNT idle clients with SCRAM using the `idle_clients` example and holds them, records
# VmRSS and VmHWM again, checks that one more client still gets `SELECT 1` through pgsift within
# CHECK_LIMIT seconds, then stops everything it started. Prints RSS per idle client.
#
# Usage:
#   cargo build --release --bin pgsift --example idle_clients && scripts/idle_rss.sh
#   PGSIFT_BIN=/tmp/t/release/pgsift IDLE_BIN=/tmp/t/release/examples/idle_clients scripts/idle_rss.sh
#
# Env (defaults):
#   PGSIFT_BIN=target/release/pgsift  IDLE_BIN=<dir of PGSIFT_BIN>/examples/idle_clients
#   COUNT=10000  HOLD=120 (seconds idle_clients holds the connections; it is stopped earlier)
#   CONNECT_WAIT=100 (seconds to wait for `connected COUNT`)   CHECK_LIMIT=1 (seconds for SELECT 1)
#   NOFILE=20000 (ulimit -n for pgsift and idle_clients)       POOL_SIZE=20
#   PGSIFT_PORT=16436  PGSIFT_ADMIN=127.0.0.1:19932  PGSIFT_LOG=warn  PGSIFT_WORKER_THREADS= (default)
#   OUT=$BENCH_DIR/results/idle-<timestamp>   PG_DOWN_ARGS=--keep (only used if this script started PG)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_HARNESS=${BENCH_HARNESS:-/work/shared/bench}
. "$BENCH_HARNESS/env.sh"
. "$REPO/scripts/pgsift_config.sh"

PGSIFT_BIN=${PGSIFT_BIN:-$REPO/target/release/pgsift}
IDLE_BIN=${IDLE_BIN:-$(dirname "$PGSIFT_BIN")/examples/idle_clients}
COUNT=${COUNT:-10000}
HOLD=${HOLD:-120}
CONNECT_WAIT=${CONNECT_WAIT:-100}
CHECK_LIMIT=${CHECK_LIMIT:-1}
NOFILE=${NOFILE:-20000}
POOL_SIZE=${POOL_SIZE:-20}
PGSIFT_PORT=${PGSIFT_PORT:-16436}
PGSIFT_ADMIN=${PGSIFT_ADMIN:-127.0.0.1:19932}
PGSIFT_LOG=${PGSIFT_LOG:-warn}
PGSIFT_WORKER_THREADS=${PGSIFT_WORKER_THREADS:-}
PG_DOWN_ARGS=${PG_DOWN_ARGS---keep}
OUT=${OUT:-$BENCH_DIR/results/idle-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

for b in "$PGSIFT_BIN" "$IDLE_BIN"; do
  [ -x "$b" ] || { echo "not found: $b (cargo build --release --bin pgsift --example idle_clients)" >&2; exit 2; }
done
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$NOFILE" ] ||
  { echo "hard limit for open files is $(ulimit -Hn) < NOFILE=$NOFILE" >&2; exit 2; }

started_pg=0; pgsift_pid=""; idle_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in $idle_pid $pgsift_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      echo "stopped pid $pid"
    fi
  done
  # shellcheck disable=SC2086
  [ "$started_pg" = 1 ] && { "$BENCH_HARNESS/pg_down.sh" $PG_DOWN_ARGS || true; }
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }   # pid field -> kB
mb() { awk -v x="$1" 'BEGIN{printf "%.1f MiB (%.1f MB)", x/1024, x*1024/1e6}'; }

# --- PostgreSQL --------------------------------------------------------------------------------
if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA_BENCH" status >/dev/null 2>&1; then started_pg=1; fi
"$BENCH_HARNESS/pg_up.sh" >/dev/null

# --- pgsift ------------------------------------------------------------------------------------
CFG="$OUT/pgsift.yaml"
{
  echo "# written by scripts/idle_rss.sh"
  pgsift_bench_config "$PGSIFT_PORT" "$PGSIFT_ADMIN" transaction "$POOL_SIZE" "$NOFILE" \
    "$PGSIFT_LOG" true "" "$PGSIFT_WORKER_THREADS"
} > "$CFG"
"$PGSIFT_BIN" check --config "$CFG" >/dev/null
if (exec 3<>"/dev/tcp/127.0.0.1/$PGSIFT_PORT") 2>/dev/null; then
  echo "port $PGSIFT_PORT is already in use" >&2; exit 1
fi
(ulimit -n "$NOFILE" && exec "$PGSIFT_BIN" --config "$CFG") >"$OUT/pgsift.log" 2>&1 &
pgsift_pid=$!
ready=0
for _ in $(seq 100); do
  kill -0 "$pgsift_pid" 2>/dev/null || { echo "pgsift exited; log:" >&2; cat "$OUT/pgsift.log" >&2; exit 1; }
  if curl -fsS "http://$PGSIFT_ADMIN/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "pgsift not ready after 10 s" >&2; exit 1; }
nofile=$(awk '/^Max open files/ {print $4}' "/proc/$pgsift_pid/limits")
echo "pgsift pid $pgsift_pid on 127.0.0.1:$PGSIFT_PORT (transaction mode, pool $POOL_SIZE, max_client_conn $NOFILE, open-file limit $nofile, $(ls "/proc/$pgsift_pid/task" | wc -l) threads)"

# One query first, so the "before" figure includes a warmed-up pool and runtime, not a cold process.
"$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$PGSIFT_PORT" -U "$BENCH_USER" -d bench -c 'SELECT 1' >/dev/null
sleep 1
rss0=$(kb "$pgsift_pid" VmRSS); hwm0=$(kb "$pgsift_pid" VmHWM)
echo "before: VmRSS $(mb "$rss0"), VmHWM $(mb "$hwm0")"

# --- idle clients ------------------------------------------------------------------------------
t0=$(date +%s.%N)
(ulimit -n "$NOFILE" && exec "$IDLE_BIN" "$PGSIFT_PORT" "$BENCH_USER" "$BENCH_PASSWORD" bench "$COUNT" "$HOLD") \
  >"$OUT/idle_clients.log" 2>&1 &
idle_pid=$!
connected=""
for _ in $(seq $((CONNECT_WAIT * 10))); do
  connected=$(grep -m1 -oP '^connected \K[0-9]+' "$OUT/idle_clients.log" || true)
  [ -n "$connected" ] && break
  kill -0 "$idle_pid" 2>/dev/null || break
  sleep 0.1
done
t1=$(date +%s.%N)
login_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
if [ -z "$connected" ]; then
  echo "idle_clients did not report within ${CONNECT_WAIT}s; log:" >&2; tail -5 "$OUT/idle_clients.log" >&2; exit 1
fi
echo "idle_clients: connected $connected of $COUNT in ${login_s}s"
sleep 2   # let pgsift settle (login buffers freed, tasks parked)
kill -0 "$pgsift_pid" 2>/dev/null || { echo "pgsift died; log:" >&2; tail "$OUT/pgsift.log" >&2; exit 1; }
rss1=$(kb "$pgsift_pid" VmRSS); hwm1=$(kb "$pgsift_pid" VmHWM)
fds=$(ls "/proc/$pgsift_pid/fd" | wc -l)
echo "with $connected idle clients: VmRSS $(mb "$rss1"), VmHWM $(mb "$hwm1"), $fds open fds"

# --- one more client must still be served --------------------------------------------------------
c0=$(date +%s.%N)
set +e
res=$(timeout "$CHECK_LIMIT" "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$PGSIFT_PORT" -U "$BENCH_USER" -d bench -c 'SELECT 1' 2>&1)
rc=$?
set -e
c1=$(date +%s.%N)
check_ms=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.0f", (b-a)*1000}')
if [ "$rc" = 0 ] && [ "$res" = 1 ]; then check="ok (${check_ms} ms, includes psql start and SCRAM login)"
else check="FAILED (rc $rc after ${check_ms} ms: $(echo "$res" | head -1))"; fi
echo "new client SELECT 1 through pgsift: $check"

# --- after the idle clients leave ----------------------------------------------------------------
kill -TERM "$idle_pid" 2>/dev/null || true
wait "$idle_pid" 2>/dev/null || true
idle_pid=""
sleep 3
rss2=$(kb "$pgsift_pid" VmRSS)
echo "after the idle clients disconnected: VmRSS $(mb "$rss2")"

per_client=$(awk -v a="$rss0" -v b="$rss1" -v n="$connected" 'BEGIN{printf "%.1f", (b-a)/n}')
{
  echo "pgsift: $PGSIFT_BIN ($("$PGSIFT_BIN" --version 2>/dev/null || true)), commit ${PGSIFT_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "date: $(date -Is); $(nproc) cores; uptime: $(uptime)"
  echo "clients: $connected of $COUNT connected in ${login_s}s (SCRAM), transaction mode, pool_size $POOL_SIZE"
  echo "VmRSS before: $(mb "$rss0"); with clients: $(mb "$rss1"); after they left: $(mb "$rss2")"
  echo "VmHWM before: $(mb "$hwm0"); with clients: $(mb "$hwm1")"
  echo "RSS per idle client: $per_client KiB ((after-before)/$connected)"
  echo "new client SELECT 1: $check"
  echo "goal RSS < 150 MB (= 146484 KiB) with $COUNT idle clients: $([ "$connected" = "$COUNT" ] && [ "$rss1" -lt $((150000000 / 1024)) ] && echo met || echo 'NOT met')"
} | tee "$OUT/idle_rss.txt"
echo "results: $OUT"
[ "$connected" = "$COUNT" ] && [ "$rc" = 0 ]
