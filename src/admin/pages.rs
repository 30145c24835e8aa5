//! HTML pages for people: the N+1 report a DBA reads in a browser. Plain
//! server-rendered HTML with every value escaped; no scripts.

use crate::nplus1::Report;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2330}\
h1{font-size:1.5rem}table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #d8dce4;padding:.5rem;text-align:left;vertical-align:top}\
th{background:#f3f5f9}code{font-family:ui-monospace,monospace;font-size:.85rem;white-space:pre-wrap;word-break:break-word}\
.kind-n_plus_one{color:#b3261e;font-weight:600}.kind-duplicate{color:#8a5a00;font-weight:600}.kind-bulk_write{color:#1a5fb4;font-weight:600}\
.num{text-align:right;white-space:nowrap}.muted{color:#667085}";

/// The N+1 report page, most costly first.
pub fn n_plus_one_page(reports: &[Report]) -> String {
    let mut html = String::with_capacity(4096 + reports.len() * 1024);
    html.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pgsift — N+1 report</title><style>");
    html.push_str(STYLE);
    html.push_str("</style></head><body><h1>N+1 query report</h1>");
    html.push_str(&format!(
        "<p class=\"muted\">{} pattern(s), sorted by total time. An N+1 burst is one statement run once per row of a parent query; a duplicate is the same statement with the same values again and again; a bulk write is one INSERT, UPDATE, DELETE or MERGE per row where one statement could write them all.</p>",
        reports.len()
    ));
    if reports.is_empty() {
        html.push_str("<p id=\"empty\">No N+1 bursts seen yet.</p>");
    } else {
        html.push_str("<table id=\"reports\"><thead><tr><th>kind</th><th>application / database</th><th>repeated statement</th><th>parent statement</th><th>example</th><th class=\"num\">bursts</th><th class=\"num\">max repeats</th><th class=\"num\">total repeats</th><th class=\"num\">total ms</th><th>suggestion</th><th>last seen</th></tr></thead><tbody>");
        for r in reports {
            html.push_str(&format!(
                "<tr data-id=\"{id}\" data-fingerprint=\"{fp}\"><td class=\"kind-{kind}\">{kind}</td><td>{app}<br><span class=\"muted\">{db} · {user} · {addr}</span></td><td><code>{query}</code></td><td><code>{parent}</code></td><td><code>{example}</code></td><td class=\"num\">{occ}</td><td class=\"num\">{max}</td><td class=\"num\">{total}</td><td class=\"num\">{ms:.2}</td><td>{sugg}</td><td class=\"muted\">{last}</td></tr>",
                id = escape(&r.id),
                fp = escape(&r.fingerprint),
                kind = r.kind.as_str(),
                app = escape(if r.application.is_empty() { "(no application_name)" } else { &r.application }),
                db = escape(&r.database),
                user = escape(&r.user),
                addr = escape(&r.client_addr),
                query = escape(&r.query),
                parent = escape(r.parent_query.as_deref().unwrap_or("(unknown)")),
                example = escape(&r.example),
                occ = r.occurrences,
                max = r.max_repeats,
                total = r.total_repeats,
                ms = r.total_ms,
                sugg = escape(&r.suggestion),
                last = escape(&r.last_seen),
            ));
        }
        html.push_str("</tbody></table>");
    }
    html.push_str("<p class=\"muted\">JSON: <a href=\"/api/n-plus-one\">/api/n-plus-one</a> · top statements: <a href=\"/api/queries\">/api/queries</a></p></body></html>");
    html
}

/// One pool on the status page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PoolLine {
    /// database
    pub database: String,
    /// user
    pub user: String,
    /// session or transaction
    pub mode: &'static str,
    /// pool_size
    pub size: usize,
    /// servers in use
    pub active: usize,
    /// idle servers
    pub idle: usize,
    /// clients waiting
    pub waiting: usize,
    /// servers being opened
    pub connecting: usize,
    /// clients connected
    pub clients: usize,
}

/// What the status page shows.
pub struct Status {
    /// pgsift version
    pub version: &'static str,
    /// one line per pool
    pub pools: Vec<PoolLine>,
    /// cache lookups: hits, misses
    pub cache: (u64, u64),
    /// cache backend name
    pub cache_backend: String,
    /// top statements
    pub queries: Vec<crate::stats::QueryRow>,
    /// N+1 patterns known
    pub n_plus_one: usize,
}

/// The small status page at `/`: pools, cache hit ratio, top statements.
pub fn status_page(s: &Status) -> String {
    let mut html = String::with_capacity(8192);
    html.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pgsift status</title><style>");
    html.push_str(STYLE);
    html.push_str("</style></head><body>");
    html.push_str(&format!("<h1>pgsift {}</h1>", escape(s.version)));
    html.push_str("<h2>Pools</h2><table id=\"pools\"><thead><tr><th>database</th><th>user</th><th>mode</th><th class=\"num\">size</th><th class=\"num\">active</th><th class=\"num\">idle</th><th class=\"num\">waiting</th><th class=\"num\">clients</th></tr></thead><tbody>");
    for p in &s.pools {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&p.database),
            escape(&p.user),
            p.mode,
            p.size,
            p.active,
            p.idle,
            p.waiting,
            p.clients
        ));
    }
    html.push_str("</tbody></table>");
    let (hits, misses) = s.cache;
    let ratio = if hits + misses == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64)
    };
    html.push_str(&format!(
        "<h2>Cache</h2><p id=\"cache\">backend <b>{}</b> · hit ratio <b>{ratio}</b> ({hits} hits, {misses} misses)</p>",
        escape(&s.cache_backend)
    ));
    html.push_str(&format!(
        "<h2>N+1</h2><p><a href=\"/n-plus-one\">{} N+1 / duplicate / bulk-write pattern(s)</a></p>",
        s.n_plus_one
    ));
    html.push_str("<h2>Top statements by total time</h2><table id=\"queries\"><thead><tr><th>statement</th><th>kind</th><th class=\"num\">calls</th><th class=\"num\">total ms</th><th class=\"num\">mean ms</th><th class=\"num\">rows</th><th class=\"num\">errors</th></tr></thead><tbody>");
    for q in &s.queries {
        html.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td><td class=\"num\">{:.3}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&q.query),
            q.kind,
            q.calls,
            q.total_ms,
            q.mean_ms,
            q.rows,
            q.errors
        ));
    }
    html.push_str("</tbody></table><p class=\"muted\"><a href=\"/metrics\">/metrics</a> · <a href=\"/api/pools\">/api/pools</a> · <a href=\"/api/queries\">/api/queries</a> · <a href=\"/api/n-plus-one\">/api/n-plus-one</a></p></body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            escape("<script>'a'&\"b\""),
            "&lt;script&gt;&#39;a&#39;&amp;&quot;b&quot;"
        );
    }
}
