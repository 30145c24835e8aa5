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
//! SQL `PREPARE`, session advisory locks, DO blocks and procedures, which
//! may do any of these out of sight) makes the client's server *dirty*: it
//! gets `DISCARD ALL` before anyone else uses it.
//!
//! Statements are told by their leading words read as Postgres reads them:
//! past whitespace and comments (`/* tenant */ SET search_path TO t2` is a
//! SET). pgsift's parser reads text with `standard_conforming_strings` on;
//! in a session that has it off, a backslash in a plain literal escapes the
//! next character, so pgsift may see a comment or a literal where the
//! server runs code. Such a text (one with a backslash) is not read at all:
//! the session counts as unmodeled and its server as dirty.

use crate::sql::comments;

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
    /// `standard_conforming_strings` is off for this client: at login, or
    /// as its server last reported it
    strings_off: bool,
    /// a statement that may change `standard_conforming_strings` was sent
    /// and the server has not answered everything since (its report of
    /// the new value may still be on its way)
    strings_changing: bool,
    /// the client put the temporary schema in its search_path (`SET
    /// search_path TO pg_temp, …` makes a plain CREATE TABLE a temporary
    /// one): each of its statements dirties its server
    temp_path: bool,
}

/// What pgsift calls temporary tables among the session-only features.
pub const TEMPORARY: &str = "temporary tables (they stay on one server)";

const ADVISORY: &str =
    "session-level advisory locks (released only when that server's session ends)";

/// Features that need one server for the whole session and so cannot work
/// in transaction mode, recognised by the first word of a statement.
const SESSION_ONLY: &[(&str, &str)] = &[
    (
        "listen",
        "LISTEN (notifications arrive only while the client holds a server)",
    ),
    (
        "prepare",
        "SQL-level PREPARE (the statement stays on one server)",
    ),
    (
        "declare",
        "cursors declared WITH HOLD (they stay on one server)",
    ),
];

/// Calls `each` with every statement of `sql` (split only when it has a
/// `;`: the common single statement costs no allocation).
fn for_each_statement(sql: &[u8], mut each: impl FnMut(&[u8])) {
    if memchr::memchr(b';', sql).is_none() {
        each(sql);
        return;
    }
    let text = String::from_utf8_lossy(sql);
    for stmt in crate::sql::shape::split_statements(&text) {
        each(stmt.as_bytes());
    }
}

/// Which session-only feature a statement uses, if any: one that starts
/// with LISTEN, PREPARE or DECLARE … WITH HOLD (past any comments), any
/// statement of it; a session-level advisory lock; a temporary relation.
pub fn session_only_feature(sql: &[u8]) -> Option<&'static str> {
    let mut found = None;
    for_each_statement(sql, |stmt| {
        if found.is_none() {
            found = head_feature(stmt);
        }
    });
    if found.is_some() {
        return found;
    }
    if contains_ci(sql, b"advisory_lock")
        && (contains_ci(sql, b"pg_advisory_lock") || contains_ci(sql, b"pg_try_advisory_lock"))
    {
        return Some(ADVISORY);
    }
    crate::sql::temporary::uses_temporary(sql).then_some(TEMPORARY)
}

/// The session-only feature one statement's first word names.
fn head_feature(stmt: &[u8]) -> Option<&'static str> {
    let word = comments::first_word(stmt);
    // cheap: most statements start with another letter
    if !matches!(word.first(), Some(b'l' | b'L' | b'p' | b'P' | b'd' | b'D')) {
        return None;
    }
    let (start, what) = SESSION_ONLY
        .iter()
        .find(|(start, _)| word.eq_ignore_ascii_case(start.as_bytes()))?;
    if *start == "declare" && !has_words(stmt, b"with", b"hold") {
        return None;
    }
    Some(what)
}

/// True when `first` and `second` follow each other as words of `stmt`
/// (comments count as space).
fn has_words(stmt: &[u8], first: &[u8], second: &[u8]) -> bool {
    let text = comments::blank_comments(stmt);
    let mut words = text
        .split(|&b| comments::is_space(b))
        .filter(|w| !w.is_empty());
    let mut previous: &[u8] = b"";
    words.any(|w| {
        let found = previous.eq_ignore_ascii_case(first) && w.eq_ignore_ascii_case(second);
        previous = w;
        found
    })
}

/// True when a statement of `sql` runs code pgsift does not see: a DO block
/// or a procedure (CALL). It may create temporary tables, change settings
/// or the role, and write anything.
pub fn runs_unseen_code(sql: &[u8]) -> bool {
    let mut found = false;
    for_each_statement(sql, |stmt| {
        let word = comments::first_word(stmt);
        found |= word.eq_ignore_ascii_case(b"do") || word.eq_ignore_ascii_case(b"call");
    });
    found
}

/// A boolean setting's value that is not clearly on (Postgres takes `on`,
/// `true`, `yes`, `1` and their unique prefixes).
fn is_off(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "tr" | "tru" | "y" | "ye"
    )
}

impl SettingsTracker {
    /// A tracker for a client that logged in with `settings`, on a pool
    /// whose fresh servers report `server` (ParameterStatus; what the
    /// client did not set is the server's).
    pub fn new(
        settings: &[(String, String)],
        server: &std::collections::HashMap<String, String>,
    ) -> SettingsTracker {
        let value = |name: &str| {
            settings
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .or_else(|| {
                    server
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                })
        };
        // transactions above READ COMMITTED read snapshots older than
        // acknowledged writes: no cache for such a client
        let strict = settings.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("default_transaction_isolation")
                && !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "read committed" | "read uncommitted"
                )
        });
        let temp_path = value("search_path").is_some_and(|p| contains_ci(p.as_bytes(), b"pg_temp"));
        SettingsTracker {
            login: settings
                .iter()
                .filter(|(k, _)| !is_reported(k))
                .cloned()
                .collect(),
            unmodeled: strict || temp_path,
            strings_off: value("standard_conforming_strings").is_some_and(is_off),
            temp_path,
            ..Default::default()
        }
    }

    /// True when pgsift may read `text` otherwise than the server does:
    /// `standard_conforming_strings` is (or may just have been turned) off
    /// and the text has a backslash.
    pub fn misreads(&self, text: &[u8]) -> bool {
        (self.strings_off || self.strings_changing) && memchr::memchr(b'\\', text).is_some()
    }

    /// True while pgsift reads this client's backslashes otherwise than
    /// the server may (see [`SettingsTracker::misreads`]).
    pub fn lax_strings(&self) -> bool {
        self.strings_off || self.strings_changing
    }

    /// The server has answered everything the client sent: reports of
    /// changed settings have arrived.
    pub fn settled(&mut self) {
        self.strings_changing = false;
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
        if contains_ci(text, b"standard_conforming_strings") {
            self.strings_changing = true;
        }
        if self.misreads(text) {
            // what the server runs cannot be told (a SET, a temporary
            // table, LISTEN may hide where pgsift sees a comment or a
            // literal): out of the cache, and the server reset after it
            self.unmodeled = true;
            self.dirtied = true;
            return false;
        }
        if self.temp_path {
            // any CREATE may make a temporary relation
            self.dirtied = true;
        }
        // A driver re-sending the text it sent last (the unnamed statement
        // of every execution) changes nothing that text did not change the
        // first time; only SET/RESET/DISCARD must be seen each time.
        if !self.last_plain.is_empty() && self.last_plain == text {
            return false;
        }
        let mut first_use = false;
        // set_config(…, false) changes the session (whether it is local
        // cannot be told from the text in general); a session-only feature
        // leaves state on the server; a DO block or procedure may do
        // either. Each is seen every time: each makes the server it runs
        // on dirty.
        let set_config = has_set_config(text);
        let unseen = runs_unseen_code(text);
        let session_only = session_only_feature(text);
        if set_config || unseen {
            self.unmodeled = true;
            self.dirtied = true;
        }
        if let Some(what) = session_only {
            if what == TEMPORARY {
                self.unmodeled = true;
                // (a SET or set_config of a search_path with pg_temp)
                self.temp_path |=
                    contains_ci(text, b"search_path") && contains_ci(text, b"pg_temp");
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
        } else if !set_config && !unseen && session_only.is_none() && text.len() <= 4096 {
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
            if *name == "standard_conforming_strings" {
                self.strings_off = is_off(&value);
            }
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
    // comments are space between the words
    let sql = comments::blank_comments_str(sql);
    // one statement (a multi-statement query is split before): only a
    // final `;` goes, not one inside a quoted value
    let stmt = sql.trim_matches(is_space);
    let stmt = stmt
        .strip_suffix(';')
        .unwrap_or(stmt)
        .trim_end_matches(is_space);
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
                    let value = after.trim_matches(is_space);
                    if value.eq_ignore_ascii_case("none") {
                        return Statement::Carried(Change::Reset("role".into()));
                    }
                    return match value_item(value, false) {
                        Some(role) => Statement::Carried(Change::Set("role".into(), role)),
                        None => Statement::Uncarried,
                    };
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
            let value = value.trim_matches(is_space);
            if value.eq_ignore_ascii_case("default") {
                return Statement::Carried(Change::Reset(name));
            }
            // search_path reads quoted names itself; any other setting gets
            // the identifier's text
            let keep_quotes = name == "search_path";
            let items: Option<Vec<String>> = list_items(value)
                .into_iter()
                .map(|i| value_item(i, keep_quotes))
                .collect();
            match items {
                Some(items) => Statement::Carried(Change::Set(name, items.join(", "))),
                // a value pgsift cannot read for sure
                None => Statement::Uncarried,
            }
        }
        _ => Statement::Local,
    }
}

/// Postgres's whitespace (which Unicode's is not: a no-break space is part
/// of a name to it).
fn is_space(c: char) -> bool {
    c.is_ascii() && comments::is_space(c as u8)
}

/// The first word of `s` (up to white space or `=`) and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_space);
    let end = s.find(|c: char| is_space(c) || c == '=').unwrap_or(s.len());
    (&s[..end], s[end..].trim_start_matches(is_space))
}

/// `TO` followed by white space or a quote.
fn starts_with_to(s: &str) -> bool {
    s.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to"))
        && s[2..].starts_with(|c: char| is_space(c) || c == '\'' || c == '"')
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
                items.push(value[start..i].trim_matches(is_space));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim_matches(is_space));
    items
}

/// One item of a SET's value list, as `set_config` takes it: a string
/// literal unquoted (dollar-quoted too), a bare word or number folded to
/// lower case as the parser folds it, a quoted identifier unquoted (or
/// kept: `keep_quotes`, for search_path, which reads the quotes). `None`
/// for anything else (`E'…'`, `U&'…'`, literals run together): pgsift does
/// not guess what the server makes of it.
fn value_item(item: &str, keep_quotes: bool) -> Option<String> {
    let lone = |inner: &str, q: char| {
        let doubled = format!("{q}{q}");
        !inner.replace(&doubled, "").contains(q)
    };
    if let Some(inner) = item.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')) {
        return lone(inner, '\'').then(|| inner.replace("''", "'"));
    }
    if let Some(inner) = item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
        if !lone(inner, '"') {
            return None;
        }
        return Some(if keep_quotes {
            item.to_owned()
        } else {
            inner.replace("\"\"", "\"")
        });
    }
    if let Some(after) = item.strip_prefix('$') {
        // $tag$…$tag$, the whole item
        let tag_len = after.find('$')? + 2;
        let tag = &item[..tag_len];
        let inner = item[tag_len..].strip_suffix(tag)?;
        return (!inner.contains(tag)).then(|| inner.to_owned());
    }
    let bare = !item.is_empty()
        && item
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | '$'));
    bare.then(|| item.to_ascii_lowercase())
}

/// True when a statement starts with SET, RESET or DISCARD (after any
/// whitespace and comments).
fn is_change_head(stmt: &[u8]) -> bool {
    let word = comments::first_word(stmt);
    [&b"set"[..], b"reset", b"discard"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// True when running `sql` leaves session state on the server that pgsift
/// cannot carry to another: `set_config(…)` (whether local cannot be told
/// from the text in general), a session-only feature, or code pgsift does
/// not see (DO, CALL).
pub fn leaves_session_state(sql: &[u8]) -> bool {
    has_set_config(sql) || runs_unseen_code(sql) || session_only_feature(sql).is_some()
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
        let mut t = SettingsTracker::new(&login, &Default::default());
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
        let mut t = SettingsTracker::new(&login, &Default::default());
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
        let t = SettingsTracker::new(
            &pairs(&[("default_transaction_isolation", "serializable")]),
            &Default::default(),
        );
        assert!(t.unmodeled);
        let t = SettingsTracker::new(
            &pairs(&[("default_transaction_isolation", "read committed")]),
            &Default::default(),
        );
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
        // past comments, in any statement of a text
        assert!(session_only_feature(b"/* c */ LISTEN chan").is_some());
        assert!(session_only_feature(b"-- c\rLISTEN chan").is_some());
        assert!(session_only_feature(b"SELECT 1; LISTEN chan").is_some());
        assert!(
            session_only_feature(b"DECLARE c CURSOR /* x */ WITH\n HOLD FOR SELECT 1").is_some()
        );
        assert!(session_only_feature(b"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1").is_none());
        assert!(session_only_feature(b"-- LISTEN chan\nSELECT 1").is_none());
    }

    #[test]
    fn comments_before_and_inside_a_set_hide_nothing() {
        for sql in [
            "/* tenant */ SET search_path TO s2",
            "-- tenant\nSET search_path TO s2",
            "-- tenant\rSET search_path TO s2",
            "\x0b/* a /* nested */ one */SET /* x */ search_path -- y\nTO s2 -- z",
        ] {
            let mut t = SettingsTracker::default();
            let mut s = vec![];
            assert_eq!(
                after(&mut t, &mut s, sql),
                pairs(&[("search_path", "s2")]),
                "{sql:?}"
            );
            assert!(!t.unmodeled, "{sql:?}");
            assert_eq!(classify(sql), set("search_path", "s2"), "{sql:?}");
        }
        let q = |sql: &str| {
            let mut t = SettingsTracker::default();
            t.observe(b'Q', &query_msg(sql), true);
            (t.unmodeled, t.dirtied)
        };
        assert_eq!(q("/* drop privileges */ SET ROLE alice"), (true, false));
        assert_eq!(
            q("-- x\nSET default_transaction_isolation = 'repeatable read'"),
            (true, false)
        );
        assert_eq!(q("/* x */ SET SESSION AUTHORIZATION alice"), (true, true));
        assert_eq!(q("SELECT 1; /* x */ RESET ROLE"), (true, false));
        assert_eq!(q("/* SET ROLE alice */ SELECT 1"), (false, false));
        assert_eq!(q("-- SET ROLE alice"), (false, false));
        // a comment repeated with the SET is seen each time
        let mut t = SettingsTracker::default();
        let mut s = vec![];
        after(&mut t, &mut s, "/* x */ SET search_path TO a");
        after(&mut t, &mut s, "RESET search_path");
        assert_eq!(
            after(&mut t, &mut s, "/* x */ SET search_path TO a").len(),
            1
        );
    }

    #[test]
    fn values_pgsift_cannot_read_for_sure_are_not_carried() {
        for sql in [
            "SET search_path TO E's2'",
            "SET search_path TO U&'s2'",
            "SET app.x = 'a' 'b'",
            "SET ROLE E'alice'",
            "SET app.x = $$a,b$$",
        ] {
            assert_eq!(classify(sql), Statement::Uncarried, "{sql}");
        }
        assert_eq!(classify("SET app.x = $t$a b$t$"), set("app.x", "a b"));
        assert_eq!(classify("SET app.x = -1.5"), set("app.x", "-1.5"));
    }

    #[test]
    fn do_blocks_procedures_and_temporary_relations_leave_the_cache_and_dirty_the_server() {
        for sql in [
            "DO $$BEGIN CREATE TEMP TABLE posts (id int); END$$",
            "/* c */ do $$BEGIN SET ROLE alice; END$$",
            "CALL make_temp()",
            "SELECT 1; CALL p()",
            "CREATE TABLE pg_temp.posts (id int)",
            "CREATE LOCAL TEMP TABLE posts (id int)",
            "/* c */ CREATE TEMP TABLE posts (id int)",
            "SELECT 1 AS id INTO TEMP posts",
            "CREATE TEMP TABLE posts AS SELECT 1 AS id",
        ] {
            let mut t = SettingsTracker::default();
            for _ in 0..2 {
                t.observe(b'Q', &query_msg(sql), false);
                assert!(t.unmodeled, "{sql}");
                assert!(std::mem::take(&mut t.dirtied), "{sql}: every time");
            }
            assert!(leaves_session_state(sql.as_bytes()), "{sql}");
        }
        // the temporary schema first in the path: a plain CREATE TABLE
        // makes a temporary table
        let mut t = SettingsTracker::default();
        t.observe(b'Q', &query_msg("SET search_path TO pg_temp, public"), true);
        t.dirtied = false;
        t.observe(b'Q', &query_msg("CREATE TABLE posts (id int)"), true);
        assert!(t.unmodeled && t.dirtied);
        let login = pairs(&[("search_path", "pg_temp,public")]);
        assert!(SettingsTracker::new(&login, &Default::default()).unmodeled);
        // a table made in pg_temp leaves the search_path as it was
        let mut t = SettingsTracker::default();
        t.observe(
            b'Q',
            &query_msg("CREATE TABLE pg_temp.posts (id int)"),
            true,
        );
        t.dirtied = false;
        t.observe(b'Q', &query_msg("CREATE TABLE posts (id int)"), true);
        assert!(!t.dirtied);
        for sql in [
            "SELECT temp FROM weather",
            "DOCUMENT",
            "CALLS",
            "SELECT 'CALL x'",
        ] {
            let mut t = SettingsTracker::default();
            t.observe(b'Q', &query_msg(sql), false);
            assert!(!t.unmodeled && !t.dirtied, "{sql}");
        }
    }

    #[test]
    fn backslashes_are_not_read_while_standard_conforming_strings_is_off() {
        let hidden = "SELECT title, 'x\\' AS a -- ' , random() AS r\nFROM posts";
        // on: a backslash is an ordinary character
        let mut t = SettingsTracker::default();
        t.observe(b'Q', &query_msg(hidden), false);
        assert!(!t.unmodeled && !t.misreads(hidden.as_bytes()));
        // off at login, or on the pool's servers
        let off = pairs(&[("standard_conforming_strings", "off")]);
        let mut t = SettingsTracker::new(&off, &Default::default());
        assert!(t.misreads(hidden.as_bytes()) && !t.misreads(b"SELECT 1"));
        t.observe(b'Q', &query_msg("SELECT 1"), false);
        assert!(!t.unmodeled, "no backslash: read as the server reads it");
        t.observe(b'Q', &query_msg(hidden), false);
        assert!(t.unmodeled && t.dirtied);
        let server: std::collections::HashMap<String, String> =
            [("standard_conforming_strings".to_string(), "off".to_string())].into();
        assert!(SettingsTracker::new(&[], &server).misreads(b"\\"));
        let on = pairs(&[("standard_conforming_strings", "on")]);
        assert!(!SettingsTracker::new(&on, &server).misreads(b"\\"));
        // turned off by a SET: from the moment it is sent until the server
        // has answered everything; then as the server reported
        let mut t = SettingsTracker::default();
        let mut s = vec![];
        t.observe(
            b'Q',
            &query_msg("SET standard_conforming_strings = off"),
            false,
        );
        assert!(t.misreads(b"\\"), "the report may still be on its way");
        t.reported(b"standard_conforming_strings\0off\0", &mut s);
        t.settled();
        assert!(t.misreads(b"\\"));
        t.observe(b'Q', &query_msg("RESET standard_conforming_strings"), false);
        t.reported(b"standard_conforming_strings\0on\0", &mut s);
        t.settled();
        assert!(!t.misreads(b"\\"));
        // a text seen before is read again once the setting is off
        let mut t = SettingsTracker::default();
        t.observe(b'Q', &query_msg(hidden), false);
        t.reported(b"standard_conforming_strings\0off\0", &mut s);
        t.observe(b'Q', &query_msg(hidden), false);
        assert!(t.unmodeled);
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
