//! Real Python drivers (psycopg2, psycopg 3, asyncpg) through pgsift: runs
//! `tests/python/test_drivers.py` with pytest against a session-mode proxy and
//! the same PostgreSQL directly, and requires every test to pass.
//!
//! The drivers live in a virtualenv: `$PGSIFT_VENV`, default `<repo>/.venv`,
//! which `scripts/test.sh` creates from `tests/python/requirements.txt`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous upper bound for the whole pytest run; it normally takes seconds.
const PYTEST_LIMIT: Duration = Duration::from_secs(300);

#[test]
fn python_drivers_read_the_same_rows_through_pgsift_as_directly() {
    let python = common::venv_python();
    assert!(
        python.exists(),
        "{} does not exist: the Python driver tests need a virtualenv with the packages of \
         tests/python/requirements.txt. Run scripts/test.sh (it creates the venv), or set \
         PGSIFT_VENV to an existing one.",
        python.display()
    );

    let pg = common::shared_postgres();
    let proxy = common::Proxy::start(&common::databases_yaml(pg, "session", 10));

    let repo = env!("CARGO_MANIFEST_DIR");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("pytest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "tests/python",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(repo)
        .env("PGSIFT_URL", proxy.url("blog", "blogpw", "app"))
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
}
