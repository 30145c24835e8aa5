//! Real Python drivers (psycopg2, psycopg 3, asyncpg) through pgsift: runs
//! `tests/python/test_drivers.py` with pytest against a session-mode proxy and
//! the same PostgreSQL directly, and requires every test to pass.
//!
//! The drivers live in a virtualenv: `$PGSIFT_VENV`, default `<repo>/.venv`,
//! which `scripts/test.sh` creates from `tests/python/requirements.txt`.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

#[test]
fn python_drivers_read_the_same_rows_through_pgsift_as_directly() {
    let pg = common::shared_postgres();
    let proxy = common::Proxy::start(&common::databases_yaml(pg, "session", 10));
    common::run_pytest(
        "tests/python",
        &[
            ("PGSIFT_URL", proxy.url("blog", "blogpw", "app")),
            ("DIRECT_URL", pg.url("blog", "blogpw", "app")),
        ],
    );
}
