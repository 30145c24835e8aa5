//! config.yaml exactly as written: every key optional. Unknown keys are
//! collected while it is read ([`super::Config::parse`]) and refused with the
//! value errors.
//! [`super::Config::from_raw`] turns it into the validated, typed form.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub worker_threads: Option<i64>,
    pub busy_poll: Option<String>,
    pub admin: Option<RawAdmin>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub databases: BTreeMap<String, RawDatabase>,
    pub pool: Option<RawPool>,
    pub cache: Option<RawCache>,
    pub n_plus_one: Option<RawNPlusOne>,
    pub logging: Option<RawLogging>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawUser {
    pub name: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDatabase {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<i64>,
    pub min_pool_size: Option<i64>,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPool {
    pub connect_timeout: Option<String>,
    pub checkout_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub server_lifetime: Option<String>,
    pub max_client_conn: Option<i64>,
    pub max_prepared_statements: Option<i64>,
    pub prepare_unnamed_statements: Option<bool>,
    pub multiplex_servers: Option<i64>,
    pub client_login_timeout: Option<String>,
    pub max_message_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCache {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    pub max_memory: Option<String>,
    pub default_ttl: Option<String>,
    pub max_result_bytes: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCacheRule {
    #[serde(default)]
    pub tables: Vec<String>,
    pub ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawNPlusOne {
    pub enabled: Option<bool>,
    pub min_repeats: Option<i64>,
    pub max_gap: Option<String>,
    pub min_total_time: Option<String>,
    pub report_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
    pub slow_statement: Option<String>,
}
