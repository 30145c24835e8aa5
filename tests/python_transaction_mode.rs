//! Real Python drivers (asyncpg, psycopg 3, psycopg2) through a
//! transaction-mode pgsift with far more clients than servers: runs
//! `tests/python/test_transaction_mode.py` with pytest and requires every test
//! to pass. Named prepared statements, Close, session settings and errors
//! inside transactions must all survive clients moving between servers.
//!
//! The drivers live in a virtualenv: `$PGSIFT_VENV`, default `<repo>/.venv`,
//! which `scripts/test.sh` creates from `tests/python/requirements.txt`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous upper bound for the whole pytest run; it normally takes well
/// under a minute.
const PYTEST_LIMIT: Duration = Duration::from_secs(300);

#[test]
fn python_drivers_survive_transaction_pooling() {
    let python = common::venv_python();
    assert!(
        python.exists(),
        "{} does not exist: the Python driver tests need a virtualenv with the packages of \
         tests/python/requirements.txt. Run scripts/test.sh (it creates the venv), or set \
         PGSIFT_VENV to an existing one.",
        python.display()
    );

    let pg = common::shared_postgres();
    // pool_size 4 for 20+ concurrent clients: every client keeps changing
    // servers. On a panic the Proxy's Drop prints pgsift's log.
    let proxy = common::Proxy::start(&common::databases_yaml(pg, "transaction", 4));

    let repo = env!("CARGO_MANIFEST_DIR");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("pytest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "tests/python/test_transaction_mode.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(repo)
        .env("PGSIFT_TX_URL", proxy.url("blog", "blogpw", "app"))
        .env("DIRECT_URL", pg.url("blog", "blogpw", "app"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > PYTEST_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("---- pytest output ----\n{output}");
    match status {
        None => panic!("pytest did not finish within {PYTEST_LIMIT:?}; output so far:\n{output}"),
        Some(status) => assert!(
            status.success(),
            "pytest failed ({status}); output:\n{output}"
        ),
    }
    // the module skips itself without PGSIFT_TX_URL; here nothing may be skipped
    assert!(
        !output.contains("skipped"),
        "some transaction-mode tests were skipped; output:\n{output}"
    );
}
