#!/usr/bin/env bash
# One-command throughput comparison: direct PostgreSQL vs. pgsift vs. PgBouncer.
#
# Uses the shared harness in $BENCH_HARNESS (default /work/shared/bench): starts its throwaway
# PostgreSQL 15 (pg_up.sh), PgBouncer in session mode on 16433 and/or in transaction mode on 16432
# (pgbouncer_up.sh), writes a pgsift config and starts pgsift on 16434 (optionally a second pgsift
# with another n_plus_one setting on 16435), then runs the interleaved pgbench comparison
# (compare.sh) and prints the goal table (subject vs. reference, CPU µs per statement, latency).
# Everything this script started is stopped on exit.
#
# Usage:
#   cargo build --release && scripts/bench.sh
#   WORKLOADS=select MODES="simple extended" CLIENTS="1 16" DUR=5 ROUNDS=5 scripts/bench.sh
#   # transaction mode: direct vs. pgsift-tx vs. pgbouncer-tx
#   PGSIFT_POOL_MODE=transaction WORKLOADS=select MODES="extended prepared" CLIENTS="1 16 64" scripts/bench.sh
#   # N+1 detection off vs. on, two pgsift instances in one interleaved run
#   PGSIFT_N_PLUS_ONE=true PGSIFT_NAME=pgsift-np1-on PGSIFT_B_N_PLUS_ONE=false PGSIFT_B_NAME=pgsift-np1-off \
#     TARGETS="pgsift-np1-off pgsift-np1-on" GOAL_SUBJECT=pgsift-np1-on GOAL_REF=pgsift-np1-off GOAL_MIN=0.95 \
#     WORKLOADS=select MODES=simple CLIENTS=16 ROUNDS=7 scripts/bench.sh
#
# Env (defaults):
#   PGSIFT_BIN=target/release/pgsift   pgsift binary (build it with --release first)
#   PGSIFT_COMMIT=<git HEAD of the repo> label recorded in bench-meta.txt (set it when PGSIFT_BIN was
#                                      built from another checkout, e.g. a `git archive` of a commit)
#   PGSIFT_POOL_MODE=session           session | transaction (for every pgsift instance)
#   PGSIFT_NAME=pgsift | pgsift-tx     target name of the pgsift instance (pgsift-tx in transaction mode)
#   PGSIFT_PORT=16434  PGSIFT_ADMIN=127.0.0.1:19930
#   PGSIFT_LOG=warn                    pgsift logging.level during the run
#   PGSIFT_N_PLUS_ONE=true             n_plus_one.enabled (cache.backend is always off: this measures pooling)
#   PGSIFT_WORKER_THREADS=             worker_threads (unset: key omitted, pgsift's default = half the cores)
#   PGSIFT_BUSY_POLL=                  busy_poll of the pgsift instance (unset: key omitted = off)
#   PGSIFT_B_BUSY_POLL=$PGSIFT_BUSY_POLL busy_poll of the second pgsift (e.g. busy polling on vs. off:
#                                      PGSIFT_BUSY_POLL=200us PGSIFT_B_N_PLUS_ONE=true PGSIFT_B_BUSY_POLL=0s
#                                      PGSIFT_NAME=pgsift-bp PGSIFT_B_NAME=pgsift)
#   PGSIFT_PREPARE_UNNAMED=            pool.prepare_unnamed_statements (unset: key omitted = false)
#   PGSIFT_B_PREPARE_UNNAMED=$PGSIFT_PREPARE_UNNAMED  the same for the second pgsift (e.g. off vs. on:
#                                      PGSIFT_PREPARE_UNNAMED=false PGSIFT_B_N_PLUS_ONE=true
#                                      PGSIFT_B_PREPARE_UNNAMED=true PGSIFT_B_NAME=pgsift-tx-prep)
#   PGSIFT_MULTIPLEX=                  pool.multiplex_servers (unset: key omitted = 0, off)
#   PGSIFT_B_MULTIPLEX=$PGSIFT_MULTIPLEX   the same for the second pgsift
#   PGSIFT_UPSTREAM=127.0.0.1          the databases' host in pgsift's config: 127.0.0.1 (TCP, as
#                                      PgBouncer's) or the cluster's socket directory $BENCH_DIR
#   PGSIFT_B_UPSTREAM=$PGSIFT_UPSTREAM the same for the second pgsift
#   PGSIFT_B_BIN=$PGSIFT_BIN           binary of the second pgsift (an A/B of two builds: PGSIFT_B_N_PLUS_ONE=true
#                                      PGSIFT_B_BIN=/tmp/old/release/pgsift PGSIFT_B_NAME=pgsift-old)
#   PGSIFT_B_N_PLUS_ONE=               set (true|false): also start a second pgsift, identical except for
#                                      n_plus_one.enabled, named PGSIFT_B_NAME (pgsift-np1-<value>) on
#                                      PGSIFT_B_PORT=16435, admin PGSIFT_B_ADMIN=127.0.0.1:19931
#   PGB_POOL_SIZE=20                   pool size of PgBouncer *and* pgsift (pgbouncer_up.sh's default)
#   PGB_TX=0                           1: also run PgBouncer transaction mode (16432) as a target
#   TARGETS=                           names of the targets, in this order (the first is compare.sh's
#                                      baseline), from: direct, the pgsift name(s), pgbouncer-session,
#                                      pgbouncer-tx. Default: direct <pgsift> <pgbouncer in the same pool
#                                      mode> [pgbouncer-tx if PGB_TX=1] [second pgsift].
#                                      Only the PgBouncer instances named here are started.
#   GOAL_SUBJECT=<pgsift name>  GOAL_REF=<pgbouncer in the same mode>  GOAL_MIN=1.0
#                                      goal table: subject/ref per cell, "met" when ≥ GOAL_MIN
#   DUR, ROUNDS, CLIENTS, MODES, WORKLOADS, THREADS, RUN_TIMEOUT, BLOG_CLIENTS, BLOG_MODES
#                                      passed to compare.sh (its defaults apply when unset)
#   OUT=$BENCH_DIR/results/<timestamp> runs.csv, summary.md, goal.md, pgsift*.log, raw pgbench logs
#   KEEP_RUNNING=0                     1: leave Postgres/PgBouncer/pgsift running after the run
#   PG_DOWN_ARGS=--keep                passed to pg_down.sh ("" also deletes the cluster's data dir)
# Postgres/PgBouncer instances that were already running when the script started are left running.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_HARNESS=${BENCH_HARNESS:-/work/shared/bench}
. "$BENCH_HARNESS/env.sh"
. "$REPO/scripts/pgsift_config.sh"

PGSIFT_BIN=${PGSIFT_BIN:-$REPO/target/release/pgsift}
PGSIFT_POOL_MODE=${PGSIFT_POOL_MODE:-session}
case "$PGSIFT_POOL_MODE" in
  session) PGSIFT_NAME=${PGSIFT_NAME:-pgsift}; ref_default=pgbouncer-session;;
  transaction) PGSIFT_NAME=${PGSIFT_NAME:-pgsift-tx}; ref_default=pgbouncer-tx;;
  *) echo "PGSIFT_POOL_MODE must be session or transaction" >&2; exit 2;;
esac
PGSIFT_PORT=${PGSIFT_PORT:-16434}
PGSIFT_ADMIN=${PGSIFT_ADMIN:-127.0.0.1:19930}
PGSIFT_LOG=${PGSIFT_LOG:-warn}
PGSIFT_N_PLUS_ONE=${PGSIFT_N_PLUS_ONE:-true}
PGSIFT_WORKER_THREADS=${PGSIFT_WORKER_THREADS:-}
PGSIFT_B_N_PLUS_ONE=${PGSIFT_B_N_PLUS_ONE:-}
PGSIFT_BUSY_POLL=${PGSIFT_BUSY_POLL:-}
PGSIFT_B_BUSY_POLL=${PGSIFT_B_BUSY_POLL:-$PGSIFT_BUSY_POLL}
PGSIFT_PREPARE_UNNAMED=${PGSIFT_PREPARE_UNNAMED:-}
PGSIFT_B_PREPARE_UNNAMED=${PGSIFT_B_PREPARE_UNNAMED:-$PGSIFT_PREPARE_UNNAMED}
PGSIFT_MULTIPLEX=${PGSIFT_MULTIPLEX:-}
PGSIFT_B_MULTIPLEX=${PGSIFT_B_MULTIPLEX:-$PGSIFT_MULTIPLEX}
PGSIFT_UPSTREAM=${PGSIFT_UPSTREAM:-127.0.0.1}
PGSIFT_B_UPSTREAM=${PGSIFT_B_UPSTREAM:-$PGSIFT_UPSTREAM}
PGSIFT_B_NAME=${PGSIFT_B_NAME:-pgsift-np1-$PGSIFT_B_N_PLUS_ONE}
PGSIFT_B_BIN=${PGSIFT_B_BIN:-$PGSIFT_BIN}
PGSIFT_B_PORT=${PGSIFT_B_PORT:-16435}
PGSIFT_B_ADMIN=${PGSIFT_B_ADMIN:-127.0.0.1:19931}
POOL_SIZE=${PGB_POOL_SIZE:-20}
PGB_SESS_PORT=16433
PGB_TX_PORT=16432
PGB_TX=${PGB_TX:-0}
KEEP_RUNNING=${KEEP_RUNNING:-0}
PG_DOWN_ARGS=${PG_DOWN_ARGS---keep}
OUT=${OUT:-$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)}
export OUT
mkdir -p "$OUT"

if [ -z "${TARGETS:-}" ]; then
  TARGETS="direct $PGSIFT_NAME $ref_default"
  [ "$PGB_TX" = 1 ] && [ "$ref_default" != pgbouncer-tx ] && TARGETS+=" pgbouncer-tx"
  [ -n "$PGSIFT_B_N_PLUS_ONE" ] && TARGETS+=" $PGSIFT_B_NAME"
fi
GOAL_SUBJECT=${GOAL_SUBJECT:-$PGSIFT_NAME}
GOAL_REF=${GOAL_REF:-$ref_default}
GOAL_MIN=${GOAL_MIN:-1.0}
for t in $TARGETS; do
  case "$t" in
    direct|pgbouncer-session|pgbouncer-tx|"$PGSIFT_NAME") ;;
    "$PGSIFT_B_NAME") [ -n "$PGSIFT_B_N_PLUS_ONE" ] || { echo "target $t needs PGSIFT_B_N_PLUS_ONE" >&2; exit 2; };;
    *) echo "unknown target $t (known: direct $PGSIFT_NAME pgbouncer-session pgbouncer-tx${PGSIFT_B_N_PLUS_ONE:+ $PGSIFT_B_NAME})" >&2; exit 2;;
  esac
done
wants() { case " $TARGETS " in *" $1 "*) return 0;; *) return 1;; esac; }

[ -x "$PGSIFT_BIN" ] || { echo "pgsift binary not found: $PGSIFT_BIN (cargo build --release, or set PGSIFT_BIN)" >&2; exit 2; }

# --- cleanup: stop only what this script started ---------------------------------------------
started_pg=0; started_pgb=(); pgsift_pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$KEEP_RUNNING" = 1 ]; then
    echo "KEEP_RUNNING=1: leaving everything running (pgsift pids ${pgsift_pids[*]:-none})"; exit $rc
  fi
  for pid in "${pgsift_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      echo "pgsift pid $pid stopped"
    fi
  done
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

# --- PgBouncer (session on 16433, transaction on 16432), only those in TARGETS -----------------
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
pgb_sess_pid=""; pgb_tx_pid=""
if wants pgbouncer-session; then
  start_pgb "$PGB_SESS_PORT" session
  pgb_sess_pid=$(cat "$BENCH_DIR/pgbouncer-$PGB_SESS_PORT/pgbouncer.pid")
  echo "pgbouncer on $PGB_SESS_PORT: $(cat /proc/$pgb_sess_pid/autogroup 2>/dev/null || echo 'no autogroup')"
fi
if wants pgbouncer-tx; then
  start_pgb "$PGB_TX_PORT" transaction
  pgb_tx_pid=$(cat "$BENCH_DIR/pgbouncer-$PGB_TX_PORT/pgbouncer.pid")
  echo "pgbouncer on $PGB_TX_PORT: $(cat /proc/$pgb_tx_pid/autogroup 2>/dev/null || echo 'no autogroup')"
fi

# --- pgsift ------------------------------------------------------------------------------------
start_pgsift() { # name port admin n_plus_one busy_poll prepare_unnamed multiplex upstream binary -> sets $started_pid
  local name=$1 port=$2 admin=$3 np1=$4 bp=$5 prep=$6 mux=$7 upstream=$8 bin=$9 cfg="$OUT/$1.yaml" log="$OUT/$1.log" pid ready=0
  {
    echo "# written by scripts/bench.sh; same pool size as the PgBouncer instances"
    # max_client_conn as PgBouncer's
    pgsift_bench_config "$port" "$admin" "$PGSIFT_POOL_MODE" "$POOL_SIZE" 1000 "$PGSIFT_LOG" \
      "$np1" "$bp" "$PGSIFT_WORKER_THREADS" "$prep" "$mux" "$upstream"
  } > "$cfg"
  "$bin" check --config "$cfg"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use" >&2; exit 1
  fi
  # In its own session, as a service manager runs it and as PgBouncer (-d) runs itself: with
  # the kernel's autogroup scheduling (kernel.sched_autogroup_enabled=1) a process started
  # from this script would share a CPU-time group with pgbench, the load generator.
  setsid "$bin" --config "$cfg" >"$log" 2>&1 < /dev/null &
  pid=$!
  pgsift_pids+=("$pid")
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { echo "pgsift $name exited; log:" >&2; cat "$log" >&2; exit 1; }
    if curl -fsS "http://$admin/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
  done
  [ "$ready" = 1 ] || { echo "pgsift $name not ready after 10 s; log:" >&2; cat "$log" >&2; exit 1; }
  echo "pgsift $name ($PGSIFT_POOL_MODE mode, pool $POOL_SIZE, n_plus_one $np1, prepare_unnamed ${prep:-default}, multiplex ${mux:-0}, upstream $upstream, threads $(ls /proc/$pid/task | wc -l), $(cat /proc/$pid/autogroup 2>/dev/null || echo 'no autogroup')) on 127.0.0.1:$port pid $pid"
  started_pid=$pid
}
pgsift_pid=""; pgsift_b_pid=""
if wants "$PGSIFT_NAME"; then
  start_pgsift "$PGSIFT_NAME" "$PGSIFT_PORT" "$PGSIFT_ADMIN" "$PGSIFT_N_PLUS_ONE" "$PGSIFT_BUSY_POLL" "$PGSIFT_PREPARE_UNNAMED" "$PGSIFT_MULTIPLEX" "$PGSIFT_UPSTREAM" "$PGSIFT_BIN"; pgsift_pid=$started_pid
fi
if [ -n "$PGSIFT_B_N_PLUS_ONE" ] && wants "$PGSIFT_B_NAME"; then
  start_pgsift "$PGSIFT_B_NAME" "$PGSIFT_B_PORT" "$PGSIFT_B_ADMIN" "$PGSIFT_B_N_PLUS_ONE" "$PGSIFT_B_BUSY_POLL" "$PGSIFT_B_PREPARE_UNNAMED" "$PGSIFT_B_MULTIPLEX" "$PGSIFT_B_UPSTREAM" "$PGSIFT_B_BIN"; pgsift_b_pid=$started_pid
fi

# --- run ---------------------------------------------------------------------------------------
{
  echo "pgsift: $PGSIFT_BIN $("$PGSIFT_BIN" --version 2>/dev/null || true)"
  echo "pgsift commit: ${PGSIFT_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (working tree has uncommitted changes in src/)')}"
  echo "pgsift pool_mode=$PGSIFT_POOL_MODE pool_size=$POOL_SIZE n_plus_one=$PGSIFT_N_PLUS_ONE prepare_unnamed=${PGSIFT_PREPARE_UNNAMED:-default} multiplex=${PGSIFT_MULTIPLEX:-0} upstream=$PGSIFT_UPSTREAM worker_threads=${PGSIFT_WORKER_THREADS:-default} cache=off log=$PGSIFT_LOG"
  [ -n "$PGSIFT_B_N_PLUS_ONE" ] && echo "second pgsift $PGSIFT_B_NAME: binary $PGSIFT_B_BIN n_plus_one=$PGSIFT_B_N_PLUS_ONE busy_poll=${PGSIFT_B_BUSY_POLL:-off} prepare_unnamed=${PGSIFT_B_PREPARE_UNNAMED:-default} multiplex=${PGSIFT_B_MULTIPLEX:-0} upstream=$PGSIFT_B_UPSTREAM on $PGSIFT_B_PORT"
  echo "pgbouncer: $(pgbouncer --version 2>/dev/null | head -1) pool $POOL_SIZE"
  echo "targets: $TARGETS; goal: $GOAL_SUBJECT / $GOAL_REF >= $GOAL_MIN"
  echo "uptime before: $(uptime)"
} | tee "$OUT/bench-meta.txt"

targets=()
for t in $TARGETS; do
  case "$t" in
    direct) targets+=("direct=127.0.0.1:$PGPORT_BENCH");;
    pgbouncer-session) targets+=("pgbouncer-session=127.0.0.1:$PGB_SESS_PORT@$pgb_sess_pid");;
    pgbouncer-tx) targets+=("pgbouncer-tx=127.0.0.1:$PGB_TX_PORT@$pgb_tx_pid");;
    "$PGSIFT_NAME") targets+=("$PGSIFT_NAME=127.0.0.1:$PGSIFT_PORT@$pgsift_pid");;
    "$PGSIFT_B_NAME") targets+=("$PGSIFT_B_NAME=127.0.0.1:$PGSIFT_B_PORT@$pgsift_b_pid");;
  esac
done
# compare.sh reads DUR, ROUNDS, CLIENTS, MODES, WORKLOADS, ... from the environment (OUT is exported).
"$BENCH_HARNESS/compare.sh" "${targets[@]}"
echo "uptime after: $(uptime)" | tee -a "$OUT/bench-meta.txt"
for pid in "${pgsift_pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || echo "WARNING: pgsift pid $pid exited during the run (see $OUT/*.log)" | tee -a "$OUT/bench-meta.txt"
done

# --- goal table: subject vs. reference, CPU per statement, latency ------------------------------
python3 - "$OUT/runs.csv" "$GOAL_SUBJECT" "$GOAL_REF" "$GOAL_MIN" <<'PY' | tee "$OUT/goal.md"
import csv, statistics, sys
from collections import OrderedDict, defaultdict
rows = list(csv.DictReader(open(sys.argv[1]))); subj, ref, gmin = sys.argv[2], sys.argv[3], float(sys.argv[4])
# statements per pgbench transaction: -S = 1 SELECT; TPC-B = BEGIN, 3 UPDATE, SELECT, INSERT, END
per_tx = {"select": 1, "tpcb": 7, "blog_feed": 1, "blog_nplus1": 21}
by = defaultdict(list)
for r in rows: by[(r["workload"], r["mode"], r["clients"], r["target"])].append(r)
cells = list(OrderedDict.fromkeys((r["workload"], r["mode"], r["clients"]) for r in rows))
targets = list(OrderedDict.fromkeys(r["target"] for r in rows))
base = targets[0]
def ok(rs): return [r for r in rs if r["status"] == "ok" and r["tps"]]
def med(xs): xs = list(xs); return statistics.median(xs) if xs else None
def tps(c, t): return med(float(r["tps"]) for r in ok(by[c + (t,)]))
def lat(c, t): return med(float(r["lat_ms"]) for r in ok(by[c + (t,)]) if r["lat_ms"])
def us(c, t):  # pooler CPU seconds / statements = cpu% / 100 / (tps * statements per tx)
    n = per_tx.get(c[0], 1)
    return med(float(r["pooler_cpu_pct"]) / 100 / (float(r["tps"]) * n) * 1e6
               for r in ok(by[c + (t,)]) if r["pooler_cpu_pct"])
def per_round(c, a_t, b_t):  # a/b per interleaved round (same round = same machine conditions)
    a = {r["round"]: float(r["tps"]) for r in ok(by[c + (a_t,)])}
    b = {r["round"]: float(r["tps"]) for r in ok(by[c + (b_t,)])}
    return sorted(a[k] / b[k] for k in a if k in b)
def nok(c, t): return f"{len(ok(by[c + (t,)]))}/{len(by[c + (t,)])}"
f = lambda x, p=0: "—" if x is None else f"{x:.{p}f}"
cpu_t = [t for t in targets if any(r["pooler_cpu_pct"] for r in rows if r["target"] == t)]
others = [t for t in targets if t != base]

print(f"\n## TPS (median of ok rounds; ratios are ratios of medians; baseline {base})\n")
print("| workload | mode | clients | " + " | ".join(f"{t} TPS" for t in targets) + " | "
      + " | ".join(f"{t}/{base}" for t in others) + " |")
print("|" + "---|" * (3 + len(targets) + len(others)))
for c in cells:
    b = tps(c, base)
    print(f"| {c[0]} | {c[1]} | {c[2]} | " + " | ".join(f(tps(c, t)) for t in targets) + " | "
          + " | ".join(f(tps(c, t) / b if tps(c, t) and b else None, 2) for t in others) + " |")

print(f"\n## {subj} vs. {ref} (goal: {subj} ≥ {gmin} × {ref})\n")
print(f"| workload | mode | clients | {subj}/{ref} | per-round (min–max) | "
      + " | ".join(f"{t} µs/stmt" for t in cpu_t) + " | ok runs | goal |")
print("|" + "---|" * (7 + len(cpu_t)))
bad = []
for c in cells:
    s, p = tps(c, subj), tps(c, ref)
    rr = per_round(c, subj, ref)
    ratio = s / p if s and p else None
    goal = "—" if ratio is None else ("met" if ratio >= gmin else "NOT met")
    print(f"| {c[0]} | {c[1]} | {c[2]} | {f(ratio, 2)} | {f(rr[0],2)+'–'+f(rr[-1],2) if rr else '—'} | "
          + " | ".join(f(us(c, t), 1) for t in cpu_t) + " | " + ", ".join(f"{t} {nok(c, t)}" for t in targets) + f" | {goal} |")
    for t in targets:
        for r in by[c + (t,)]:
            if r["status"] != "ok":
                bad.append(f"- {c[0]} {c[1]} c={c[2]} {t} round {r['round']}: {r['status']} {r['note']}")

print("\n## Latency per transaction (ms, median of ok rounds)\n")
print("| workload | mode | clients | " + " | ".join(targets) + " |")
print("|" + "---|" * (3 + len(targets)))
for c in cells:
    print(f"| {c[0]} | {c[1]} | {c[2]} | " + " | ".join(f(lat(c, t), 3) for t in targets) + " |")
print("\nFailed/aborted runs: " + ("none" if not bad else "\n" + "\n".join(bad)))
PY
echo "results: $OUT (runs.csv, summary.md, goal.md, bench-meta.txt, *.log, logs/)"
