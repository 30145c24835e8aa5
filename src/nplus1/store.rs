//! Finished bursts aggregated into reports per (database, application,
//! fingerprint, kind), bounded in number, and optionally appended as JSON
//! lines to `n_plus_one.report_file` by a background writer.

use super::suggest::suggestion;
use super::{Burst, BurstKind};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reports kept at most; the least costly go first.
const MAX_REPORTS: usize = 2000;

/// Who ran the burst.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// client-facing database
    pub database: String,
    /// user
    pub user: String,
    /// application_name
    pub application: String,
    /// client address
    pub client_addr: String,
}

/// One aggregated report (SPEC §7).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// stable id: hash(parent fingerprint, repeated fingerprint)
    pub id: String,
    /// n_plus_one or duplicate
    pub kind: BurstKind,
    /// repeated statement fingerprint (hex)
    pub fingerprint: String,
    /// normalized repeated statement
    pub query: String,
    /// one concrete execution, literals kept
    pub example: String,
    /// parent fingerprint (hex)
    pub parent_fingerprint: Option<String>,
    /// normalized parent statement
    pub parent_query: Option<String>,
    /// database
    pub database: String,
    /// user
    pub user: String,
    /// application_name
    pub application: String,
    /// client address of the latest burst
    pub client_addr: String,
    /// bursts seen
    pub occurrences: u64,
    /// most executions in one burst
    pub max_repeats: usize,
    /// executions in all bursts
    pub total_repeats: u64,
    /// time the repeated executions spent
    pub total_ms: f64,
    /// RFC 3339 time of the first burst
    pub first_seen: String,
    /// RFC 3339 time of the latest burst
    pub last_seen: String,
    /// how to fix it
    pub suggestion: String,
}

type Key = (String, String, u64, BurstKind);

/// All reports of this pgsift.
pub struct ReportStore {
    reports: Mutex<HashMap<Key, Report>>,
    min_total: Mutex<Duration>,
    file: Mutex<Option<std::sync::mpsc::Sender<String>>>,
}

impl ReportStore {
    /// An empty store; `report_file` gets one JSON line per finished burst.
    pub fn new(min_total: Duration, report_file: Option<&str>) -> ReportStore {
        let store = ReportStore {
            reports: Mutex::new(HashMap::new()),
            min_total: Mutex::new(min_total),
            file: Mutex::new(None),
        };
        store.set_report_file(report_file);
        store
    }

    /// Points the JSONL output at another file (reload).
    pub fn set_report_file(&self, path: Option<&str>) {
        let sender = path.map(|p| {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let p = p.to_owned();
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&p);
                if let Err(e) = &file {
                    tracing::error!(path = %p, error = %e, "cannot open n_plus_one.report_file");
                }
                while let Ok(line) = rx.recv() {
                    if let Ok(f) = file.as_mut() {
                        if let Err(e) = writeln!(f, "{line}") {
                            tracing::error!(path = %p, error = %e, "cannot write n_plus_one.report_file");
                        }
                    }
                }
            });
            tx
        });
        *self.file.lock() = sender;
    }

    /// Bursts below this total time are ignored.
    pub fn set_min_total(&self, d: Duration) {
        *self.min_total.lock() = d;
    }

    /// Adds a finished burst; returns true when it was recorded.
    pub fn add(&self, b: &Burst, origin: &Origin) -> bool {
        if b.total < *self.min_total.lock() {
            return false;
        }
        let fp = b.analysis.fingerprint;
        let parent_fp = b.parent.as_ref().map(|p| p.fingerprint);
        let id = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&parent_fp.unwrap_or(0).to_le_bytes());
            h.update(&fp.to_le_bytes());
            format!("{:016x}", h.digest())
        };
        let total_ms = b.total.as_secs_f64() * 1000.0;
        let burst_report = Report {
            id,
            kind: b.kind,
            fingerprint: b.analysis.fingerprint_hex(),
            query: b.analysis.normalized.clone(),
            example: crate::sql::analysis::shorten(b.example.to_string()),
            parent_fingerprint: b.parent.as_ref().map(|p| p.fingerprint_hex()),
            parent_query: b.parent.as_ref().map(|p| p.normalized.clone()),
            database: origin.database.clone(),
            user: origin.user.clone(),
            application: origin.application.clone(),
            client_addr: origin.client_addr.clone(),
            occurrences: 1,
            max_repeats: b.repeats,
            total_repeats: b.repeats as u64,
            total_ms,
            first_seen: rfc3339(b.first_seen),
            last_seen: rfc3339(b.last_seen),
            suggestion: suggestion(b.kind, &b.analysis, b.parent.as_deref(), b.repeats),
        };
        if let Some(tx) = self.file.lock().as_ref() {
            if let Ok(line) = serde_json::to_string(&burst_report) {
                let _ = tx.send(line);
            }
        }
        let key = (
            origin.database.clone(),
            origin.application.clone(),
            fp,
            b.kind,
        );
        let mut reports = self.reports.lock();
        match reports.get_mut(&key) {
            Some(r) => {
                r.occurrences += 1;
                r.max_repeats = r.max_repeats.max(b.repeats);
                r.total_repeats += b.repeats as u64;
                r.total_ms += total_ms;
                r.last_seen = burst_report.last_seen;
                r.client_addr = burst_report.client_addr;
                r.user = burst_report.user;
                if r.parent_fingerprint.is_none() {
                    r.parent_fingerprint = burst_report.parent_fingerprint;
                    r.parent_query = burst_report.parent_query;
                    r.id = burst_report.id;
                    r.suggestion = burst_report.suggestion;
                }
            }
            None => {
                if reports.len() >= MAX_REPORTS {
                    if let Some(victim) = reports
                        .iter()
                        .min_by(|a, b| a.1.total_ms.total_cmp(&b.1.total_ms))
                        .map(|(k, _)| k.clone())
                    {
                        reports.remove(&victim);
                    }
                }
                reports.insert(key, burst_report);
            }
        }
        true
    }

    /// All reports, most costly first.
    pub fn reports(&self) -> Vec<Report> {
        let mut v: Vec<Report> = self.reports.lock().values().cloned().collect();
        v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        v
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
