# Sourced by the benchmark scripts (bench.sh, idle_rss.sh, instructions.sh):
# the pgsift config they run against the shared harness's PostgreSQL
# (databases bench and blog, the harness's user), with the cache off so
# that the pooler itself is measured.

# pgsift_bench_config PORT ADMIN POOL_MODE POOL_SIZE MAX_CLIENT_CONN LOG_LEVEL
#                     [N_PLUS_ONE=true] [BUSY_POLL] [WORKER_THREADS] [PREPARE_UNNAMED]
#                     [MULTIPLEX_SERVERS] [UPSTREAM_HOST=127.0.0.1]
# Prints the YAML; empty BUSY_POLL / WORKER_THREADS / PREPARE_UNNAMED / MULTIPLEX_SERVERS leave
# pgsift's defaults. UPSTREAM_HOST may be the cluster's socket directory ($BENCH_DIR).
pgsift_bench_config() {
  local port=$1 admin=$2 mode=$3 size=$4 max_conn=$5 log=$6 np1=${7:-true} bp=${8:-} threads=${9:-}
  local prep=${10:-} mux=${11:-} host=${12:-127.0.0.1}
  echo "listen: 127.0.0.1:$port"
  if [ -n "$threads" ]; then echo "worker_threads: $threads"; fi
  if [ -n "$bp" ]; then echo "busy_poll: $bp"; fi
  cat <<YAML
admin:
  listen: $admin
  users: [$BENCH_USER]
users:
  - name: $BENCH_USER
    password: $BENCH_PASSWORD
databases:
  bench:
    host: $host
    port: $PGPORT_BENCH
    dbname: bench
    pool_mode: $mode
    pool_size: $size
  blog:
    host: $host
    port: $PGPORT_BENCH
    dbname: blog
    pool_mode: $mode
    pool_size: $size
pool:
  max_client_conn: $max_conn
$(if [ -n "$prep" ]; then echo "  prepare_unnamed_statements: $prep"; fi)
$(if [ -n "$mux" ]; then echo "  multiplex_servers: $mux"; fi)
cache:
  backend: "off"
n_plus_one:
  enabled: $np1
logging:
  level: $log
YAML
}
