#!/usr/bin/env bash
# One-command throughput comparison: direct PostgreSQL vs. pgsift vs. PgBouncer.
#
# Uses the shared harness in $BENCH_HARNESS (default /work/shared/bench): starts its throwaway
# PostgreSQL 15 (pg_up.sh), PgBouncer in session mode on 16433 and in transaction mode on 16432
# (pgbouncer_up.sh), writes a pgsift config and starts pgsift on 16434, then runs the interleaved
# pgbench comparison (compare.sh) and prints the goal table (pgsift vs. PgBouncer, CPU µs per
# statement). Everything this script started is stopped on exit.
#
# Usage:
#   cargo build --release && scripts/bench.sh
#   WORKLOADS=select MODES="simple extended" CLIENTS="1 16" DUR=5 ROUNDS=5 scripts/bench.sh
#
# Env (defaults):
#   PGSIFT_BIN=target/release/pgsift   pgsift binary (build it with --release first)
#   PGSIFT_COMMIT=<git HEAD of the repo> label recorded in bench-meta.txt (set it when PGSIFT_BIN was
#                                      built from another checkout, e.g. a `git archive` of a commit)
#   PGSIFT_POOL_MODE=session           session | transaction (transaction also benchmarks pgbouncer-tx)
#   PGSIFT_PORT=16434  PGSIFT_ADMIN=127.0.0.1:19930
#   PGSIFT_LOG=warn                    pgsift logging.level during the run
#   PGSIFT_N_PLUS_ONE=true             n_plus_one.enabled (cache.backend is always off: this measures pooling)
#   PGB_POOL_SIZE=20                   pool size of PgBouncer *and* pgsift (pgbouncer_up.sh's default)
#   PGB_TX=0                           1: also run PgBouncer transaction mode (16432) as a target
#   DUR, ROUNDS, CLIENTS, MODES, WORKLOADS, THREADS, RUN_TIMEOUT, BLOG_CLIENTS, BLOG_MODES
#                                      passed to compare.sh (its defaults apply when unset)
#   OUT=$BENCH_DIR/results/<timestamp> runs.csv, summary.md, goal.md, pgsift.log, raw pgbench logs
#   KEEP_RUNNING=0                     1: leave Postgres/PgBouncer/pgsift running after the run
#   PG_DOWN_ARGS=--keep                passed to pg_down.sh ("" also deletes the cluster's data dir)
# Postgres/PgBouncer instances that were already running when the script started are left running.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_HARNESS=${BENCH_HARNESS:-/work/shared/bench}
. "$BENCH_HARNESS/env.sh"

PGSIFT_BIN=${PGSIFT_BIN:-$REPO/target/release/pgsift}
PGSIFT_POOL_MODE=${PGSIFT_POOL_MODE:-session}
PGSIFT_PORT=${PGSIFT_PORT:-16434}
PGSIFT_ADMIN=${PGSIFT_ADMIN:-127.0.0.1:19930}
PGSIFT_LOG=${PGSIFT_LOG:-warn}
PGSIFT_N_PLUS_ONE=${PGSIFT_N_PLUS_ONE:-true}
POOL_SIZE=${PGB_POOL_SIZE:-20}
PGB_SESS_PORT=16433
PGB_TX_PORT=16432
PGB_TX=${PGB_TX:-0}
[ "$PGSIFT_POOL_MODE" = transaction ] && PGB_TX=1
KEEP_RUNNING=${KEEP_RUNNING:-0}
PG_DOWN_ARGS=${PG_DOWN_ARGS---keep}
OUT=${OUT:-$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)}
export OUT
mkdir -p "$OUT"

[ -x "$PGSIFT_BIN" ] || { echo "pgsift binary not found: $PGSIFT_BIN (cargo build --release, or set PGSIFT_BIN)" >&2; exit 2; }
case "$PGSIFT_POOL_MODE" in session|transaction) ;; *) echo "PGSIFT_POOL_MODE must be session or transaction" >&2; exit 2;; esac

# --- cleanup: stop only what this script started ---------------------------------------------
started_pg=0; started_pgb=(); pgsift_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$KEEP_RUNNING" = 1 ]; then
    echo "KEEP_RUNNING=1: leaving everything running (pgsift pid ${pgsift_pid:-none})"; exit $rc
  fi
  if [ -n "$pgsift_pid" ] && kill -0 "$pgsift_pid" 2>/dev/null; then
    kill -TERM "$pgsift_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pgsift_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pgsift_pid" 2>/dev/null && kill -KILL "$pgsift_pid" 2>/dev/null
    echo "pgsift pid $pgsift_pid stopped"
  fi
  for port in "${started_pgb[@]}"; do PGB_PORT=$port "$BENCH_HARNESS/pgbouncer_down.sh" || true; done
  # shellcheck disable=SC2086
  [ "$started_pg" = 1 ] && { "$BENCH_HARNESS/pg_down.sh" $PG_DOWN_ARGS || true; }
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL --------------------------------------------------------------------------------
if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA_BENCH" status >/dev/null 2>&1; then started_pg=1; fi
"$BENCH_HARNESS/pg_up.sh"

# --- PgBouncer (session on 16433, transaction on 16432) ----------------------------------------
start_pgb() { # port mode
  local D="$BENCH_DIR/pgbouncer-$1"
  if ! { [ -f "$D/pgbouncer.pid" ] && kill -0 "$(cat "$D/pgbouncer.pid")" 2>/dev/null; }; then
    started_pgb+=("$1")
  fi
  PGB_PORT=$1 POOL_MODE=$2 PGB_POOL_SIZE=$POOL_SIZE "$BENCH_HARNESS/pgbouncer_up.sh"
  # An instance that was already running may have another mode/pool size: say so rather than guess.
  grep -q "^pool_mode = $2\$" "$D/pgbouncer.ini" || { echo "pgbouncer on $1 is not in $2 mode" >&2; exit 1; }
  grep -q "^default_pool_size = $POOL_SIZE\$" "$D/pgbouncer.ini" || { echo "pgbouncer on $1: pool size != $POOL_SIZE" >&2; exit 1; }
}
start_pgb "$PGB_SESS_PORT" session
start_pgb "$PGB_TX_PORT" transaction
pgb_sess_pid=$(cat "$BENCH_DIR/pgbouncer-$PGB_SESS_PORT/pgbouncer.pid")
pgb_tx_pid=$(cat "$BENCH_DIR/pgbouncer-$PGB_TX_PORT/pgbouncer.pid")

# --- pgsift ------------------------------------------------------------------------------------
CFG="$OUT/pgsift.yaml"
cat > "$CFG" <<YAML
# written by scripts/bench.sh; same pool size as the PgBouncer instances
listen: 127.0.0.1:$PGSIFT_PORT
admin:
  listen: $PGSIFT_ADMIN
  users: [$BENCH_USER]
users:
  - name: $BENCH_USER
    password: $BENCH_PASSWORD
databases:
  bench:
    host: 127.0.0.1
    port: $PGPORT_BENCH
    dbname: bench
    pool_mode: $PGSIFT_POOL_MODE
    pool_size: $POOL_SIZE
  blog:
    host: 127.0.0.1
    port: $PGPORT_BENCH
    dbname: blog
    pool_mode: $PGSIFT_POOL_MODE
    pool_size: $POOL_SIZE
pool:
  max_client_conn: 1000          # as PgBouncer's max_client_conn
cache:
  backend: "off"                 # measure the pooler, not cache hits
n_plus_one:
  enabled: $PGSIFT_N_PLUS_ONE
logging:
  level: $PGSIFT_LOG
YAML
"$PGSIFT_BIN" check --config "$CFG"
if (exec 3<>"/dev/tcp/127.0.0.1/$PGSIFT_PORT") 2>/dev/null; then
  echo "port $PGSIFT_PORT is already in use" >&2; exit 1
fi
"$PGSIFT_BIN" --config "$CFG" >"$OUT/pgsift.log" 2>&1 &
pgsift_pid=$!
ready=0
for _ in $(seq 100); do
  kill -0 "$pgsift_pid" 2>/dev/null || { echo "pgsift exited; log:" >&2; cat "$OUT/pgsift.log" >&2; exit 1; }
  if curl -fsS "http://$PGSIFT_ADMIN/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "pgsift not ready after 10 s; log:" >&2; cat "$OUT/pgsift.log" >&2; exit 1; }
echo "pgsift ($PGSIFT_POOL_MODE mode, pool $POOL_SIZE) on 127.0.0.1:$PGSIFT_PORT pid $pgsift_pid ($PGSIFT_BIN)"

# --- run ---------------------------------------------------------------------------------------
{
  echo "pgsift: $PGSIFT_BIN $("$PGSIFT_BIN" --version 2>/dev/null || true)"
  echo "pgsift commit: ${PGSIFT_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (working tree has uncommitted changes in src/)')}"
  echo "pgsift pool_mode=$PGSIFT_POOL_MODE pool_size=$POOL_SIZE n_plus_one=$PGSIFT_N_PLUS_ONE cache=off log=$PGSIFT_LOG"
  echo "pgbouncer: $(pgbouncer --version 2>/dev/null | head -1) pool $POOL_SIZE"
  echo "uptime before: $(uptime)"
} | tee "$OUT/bench-meta.txt"

targets=("direct=127.0.0.1:$PGPORT_BENCH"
         "pgsift=127.0.0.1:$PGSIFT_PORT@$pgsift_pid"
         "pgbouncer-session=127.0.0.1:$PGB_SESS_PORT@$pgb_sess_pid")
[ "$PGB_TX" = 1 ] && targets+=("pgbouncer-tx=127.0.0.1:$PGB_TX_PORT@$pgb_tx_pid")
# compare.sh reads DUR, ROUNDS, CLIENTS, MODES, WORKLOADS, ... from the environment (OUT is exported).
"$BENCH_HARNESS/compare.sh" "${targets[@]}"
echo "uptime after: $(uptime)" | tee -a "$OUT/bench-meta.txt"
kill -0 "$pgsift_pid" 2>/dev/null || echo "WARNING: pgsift exited during the run (see $OUT/pgsift.log)" | tee -a "$OUT/bench-meta.txt"

# --- goal table: pgsift vs. PgBouncer in the same pool mode, CPU per statement -----------------
ref=pgbouncer-session; [ "$PGSIFT_POOL_MODE" = transaction ] && ref=pgbouncer-tx
python3 - "$OUT/runs.csv" "$ref" <<'PY' | tee "$OUT/goal.md"
import csv, statistics, sys
from collections import OrderedDict, defaultdict
rows = list(csv.DictReader(open(sys.argv[1]))); ref = sys.argv[2]
# statements per pgbench transaction: -S = 1 SELECT; TPC-B = BEGIN, 3 UPDATE, SELECT, INSERT, END
per_tx = {"select": 1, "tpcb": 7, "blog_feed": 1, "blog_nplus1": 21}
by = defaultdict(list)
for r in rows: by[(r["workload"], r["mode"], r["clients"], r["target"])].append(r)
cells = list(OrderedDict.fromkeys((r["workload"], r["mode"], r["clients"]) for r in rows))
def ok(rs): return [r for r in rs if r["status"] == "ok" and r["tps"]]
def med(xs): xs = list(xs); return statistics.median(xs) if xs else None
def tps(c, t): return med(float(r["tps"]) for r in ok(by[c + (t,)]))
def us(c, t):  # pooler CPU seconds / statements = cpu% / 100 / (tps * statements per tx)
    n = per_tx.get(c[0], 1)
    return med(float(r["pooler_cpu_pct"]) / 100 / (float(r["tps"]) * n) * 1e6
               for r in ok(by[c + (t,)]) if r["pooler_cpu_pct"])
def per_round(c):  # pgsift/ref per interleaved round (same round = same machine conditions)
    a = {r["round"]: float(r["tps"]) for r in ok(by[c + ("pgsift",)])}
    b = {r["round"]: float(r["tps"]) for r in ok(by[c + (ref,)])}
    return sorted(a[k] / b[k] for k in a if k in b)
f = lambda x, p=0: "—" if x is None else f"{x:.{p}f}"
print(f"\n## pgsift vs. {ref} (goal: pgsift ≥ 1.0 × {ref} in every cell)\n")
print(f"| workload | mode | clients | direct TPS | pgsift TPS | {ref} TPS | pgsift/direct | {ref}/direct "
      f"| pgsift/{ref} | per-round pgsift/{ref} (min–max) | pgsift µs/stmt | {ref} µs/stmt | goal |")
print("|" + "---|" * 13)
bad = []
for c in cells:
    d, s, p = tps(c, "direct"), tps(c, "pgsift"), tps(c, ref)
    rr = per_round(c)
    ratio = s / p if s and p else None
    goal = "—" if ratio is None else ("met" if ratio >= 1.0 else "NOT met")
    print(f"| {c[0]} | {c[1]} | {c[2]} | {f(d)} | {f(s)} | {f(p)} | {f(s/d if s and d else None, 2)} "
          f"| {f(p/d if p and d else None, 2)} | {f(ratio, 2)} | {f(rr[0],2)+'–'+f(rr[-1],2) if rr else '—'} "
          f"| {f(us(c, 'pgsift'), 1)} | {f(us(c, ref), 1)} | {goal} |")
    for t in ("direct", "pgsift", ref):
        for r in by[c + (t,)]:
            if r["status"] != "ok":
                bad.append(f"- {c[0]} {c[1]} c={c[2]} {t} round {r['round']}: {r['status']} {r['note']}")
print("\nFailed/aborted runs: " + ("none" if not bad else "\n" + "\n".join(bad)))
PY
echo "results: $OUT (runs.csv, summary.md, goal.md, bench-meta.txt, pgsift.log, logs/)"
