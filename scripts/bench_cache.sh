#!/usr/bin/env bash
# Cache benchmark: the blog's read endpoints and its unchanged N+1 page, direct
# PostgreSQL vs. pgsift without a cache vs. pgsift with a warm memory cache vs.
# pgsift with a warm Redis cache, interleaved in one run.
#
# Uses the shared harness in $BENCH_HARNESS (default /work/shared/bench) for
# its throwaway PostgreSQL (pg_up.sh: database blog, users 1k / posts 10k /
# comments 100k), starts a Redis of its own and three pgsift instances
# (transaction mode), warms the caches, then runs every cell A B C D A B C D …
# with pgbench -l and prints requests/s and p50/p95 latency per target, and
# the ratios the cache goals are stated in.
#
# Usage: cargo build --release && scripts/bench_cache.sh
# Env (defaults): DUR=8 ROUNDS=3 CLIENTS="1 16" NPLUS1_CLIENTS=1 WARM=10
#   MODES=simple   (pgbench -M; extended works too)
#   WORKLOADS="blog_posts blog_post blog_user_posts blog_nplus1"
#   PGSIFT_BIN=target/release/pgsift  REDIS_PORT=16379  OUT=$BENCH_DIR/cache-<ts>
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_HARNESS=${BENCH_HARNESS:-/work/shared/bench}
. "$BENCH_HARNESS/env.sh"
DUR=${DUR:-8}; ROUNDS=${ROUNDS:-3}; CLIENTS=${CLIENTS:-"1 16"}; NPLUS1_CLIENTS=${NPLUS1_CLIENTS:-1}
WARM=${WARM:-10}; MODES=${MODES:-simple}
WORKLOADS=${WORKLOADS:-"blog_posts blog_post blog_user_posts blog_nplus1"}
PGSIFT_BIN=${PGSIFT_BIN:-$REPO/target/release/pgsift}
REDIS_PORT=${REDIS_PORT:-16379}
OUT=${OUT:-$BENCH_DIR/cache-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
[ -x "$PGSIFT_BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }

"$BENCH_HARNESS/pg_up.sh"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# setsid: with the kernel's autogroup scheduling (kernel.sched_autogroup_enabled=1),
# a process started from this script would share pgbench's CPU share; Redis and
# pgsift run as services of their own, as PostgreSQL does (see bench.sh)
setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$OUT" >"$OUT/redis.log" 2>&1 < /dev/null &
pids+=($!)

start_pgsift() { # name port admin backend
  local name=$1 port=$2 admin=$3 backend=$4 cfg="$OUT/$1.yaml"
  cat > "$cfg" <<YAML
listen: 127.0.0.1:$port
admin: {listen: "$admin", users: [$BENCH_USER]}
logging: {level: warn}
busy_poll: ${PGSIFT_BUSY_POLL:-0s}
users:
  - {name: $BENCH_USER, password: $BENCH_PASSWORD}
databases:
  blog: {host: 127.0.0.1, port: $PGPORT_BENCH, pool_mode: transaction, pool_size: 20}
cache:
  backend: $backend
  redis_url: redis://127.0.0.1:$REDIS_PORT/0
  key_prefix: "bench:"
  default_ttl: 600s
  rules:
    - tables: [users, posts, comments]
      ttl: 600s
YAML
  setsid "$PGSIFT_BIN" --config "$cfg" >"$OUT/$name.log" 2>&1 < /dev/null &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://$admin/readyz" >/dev/null && return; sleep 0.1; done
  echo "$name did not become ready" >&2; cat "$OUT/$name.log" >&2; exit 1
}
start_pgsift pgsift-nocache 16441 127.0.0.1:19941 off
start_pgsift pgsift-memory 16442 127.0.0.1:19942 memory
start_pgsift pgsift-redis 16443 127.0.0.1:19943 redis

names=(direct pgsift-nocache pgsift-memory pgsift-redis)
ports=($PGPORT_BENCH 16441 16442 16443)
wfile() { case $1 in blog_nplus1) echo "$BENCH_HARNESS/workloads/$1.sql";; *) echo "$REPO/scripts/workloads/$1.sql";; esac; }

echo "host: $(nproc) cores, $(uptime)" | tee "$OUT/meta.txt"
echo "commit: $(git -C "$REPO" rev-parse --short HEAD) DUR=$DUR ROUNDS=$ROUNDS CLIENTS=$CLIENTS MODES=$MODES" | tee -a "$OUT/meta.txt"

# warm: the pg_proc facts load on the first statement, then every page the
# measured runs can ask for gets cached
for i in 2 3; do
  for w in $WORKLOADS; do
    for m in $MODES; do
      "$PGBIN/pgbench" -n -M "$m" -c 4 -j 2 -T 1 -f "$(wfile "$w")" -h 127.0.0.1 -p "${ports[$i]}" -U "$BENCH_USER" blog >/dev/null 2>&1 || true
    done
  done
  sleep 0.5
  for w in $WORKLOADS; do
    for m in $MODES; do
      "$PGBIN/pgbench" -n -M "$m" -c 2 -j 2 -T "$WARM" -f "$(wfile "$w")" -h 127.0.0.1 -p "${ports[$i]}" -U "$BENCH_USER" blog >/dev/null 2>&1
    done
  done
done

echo "workload,mode,clients,round,target,tps,p50_ms,p95_ms" > "$OUT/runs.csv"
for w in $WORKLOADS; do
  cl=$CLIENTS; [ "$w" = blog_nplus1 ] && cl=$NPLUS1_CLIENTS
  for m in $MODES; do
    for c in $cl; do
      j=$(( c < 2 ? c : 2 ))
      for r in $(seq "$ROUNDS"); do
        for i in "${!names[@]}"; do
          d="$OUT/logs/${w}_${m}_c${c}_r${r}_${names[$i]}"; mkdir -p "$d"
          (cd "$d" && "$PGBIN/pgbench" -n -M "$m" -c "$c" -j "$j" -T "$DUR" -l -f "$(wfile "$w")" \
            -h 127.0.0.1 -p "${ports[$i]}" -U "$BENCH_USER" blog > out.txt 2>&1)
          tps=$(grep -m1 -oP '^tps = \K[0-9.]+' "$d/out.txt" || echo 0)
          read -r p50 p95 < <(cat "$d"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f\n", a[int(NR*0.5)]/1000, a[int(NR*0.95)]/1000}')
          echo "$w,$m,$c,$r,${names[$i]},$tps,$p50,$p95" | tee -a "$OUT/runs.csv"
          rm -f "$d"/pgbench_log.*
        done
      done
    done
  done
done
python3 "$REPO/scripts/summarize_cache.py" "$OUT/runs.csv" | tee "$OUT/summary.md"
for a in 19942 19943; do curl -s "http://127.0.0.1:$a/metrics" | grep '^pgsift_cache_requests_total' ; done | tee -a "$OUT/summary.md"
echo "results: $OUT"
