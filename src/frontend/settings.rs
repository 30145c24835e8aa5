//! Which session settings a transaction-mode client has changed, so that the
//! next server it lands on can be given the same ones (SPEC §4).
//!
//! Settings that Postgres reports with ParameterStatus (TimeZone, DateStyle,
//! application_name, …) are followed through those reports, which also
//! covers `SET LOCAL` (reported on set and again when the transaction ends).
//! `search_path` and `extra_float_digits` are not reported by the servers
//! pgsift supports, so plain `SET`/`RESET` of them is read from the SQL and
//! applied once the transaction it ran in has ended without error.

/// The settings transaction mode carries from server to server.
pub const TRACKED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "search_path",
    "extra_float_digits",
];

/// Tracked settings the server does not report: read from the SQL.
const UNREPORTED: &[&str] = &["search_path", "extra_float_digits"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Set(&'static str, String),
    Reset(&'static str),
    ResetAll,
}

/// Follows a client's setting changes.
#[derive(Debug, Default)]
pub struct SettingsTracker {
    pending: Vec<Change>,
    failed: bool,
    /// session-only features this client tried (each logged once)
    pub warned: Vec<&'static str>,
    /// the client changed something pgsift does not model (a setting outside
    /// [`TRACKED`], the role, set_config, a temporary table): its results
    /// may differ from other clients', so the cache is off for it
    pub unmodeled: bool,
    /// the last statement text seen that was no SET/RESET/DISCARD
    last_plain: Vec<u8>,
}

/// Features that need one server for the whole session and so cannot work
/// in transaction mode, recognised by how a statement starts or what it
/// calls.
const SESSION_ONLY: &[(&str, &str)] = &[
    (
        "listen",
        "LISTEN (notifications arrive only while the client holds a server)",
    ),
    (
        "prepare",
        "SQL-level PREPARE (the statement stays on one server)",
    ),
    ("create temp", "temporary tables (they stay on one server)"),
    (
        "create temporary",
        "temporary tables (they stay on one server)",
    ),
    (
        "declare",
        "cursors declared WITH HOLD (they stay on one server)",
    ),
];

/// Which session-only feature a statement uses, if any.
pub fn session_only_feature(sql: &[u8]) -> Option<&'static str> {
    let head = &sql[..sql.len().min(256)];
    // cheap byte checks first: this runs for every statement
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    let may_start = matches!(
        first,
        Some(b'l' | b'L' | b'p' | b'P' | b'c' | b'C' | b'd' | b'D')
    );
    let may_lock = contains_ci(head, b"advisory_lock");
    if !may_start && !may_lock {
        return None;
    }
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let head = head.trim_start();
    for (start, what) in SESSION_ONLY {
        if head.starts_with(start) {
            if *start == "declare" && !head.contains("with hold") {
                continue;
            }
            return Some(what);
        }
    }
    let advisory = head.contains("pg_advisory_lock") || head.contains("pg_try_advisory_lock");
    advisory
        .then_some("session-level advisory locks (released only when that server's session ends)")
}

impl SettingsTracker {
    /// Looks at a Query or Parse message for SET/RESET of an unreported
    /// tracked setting.
    /// Returns true the first time this client uses a given session-only
    /// feature.
    pub fn observe(&mut self, tag: u8, msg: &[u8], transaction_mode: bool) -> bool {
        let text = match tag {
            b'Q' => msg.get(5..),
            b'P' => msg
                .get(5..)
                .and_then(|b| b.iter().position(|&c| c == 0).map(|i| &b[i + 1..])),
            _ => None,
        };
        let Some(text) = text else { return false };
        let text = text.split(|&c| c == 0).next().unwrap_or(&[]);
        // A driver re-sending the text it sent last (the unnamed statement
        // of every execution) changes nothing that text did not change the
        // first time; only SET/RESET/DISCARD must be seen each time.
        if !self.last_plain.is_empty() && self.last_plain == text {
            return false;
        }
        let mut first_use = false;
        if !self.unmodeled && has_set_config(text) {
            self.unmodeled = true;
        }
        if let Some(what) = session_only_feature(text) {
            if what.starts_with("temporary") {
                self.unmodeled = true;
            }
            if transaction_mode && !self.warned.contains(&what) {
                first_use = true;
                self.warned.push(what);
                tracing::warn!(feature = what, "a transaction-mode client used a session-only feature; it will not work as in session mode");
            }
        }
        // A simple query can hold several statements, any of them a SET.
        let body = text.trim_ascii_end();
        let body = body.strip_suffix(b";").unwrap_or(body);
        if tag == b'Q' && memchr::memchr(b';', body).is_some() {
            let text = String::from_utf8_lossy(text);
            for stmt in crate::sql::shape::split_statements(&text) {
                if is_change_head(stmt.as_bytes()) {
                    self.note_change(stmt);
                }
            }
        } else if is_change_head(text) {
            // one statement: only its start matters
            self.note_change(&String::from_utf8_lossy(text));
        } else if !first_use && text.len() <= 4096 {
            self.last_plain.clear();
            self.last_plain.extend_from_slice(text);
        }
        first_use
    }

    /// One SET/RESET/DISCARD statement.
    fn note_change(&mut self, stmt: &str) {
        match parse_change(stmt) {
            Some(c) => self.pending.push(c),
            None => {
                if !set_of_reported_setting(stmt) {
                    self.unmodeled = true;
                }
            }
        }
    }

    /// The server reported an error.
    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// ReadyForQuery: changes made outside a transaction, or in one that
    /// ended cleanly, take effect; changes in a failed one are dropped.
    /// Returns true when the client's settings changed.
    pub fn ready(&mut self, tx: u8, settings: &mut Vec<(String, String)>) -> bool {
        if tx == b'I' && self.pending.is_empty() {
            // nothing to apply (all but every ReadyForQuery)
            self.failed = false;
            return false;
        }
        let mut changed = false;
        match tx {
            b'I' => {
                if !self.failed {
                    for c in self.pending.drain(..) {
                        apply(c, settings);
                        changed = true;
                    }
                }
                self.pending.clear();
                self.failed = false;
            }
            b'E' => self.failed = true,
            _ => {}
        }
        changed
    }

    /// The server now carries the client's values of the unreported
    /// settings (the client set them there itself): record that on the
    /// server so the next client gets them reset.
    pub fn mark_server(
        settings: &[(String, String)],
        applied: &mut std::collections::HashMap<String, String>,
    ) {
        for name in UNREPORTED {
            match settings.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                Some((_, v)) => applied.insert(name.to_ascii_lowercase(), v.clone()),
                None => applied.remove(&name.to_ascii_lowercase()),
            };
        }
    }

    /// A ParameterStatus from the client's server.
    pub fn reported(&mut self, body: &[u8], settings: &mut Vec<(String, String)>) {
        let mut parts = body.split(|&b| b == 0);
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            return;
        };
        let Ok(k) = std::str::from_utf8(k) else {
            return;
        };
        if let Some(name) = TRACKED.iter().find(|t| t.eq_ignore_ascii_case(k)) {
            apply(
                Change::Set(name, String::from_utf8_lossy(v).into_owned()),
                settings,
            );
        }
    }
}

fn apply(c: Change, settings: &mut Vec<(String, String)>) {
    match c {
        Change::Set(name, value) => match settings
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => settings.push((name.to_owned(), value)),
        },
        Change::Reset(name) => settings.retain(|(k, _)| !k.eq_ignore_ascii_case(name)),
        Change::ResetAll => {
            settings.retain(|(k, _)| !UNREPORTED.iter().any(|u| u.eq_ignore_ascii_case(k)))
        }
    }
}

/// Reads `SET [SESSION] name {TO|=} value`, `RESET name`, `RESET ALL`,
/// `DISCARD ALL` for the unreported settings.
fn parse_change(sql: &str) -> Option<Change> {
    let stmt = sql.split(';').next()?.trim();
    let mut words = stmt.split_whitespace();
    let first = words.next()?.to_ascii_lowercase();
    match first.as_str() {
        "discard" | "reset" if words.clone().next()?.eq_ignore_ascii_case("all") => {
            Some(Change::ResetAll)
        }
        "reset" => unreported(words.next()?).map(Change::Reset),
        "set" => {
            let rest = stmt[3..].trim_start();
            let rest = match rest.get(..8) {
                Some(w) if w.eq_ignore_ascii_case("session ") => rest[8..].trim_start(),
                _ => rest,
            };
            let name_end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
            let name = unreported(&rest[..name_end])?;
            let after = rest[name_end..].trim_start();
            let value = if let Some(v) = after.strip_prefix('=') {
                v
            } else if after.len() > 2 && after[..2].eq_ignore_ascii_case("to") {
                &after[2..]
            } else {
                return None;
            };
            let value = value.trim();
            if value.eq_ignore_ascii_case("default") {
                return Some(Change::Reset(name));
            }
            let items: Vec<String> = value.split(',').map(|i| unquote(i.trim())).collect();
            Some(Change::Set(name, items.join(", ")))
        }
        _ => None,
    }
}

/// True when a statement starts with SET, RESET or DISCARD (leading
/// whitespace allowed).
fn is_change_head(stmt: &[u8]) -> bool {
    let head = stmt.trim_ascii_start();
    let head = &head[..head.len().min(8)];
    head.len() >= 3
        && (head[..3].eq_ignore_ascii_case(b"set")
            || head.len() >= 5
                && (head[..5].eq_ignore_ascii_case(b"reset")
                    || head[..5].eq_ignore_ascii_case(b"disca")))
}

/// `set_config(` anywhere in a statement (case-insensitive).
fn has_set_config(text: &[u8]) -> bool {
    contains_ci(text, b"set_config")
}

/// Case-insensitive search for an ASCII `needle` that contains `_`. This
/// runs on every statement, so only the underscores of `hay` (found with
/// memchr) are candidate positions.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let pivot = needle
        .iter()
        .position(|&b| b == b'_')
        .expect("needles are identifiers with an underscore");
    memchr::memchr_iter(b'_', hay).any(|i| {
        i >= pivot
            && hay
                .get(i - pivot..i - pivot + needle.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    })
}

/// True for a plain `SET [SESSION] name …` / `RESET name` of a tracked
/// setting that the server reports (TimeZone, DateStyle, …), which pgsift
/// follows through ParameterStatus.
fn set_of_reported_setting(sql: &str) -> bool {
    let stmt = sql.split(';').next().unwrap_or("").trim();
    let mut words = stmt.split(|c: char| c.is_whitespace() || c == '=');
    let first = words.next().unwrap_or("");
    if !(first.eq_ignore_ascii_case("set") || first.eq_ignore_ascii_case("reset")) {
        return false;
    }
    let mut name = words.find(|w| !w.is_empty()).unwrap_or("");
    if name.eq_ignore_ascii_case("session") {
        name = words.find(|w| !w.is_empty()).unwrap_or("");
    }
    let name = name.trim_matches('"');
    TRACKED.iter().any(|t| {
        t.eq_ignore_ascii_case(name) && !UNREPORTED.iter().any(|u| u.eq_ignore_ascii_case(name))
    })
}

fn unreported(word: &str) -> Option<&'static str> {
    UNREPORTED
        .iter()
        .copied()
        .find(|u| u.eq_ignore_ascii_case(word.trim_matches('"')))
}

fn unquote(item: &str) -> String {
    match item.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => item.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Query message carrying `sql` (the length word is not read).
    fn query_msg(sql: &str) -> Vec<u8> {
        let mut m = b"Q\0\0\0\0".to_vec();
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    }

    #[test]
    fn set_and_reset_of_unreported_settings_are_read_from_sql() {
        assert_eq!(
            parse_change("SET search_path TO app, public"),
            Some(Change::Set("search_path", "app, public".into()))
        );
        assert_eq!(
            parse_change("set session search_path = 'x'; select 1"),
            Some(Change::Set("search_path", "x".into()))
        );
        assert_eq!(
            parse_change("SET extra_float_digits = 3"),
            Some(Change::Set("extra_float_digits", "3".into()))
        );
        assert_eq!(
            parse_change("RESET search_path"),
            Some(Change::Reset("search_path"))
        );
        assert_eq!(parse_change("RESET ALL"), Some(Change::ResetAll));
        assert_eq!(parse_change("DISCARD ALL"), Some(Change::ResetAll));
        assert_eq!(parse_change("SET LOCAL search_path TO x"), None);
        assert_eq!(parse_change("SET work_mem TO '8MB'"), None);
        assert_eq!(parse_change("SELECT 1"), None);
    }

    #[test]
    fn changes_apply_only_after_a_clean_end_of_transaction() {
        let mut t = SettingsTracker::default();
        let mut s = vec![];
        let q = query_msg("SET search_path TO a");
        t.observe(b'Q', &q, true);
        t.ready(b'T', &mut s);
        assert!(s.is_empty());
        t.failed();
        t.ready(b'I', &mut s);
        assert!(s.is_empty(), "rolled back");
        t.observe(b'Q', &q, true);
        t.ready(b'I', &mut s);
        assert_eq!(s, vec![("search_path".to_string(), "a".to_string())]);
    }

    #[test]
    fn every_set_of_a_multi_statement_query_is_tracked() {
        let mut t = SettingsTracker::default();
        let mut s = vec![];
        let q = query_msg("SET search_path TO a; SELECT 1; set extra_float_digits = 3;");
        t.observe(b'Q', &q, true);
        t.ready(b'I', &mut s);
        s.sort();
        assert_eq!(
            s,
            vec![
                ("extra_float_digits".to_string(), "3".to_string()),
                ("search_path".to_string(), "a".to_string()),
            ]
        );
        let mut t = SettingsTracker::default();
        t.observe(
            b'Q',
            &query_msg("SELECT 1; SET bytea_output = 'escape'"),
            false,
        );
        assert!(t.unmodeled, "a later statement pgsift does not model");
    }

    #[test]
    fn a_repeated_set_is_seen_every_time() {
        let q = query_msg;
        let mut t = SettingsTracker::default();
        let mut s = vec![];
        for _ in 0..2 {
            t.observe(b'Q', &q("SET search_path TO a"), true);
            t.ready(b'I', &mut s);
            assert_eq!(s, vec![("search_path".to_string(), "a".to_string())]);
            t.observe(b'Q', &q("SELECT 1"), true);
            t.observe(b'Q', &q("SELECT 1"), true);
            t.observe(b'Q', &q("RESET search_path"), true);
            t.ready(b'I', &mut s);
            assert!(s.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn changes_pgsift_does_not_model_turn_the_cache_off() {
        let q = |sql: &str| {
            let mut t = SettingsTracker::default();
            t.observe(b'Q', &query_msg(sql), false);
            t.unmodeled
        };
        assert!(!q("SET TimeZone = 'UTC'"));
        assert!(!q("SET search_path TO app"));
        assert!(!q("SELECT 1"));
        assert!(q("SET ROLE reader"));
        assert!(q("SET SESSION AUTHORIZATION reader"));
        assert!(q("SET bytea_output = 'escape'"));
        assert!(q("SET default_transaction_isolation = 'serializable'"));
        assert!(q("SELECT set_config('role', 'x', false)"));
        assert!(q("CREATE TEMP TABLE posts (id int)"));
        assert!(q("SET LOCAL statement_timeout = 5"));
    }

    #[test]
    fn case_insensitive_search_finds_needles_anywhere() {
        assert!(contains_ci(
            b"select SET_CONFIG('a','b',false)",
            b"set_config"
        ));
        assert!(contains_ci(b"set_config", b"set_config"));
        assert!(contains_ci(b"x_y set_config", b"set_config"));
        assert!(!contains_ci(b"set_confi", b"set_config"));
        assert!(!contains_ci(b"_set config", b"set_config"));
        assert!(!contains_ci(b"", b"set_config"));
    }

    #[test]
    fn session_only_features_are_recognised() {
        assert!(session_only_feature(b"LISTEN chan").is_some());
        assert!(session_only_feature(b"  prepare p AS SELECT 1").is_some());
        assert!(session_only_feature(b"CREATE TEMP TABLE t (x int)").is_some());
        assert!(session_only_feature(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1").is_some());
        assert!(session_only_feature(b"DECLARE c CURSOR FOR SELECT 1").is_none());
        assert!(session_only_feature(b"SELECT pg_advisory_lock(1)").is_some());
        assert!(session_only_feature(b"SELECT pg_advisory_xact_lock(1)").is_none());
        assert!(session_only_feature(b"SELECT 1").is_none());
    }

    #[test]
    fn reported_parameters_update_tracked_settings() {
        let mut t = SettingsTracker::default();
        let mut s = vec![("TimeZone".to_string(), "UTC".to_string())];
        t.reported(b"TimeZone\0Europe/Paris\0", &mut s);
        t.reported(b"server_version\0x\0", &mut s);
        assert_eq!(
            s,
            vec![("TimeZone".to_string(), "Europe/Paris".to_string())]
        );
    }
}
