//! Every Prometheus metric family pgsift exports (SPEC §9), registered in
//! one place. Labels are bounded: database and user come from the config,
//! kind/state/result/direction are fixed sets, and application names are
//! capped (past [`MAX_APPLICATIONS`] distinct names they count as `other`).
//! Never a fingerprint or SQL text as a label.

use parking_lot::Mutex;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashSet;

/// Distinct application label values before the rest become `other`.
pub const MAX_APPLICATIONS: usize = 100;

/// Buckets from 50 µs to 30 s: proxy-side latencies are often sub-millisecond.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The metric families.
pub struct Metrics {
    registry: Registry,
    /// clients by state
    pub client_connections: IntGaugeVec,
    /// servers by state
    pub server_connections: IntGaugeVec,
    /// time clients waited for a server
    pub pool_wait_seconds: HistogramVec,
    /// statements by kind
    pub queries_total: IntCounterVec,
    /// statement durations
    pub query_duration_seconds: HistogramVec,
    /// completed transactions
    pub transactions_total: IntCounterVec,
    /// transactions run on a multiplexed server (`pool.multiplex_servers`)
    pub multiplexed_transactions_total: IntCounterVec,
    /// cache lookups by result
    pub cache_requests_total: IntCounterVec,
    /// cache invalidations
    pub cache_invalidations_total: IntCounterVec,
    /// bytes held by the cache
    pub cache_bytes: GaugeVec,
    /// 1 while the cache backend serves reads, 0 while it cannot
    pub cache_healthy: GaugeVec,
    /// N+1 bursts
    pub n_plus_one_bursts_total: IntCounterVec,
    /// errors by kind
    pub errors_total: IntCounterVec,
    /// bytes through pgsift
    pub bytes_total: IntCounterVec,
    /// pre-resolved byte counters (hot path)
    pub bytes: ByteCounters,
    applications: Mutex<HashSet<String>>,
    /// every family registered, for those with no series yet
    families: Vec<Family>,
}

/// A family's name, help and type: what the text format says of a family
/// that has no series yet.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

/// The four byte counters, resolved once.
#[derive(Clone)]
pub struct ByteCounters {
    /// read from clients
    pub client_in: IntCounter,
    /// written to clients
    pub client_out: IntCounter,
    /// read from servers
    pub server_in: IntCounter,
    /// written to servers
    pub server_out: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let families = std::cell::RefCell::new(Vec::new());
        let declare = |name, help, kind| families.borrow_mut().push(Family { name, help, kind });
        let int_gauge = |name: &'static str, help: &'static str, labels: &[&str]| {
            declare(name, help, "gauge");
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &'static str, help: &'static str, labels: &[&str]| {
            declare(name, help, "counter");
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &'static str, help: &'static str, labels: &[&str]| {
            declare(name, help, "histogram");
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let client_connections = int_gauge(
            "pgsift_client_connections",
            "Client connections by state",
            &["database", "user", "state"],
        );
        let server_connections = int_gauge(
            "pgsift_server_connections",
            "Server connections by state",
            &["database", "user", "state"],
        );
        let pool_wait_seconds = histogram(
            "pgsift_pool_wait_seconds",
            "Time clients waited for a server connection",
            &["database", "user"],
        );
        let queries_total = counter(
            "pgsift_queries_total",
            "Statements executed, by kind",
            &["database", "user", "kind"],
        );
        let query_duration_seconds = histogram(
            "pgsift_query_duration_seconds",
            "Statement duration as seen by pgsift",
            &["database", "kind"],
        );
        let transactions_total = counter(
            "pgsift_transactions_total",
            "Transactions completed",
            &["database", "user"],
        );
        let multiplexed_transactions_total = counter(
            "pgsift_multiplexed_transactions_total",
            "Autocommit transactions run on a server shared with other clients at the same time (pool.multiplex_servers)",
            &["database", "user"],
        );
        let cache_requests_total = counter(
            "pgsift_cache_requests_total",
            "Cache lookups by result",
            &["database", "result"],
        );
        let cache_invalidations_total = counter(
            "pgsift_cache_invalidations_total",
            "Cache invalidations",
            &["database"],
        );
        let gauge = |name: &'static str, help: &'static str, labels: &[&str]| {
            declare(name, help, "gauge");
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let cache_bytes = gauge(
            "pgsift_cache_bytes",
            "Bytes held by the cache",
            &["backend"],
        );
        let cache_healthy = gauge(
            "pgsift_cache_healthy",
            "1 while the cache backend serves reads; 0 while it is unreachable or owes an invalidation",
            &["backend"],
        );
        let n_plus_one_bursts_total = counter(
            "pgsift_n_plus_one_bursts_total",
            "N+1 bursts detected",
            &["database", "application"],
        );
        let errors_total = counter("pgsift_errors_total", "Errors by kind", &["kind"]);
        let bytes_total = counter("pgsift_bytes_total", "Bytes through pgsift", &["direction"]);
        let bytes = ByteCounters {
            client_in: bytes_total.with_label_values(&["client_in"]),
            client_out: bytes_total.with_label_values(&["client_out"]),
            server_in: bytes_total.with_label_values(&["server_in"]),
            server_out: bytes_total.with_label_values(&["server_out"]),
        };
        for kind in ERROR_KINDS {
            errors_total.with_label_values(&[kind]);
        }
        Metrics {
            registry,
            client_connections,
            server_connections,
            pool_wait_seconds,
            queries_total,
            query_duration_seconds,
            transactions_total,
            multiplexed_transactions_total,
            cache_requests_total,
            cache_invalidations_total,
            cache_bytes,
            cache_healthy,
            n_plus_one_bursts_total,
            errors_total,
            bytes_total,
            bytes,
            applications: Mutex::new(HashSet::new()),
            families: families.into_inner(),
        }
    }

    /// Creates the per-database series that exist before any traffic, so
    /// dashboards show zeros rather than "no data".
    pub fn init_databases<'a>(&self, databases: impl IntoIterator<Item = &'a String>) {
        for db in databases {
            for result in ["hit", "miss", "bypass", "error"] {
                self.cache_requests_total.with_label_values(&[db, result]);
            }
            self.cache_invalidations_total.with_label_values(&[db]);
        }
    }

    /// Counts an error.
    pub fn error(&self, kind: &'static str) {
        self.errors_total.with_label_values(&[kind]).inc();
    }

    /// The label value for an application name (bounded).
    pub fn application_label(&self, app: &str) -> String {
        let mut apps = self.applications.lock();
        if apps.contains(app) {
            return app.to_owned();
        }
        if apps.len() < MAX_APPLICATIONS {
            apps.insert(app.to_owned());
            return app.to_owned();
        }
        "other".to_owned()
    }

    /// The text exposition of every family. The encoder leaves out a
    /// family that has no series yet (no traffic, no pool): its HELP and
    /// TYPE lines are written all the same, so every family is listed from
    /// the start.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        let gathered = self.registry.gather();
        if let Err(e) = encoder.encode(&gathered, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        for f in &self.families {
            if !gathered.iter().any(|mf| mf.name() == f.name) {
                let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
                text.push_str(&format!(
                    "# HELP {} {help}\n# TYPE {} {}\n",
                    f.name, f.name, f.kind
                ));
            }
        }
        text
    }
}

/// The values of `pgsift_errors_total{kind}`.
pub const ERROR_KINDS: &[&str] = &[
    "auth",
    "checkout_timeout",
    "upstream_connect",
    "client_protocol",
    "server_protocol",
    "server_lost",
    "query",
    "session_only_feature",
    "too_many_clients",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_its_labels() {
        let m = Metrics::new();
        m.queries_total
            .with_label_values(&["blog", "blog", "select"])
            .inc();
        m.client_connections
            .with_label_values(&["blog", "blog", "idle"])
            .set(1);
        m.server_connections
            .with_label_values(&["blog", "blog", "idle"])
            .set(1);
        m.pool_wait_seconds
            .with_label_values(&["blog", "blog"])
            .observe(0.001);
        m.query_duration_seconds
            .with_label_values(&["blog", "select"])
            .observe(0.0002);
        m.transactions_total
            .with_label_values(&["blog", "blog"])
            .inc();
        m.multiplexed_transactions_total
            .with_label_values(&["blog", "blog"])
            .inc();
        m.cache_requests_total
            .with_label_values(&["blog", "miss"])
            .inc();
        m.cache_invalidations_total
            .with_label_values(&["blog"])
            .inc();
        m.cache_bytes.with_label_values(&["memory"]).set(0.0);
        m.n_plus_one_bursts_total
            .with_label_values(&["blog", "app"])
            .inc();
        m.bytes.client_in.inc_by(5);
        let text = m.render();
        for family in [
            "pgsift_client_connections",
            "pgsift_server_connections",
            "pgsift_pool_wait_seconds",
            "pgsift_queries_total",
            "pgsift_query_duration_seconds",
            "pgsift_transactions_total",
            "pgsift_multiplexed_transactions_total",
            "pgsift_cache_requests_total",
            "pgsift_cache_invalidations_total",
            "pgsift_cache_bytes",
            "pgsift_n_plus_one_bursts_total",
            "pgsift_errors_total",
            "pgsift_bytes_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
        }
        assert!(
            text.contains(
                "pgsift_queries_total{database=\"blog\",kind=\"select\",user=\"blog\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn families_without_series_still_have_their_help_and_type() {
        let text = Metrics::new().render();
        for (family, kind) in [
            ("pgsift_client_connections", "gauge"),
            ("pgsift_pool_wait_seconds", "histogram"),
            ("pgsift_queries_total", "counter"),
            ("pgsift_cache_bytes", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family}: {text}"
            );
        }
        assert_eq!(text.matches("# TYPE pgsift_errors_total ").count(), 1);
    }

    #[test]
    fn application_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_APPLICATIONS {
            assert_eq!(m.application_label(&format!("a{i}")), format!("a{i}"));
        }
        assert_eq!(m.application_label("one-too-many"), "other");
        assert_eq!(m.application_label("a3"), "a3");
    }
}
