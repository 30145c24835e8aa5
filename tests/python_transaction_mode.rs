//! Real Python drivers (asyncpg, psycopg 3, psycopg2) through a
//! transaction-mode pgsift with far more clients than servers: runs
//! `tests/python/test_transaction_mode.py` with pytest and requires every test
//! to pass. Named prepared statements, Close, session settings and errors
//! inside transactions must all survive clients moving between servers.
//!
//! The drivers live in a virtualenv: `$PGSIFT_VENV`, default `<repo>/.venv`,
//! which `scripts/test.sh` creates from `tests/python/requirements.txt`.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

/// The module runs twice, one run after the other (both use the same
/// tables): as configured by default, then with repeated unnamed statements
/// kept prepared on the servers (psycopg 3 below its prepare_threshold) and
/// autocommit statements multiplexed on two of the four servers (asyncpg's
/// statement cache, psycopg 3's prepared statements).
#[test]
fn python_drivers_survive_transaction_pooling() {
    run_module("");
    run_module("pool:\n  prepare_unnamed_statements: true\n  multiplex_servers: 2\n");
}

fn run_module(extra_yaml: &str) {
    let pg = common::shared_postgres();
    // pool_size 4 for 20+ concurrent clients: every client keeps changing
    // servers. On a panic the Proxy's Drop prints pgsift's log.
    let proxy = common::Proxy::start(&format!(
        "{}{extra_yaml}",
        common::databases_yaml(pg, "transaction", 4)
    ));
    let output = common::run_pytest(
        "tests/python/test_transaction_mode.py",
        &[
            ("PGSIFT_TX_URL", proxy.url("blog", "blogpw", "app")),
            ("DIRECT_URL", pg.url("blog", "blogpw", "app")),
        ],
    );
    // the module skips itself without PGSIFT_TX_URL; here nothing may be skipped
    assert!(
        !output.contains("skipped"),
        "some transaction-mode tests were skipped; output:\n{output}"
    );
}
