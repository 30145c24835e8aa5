#!/usr/bin/env bash
# Runs every pgsift test on a fresh machine: installs what is missing
# (PostgreSQL, Redis, libclang, openssl, Chromium, Java with the PostgreSQL
# JDBC driver, a Python venv with the drivers),
# then checks formatting and lints and runs the whole test suite.
# The integration tests start their own PostgreSQL on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v pgbench >/dev/null || need+=(postgresql-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
command -v runuser >/dev/null || need+=(util-linux)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# `java File.java` compiles the source: a JDK, not only a JRE
command -v javac >/dev/null || need+=(default-jdk-headless)
[ -e /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# pgbench is a wrapper script needing the matching client binaries
if ! pgbench --version >/dev/null 2>&1; then
  apt-get install -y -qq postgresql-contrib >/dev/null 2>&1 || true
fi

venv="${PGSIFT_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating Python venv at $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
export PGSIFT_VENV="$venv"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --no-fail-fast --lib --bins --tests --examples -- --test-threads="${PGSIFT_TEST_THREADS:-4}"
echo "== benchmarks (criterion test mode: each runs once)"
cargo test --benches
