#!/usr/bin/env bash
# See pgsift find the blog's N+1 loop: creates the blog database on the local
# PostgreSQL (127.0.0.1:5432, user postgres), starts pgsift with
# examples/blog/config.yaml, runs the naive and the eager "list posts"
# request through it, and prints the N+1 report pgsift produced.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PGSIFT_VENV:-$PWD/.venv}/bin/python
[ -x "$PY" ] || { echo "run scripts/test.sh once (it creates .venv with the drivers)"; exit 1; }
export PGPASSWORD=${PGPASSWORD:-postgres}
psql -h 127.0.0.1 -p 5432 -U postgres -qtc "SELECT 1 FROM pg_database WHERE datname = 'blog'" | grep -q 1 \
  || psql -h 127.0.0.1 -p 5432 -U postgres -qc "CREATE DATABASE blog"
psql -h 127.0.0.1 -p 5432 -U postgres -d blog -q -f examples/blog/schema.sql
cargo build --release -q
target/release/pgsift --config examples/blog/config.yaml 2>/tmp/pgsift-blog.log &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:9930/readyz >/dev/null && break; sleep 0.1; done
DSN=postgresql://postgres:$PGPASSWORD@127.0.0.1:6432/blog
"$PY" examples/blog/blog.py --dsn "$DSN" --driver psycopg2 --request naive --admin http://127.0.0.1:9930
echo
"$PY" examples/blog/blog.py --dsn "$DSN" --driver psycopg2 --request eager --admin http://127.0.0.1:9930
echo
echo "The whole report: http://127.0.0.1:9930/n-plus-one (while pgsift runs)"
