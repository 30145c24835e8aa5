//! The configuration: config.yaml's schema, its validation (every error
//! names its key path), the `--upstream URL` quick-start defaults, and
//! loading from disk.

mod raw;
pub mod units;

use raw::RawConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use units::{parse_duration, parse_size};

/// How long a client may keep one upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// a server per client for the client's whole session
    Session,
    /// a server per transaction
    Transaction,
}

/// Client-facing TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// never negotiate TLS
    Disable,
    /// TLS when the client asks
    Allow,
    /// refuse plaintext logins
    Require,
}

/// A configured password: plaintext or a Postgres-style verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// cleartext; pgsift can answer SCRAM and md5 and log in upstream with it
    Plain(String),
    /// `SCRAM-SHA-256$iter:salt$stored:server` verifier
    Scram(String),
    /// `md5` + hex(md5(password || user))
    Md5(String),
}

impl Password {
    fn parse(s: &str) -> Result<Password, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            crate::auth::scram_verifier::ScramVerifier::parse(s)?;
            Ok(Password::Scram(s.to_owned()))
        } else if s.len() == 35
            && s.starts_with("md5")
            && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(Password::Md5(s.to_ascii_lowercase()))
        } else {
            Ok(Password::Plain(s.to_owned()))
        }
    }
}

/// One client login pgsift accepts.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// role name
    pub name: String,
    /// `None` = trust (only possible from `--upstream` without a password)
    pub password: Option<Password>,
}

/// One database clients may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// upstream host
    pub host: String,
    /// upstream port
    pub port: u16,
    /// upstream database name
    pub dbname: String,
    /// session or transaction pooling
    pub pool_mode: PoolMode,
    /// server connections per (database, user)
    pub pool_size: usize,
    /// server connections kept open even when idle
    pub min_pool_size: usize,
    /// upstream user; default the client's own
    pub server_user: Option<String>,
    /// upstream password; default the client's own
    pub server_password: Option<String>,
}

/// Pool-wide limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// TCP connect plus upstream login
    pub connect_timeout: Duration,
    /// longest wait for a server before 53300
    pub checkout_timeout: Duration,
    /// idle servers above min_pool_size are closed after this
    pub idle_timeout: Duration,
    /// servers are recycled (when idle) after this
    pub server_lifetime: Duration,
    /// most clients at once
    pub max_client_conn: usize,
    /// per server connection, transaction mode
    pub max_prepared_statements: usize,
    /// transaction mode: repeated unnamed statements are kept prepared on
    /// the servers under shared names
    pub prepare_unnamed_statements: bool,
    /// transaction mode: up to this many of a pool's servers are shared by
    /// many clients' autocommit statements at once (0: off)
    pub multiplex_servers: usize,
    /// a client must finish startup and authentication within this
    pub client_login_timeout: Duration,
    /// longest protocol message accepted from a client or a server
    pub max_message_size: usize,
}

/// Cache settings (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// off, memory or redis
    pub backend: String,
    /// Redis location for the redis backend
    pub redis_url: String,
    /// prefix of every Redis key
    pub key_prefix: String,
    /// memory backend bound in bytes
    pub max_memory: u64,
    /// TTL when a rule sets none
    pub default_ttl: Duration,
    /// results larger than this are not cached
    pub max_result_bytes: u64,
    /// what may be cached
    pub rules: Vec<CacheRule>,
}

/// A set of tables whose SELECTs may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// tables covered
    pub tables: Vec<String>,
    /// entry lifetime
    pub ttl: Duration,
}

/// N+1 detector settings (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NPlusOneConfig {
    /// detection on or off
    pub enabled: bool,
    /// executions that make a burst
    pub min_repeats: usize,
    /// idle time that ends a burst
    pub max_gap: Duration,
    /// bursts that cost less than this in total are not reported
    pub min_total_time: Duration,
    /// JSONL report file
    pub report_file: Option<String>,
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// tracing filter, e.g. `info` or `pgsift=debug`
    pub level: String,
    /// `text` or `json`
    pub format: String,
    /// statements slower than this are logged with their fingerprint (0 = off)
    pub slow_statement: Duration,
}

/// Client-facing TLS files and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain
    pub cert: String,
    /// PEM private key
    pub key: String,
    /// disable, allow or require
    pub mode: TlsMode,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// client listener address
    pub listen: String,
    /// graceful drain limit
    pub shutdown_timeout: Duration,
    /// runtime worker threads (0 = half the cores, at least 1)
    pub worker_threads: usize,
    /// keep polling sockets this long after the last activity instead of
    /// sleeping (0: off)
    pub busy_poll: Duration,
    /// HTTP admin listener
    pub admin_listen: String,
    /// users allowed into the `pgsift` admin database
    pub admin_users: Vec<String>,
    /// client TLS
    pub tls: Option<TlsConfig>,
    /// logins by name
    pub users: BTreeMap<String, UserConfig>,
    /// databases by client-facing name
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// pool limits
    pub pool: PoolConfig,
    /// cache
    pub cache: CacheConfig,
    /// N+1 detection
    pub n_plus_one: NPlusOneConfig,
    /// logs
    pub logging: LoggingConfig,
}

/// Every problem found in a config, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
    fn duration(&mut self, path: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.push(path, e);
                default
            }),
        }
    }
    fn size(&mut self, path: &str, v: Option<&String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|e| {
                self.push(path, e);
                default
            }),
        }
    }
    fn count(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: usize,
        range: std::ops::RangeInclusive<i64>,
    ) -> usize {
        let (min, max) = (*range.start(), *range.end());
        match v {
            None => default,
            Some(n) if n > max => {
                self.push(path, format!("invalid value {n} (must be <= {max})"));
                default
            }
            Some(n) if n < min => {
                self.push(
                    path,
                    if min == 1 {
                        "must be > 0".to_string()
                    } else {
                        format!("must be >= {min}")
                    },
                );
                default
            }
            Some(n) => n as usize,
        }
    }
    fn addr(&mut self, path: &str, v: Option<&String>, default: &str) -> String {
        let s = v.map(String::as_str).unwrap_or(default);
        if s.parse::<std::net::SocketAddr>().is_err() {
            self.push(path, format!("invalid address \"{s}\" (expected IP:PORT)"));
        }
        s.to_owned()
    }
}

/// Most server connections of one pool, and most servers a pool keeps
/// open or multiplexes: far above what a Postgres serves (a pool's slots
/// are a tokio semaphore, which panics past its own maximum).
pub const MAX_POOL_SIZE: i64 = 10_000;
/// Most clients at once (`pool.max_client_conn`): each holds a socket.
pub const MAX_CLIENT_CONN: i64 = 1_000_000;
/// Most session runtime threads (`worker_threads`).
pub const MAX_WORKER_THREADS: i64 = 1024;

/// Default client listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// Default admin HTTP listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9930";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&text)
    }

    /// True when the session runtime needs tokio's time driver: the Redis
    /// client (`cache.backend: redis`) uses tokio's timers in its own code.
    /// Otherwise pgsift's timers live on the control thread (src/timer.rs).
    pub fn session_runtime_timers(&self) -> bool {
        self.cache.backend == "redis"
    }

    /// The number of runtime worker threads to start.
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / 2).max(1)
    }

    /// Parses and validates config.yaml text. Every unknown key and every
    /// invalid value is reported, each with its key path; a value of the
    /// wrong type (or text that is no YAML) stops the reading, and is the
    /// one error then.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
                errors.push(format!("{}: unknown key", key_path(&path)))
            })
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?
        };
        match Self::from_raw(raw) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(ConfigErrors(values)) => {
                errors.extend(values);
                Err(ConfigErrors(errors))
            }
        }
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut e = Errors(Vec::new());
        let listen = e.addr("listen", raw.listen.as_ref(), DEFAULT_LISTEN);
        let shutdown_timeout = e.duration(
            "shutdown_timeout",
            raw.shutdown_timeout.as_ref(),
            Duration::from_secs(30),
        );
        let worker_threads = e.count(
            "worker_threads",
            raw.worker_threads,
            0,
            0..=MAX_WORKER_THREADS,
        );
        let busy_poll = e.duration("busy_poll", raw.busy_poll.as_ref(), Duration::ZERO);
        let admin = raw.admin.unwrap_or_default();
        let admin_listen = e.addr("admin.listen", admin.listen.as_ref(), DEFAULT_ADMIN_LISTEN);
        let admin_users = admin.users.unwrap_or_else(|| vec!["admin".into()]);

        let tls = raw.tls.map(|t| {
            let mode = match t.mode.as_deref().unwrap_or("allow") {
                "disable" => TlsMode::Disable,
                "allow" => TlsMode::Allow,
                "require" => TlsMode::Require,
                other => {
                    e.push(
                        "tls.mode",
                        format!("invalid value \"{other}\" (expected disable, allow or require)"),
                    );
                    TlsMode::Allow
                }
            };
            let mut file = |key: &str, v: Option<String>| match v {
                Some(p) if Path::new(&p).is_file() => p,
                Some(p) => {
                    e.push(&format!("tls.{key}"), format!("file \"{p}\" not found"));
                    p
                }
                None => {
                    if mode != TlsMode::Disable {
                        e.push(&format!("tls.{key}"), "is required");
                    }
                    String::new()
                }
            };
            let cert = file("cert", t.cert);
            let key = file("key", t.key);
            TlsConfig { cert, key, mode }
        });
        // Loaded as at start, so that a certificate or key that would stop
        // the start (no PEM, a key of another certificate) fails the check.
        if let Some(t) = tls.as_ref().filter(|t| t.mode != TlsMode::Disable) {
            if Path::new(&t.cert).is_file() && Path::new(&t.key).is_file() {
                if let Err(err) = crate::frontend::tls::acceptor(t) {
                    // the message starts with its key: tls.cert or tls.key
                    e.0.push(format!("{err:#}"));
                }
            }
        }

        let mut users = BTreeMap::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let path = format!("users[{i}]");
            let Some(name) = u.name.filter(|n| !n.is_empty()) else {
                e.push(&format!("{path}.name"), "is required");
                continue;
            };
            let password = match u.password {
                None => {
                    e.push(&format!("{path}.password"), "is required");
                    None
                }
                Some(p) => match Password::parse(&p) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        e.push(&format!("{path}.password"), msg);
                        None
                    }
                },
            };
            if users
                .insert(
                    name.clone(),
                    UserConfig {
                        name: name.clone(),
                        password,
                    },
                )
                .is_some()
            {
                e.push(
                    &format!("{path}.name"),
                    format!("duplicate user \"{name}\""),
                );
            }
        }

        let mut databases = BTreeMap::new();
        for (name, d) in raw.databases {
            let path = format!("databases.{name}");
            if name == "pgsift" {
                e.push(
                    &path,
                    "the name \"pgsift\" is reserved for the admin console",
                );
            }
            let pool_mode = match d.pool_mode.as_deref().unwrap_or("transaction") {
                "session" => PoolMode::Session,
                "transaction" => PoolMode::Transaction,
                other => {
                    e.push(
                        &format!("{path}.pool_mode"),
                        format!("invalid value \"{other}\" (expected session or transaction)"),
                    );
                    PoolMode::Transaction
                }
            };
            let pool_size = e.count(
                &format!("{path}.pool_size"),
                d.pool_size,
                20,
                1..=MAX_POOL_SIZE,
            );
            let min_pool_size = e.count(
                &format!("{path}.min_pool_size"),
                d.min_pool_size,
                0,
                0..=MAX_POOL_SIZE,
            );
            if min_pool_size > pool_size {
                e.push(
                    &format!("{path}.min_pool_size"),
                    format!("must be <= pool_size ({pool_size})"),
                );
            }
            if d.port == Some(0) {
                e.push(&format!("{path}.port"), "must be > 0");
            }
            databases.insert(
                name.clone(),
                DatabaseConfig {
                    host: d.host.unwrap_or_else(|| "127.0.0.1".into()),
                    port: d.port.unwrap_or(5432),
                    dbname: d.dbname.unwrap_or_else(|| name.clone()),
                    pool_mode,
                    pool_size,
                    min_pool_size,
                    server_user: d.server_user,
                    server_password: d.server_password,
                },
            );
        }

        let p = raw.pool.unwrap_or_default();
        let pool = PoolConfig {
            connect_timeout: e.duration(
                "pool.connect_timeout",
                p.connect_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            checkout_timeout: e.duration(
                "pool.checkout_timeout",
                p.checkout_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            idle_timeout: e.duration(
                "pool.idle_timeout",
                p.idle_timeout.as_ref(),
                Duration::from_secs(600),
            ),
            server_lifetime: e.duration(
                "pool.server_lifetime",
                p.server_lifetime.as_ref(),
                Duration::from_secs(3600),
            ),
            max_client_conn: e.count(
                "pool.max_client_conn",
                p.max_client_conn,
                10_000,
                1..=MAX_CLIENT_CONN,
            ),
            max_prepared_statements: e.count(
                "pool.max_prepared_statements",
                p.max_prepared_statements,
                1000,
                0..=i64::MAX,
            ),
            prepare_unnamed_statements: p.prepare_unnamed_statements.unwrap_or(false),
            multiplex_servers: e.count(
                "pool.multiplex_servers",
                p.multiplex_servers,
                0,
                0..=MAX_POOL_SIZE,
            ),
            client_login_timeout: e.duration(
                "pool.client_login_timeout",
                p.client_login_timeout.as_ref(),
                Duration::from_secs(15),
            ),
            max_message_size: e.size(
                "pool.max_message_size",
                p.max_message_size.as_ref(),
                256 << 20,
            ) as usize,
        };
        if pool.max_message_size < 1024 {
            e.push("pool.max_message_size", "must be at least 1KiB");
        }
        for (key, d) in [
            ("connect_timeout", pool.connect_timeout),
            ("checkout_timeout", pool.checkout_timeout),
            ("client_login_timeout", pool.client_login_timeout),
        ] {
            if d.is_zero() {
                e.push(&format!("pool.{key}"), "must be > 0");
            }
        }

        let c = raw.cache.unwrap_or_default();
        let backend = c.backend.unwrap_or_else(|| "memory".into());
        if !matches!(backend.as_str(), "off" | "memory" | "redis") {
            e.push(
                "cache.backend",
                format!("invalid value \"{backend}\" (expected off, memory or redis)"),
            );
        }
        let redis_url = c
            .redis_url
            .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
        // one URL, or several comma-separated cluster nodes
        if redis_url.split(',').any(|u| {
            let u = u.trim();
            !(u.starts_with("redis://") || u.starts_with("rediss://"))
                || ::redis::parse_redis_url(u).is_none()
        }) {
            e.push(
                "cache.redis_url",
                format!("invalid value \"{redis_url}\" (expected redis:// or rediss:// URLs, comma-separated for a cluster)"),
            );
        }
        let default_ttl = e.duration(
            "cache.default_ttl",
            c.default_ttl.as_ref(),
            Duration::from_secs(60),
        );
        let mut rules = Vec::new();
        for (i, r) in c.rules.into_iter().enumerate() {
            if r.tables.is_empty() {
                e.push(
                    &format!("cache.rules[{i}].tables"),
                    "must list at least one table",
                );
            }
            let ttl = e.duration(
                &format!("cache.rules[{i}].ttl"),
                r.ttl.as_ref(),
                default_ttl,
            );
            rules.push(CacheRule {
                tables: r.tables,
                ttl,
            });
        }
        let cache = CacheConfig {
            backend,
            redis_url,
            key_prefix: c.key_prefix.unwrap_or_else(|| "pgsift:".into()),
            max_memory: e.size("cache.max_memory", c.max_memory.as_ref(), 256 << 20),
            default_ttl,
            max_result_bytes: e.size(
                "cache.max_result_bytes",
                c.max_result_bytes.as_ref(),
                1 << 20,
            ),
            rules,
        };

        let n = raw.n_plus_one.unwrap_or_default();
        let n_plus_one = NPlusOneConfig {
            enabled: n.enabled.unwrap_or(true),
            min_repeats: e.count("n_plus_one.min_repeats", n.min_repeats, 5, 2..=i64::MAX),
            max_gap: e.duration(
                "n_plus_one.max_gap",
                n.max_gap.as_ref(),
                Duration::from_millis(100),
            ),
            min_total_time: e.duration(
                "n_plus_one.min_total_time",
                n.min_total_time.as_ref(),
                Duration::ZERO,
            ),
            report_file: n.report_file,
        };
        if let Some(file) = &n_plus_one.report_file {
            // a relative name without a directory lives in the working directory
            let dir = Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                e.push(
                    "n_plus_one.report_file",
                    format!("directory \"{}\" of \"{file}\" not found", dir.display()),
                );
            }
        }

        let l = raw.logging.unwrap_or_default();
        let slow_statement = e.duration(
            "logging.slow_statement",
            l.slow_statement.as_ref(),
            Duration::from_secs(1),
        );
        let format = l.format.unwrap_or_else(|| "text".into());
        if !matches!(format.as_str(), "text" | "json") {
            e.push(
                "logging.format",
                format!("invalid value \"{format}\" (expected text or json)"),
            );
        }
        let level = l.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            e.push("logging.level", format!("invalid value \"{level}\""));
        } else if let Some(word) = level
            .split(',')
            .map(str::trim)
            .find(|d| !bare_word_is_a_level(d))
        {
            e.push(
                "logging.level",
                format!("invalid value \"{level}\": \"{word}\" is not a level (expected error, warn, info, debug, trace or off, or a TARGET=LEVEL directive)"),
            );
        }

        for name in &admin_users {
            if !users.contains_key(name) {
                // An admin user without a login can never connect; say so, but
                // only when users are configured at all (quick start has none).
                if !users.is_empty() {
                    e.push(
                        "admin.users",
                        format!("user \"{name}\" is not listed under users"),
                    );
                }
            }
        }

        if !e.0.is_empty() {
            return Err(ConfigErrors(e.0));
        }
        Ok(Config {
            listen,
            shutdown_timeout,
            worker_threads,
            busy_poll,
            admin_listen,
            admin_users,
            tls,
            users,
            databases,
            pool,
            cache,
            n_plus_one,
            logging: LoggingConfig {
                level,
                format,
                slow_statement,
            },
        })
    }

    /// The quick-start configuration of `pgsift --upstream URL`: built-in
    /// defaults, one database and one user taken from the URL.
    pub fn from_upstream_url(url: &str) -> Result<Config, ConfigErrors> {
        let err = |m: String| ConfigErrors(vec![format!("--upstream: {m}")]);
        let parsed = match url::Url::parse(url) {
            // `postgresql://user@/db?host=/dir`: libpq's way of naming only
            // a socket directory, which the URL parser calls an empty host
            Err(url::ParseError::EmptyHost) if url.contains("@/") && url.contains("host=") => {
                url::Url::parse(&url.replacen("@/", "@localhost/", 1))
            }
            r => r,
        };
        let u = parsed.map_err(|e| err(format!("invalid URL \"{url}\": {e}")))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(err(format!("expected a postgresql:// URL, got \"{url}\"")));
        }
        // as libpq does: only %XX escapes are decoded (a `+` is a plus,
        // not a space as in a form)
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = if u.username().is_empty() {
            "postgres".to_owned()
        } else {
            decode(u.username())
        };
        let password = u.password().map(decode);
        let dbname = u.path().trim_start_matches('/');
        let dbname = if dbname.is_empty() {
            user.clone()
        } else {
            decode(dbname)
        };
        // libpq's query parameters name the host (a socket directory too,
        // `?host=/var/run/postgresql`) and port when the authority cannot
        let query = |key: &str| {
            u.query()
                .unwrap_or("")
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| decode(k) == key)
                .map(|(_, v)| decode(v))
                .filter(|v| !v.is_empty())
        };
        let host = match (query("host"), u.host()) {
            (Some(h), _) => h,
            (None, Some(url::Host::Ipv6(a))) => a.to_string(),
            // a percent-encoded socket directory: postgresql://%2Ftmp/db
            (None, Some(h)) => decode(&h.to_string()),
            (None, None) => "127.0.0.1".to_owned(),
        };
        let port = match query("port") {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(err(format!("invalid port \"{p}\" in \"{url}\""))),
            },
            None => u.port().unwrap_or(5432),
        };
        let mut cfg = Config::parse("").expect("built-in defaults are valid");
        cfg.users.insert(
            user.clone(),
            UserConfig {
                name: user.clone(),
                password: password.map(Password::Plain),
            },
        );
        cfg.admin_users = vec![user.clone()];
        cfg.databases.insert(
            dbname.clone(),
            DatabaseConfig {
                host,
                port,
                dbname,
                pool_mode: PoolMode::Transaction,
                pool_size: 20,
                min_pool_size: 0,
                server_user: None,
                server_password: None,
            },
        );
        Ok(cfg)
    }
}

/// False for a directive of a tracing filter that is a bare word but no
/// level: tracing reads `warning` as the name of a target, which would
/// silence every log line. A directive with a `=`, a path (`::`) or a span
/// filter (`[…]`) is left to tracing's own parser.
fn bare_word_is_a_level(directive: &str) -> bool {
    directive.is_empty()
        || directive.contains(['=', ':', '[', ']', '{', '}'])
        || directive
            .parse::<tracing::level_filters::LevelFilter>()
            .is_ok()
}

/// A key path as the value errors write it: `databases.blog.pool_size`,
/// `users[0].name`.
fn key_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_example_config_is_valid() {
        let text = include_str!("../../config.yaml");
        let cfg = Config::parse(text).unwrap();
        assert!(cfg.databases.contains_key("blog"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let err = Config::parse("databases:\n  blog:\n    poolsize: 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("databases.blog"), "{msg}");
        assert!(msg.contains("poolsize"), "{msg}");
    }

    #[test]
    fn every_unknown_key_is_reported_beside_every_invalid_value() {
        let err = Config::parse(
            "lisen: 127.0.0.1:6432\nusers:\n  - {name: a, pasword: x}\ndatabases:\n  blog:\n    poolsize: 3\n    pool_size: 0\npool:\n  max_client_con: 5\n",
        )
        .unwrap_err();
        for line in [
            "lisen: unknown key",
            "users[0].pasword: unknown key",
            "databases.blog.poolsize: unknown key",
            "pool.max_client_con: unknown key",
            "databases.blog.pool_size: must be > 0",
        ] {
            assert!(err.0.contains(&line.to_string()), "{line} in {err}");
        }
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_key_path() {
        let err = Config::parse(
            "databases:\n  blog:\n    pool_size: 0\n    pool_mode: sometimes\npool:\n  connect_timeout: soon\n",
        )
        .unwrap_err();
        assert!(
            err.0
                .contains(&"databases.blog.pool_size: must be > 0".to_string()),
            "{err}"
        );
        assert!(
            err.0
                .iter()
                .any(|l| l.starts_with("databases.blog.pool_mode:")),
            "{err}"
        );
        assert!(
            err.0.iter().any(|l| l.starts_with("pool.connect_timeout:")),
            "{err}"
        );
    }

    #[test]
    fn a_bare_word_in_the_log_level_must_be_a_level() {
        for ok in [
            "info",
            "WARN",
            "3",
            "pgsift=debug,warn",
            "pgsift::cache",
            "[conn]=debug",
        ] {
            assert!(
                Config::parse(&format!("logging:\n  level: \"{ok}\"\n")).is_ok(),
                "{ok}"
            );
        }
        for bad in ["warning", "pgsift=debug, verbose"] {
            let err = Config::parse(&format!("logging:\n  level: \"{bad}\"\n")).unwrap_err();
            assert!(
                err.0[0].starts_with("logging.level: invalid value"),
                "{err}"
            );
        }
    }

    #[test]
    fn prepare_unnamed_statements_is_an_opt_in_boolean() {
        assert!(!Config::parse("").unwrap().pool.prepare_unnamed_statements);
        let on = Config::parse("pool:\n  prepare_unnamed_statements: true\n").unwrap();
        assert!(on.pool.prepare_unnamed_statements);
        let err = Config::parse("pool:\n  prepare_unnamed_statements: sometimes\n").unwrap_err();
        assert!(
            err.to_string().contains("prepare_unnamed_statements"),
            "{err}"
        );
    }

    #[test]
    fn redis_urls_and_busy_poll_are_validated() {
        let ok = Config::parse(
            "busy_poll: 200us\ncache:\n  backend: redis\n  redis_url: \"redis://a:6379, redis://b:6379\"\n",
        )
        .unwrap();
        assert_eq!(ok.busy_poll, Duration::from_micros(200));
        for bad in [
            "http://a:6379",
            "redis://a:6379,http://b",
            "redis://a:notaport",
        ] {
            let err = Config::parse(&format!("cache:\n  redis_url: \"{bad}\"\n")).unwrap_err();
            assert!(
                err.0.iter().any(|l| l.starts_with("cache.redis_url:")),
                "{bad}: {err}"
            );
        }
        let err = Config::parse("busy_poll: often\n").unwrap_err();
        assert!(err.0.iter().any(|l| l.starts_with("busy_poll:")), "{err}");
    }

    #[test]
    fn upstream_url_gives_a_transaction_pool_for_its_database_and_user() {
        let cfg =
            Config::from_upstream_url("postgresql://app:s%40cret@db.local:5433/shop").unwrap();
        let db = &cfg.databases["shop"];
        assert_eq!(
            (db.host.as_str(), db.port, db.pool_mode),
            ("db.local", 5433, PoolMode::Transaction)
        );
        assert_eq!(
            cfg.users["app"].password,
            Some(Password::Plain("s@cret".into()))
        );
        assert_eq!(cfg.listen, DEFAULT_LISTEN);
    }

    #[test]
    fn a_plus_in_an_upstream_url_is_a_plus() {
        let cfg = Config::from_upstream_url("postgresql://a+b:pass+word@db/shop+1").unwrap();
        assert_eq!(
            cfg.users["a+b"].password,
            Some(Password::Plain("pass+word".into()))
        );
        assert!(
            cfg.databases.contains_key("shop+1"),
            "{:?}",
            cfg.databases.keys()
        );
        let cfg = Config::from_upstream_url("postgresql://u@/d?host=/run/pg+sql").unwrap();
        assert_eq!(cfg.databases["d"].host, "/run/pg+sql");
    }

    #[test]
    fn upstream_url_can_name_a_socket_directory() {
        let hosts = |url: &str| {
            let cfg = Config::from_upstream_url(url).unwrap();
            let db = cfg.databases.values().next().unwrap().clone();
            (db.host, db.port, db.dbname)
        };
        let want = ("/var/run/postgresql".to_owned(), 5433, "shop".to_owned());
        assert_eq!(
            hosts("postgresql://app@/shop?host=/var/run/postgresql&port=5433"),
            want
        );
        assert_eq!(
            hosts("postgresql://app@%2Fvar%2Frun%2Fpostgresql:5433/shop"),
            want
        );
        // the query's host wins over the authority's, as in libpq
        assert_eq!(
            hosts("postgresql://app@db.local:5433/shop?host=%2Fvar%2Frun%2Fpostgresql"),
            want
        );
        assert!(Config::from_upstream_url("postgresql://app@/shop?port=none").is_err());
    }

    #[test]
    fn password_kinds_are_recognised() {
        assert_eq!(
            Password::parse("md5abcdefabcdefabcdefabcdefabcdefab").unwrap(),
            Password::Md5("md5abcdefabcdefabcdefabcdefabcdefab".into())
        );
        assert_eq!(
            Password::parse("hunter2").unwrap(),
            Password::Plain("hunter2".into())
        );
        assert!(Password::parse("SCRAM-SHA-256$4096:bad").is_err());
    }
}
