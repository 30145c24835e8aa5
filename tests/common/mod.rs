//! Test harness: a real PostgreSQL started in a temp dir on a free port (as
//! the `postgres` OS user when running as root), and a real pgsift process
//! started from the built binary with a generated config. Both can be
//! stopped and restarted for fault tests. A watchdog stops Postgres when the
//! test process dies, so an aborted run leaves nothing behind.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Superuser name and password of every test cluster.
pub const SUPERUSER: &str = "postgres";
/// Its password.
pub const SUPERPASS: &str = "postgres";

/// A free TCP port on 127.0.0.1 for a server to listen on.
///
/// Ports come from 20000–29999, below the kernel's ephemeral range
/// (32768–60999): a port the kernel handed out for `bind(0)` is also the
/// pool it draws the local ports of outgoing connections from, so a client
/// connecting anywhere in between could take it before the server binds it.
/// (A Redis Cluster node also listens on its port + 10000, which stays
/// outside this range.) Each process walks the range from its own random
/// start, so one process never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random_range(0..SPAN),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed under /usr/lib/postgresql (run scripts/test.sh, it installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL server binaries found")
}

/// Runs a command as the postgres OS user when we are root.
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A PostgreSQL cluster of the test's own.
pub struct Postgres {
    /// port on 127.0.0.1
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// initdb (scram-sha-256 over TCP) and start on a free port.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "pgsift-test-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERPASS).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.join("data");
        let out = pg_command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\nmax_prepared_transactions = 10\nshared_buffers = 64MB\nlisten_addresses = '127.0.0.1'\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        // md5 logins for the md5 test role, scram for everyone else
        let hba = "local all all trust\nhost all md5user 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
        };
        // A port can still be taken between the check and the bind by
        // something outside this process: try another one.
        let mut attempt = 1;
        while let Err(e) = pg.try_pg_ctl_start() {
            assert!(attempt < 3, "{e}");
            eprintln!(
                "Postgres did not start on port {} ({e}); trying another port",
                pg.port
            );
            attempt += 1;
            pg.port = free_port();
        }
        pg.watchdog();
        pg
    }

    /// The directory of the server's Unix-domain socket.
    pub fn socket_dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) {
        if let Err(e) = self.try_pg_ctl_start() {
            panic!("{e}");
        }
    }

    /// `pg_ctl start`; the error carries the end of the server log.
    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let out = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .arg("-o")
            .arg(format!("-p {} -k {}", self.port, self.dir.display()))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "pg_ctl start failed: {}\npostgres.log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        ))
    }

    /// Stops the server (`fast` or `immediate`).
    pub fn stop(&self, mode: &str) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// Stops Postgres when this test process exits, however it exits.
    // The watchdog must outlive this process, so it is never waited for.
    #[allow(clippy::zombie_processes)]
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cmd} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            cmd = if is_root() {
                format!("runuser -u postgres -- {}", self.bin.join("pg_ctl").display())
            } else {
                self.bin.join("pg_ctl").display().to_string()
            },
            data = self.data().display(),
            dir = self.dir.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watchdog");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser over the Unix socket; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A libpq URL straight to this server.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }
}

/// One cluster shared by all tests of a test binary, with the `blog` role
/// and database and the `app` database ready.
pub fn shared_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = Postgres::start();
        setup_roles(&pg);
        pg
    })
}

/// Roles and databases the tests log in with.
pub fn setup_roles(pg: &Postgres) {
    pg.psql("postgres", "CREATE ROLE blog LOGIN PASSWORD 'blogpw'");
    pg.psql("postgres", "CREATE DATABASE blog OWNER blog");
    pg.psql("postgres", "CREATE DATABASE app OWNER blog");
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5pw'",
    );
    pg.psql("postgres", "GRANT ALL ON DATABASE app TO md5user");
}

/// An upstream that accepts TCP connections and never says a word (held
/// open until the test ends); returns its port. Only a timeout ends a
/// login to it.
pub async fn silent_upstream() -> u16 {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    port
}

/// A running pgsift process.
pub struct Proxy {
    /// client port
    pub port: u16,
    /// admin HTTP port
    pub admin_port: u16,
    child: Child,
    /// its config file
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// Users every generated config knows.
pub const USERS_YAML: &str = "users:\n  - {name: blog, password: blogpw}\n  - {name: postgres, password: postgres}\n  - {name: admin, password: adminpw}\n  - {name: md5user, password: md5pw}\n";

impl Proxy {
    /// Starts pgsift with `body` (databases, pool, … sections) appended to a
    /// config that sets the listen addresses and users, and waits for /readyz.
    pub fn start(body: &str) -> Proxy {
        Self::start_with(|port, admin_port| {
            format!("listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  users: [admin]\n{USERS_YAML}{body}")
        })
    }

    /// Starts pgsift with the config `yaml(port, admin_port)` returns. A free
    /// port can be taken by someone else before pgsift binds it; then it is
    /// tried again with other ports.
    pub fn start_with(yaml: impl Fn(u16, u16) -> String) -> Proxy {
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let mut proxy = Self::spawn(yaml(port, admin_port), port, admin_port);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Some((200, _)) = http_get(admin_port, "/readyz") {
                    return proxy;
                }
                if let Ok(Some(_)) = proxy.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !proxy.log().contains("Address already in use") {
                panic!("pgsift did not become ready; log:\n{}", proxy.log());
            }
        }
        panic!("no free ports for pgsift after 5 tries");
    }

    fn spawn(yaml: String, port: u16, admin_port: u16) -> Proxy {
        let dir =
            std::env::temp_dir().join(format!("pgsift-test-proxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let log_path = dir.join("pgsift.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgsift"))
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("PGSIFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pgsift");
        Proxy {
            port,
            admin_port,
            child,
            config_path,
            log_path,
        }
    }

    /// Waits until /readyz answers 200.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((200, _)) = http_get(self.admin_port, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pgsift did not become ready; log:\n{}", self.log());
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A libpq URL through the proxy.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A tokio-postgres config string through the proxy.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `HUP`, …).
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pgsift log ----\n{}", self.log());
        }
    }
}

/// A minimal HTTP GET against 127.0.0.1; returns status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A `databases:` section for the shared cluster.
pub fn databases_yaml(pg: &Postgres, mode: &str, pool_size: usize) -> String {
    format!(
        "databases:\n  blog: {{host: 127.0.0.1, port: {p}, pool_mode: {mode}, pool_size: {pool_size}}}\n  app: {{host: 127.0.0.1, port: {p}, pool_mode: {mode}, pool_size: {pool_size}}}\n  postgres: {{host: 127.0.0.1, port: {p}, pool_mode: {mode}, pool_size: {pool_size}}}\n",
        p = pg.port
    )
}

/// Connects with tokio-postgres (no TLS) and drives the connection.
/// The first column of a one-row simple query through `c`.
pub async fn scalar(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// How many pgsift statements with this text the client's server holds.
pub async fn promoted(c: &tokio_postgres::Client, text: &str) -> i64 {
    scalar(
        c,
        &format!(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsift_%' AND statement = '{}'",
            text.replace('\'', "''")
        ),
    )
    .await
    .parse()
    .unwrap()
}

pub async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The venv's python (`$PGSIFT_VENV`, default `<repo>/.venv`); fails the
/// test with a clear message when it is missing.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PGSIFT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "{} does not exist: the Python tests need a virtualenv with the packages of \
         tests/python/requirements.txt. Run scripts/test.sh (it creates the venv), or set \
         PGSIFT_VENV to an existing one.",
        python.display()
    );
    python
}

/// Runs pgbench against `url`: (exit ok, failed transactions, output).
pub fn pgbench(url: &str, args: &[&str]) -> (bool, Option<u64>, String) {
    let out = Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    pgbench_result(&out)
}

/// Whether pgbench succeeded, its failed transactions and its output.
fn pgbench_result(out: &std::process::Output) -> (bool, Option<u64>, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    (out.status.success(), failed, text)
}

/// [`pgbench`], killed at `deadline`: `None` when it had not finished by then
/// (a client left waiting).
pub fn pgbench_within(
    url: &str,
    args: &[&str],
    deadline: std::time::Duration,
) -> Option<(bool, Option<u64>, String)> {
    let mut child = Command::new("pgbench")
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(pgbench_result(&child.wait_with_output().unwrap()))
}

/// Loads `url` in headless Chromium and returns the DOM after rendering.
pub fn chromium_dom(url: &str) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is not installed: run scripts/test.sh (it installs it)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs pytest on `target` (relative to the repository) in the venv with
/// `env`, within a generous time limit; fails the test unless every Python
/// test passed, and returns pytest's output.
pub fn run_pytest(target: &str, env: &[(&str, String)]) -> String {
    const LIMIT: Duration = Duration::from_secs(300);
    let python = venv_python();
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("pytest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", target, "-q", "-p", "no:cacheprovider"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("---- pytest output ----\n{output}");
    match status {
        None => panic!("pytest did not finish within {LIMIT:?}; output so far:\n{output}"),
        Some(status) => assert!(
            status.success(),
            "pytest failed ({status}); output:\n{output}"
        ),
    }
    output
}

/// Opens a transaction through `proxy` that updates row 1 of `table`, kills
/// the client's connection without a Terminate, and checks that within 1 s
/// no transaction of `blog` is left open and the row is not locked.
pub async fn kill_client_inside_update_and_check_the_row_is_free(
    pg: &Postgres,
    proxy: &Proxy,
    table: &str,
) {
    pg.psql(
        "app",
        &format!("CREATE TABLE IF NOT EXISTS {table} (id int primary key, v int); INSERT INTO {table} VALUES (1, 0) ON CONFLICT DO NOTHING; GRANT ALL ON {table} TO blog"),
    );
    let (client, conn) = tokio_postgres::connect(
        &proxy.conn_str("blog", "blogpw", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("BEGIN; UPDATE {table} SET v = v + 1 WHERE id = 1"))
        .await
        .unwrap();
    // kill the connection without a Terminate message
    task.abort();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let open = pg.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'blog' AND state LIKE 'idle in transaction%'",
        );
        if open == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transaction still open after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // rolled back, not committed: the row is as it was (v = 0; each call
    // leaves it so)
    assert_eq!(
        pg.psql("app", &format!("SELECT v FROM {table} WHERE id = 1")),
        "0",
        "the dead client's update was committed"
    );
    // the row is not locked: an update with lock_timeout succeeds
    pg.psql(
        "app",
        &format!("SET lock_timeout = '500ms'; UPDATE {table} SET v = 0 WHERE id = 1"),
    );
}

/// A Redis server of the test's own: a free port, a temp dir, a password,
/// and an append-only file synced on every write, so a restart brings back
/// what it held (the hard case for a cache: old entries come back).
pub struct Redis {
    /// port on 127.0.0.1
    pub port: u16,
    /// its `requirepass`
    pub password: String,
    dir: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
}

impl Redis {
    /// Starts redis-server and waits until it answers PING.
    pub fn start() -> Redis {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("pgsift-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Redis {
            port,
            password: format!("pw{port}"),
            dir,
            child: std::sync::Mutex::new(None),
        };
        r.restart();
        r
    }

    /// The URL pgsift connects with (AUTH through the password).
    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// Starts (again) on the same port with the same data.
    pub fn restart(&self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--requirepass", &self.password])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (run scripts/test.sh, it installs it)");
        *self.child.lock().unwrap() = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING");
    }

    /// Kills the server (SIGKILL: nothing is flushed beyond what fsync
    /// already wrote) and waits for it to exit.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = self.child.lock().unwrap().as_ref() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Runs redis-cli against it and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, Some(&self.password), args)
    }

    /// A copy of what it has persisted now (it is paused while the files
    /// are copied, so the copy ends at a command's end): what a restart
    /// after a power loss would bring back.
    pub fn snapshot(&self) -> PathBuf {
        let copy = self.dir.with_extension(format!("snapshot-{}", free_port()));
        self.signal("STOP");
        copy_dir(&self.dir, &copy);
        self.signal("CONT");
        copy
    }

    /// Kills the server and starts it again from `snapshot`'s files.
    pub fn restart_from(&self, snapshot: &std::path::Path) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        copy_dir(snapshot, &self.dir);
        let _ = std::fs::remove_dir_all(snapshot);
        self.restart();
    }

    /// Waits (up to 20 s) until it is a replica whose link to its master
    /// is up.
    pub fn wait_for_master_link(&self) {
        let start = Instant::now();
        while !self
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis {} never synced with its master",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs redis-cli against the server on `port` and returns its output.
fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--no-auth-warning", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["-a", pw]);
    }
    let out = cmd.args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A three-master Redis Cluster of the test's own (no replicas, no password).
pub struct RedisCluster {
    /// the masters' ports
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl RedisCluster {
    /// Starts three cluster-enabled redis-servers and joins them.
    pub fn start() -> RedisCluster {
        // each node also needs its cluster bus port (port + 10000) free
        let ports: Vec<u16> = (0..3)
            .map(|_| loop {
                let p = free_port();
                if TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                    break p;
                }
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "pgsift-test-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let children = ports
            .iter()
            .map(|p| {
                Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &p.to_string()])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{p}.conf"))
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server")
            })
            .collect();
        let cluster = RedisCluster {
            ports,
            dir,
            children,
        };
        for p in &cluster.ports {
            let start = Instant::now();
            while cluster.cli(*p, &["PING"]).trim() != "PONG" {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "redis {p} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cluster.cli(cluster.ports[0], &args);
        let start = Instant::now();
        while !cluster.ports.iter().all(|p| {
            cluster
                .cli(*p, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        }) {
            assert!(start.elapsed() < Duration::from_secs(20), "cluster not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis_url` for pgsift: every node, comma-separated.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs redis-cli against one node.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, None, args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Raw-protocol clients, for what drivers never send: hostile bytes,
/// messages in one write with a Terminate, a COPY left unfinished.
pub mod raw {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes the connection and returns what
    /// arrived; fails the test when it is still open after 5 s.
    pub async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "the connection is still open after 5 s; it sent {out:?}"
        );
        out
    }

    /// The SQLSTATE of the first ErrorResponse in `bytes`.
    pub fn error_code(bytes: &[u8]) -> Option<String> {
        let mut pos = 0;
        while pos + 5 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[pos + 1..pos + 5].try_into().unwrap()) as usize;
            let end = (pos + 1 + len).min(bytes.len());
            if bytes[pos] == b'E' {
                let f = pgsift::protocol::messages::parse_error_fields(&bytes[pos + 5..end]);
                return Some(f.code);
            }
            pos = end;
        }
        None
    }

    /// Logs in over a raw socket (SCRAM) and returns it after ReadyForQuery.
    pub async fn raw_login(port: u16) -> TcpStream {
        raw_login_as(port, "blog", "blogpw", "app").await
    }

    /// [`raw_login`] with more startup parameters.
    pub async fn raw_login_with(port: u16, params: &[(&str, &str)]) -> TcpStream {
        raw_login_full(port, "blog", "blogpw", "app", params).await
    }

    /// Logs in as `user` with `password` to `database` over a raw socket
    /// (SCRAM) and returns it after ReadyForQuery.
    pub async fn raw_login_as(port: u16, user: &str, password: &str, database: &str) -> TcpStream {
        raw_login_full(port, user, password, database, &[]).await
    }

    /// [`raw_login_as`], also returning the cancel key (process id,
    /// secret) the login got.
    pub async fn raw_login_keyed(
        port: u16,
        user: &str,
        password: &str,
        database: &str,
    ) -> (TcpStream, i32, i32) {
        raw_login_key(port, user, password, database, &[]).await
    }

    /// Sends a CancelRequest for the cancel key (`pid`, `secret`) to `port`.
    pub async fn raw_cancel(port: u16, pid: i32, secret: i32) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut buf);
        s.write_all(&buf).await.unwrap();
        // the server closes the connection once it has read the request
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }

    async fn raw_login_full(
        port: u16,
        user: &str,
        password: &str,
        database: &str,
        params: &[(&str, &str)],
    ) -> TcpStream {
        raw_login_key(port, user, password, database, params)
            .await
            .0
    }

    async fn raw_login_key(
        port: u16,
        user: &str,
        password: &str,
        database: &str,
        params: &[(&str, &str)],
    ) -> (TcpStream, i32, i32) {
        let mut key = (0, 0);
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = BytesMut::new();
        let mut all = vec![("user", user), ("database", database)];
        all.extend_from_slice(params);
        frontend::startup_message(all, &mut buf).unwrap();
        s.write_all(&buf).await.unwrap();
        let mut rbuf = BytesMut::new();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, msg) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 20)
                .await
                .unwrap();
            let body = &msg[5..];
            buf.clear();
            match tag {
                b'R' => match u32::from_be_bytes(body[..4].try_into().unwrap()) {
                    0 => {}
                    10 => {
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut buf)
                            .unwrap();
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().unwrap();
                        sc.update(&body[4..]).unwrap();
                        frontend::sasl_response(sc.message(), &mut buf).unwrap();
                    }
                    12 => scram.as_mut().unwrap().finish(&body[4..]).unwrap(),
                    other => panic!("unexpected auth request {other}"),
                },
                b'K' => {
                    key = (
                        i32::from_be_bytes(body[..4].try_into().unwrap()),
                        i32::from_be_bytes(body[4..8].try_into().unwrap()),
                    )
                }
                b'Z' => return (s, key.0, key.1),
                b'E' => panic!("login failed"),
                _ => {}
            }
            if !buf.is_empty() {
                s.write_all(&buf).await.unwrap();
            }
        }
    }

    /// A protocol message of type `tag` with `body`.
    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A simple Query.
    pub fn query(sql: &str) -> Vec<u8> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        message(b'Q', &body)
    }

    /// Parse, Bind, Execute and Sync of `sql` on the unnamed statement and
    /// portal, no parameters: what PQexecParams and tokio-postgres send.
    pub fn one_off(sql: &str) -> Vec<u8> {
        let mut parse = vec![0];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        let mut b = message(b'P', &parse);
        b.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        b.extend(message(b'E', &[0, 0, 0, 0, 0]));
        b.extend(message(b'S', b""));
        b
    }

    /// Parse of `sql` as statement `name` (no parameter types given).
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for s in [name, sql] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&[0, 0]);
        message(b'P', &body)
    }

    /// Bind of statement `name` to the unnamed portal, with text parameters.
    pub fn bind(name: &str, params: &[&str]) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        body.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as u32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&[0, 0]);
        message(b'B', &body)
    }

    /// Execute of the unnamed portal, all rows.
    pub fn execute() -> Vec<u8> {
        message(b'E', &[0, 0, 0, 0, 0])
    }

    /// Sync.
    pub fn sync() -> Vec<u8> {
        message(b'S', b"")
    }

    /// Describe (`kind` `S` or `P`) or Close (`tag` `D` or `C`) of `name`.
    pub fn target(tag: u8, kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        message(tag, &body)
    }

    /// Reads messages (5 s at most) until `n` ReadyForQuery have arrived;
    /// returns them all, tag and body.
    pub async fn read_ready(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
        let mut rbuf = BytesMut::new();
        let mut got = Vec::new();
        let read = async {
            let mut left = n;
            while left > 0 {
                let (tag, msg) = pgsift::protocol::io::read_message(s, &mut rbuf, 1 << 20)
                    .await
                    .expect("the connection stays open");
                got.push((tag, msg[5..].to_vec()));
                left -= usize::from(tag == b'Z');
            }
        };
        let timed_out = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .is_err();
        assert!(!timed_out, "{n} ReadyForQuery not within 5 s");
        got
    }

    /// The SQLSTATEs of the ErrorResponses in `msgs`, in order.
    pub fn errors(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
        msgs.iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, body)| pgsift::protocol::messages::parse_error_fields(body).code)
            .collect()
    }

    /// Terminate.
    pub fn terminate() -> Vec<u8> {
        message(b'X', b"")
    }

    /// Reads messages (5 s at most) until one of type `until` has arrived;
    /// returns them all, tag and body.
    pub async fn read_until(s: &mut TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
        let mut rbuf = BytesMut::new();
        let mut got = Vec::new();
        let read = async {
            loop {
                let (tag, msg) = pgsift::protocol::io::read_message(s, &mut rbuf, 1 << 20)
                    .await
                    .expect("the connection stays open");
                got.push((tag, msg[5..].to_vec()));
                if tag == until {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap_or_else(|_| panic!("no message {} within 5 s", char::from(until)));
        got
    }

    /// The text of the first column of the first DataRow in `msgs`.
    pub fn first_value(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
        let (_, row) = msgs.iter().find(|(t, _)| *t == b'D')?;
        let len = i32::from_be_bytes(row[2..6].try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        String::from_utf8(row[6..6 + len].to_vec()).ok()
    }

    /// The SQLSTATE of the first ErrorResponse in `msgs`.
    pub fn first_error(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
        let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
        Some(pgsift::protocol::messages::parse_error_fields(body).code)
    }
}
