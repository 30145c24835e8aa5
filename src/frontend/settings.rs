//! Which session settings a transaction-mode client has changed, so that the
//! next server it lands on can be given the same ones (SPEC §4).
//!
//! Settings that Postgres reports with ParameterStatus (TimeZone, DateStyle,
//! application_name, …) are followed through those reports, which also
//! covers `SET LOCAL` (reported on set and again when the transaction ends).
//! Every other setting (`search_path`, `statement_timeout`, `app.tenant_id`,
//! the role of `SET ROLE`, …) is not reported, so a plain `SET`/`RESET` of
//! it is read from the SQL and applied once the transaction it ran in has
//! ended without error. Session state that cannot be carried that way
//! (`set_config(…)`, `SET SESSION AUTHORIZATION`, temporary tables, LISTEN,
//! SQL `PREPARE`, session advisory locks) makes the client's server *dirty*:
//! it gets `DISCARD ALL` before anyone else uses it.

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
    Set(String, String),
    Reset(String),
    /// `RESET ALL`: every setting back to its value at login (the role
    /// stays, as in Postgres)
    ResetAll,
    /// `DISCARD ALL`: as `RESET ALL`, and the role too
    DiscardAll,
}

/// What a SET, RESET or DISCARD statement does to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Statement {
    /// a change pgsift carries from server to server
    Carried(Change),
    /// of a setting the server reports: followed through ParameterStatus
    Reported,
    /// lasts until the transaction ends (`SET LOCAL`, `SET TRANSACTION`,
    /// `SET CONSTRAINTS`, `DISCARD PLANS`)
    Local,
    /// session state pgsift cannot carry (`SET SESSION AUTHORIZATION`,
    /// `SET SESSION CHARACTERISTICS`, …): the server is dirty
    Uncarried,
}

/// Follows a client's setting changes.
#[derive(Debug, Default)]
pub struct SettingsTracker {
    pending: Vec<Change>,
    failed: bool,
    /// the client's unreported settings at login (`RESET ALL` returns to
    /// them)
    login: Vec<(String, String)>,
    /// changes that took effect on the client's server, for
    /// [`SettingsTracker::mark_server`]
    landed: Vec<Change>,
    /// the client changed session state that its next server will not
    /// have and the next client of this one must not inherit: the server
    /// gets `DISCARD ALL` when the client lets go of it
    pub dirtied: bool,
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
    /// A tracker for a client that logged in with `settings`.
    pub fn new(settings: &[(String, String)]) -> SettingsTracker {
        // transactions above READ COMMITTED read snapshots older than
        // acknowledged writes: no cache for such a client
        let strict = settings.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("default_transaction_isolation")
                && !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "read committed" | "read uncommitted"
                )
        });
        SettingsTracker {
            login: settings
                .iter()
                .filter(|(k, _)| !is_reported(k))
                .cloned()
                .collect(),
            unmodeled: strict,
            ..Default::default()
        }
    }

    /// Looks at a Query or Parse message for SET/RESET of an unreported
    /// setting, and for session state pgsift cannot carry.
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
        // set_config(…, false) changes the session (whether it is local
        // cannot be told from the text in general); a session-only feature
        // leaves state on the server. Either is seen every time: each makes
        // the server it runs on dirty.
        let set_config = has_set_config(text);
        let session_only = session_only_feature(text);
        if set_config {
            self.unmodeled = true;
            self.dirtied = true;
        }
        if let Some(what) = session_only {
            if what.starts_with("temporary") {
                self.unmodeled = true;
            }
            self.dirtied = true;
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
        } else if !set_config && session_only.is_none() && text.len() <= 4096 {
            self.last_plain.clear();
            self.last_plain.extend_from_slice(text);
        }
        first_use
    }

    /// One SET/RESET/DISCARD statement.
    fn note_change(&mut self, stmt: &str) {
        match classify(stmt) {
            Statement::Carried(c) => {
                if let Change::Set(name, _) | Change::Reset(name) = &c {
                    if !TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                        // results may differ from other clients' (the cache
                        // key holds the tracked settings only)
                        self.unmodeled = true;
                    }
                }
                self.pending.push(c);
            }
            Statement::Reported => {}
            Statement::Local => self.unmodeled = true,
            Statement::Uncarried => {
                self.unmodeled = true;
                self.dirtied = true;
            }
        }
    }

    /// True while changes the client made wait for the end of their
    /// transaction: the server already runs with them, the client's
    /// settings (and so its cache keys) do not show them yet.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
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
                        apply(c.clone(), settings, &self.login);
                        self.landed.push(c);
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

    /// The client changed unreported settings on its server itself: record
    /// on the server what it now holds, so that the next client gets them
    /// reset, and this one gets its login values back where a RESET put
    /// the server's defaults (they are no longer applied there).
    pub fn mark_server(&mut self, applied: &mut std::collections::HashMap<String, String>) {
        for c in self.landed.drain(..) {
            match c {
                Change::Set(k, v) => {
                    applied.insert(k.to_ascii_lowercase(), v);
                }
                Change::Reset(k) => {
                    applied.remove(&k.to_ascii_lowercase());
                }
                Change::ResetAll => applied.retain(|k, _| is_reported(k) || k == "role"),
                Change::DiscardAll => applied.retain(|k, _| is_reported(k)),
            }
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
            let value = String::from_utf8_lossy(v).into_owned();
            apply(Change::Set((*name).to_owned(), value), settings, &[]);
        }
    }
}

/// A tracked setting that the server reports with ParameterStatus.
fn is_reported(name: &str) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
        && !UNREPORTED.iter().any(|u| u.eq_ignore_ascii_case(name))
}

/// Applies a change to the client's settings; `login` holds its unreported
/// settings at login.
fn apply(c: Change, settings: &mut Vec<(String, String)>, login: &[(String, String)]) {
    let back_to_login = |settings: &mut Vec<(String, String)>, name: &str| {
        settings.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = login.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            settings.push(v.clone());
        }
    };
    match c {
        Change::Set(name, value) => match settings
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
        {
            Some(slot) => slot.1 = value,
            None => settings.push((name, value)),
        },
        Change::Reset(name) => back_to_login(settings, &name),
        Change::ResetAll | Change::DiscardAll => {
            let keep_role = c == Change::ResetAll;
            settings.retain(|(k, _)| is_reported(k) || keep_role && k.eq_ignore_ascii_case("role"));
            settings.extend(login.iter().cloned());
        }
    }
}

/// Reads a SET, RESET or DISCARD statement: `SET [SESSION] name {TO|=}
/// value`, `SET [SESSION] ROLE name`, `RESET name`, `RESET ALL`, `DISCARD
/// ALL`, and what they do when they are something else.
fn classify(sql: &str) -> Statement {
    // one statement (a multi-statement query is split before): only a
    // final `;` goes, not one inside a quoted value
    let stmt = sql.trim();
    let stmt = stmt.strip_suffix(';').unwrap_or(stmt).trim_end();
    let (first, rest) = split_word(stmt);
    match first.to_ascii_lowercase().as_str() {
        "discard" => match split_word(rest).0.to_ascii_lowercase().as_str() {
            "all" => Statement::Carried(Change::DiscardAll),
            // temporary tables and sequence state: gone or per server anyway
            _ => Statement::Local,
        },
        "reset" => {
            let (name, _) = split_word(rest);
            match name.to_ascii_lowercase().as_str() {
                "all" => Statement::Carried(Change::ResetAll),
                "session" => Statement::Uncarried,
                "time" => Statement::Reported,
                _ => match setting_name(name) {
                    Some(n) if is_reported(&n) => Statement::Reported,
                    Some(n) => Statement::Carried(Change::Reset(n)),
                    None => Statement::Uncarried,
                },
            }
        }
        "set" => {
            let (word, after) = split_word(rest);
            let (word, after) = if word.eq_ignore_ascii_case("session") {
                split_word(after)
            } else if word.eq_ignore_ascii_case("local") {
                return Statement::Local;
            } else {
                (word, after)
            };
            match word.to_ascii_lowercase().as_str() {
                "transaction" | "constraints" => return Statement::Local,
                "time" | "names" => return Statement::Reported,
                // SET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS,
                // SET SCHEMA, SET XML OPTION
                "session" | "authorization" | "characteristics" | "schema" | "xml" => {
                    return Statement::Uncarried
                }
                "role" if !after.starts_with('=') && !starts_with_to(after) => {
                    let value = after.trim();
                    return Statement::Carried(if value.eq_ignore_ascii_case("none") {
                        Change::Reset("role".into())
                    } else {
                        Change::Set("role".into(), value_item(value, false))
                    });
                }
                _ => {}
            }
            let Some(name) = setting_name(word) else {
                return Statement::Uncarried;
            };
            if is_reported(&name) {
                return Statement::Reported;
            }
            if name.starts_with("transaction_") {
                // transaction_isolation, _read_only, _deferrable: this
                // transaction's only
                return Statement::Local;
            }
            let value = if let Some(v) = after.strip_prefix('=') {
                v
            } else if starts_with_to(after) {
                &after[2..]
            } else {
                return Statement::Uncarried;
            };
            let value = value.trim();
            if value.eq_ignore_ascii_case("default") {
                return Statement::Carried(Change::Reset(name));
            }
            // search_path reads quoted names itself; any other setting gets
            // the identifier's text
            let keep_quotes = name == "search_path";
            let items: Vec<String> = list_items(value)
                .into_iter()
                .map(|i| value_item(i, keep_quotes))
                .collect();
            Statement::Carried(Change::Set(name, items.join(", ")))
        }
        _ => Statement::Local,
    }
}

/// The first word of `s` (up to white space or `=`) and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// `TO` followed by white space or a quote.
fn starts_with_to(s: &str) -> bool {
    s.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to"))
        && s[2..].starts_with(|c: char| c.is_whitespace() || c == '\'' || c == '"')
}

/// A setting's name as Postgres knows it: an identifier (a custom one may
/// have a dot), lower-case unless quoted; `None` for anything else.
fn setting_name(word: &str) -> Option<String> {
    if let Some(u) = UNREPORTED.iter().find(|u| u.eq_ignore_ascii_case(word)) {
        return Some((*u).to_owned());
    }
    let quoted = word.len() >= 2 && word.starts_with('"') && word.ends_with('"');
    let name = if quoted {
        &word[1..word.len() - 1]
    } else {
        word
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'));
    valid.then(|| {
        if quoted {
            name.to_owned()
        } else {
            name.to_ascii_lowercase()
        }
    })
}

/// The items of a SET's value list: split at the commas outside quotes.
fn list_items(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            // a doubled quote closes and reopens: the same either way
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                items.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim());
    items
}

/// One item of a SET's value list, as `set_config` takes it: a string
/// literal unquoted, a bare word folded to lower case as the parser folds
/// it, a quoted identifier unquoted (or kept: `keep_quotes`, for
/// search_path, which reads the quotes).
fn value_item(item: &str, keep_quotes: bool) -> String {
    if let Some(inner) = item.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    match item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
        Some(_) if keep_quotes => item.to_owned(),
        Some(inner) => inner.replace("\"\"", "\""),
        None => item.to_ascii_lowercase(),
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

/// True when running `sql` leaves session state on the server that pgsift
/// cannot carry to another: `set_config(…)` (whether local cannot be told
/// from the text in general) or a session-only feature.
pub fn leaves_session_state(sql: &[u8]) -> bool {
    has_set_config(sql) || session_only_feature(sql).is_some()
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

    fn set(name: &str, value: &str) -> Statement {
        Statement::Carried(Change::Set(name.into(), value.into()))
    }

    #[test]
    fn set_and_reset_of_unreported_settings_are_read_from_sql() {
        assert_eq!(
            classify("SET search_path TO app, public"),
            set("search_path", "app, public")
        );
        assert_eq!(
            classify("set session search_path = 'x';"),
            set("search_path", "x")
        );
        assert_eq!(
            classify("SET search_path TO \"$user\", App"),
            set("search_path", "\"$user\", app")
        );
        assert_eq!(
            classify("SET extra_float_digits = 3"),
            set("extra_float_digits", "3")
        );
        assert_eq!(
            classify("RESET search_path"),
            Statement::Carried(Change::Reset("search_path".into()))
        );
        assert_eq!(classify("RESET ALL"), Statement::Carried(Change::ResetAll));
        assert_eq!(
            classify("DISCARD ALL"),
            Statement::Carried(Change::DiscardAll)
        );
        // any other setting, custom ones too, and the role
        assert_eq!(classify("SET work_mem TO '8MB'"), set("work_mem", "8MB"));
        assert_eq!(
            classify("SET statement_timeout=5000"),
            set("statement_timeout", "5000")
        );
        assert_eq!(
            classify("SET app.tenant_id = '42'"),
            set("app.tenant_id", "42")
        );
        assert_eq!(
            classify("set lock_timeout to default"),
            Statement::Carried(Change::Reset("lock_timeout".into()))
        );
        assert_eq!(classify("SET ROLE Reader"), set("role", "reader"));
        assert_eq!(
            classify("SET SESSION ROLE \"Reader\""),
            set("role", "Reader")
        );
        assert_eq!(classify("SET role = 'x'"), set("role", "x"));
        assert_eq!(
            classify("SET ROLE NONE"),
            Statement::Carried(Change::Reset("role".into()))
        );
        // reported ones are followed through ParameterStatus
        assert_eq!(classify("SET TimeZone = 'UTC'"), Statement::Reported);
        assert_eq!(classify("SET TIME ZONE 'UTC'"), Statement::Reported);
        assert_eq!(classify("RESET datestyle"), Statement::Reported);
        // what ends with the transaction
        assert_eq!(classify("SET LOCAL search_path TO x"), Statement::Local);
        assert_eq!(
            classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Statement::Local
        );
        assert_eq!(classify("SET CONSTRAINTS ALL DEFERRED"), Statement::Local);
        // what cannot be carried
        assert_eq!(
            classify("SET SESSION AUTHORIZATION reader"),
            Statement::Uncarried
        );
        assert_eq!(
            classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Statement::Uncarried
        );
        assert_eq!(
            classify("RESET SESSION AUTHORIZATION"),
            Statement::Uncarried
        );
    }

    /// The client's settings, sorted, after `sql` ran in a transaction of
    /// its own.
    fn after(
        t: &mut SettingsTracker,
        s: &mut Vec<(String, String)>,
        sql: &str,
    ) -> Vec<(String, String)> {
        t.observe(b'Q', &query_msg(sql), true);
        t.ready(b'I', s);
        s.sort();
        s.clone()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reset_returns_to_the_login_values() {
        let login = pairs(&[("statement_timeout", "100")]);
        let mut t = SettingsTracker::new(&login);
        let mut s = login.clone();
        s.push(("TimeZone".into(), "UTC".into()));
        let sql = "SET statement_timeout = 5; SET work_mem = '8MB'; SET ROLE r";
        assert_eq!(
            after(&mut t, &mut s, sql),
            pairs(&[
                ("TimeZone", "UTC"),
                ("role", "r"),
                ("statement_timeout", "5"),
                ("work_mem", "8MB")
            ])
        );
        let reset = after(&mut t, &mut s, "RESET statement_timeout");
        assert!(reset.contains(&("statement_timeout".into(), "100".into())));
        // RESET ALL keeps the role, DISCARD ALL does not
        assert_eq!(
            after(&mut t, &mut s, "RESET ALL"),
            pairs(&[
                ("TimeZone", "UTC"),
                ("role", "r"),
                ("statement_timeout", "100")
            ])
        );
        assert_eq!(
            after(&mut t, &mut s, "DISCARD ALL"),
            pairs(&[("TimeZone", "UTC"), ("statement_timeout", "100")])
        );
    }

    #[test]
    fn values_are_read_as_the_parser_reads_them() {
        assert_eq!(classify("SET app.ids = '1,2'"), set("app.ids", "1,2"));
        assert_eq!(classify("SET app.x = 'a;b';"), set("app.x", "a;b"));
        assert_eq!(classify("SET app.x = \"Foo\""), set("app.x", "Foo"));
        assert_eq!(classify("SET app.x = 'it''s'"), set("app.x", "it's"));
        assert_eq!(
            classify("SET search_path = \"My, Schema\", public"),
            set("search_path", "\"My, Schema\", public")
        );
        assert_eq!(
            classify("SET transaction_isolation = 'serializable'"),
            Statement::Local
        );
        assert_eq!(
            classify("SET SESSION transaction_read_only = on"),
            Statement::Local
        );
    }

    #[test]
    fn any_text_is_classified_without_a_panic() {
        let text = "SET SESSION \"é€x\" TO 'a€,b''c', \"d\"é; RESET ROLE é DISCARD ALL TO";
        for (i, _) in text.char_indices() {
            for (j, _) in text.char_indices().skip(i) {
                classify(&text[i..j]);
            }
            classify(&text[i..]);
        }
        assert_eq!(classify("SET \"é\" = 1"), Statement::Uncarried);
    }

    #[test]
    fn a_reset_leaves_the_server_at_its_default_and_the_client_at_its_login_value() {
        let login = pairs(&[("statement_timeout", "100")]);
        let mut t = SettingsTracker::new(&login);
        let mut s = login.clone();
        // pgsift applied the login value at attach
        let mut applied: std::collections::HashMap<String, String> =
            [("statement_timeout".to_string(), "100".to_string())].into();
        after(&mut t, &mut s, "SET work_mem = '8MB'");
        t.mark_server(&mut applied);
        assert_eq!(applied.get("work_mem").map(String::as_str), Some("8MB"));
        after(&mut t, &mut s, "RESET statement_timeout; RESET work_mem");
        t.mark_server(&mut applied);
        assert!(
            applied.is_empty(),
            "the server holds its defaults: {applied:?}"
        );
        assert_eq!(s, login, "the client its login values");
    }

    #[test]
    fn a_strict_isolation_at_login_turns_the_cache_off() {
        let t = SettingsTracker::new(&pairs(&[("default_transaction_isolation", "serializable")]));
        assert!(t.unmodeled);
        let t = SettingsTracker::new(&pairs(&[(
            "default_transaction_isolation",
            "read committed",
        )]));
        assert!(!t.unmodeled);
    }

    #[test]
    fn state_that_cannot_be_carried_dirties_the_server_every_time() {
        let mut t = SettingsTracker::default();
        for sql in [
            "SELECT set_config('statement_timeout', '1', false)",
            "SELECT pg_advisory_lock(1)",
            "CREATE TEMP TABLE t (x int)",
            "LISTEN chan",
            "SET SESSION AUTHORIZATION reader",
        ] {
            for _ in 0..2 {
                t.observe(b'Q', &query_msg(sql), true);
                assert!(std::mem::take(&mut t.dirtied), "{sql}");
            }
        }
        for sql in [
            "SELECT 1",
            "SET statement_timeout = 5",
            "SET LOCAL work_mem = '1MB'",
            "SET ROLE r",
        ] {
            t.observe(b'Q', &query_msg(sql), true);
            assert!(!t.dirtied, "{sql}");
        }
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
        assert!(q("SET statement_timeout = 5"));
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
