//! Transaction-mode bookkeeping of the extended protocol: named prepared
//! statements that survive moving between servers, and the order of replies.
//! Session mode uses it only with `pool.prepare_unnamed_statements`, for
//! unnamed statements (a client's named ones keep their names there).
//!
//! A client's statement names are private to it; on the server pgsift uses a
//! shared name derived from the query text, parameter types and the
//! client's `search_path` (`pgsift_<hash>`), so every client with the same
//! statement under the same search path shares one server-side statement. On whichever server a client lands, pgsift
//! prepares the statement lazily (injecting a Parse before a Bind or
//! Describe that needs it), skips a Parse the server already has (answering
//! ParseComplete itself), answers Close of a statement itself, and closes the
//! least recently used statement when a server would exceed
//! `max_prepared_statements`.
//!
//! Because some replies are made up and some are swallowed, pgsift keeps the
//! list of replies the client is owed, in order ([`Reply`]). Server messages
//! are matched against it, made-up replies are emitted when their turn comes,
//! and after an error the server skips to the next Sync, so does the list.

use crate::backend::server::{is_discard_tag, note_parameter_status};
use crate::backend::ServerConnection;
use crate::protocol::extended::{self, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::frame::{
    is_backend_type, peek_frame, valid_ready, FrameError, MAX_SERVER_MESSAGE,
};
use crate::sql::comments;
use bytes::{Buf, Bytes};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a forwarded or injected message's replies end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// exactly this many messages (ParseComplete, BindComplete, …)
    Count(u8),
    /// an Execute: rows, then CommandComplete / EmptyQuery / PortalSuspended
    Execute,
    /// Query, FunctionCall, Sync: everything up to ReadyForQuery
    UntilReady,
}

/// One reply the client is owed, in order.
#[derive(Debug)]
enum Reply {
    /// replies the server will send for a message pgsift sent it
    Server {
        expect: Expect,
        /// false for messages pgsift injected: their replies are swallowed
        forward: bool,
        /// the shared statement a Parse prepares (forgotten if it fails)
        parse_of: Option<Arc<str>>,
        /// the shared statement a Bind uses (closed and prepared afresh if
        /// its cached plan went stale)
        bound: Option<Arc<str>>,
        /// the shared statement an injected Close drops (if the server
        /// skips the Close after an error, it still holds the statement)
        close_of: Option<Arc<str>>,
        /// a Sync: after an error the server skips everything up to one
        /// (a Query or FunctionCall too)
        sync: bool,
        /// what the message did to the client's statement names
        undo: Option<Box<Undo>>,
    },
    /// a reply pgsift makes up (ParseComplete, CloseComplete) and the
    /// client's statement name its message defined or dropped
    Made(&'static [u8], Option<Box<Undo>>),
    /// the client ended a COPY (CopyDone / CopyFail): no reply, but Syncs
    /// before it were ignored by a server in copy-in mode
    CopyEnd,
}

/// What a message did to the client's statement names, undone when the
/// server does not do it.
#[derive(Debug)]
enum Undo {
    /// a Parse or Close of one name, and what the name meant before: put
    /// back when the server skips that message after an error, or it fails
    /// (unless the name has changed again since)
    Name {
        name: Vec<u8>,
        /// the statement it named before
        before: Option<ClientStatement>,
        /// the shared statement the message made it name (none: dropped)
        after: Option<Arc<str>>,
    },
    /// the names a DISCARD ALL / DEALLOCATE ALL the message runs freed:
    /// given back (those not defined again since) unless the server
    /// reports the reset, which takes this off the message's entry
    Reset(HashMap<Vec<u8>, ClientStatement>),
}

/// Most distinct statements one multiplexed batch may use.
const MUX_MAX_STATEMENTS: usize = 4;

/// A client batch for a multiplexed server.
pub struct MuxBatch {
    /// the messages, statement names rewritten to shared ones
    pub batch: Vec<Bytes>,
    /// the statements it uses: shared name and the Parse under it
    pub needs: Vec<(Arc<str>, Bytes)>,
    /// the batch began with a Parse pgsift answers itself: its
    /// ParseComplete goes to the client before the server's replies
    pub made_parse: bool,
}

/// A client's prepared statement.
#[derive(Debug, Clone)]
struct ClientStatement {
    shared: Arc<str>,
    /// the Parse message under the shared name
    parse: Bytes,
    /// a server shared by several clients may run it: the server plans it
    /// (it cannot open a transaction or SET anything) and it takes no
    /// session-only lock, which would then be everyone's
    multiplexable: bool,
    /// each execution leaves session state on the server (set_config, a
    /// session-only feature): the server it runs on is dirty
    dirties: bool,
}

impl ClientStatement {
    /// The client's statement `p`, under the shared name `shared`;
    /// `lax_strings`: the client's `standard_conforming_strings` is (or may
    /// be) off, so a text with a backslash may do what pgsift cannot see.
    fn new(shared: Arc<str>, p: &extended::ParseMsg<'_>, lax_strings: bool) -> ClientStatement {
        let dirties = super::settings::leaves_session_state(p.query)
            || lax_strings && memchr::memchr(b'\\', p.query).is_some();
        ClientStatement {
            parse: extended::build_parse(&shared, p),
            shared,
            multiplexable: plannable(p.query) && !dirties,
            dirties,
        }
    }
}

/// Numbers of the clients' pipelines (0: none).
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// Per-client transaction-mode state.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// this client's number, for [`ServerConnection::unnamed_of`]
    client: u64,
    statements: HashMap<Vec<u8>, ClientStatement>,
    replies: VecDeque<Reply>,
    /// `pool.prepare_unnamed_statements`: a repeated unnamed Parse of a
    /// plannable statement becomes a shared named statement on the server
    pub promote_unnamed: bool,
    /// client statement names are mapped to shared ones (transaction mode);
    /// in session mode a client's named statements stay its own, under its
    /// own names, on the server it keeps
    rename_named: bool,
    /// hashes of the last unnamed statements seen: the second sighting of
    /// one is promoted (a one-off statement costs the server no slot)
    recent_unnamed: [u64; RECENT_UNNAMED],
    recent_next: usize,
    /// the server sent something the list did not expect: do not reuse it
    pub desync: bool,
    /// the last batch of client messages held a Flush
    flush_seen: bool,
    /// the client's `search_path` as part of every shared name it uses (0:
    /// none set): the same text under another search path may name another
    /// table, so it is another server statement
    pub salt: u64,
    /// an error came before the client sent its Sync: the server ignores
    /// everything up to that Sync, and so does the bookkeeping
    skipping: bool,
    /// the server is in copy-in mode and neither the client nor the server
    /// (an ErrorResponse: the copy failed) has ended the copy
    copy_in: bool,
    /// the client's transaction has failed (its statements are refused
    /// until it ends): a DEALLOCATE goes to the server as it is
    pub failed_transaction: bool,
    /// the client bound a statement that leaves session state on the
    /// server (taken by the session, which resets that server)
    pub dirtied: bool,
    /// the client's `standard_conforming_strings` is (or may be) off (set
    /// by the session): a statement with a backslash dirties its server
    pub lax_strings: bool,
    /// names freed by a DISCARD ALL / DEALLOCATE ALL Parse, for the entry of
    /// the Execute (or else Sync) after it to carry ([`Undo::Reset`])
    pending_reset: Option<HashMap<Vec<u8>, ClientStatement>>,
    /// Queries and FunctionCalls the server skipped after an error: the
    /// ReadyForQuery the session counted for each will not come (taken by
    /// the session)
    pub skipped_ready: usize,
}

/// Unnamed statements remembered for promotion on their second sighting.
const RECENT_UNNAMED: usize = 8;

/// The hash a statement's shared name is made of.
/// `salt`: [`search_path_salt`] of the client (0: none, nothing is added).
fn statement_hash(query: &[u8], param_types: &[u8], salt: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(query);
    h.update(&[0]);
    h.update(param_types);
    if salt != 0 {
        h.update(&salt.to_le_bytes());
    }
    h.digest()
}

fn name_of(hash: u64) -> Arc<str> {
    format!("pgsift_{hash:016x}").into()
}

/// What a client's `search_path` adds to its statements' shared names
/// (0 when it has set none: the server default is the same for everyone).
pub fn search_path_salt(settings: &[(String, String)]) -> u64 {
    settings
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("search_path"))
        .map_or(0, |(_, v)| xxhash_rust::xxh3::xxh3_64(v.as_bytes()) | 1)
}

/// The shared server-side name of a statement (no search path set).
pub fn shared_name(query: &[u8], param_types: &[u8]) -> Arc<str> {
    name_of(statement_hash(query, param_types, 0))
}

/// True for statements the server plans (and so gains from keeping
/// prepared): SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE,
/// after any whitespace, comments and opening parentheses.
/// Utility statements (SET, BEGIN, DDL, …) are left unnamed.
pub fn plannable(query: &[u8]) -> bool {
    let mut rest = comments::skip_space_and_comments(query);
    while let Some(after) = rest.strip_prefix(b"(") {
        rest = comments::skip_space_and_comments(after);
    }
    let word = comments::first_word(rest);
    [
        &b"select"[..],
        b"insert",
        b"update",
        b"delete",
        b"merge",
        b"with",
        b"values",
        b"table",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// Is this ErrorResponse the server's "cached plan must not change result
/// type" (a prepared SELECT * after its table's columns changed, or the
/// same text under another search_path)?
pub(crate) fn is_stale_plan_error(msg: &[u8]) -> bool {
    let f = crate::protocol::messages::parse_error_fields(msg.get(5..).unwrap_or_default());
    // the routine name is not translated (lc_messages); the message is
    f.code == "0A000"
        && (f.routine == "RevalidateCachedQuery"
            || f.message
                .starts_with("cached plan must not change result type"))
}

/// Output towards the server: runs of untouched client bytes and rewritten
/// or injected messages, in order.
struct Out<'a> {
    chunk: &'a Bytes,
    run_start: usize,
    dest: &'a mut Vec<Bytes>,
}

impl Out<'_> {
    fn cut(&mut self, at: usize, resume: usize) {
        if at > self.run_start {
            self.dest.push(self.chunk.slice(self.run_start..at));
        }
        self.run_start = resume;
    }
}

impl Pipeline {
    /// A client's state; `promote_unnamed` is `pool.prepare_unnamed_statements`,
    /// `rename_named` is true in transaction mode.
    pub fn new(promote_unnamed: bool, rename_named: bool) -> Pipeline {
        Pipeline {
            client: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            promote_unnamed,
            rename_named,
            ..Pipeline::default()
        }
    }

    /// True when no reply is owed.
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty() && !self.skipping
    }

    /// Forgets the replies owed (the server is gone).
    pub fn reset_replies(&mut self) {
        self.replies.clear();
    }

    /// Rewrites a batch of complete client messages for `server`, appending
    /// what to send to `dest`.
    pub fn client_messages(
        &mut self,
        chunk: &Bytes,
        server: &mut ServerConnection,
        limit: usize,
        dest: &mut Vec<Bytes>,
    ) {
        let mut out = Out {
            chunk,
            run_start: 0,
            dest,
        };
        // statements whose cached plan went stale are closed first; the
        // next use prepares them afresh (not while the server skips to a
        // Sync or copies in: it would ignore the Close)
        if !self.skipping && !self.copy_in {
            for name in std::mem::take(&mut server.stale_statements) {
                out.dest.push(extended::build_target(b'C', b'S', &name));
                self.expect_close(name);
            }
        }
        self.flush_seen = false;
        let mut pos = 0;
        while let Ok(Some((tag, total))) = peek_frame(&chunk[pos..], usize::MAX >> 1) {
            let msg = &chunk[pos..pos + total];
            match tag {
                b'c' | b'f' => {
                    if self.copy_in {
                        self.copy_in = false;
                    } else if self.copy_may_start() {
                        self.replies.push_back(Reply::CopyEnd);
                    }
                    // (otherwise it ends a copy the server gave up on
                    // before the client noticed; the server ignores it, and
                    // a CopyEnd nothing would take off the list would keep
                    // the client's server bound to it)
                    pos += total;
                    continue;
                }
                // a server in copy-in mode ignores Sync
                b'S' if self.copy_in => {
                    pos += total;
                    continue;
                }
                _ => {}
            }
            if self.skipping {
                // The server discards these; they create, close or owe nothing.
                match tag {
                    b'S' => {
                        self.skipping = false;
                        self.expect_sync();
                    }
                    b'Q' | b'F' => self.skipped_ready += 1,
                    _ => {}
                }
                pos += total;
                continue;
            }
            match tag {
                b'P' => {
                    let parsed = extended::parse_parse(msg);
                    // an unnamed one-off DEALLOCATE (psycopg 3's execute)
                    let dealloc = parsed
                        .as_ref()
                        .filter(|p| p.name.is_empty())
                        .and_then(|p| Some((self.mapped_deallocation(p.query)?, p)));
                    if let Some((name, p)) = dealloc {
                        out.cut(pos, pos + total);
                        let (sql, _) = self.deallocate(&name, server, limit, out.dest);
                        out.dest.push(extended::build_parse(
                            "",
                            &extended::ParseMsg {
                                query: sql.as_bytes(),
                                ..*p
                            },
                        ));
                        self.forget_unnamed();
                        server.unnamed_of = self.client;
                        self.expect(Expect::Count(1), true, None);
                        pos += total;
                        continue;
                    }
                    if let Some(name) = parsed.as_ref().and_then(|p| self.name_in_use(p)) {
                        // Postgres refuses a name in use, after it has parsed
                        // the text: a statement made under that name first
                        // (closed before the next batch) has the server do so
                        out.cut(pos, pos);
                        let placeholder = extended::ParseMsg {
                            name: b"",
                            query: b"",
                            param_types: b"\0\0",
                        };
                        out.dest.push(extended::build_parse(name, &placeholder));
                        self.expect(Expect::Count(1), false, None);
                        self.expect(Expect::Count(1), true, None);
                        if !server.stale_statements.iter().any(|n| **n == *name) {
                            server.stale_statements.push(name.into());
                        }
                        pos += total;
                        continue;
                    }
                    if parsed.as_ref().is_some_and(|p| resets_statements(p.query)) {
                        // it runs at the Execute
                        let freed = self.reset_sent(server);
                        match (&mut self.pending_reset, freed) {
                            (Some(pending), Some(freed)) => pending.extend(freed),
                            (pending, freed) => *pending = pending.take().or(freed),
                        }
                    }
                    let unnamed = parsed.as_ref().is_some_and(|p| p.name.is_empty());
                    let renamed = parsed.and_then(|p| {
                        let shared = if p.name.is_empty() {
                            self.promotion(&p, server)
                        } else if self.rename_named {
                            Some(self.name_for(p.query, p.param_types))
                        } else {
                            None
                        };
                        shared.map(|s| (p, s))
                    });
                    match renamed {
                        Some((p, shared)) => {
                            let statement =
                                ClientStatement::new(shared.clone(), &p, self.lax_strings);
                            let parse = statement.parse.clone();
                            let before = self.statements.insert(p.name.to_vec(), statement);
                            // (an unnamed statement is left as it was)
                            let undo = (!p.name.is_empty()).then(|| Undo::Name {
                                name: p.name.to_vec(),
                                before,
                                after: Some(shared.clone()),
                            });
                            out.cut(pos, pos + total);
                            if server.prepared.touch(&shared) {
                                let undo = undo.map(Box::new);
                                self.replies.push_back(Reply::Made(PARSE_COMPLETE, undo));
                            } else {
                                self.evict_for(&shared, server, limit, out.dest);
                                out.dest.push(parse);
                                self.expect(Expect::Count(1), true, Some(shared));
                                self.undo_last(undo);
                            }
                        }
                        None => {
                            if unnamed {
                                // this unnamed statement goes to the server as is
                                self.forget_unnamed();
                                server.unnamed_of = self.client;
                            }
                            self.expect(Expect::Count(1), true, None)
                        }
                    }
                }
                b'B' => {
                    let stmt = extended::bind_statement(msg)
                        .and_then(|(name, _)| self.statements.get(name).cloned());
                    if let Some((s, bind)) =
                        stmt.and_then(|s| extended::rebuild_bind(msg, &s.shared).map(|b| (s, b)))
                    {
                        out.cut(pos, pos + total);
                        self.dirtied |= s.dirties;
                        self.ensure_prepared(&s, server, limit, out.dest);
                        out.dest.push(bind);
                        self.replies.push_back(Reply::Server {
                            expect: Expect::Count(1),
                            forward: true,
                            parse_of: None,
                            bound: Some(s.shared.clone()),
                            close_of: None,
                            sync: false,
                            undo: None,
                        });
                    } else {
                        if extended::bind_statement(msg).is_some_and(|(n, _)| n.is_empty()) {
                            self.close_unnamed_of_another(server, &mut out, pos);
                        }
                        self.expect(Expect::Count(1), true, None);
                    }
                }
                b'D' => match extended::target(msg) {
                    Some((b'S', name)) => {
                        if let Some(s) = self.statements.get(name).cloned() {
                            out.cut(pos, pos + total);
                            self.ensure_prepared(&s, server, limit, out.dest);
                            out.dest.push(extended::build_target(b'D', b'S', &s.shared));
                        } else if name.is_empty() {
                            self.close_unnamed_of_another(server, &mut out, pos);
                        }
                        self.expect(Expect::Count(2), true, None);
                    }
                    _ => self.expect(Expect::Count(1), true, None),
                },
                b'C' => match extended::target(msg) {
                    Some((b'S', name))
                        if self.statements.contains_key(name)
                            || (self.rename_named && !name.is_empty()) =>
                    {
                        // The shared statement stays on the server for others;
                        // closing a name that does not exist is no error.
                        let undo = self.statements.remove(name).map(|before| {
                            Box::new(Undo::Name {
                                name: name.to_vec(),
                                before: Some(before),
                                after: None,
                            })
                        });
                        out.cut(pos, pos + total);
                        self.replies.push_back(Reply::Made(CLOSE_COMPLETE, undo));
                    }
                    _ => self.expect(Expect::Count(1), true, None),
                },
                b'E' => {
                    self.expect(Expect::Execute, true, None);
                    let freed = self.pending_reset.take();
                    self.undo_last(freed.map(Undo::Reset));
                }
                b'Q' => {
                    // a simple query destroys the unnamed statement
                    self.forget_unnamed();
                    let text = msg.get(5..total - 1).unwrap_or_default();
                    let freed = resets_statements(text)
                        .then(|| self.reset_sent(server))
                        .flatten();
                    if let Some(name) = self.mapped_deallocation(text) {
                        out.cut(pos, pos + total);
                        let (sql, parsed) = self.deallocate(&name, server, limit, out.dest);
                        if parsed {
                            self.inject_sync(out.dest);
                        }
                        let mut q = bytes::BytesMut::new();
                        crate::protocol::messages::query(&mut q, &sql);
                        out.dest.push(q.freeze());
                    }
                    self.expect(Expect::UntilReady, true, None);
                    self.undo_last(freed.map(Undo::Reset));
                }
                b'S' => {
                    self.expect_sync();
                    let freed = self.pending_reset.take();
                    self.undo_last(freed.map(Undo::Reset));
                }
                b'F' => self.expect(Expect::UntilReady, true, None),
                b'H' => self.flush_seen = true,
                _ => {}
            }
            pos += total;
        }
        out.cut(pos, pos);
    }

    /// A batch of only named Parses and a final Sync, sent outside a
    /// transaction (libpq's synchronous PQprepare), can be acknowledged
    /// without a server: the statements are prepared on a server at their
    /// first use, where any error in them is reported. pgsift does this only
    /// when no server is free, because a client blocked in a synchronous
    /// prepare may be the one that has to move for others to finish (pgbench
    /// with more clients than servers). Returns the replies, or `None` when
    /// the batch is anything else.
    pub fn acknowledge_prepares(&mut self, chunk: &Bytes) -> Option<Vec<Bytes>> {
        let mut pos = 0;
        let mut parses = Vec::new();
        let mut synced = false;
        while let Ok(Some((tag, total))) = peek_frame(&chunk[pos..], usize::MAX >> 1) {
            if synced {
                return None;
            }
            match tag {
                b'P' => {
                    let p = extended::parse_parse(&chunk[pos..pos + total])?;
                    // (a name in use is the server's to refuse)
                    if p.name.is_empty()
                        || self.statements.contains_key(p.name)
                        || parses.iter().any(|(n, _)| n == p.name)
                    {
                        return None;
                    }
                    let shared = self.name_for(p.query, p.param_types);
                    parses.push((
                        p.name.to_vec(),
                        ClientStatement::new(shared, &p, self.lax_strings),
                    ));
                }
                b'S' => synced = true,
                _ => return None,
            }
            pos += total;
        }
        if !synced || parses.is_empty() {
            return None;
        }
        let mut replies = Vec::with_capacity(parses.len() + 1);
        for (name, statement) in parses {
            self.statements.insert(name, statement);
            replies.push(Bytes::from_static(PARSE_COMPLETE));
        }
        replies.push(Bytes::from_static(b"Z\0\0\0\x05I"));
        Some(replies)
    }

    /// The shared name an unnamed Parse is promoted to, if it is: promotion
    /// is on, the statement is plannable, and the server already has it or
    /// this client sent it before.
    fn promotion(
        &mut self,
        p: &extended::ParseMsg<'_>,
        server: &ServerConnection,
    ) -> Option<Arc<str>> {
        if !self.promote_unnamed || !plannable(p.query) {
            return None;
        }
        let hash = self.hash_of(p.query, p.param_types);
        let name = name_of(hash);
        if self.recent_unnamed.contains(&hash) || server.prepared.contains(&name) {
            return Some(name);
        }
        self.recent_unnamed[self.recent_next] = hash;
        self.recent_next = (self.recent_next + 1) % RECENT_UNNAMED;
        None
    }

    /// The hash of a statement's shared name for this client.
    fn hash_of(&self, query: &[u8], param_types: &[u8]) -> u64 {
        statement_hash(query, param_types, self.salt)
    }

    /// A statement's shared name for this client.
    fn name_for(&self, query: &[u8], param_types: &[u8]) -> Arc<str> {
        name_of(self.hash_of(query, param_types))
    }

    /// The client's unnamed statement was replaced without pgsift's mapping
    /// seeing it (a Parse answered from the cache, a simple query).
    pub fn forget_unnamed(&mut self) {
        if !self.statements.is_empty() {
            self.statements.remove(&b""[..]);
        }
    }

    /// Why the server must be closed instead of reused, if it must; clears it.
    pub fn take_unusable(&mut self) -> Option<&'static str> {
        let why = self
            .desync
            .then_some("server replies were out of step with the client's requests");
        self.desync = false;
        why
    }

    /// A batch a multiplexed server can run for this client (see
    /// `backend::mux`): Binds of the client's named statements whose text
    /// the server plans (so the batch cannot open a transaction or change a
    /// setting with SET), Executes, Describes of portals, and one Sync at
    /// the end, with nothing owed from before. With unnamed statements kept
    /// prepared, the batch may start with an unnamed Parse that would be
    /// kept prepared (seen before): it becomes the client's unnamed
    /// statement now, and its ParseComplete is pgsift's to make up
    /// (`made_parse`). Returns the batch with shared statement names and
    /// the statements it needs (at most four, so that making room for them
    /// never evicts one of them).
    pub fn mux_request(&mut self, chunk: &Bytes) -> Option<MuxBatch> {
        if !self.replies.is_empty() || self.skipping || self.copy_in || !self.rename_named {
            return None;
        }
        let mut batch = Vec::new();
        let mut needs: Vec<(Arc<str>, Bytes)> = Vec::new();
        let mut pos = 0;
        let mut synced = false;
        let mut made_parse = false;
        while let Ok(Some((tag, total))) = peek_frame(&chunk[pos..], usize::MAX >> 1) {
            if synced {
                return None;
            }
            let msg = &chunk[pos..pos + total];
            match tag {
                // only first: its made-up reply goes before all the others
                b'P' if pos == 0 && self.promote_unnamed => {
                    let p = extended::parse_parse(msg).filter(|p| p.name.is_empty())?;
                    if !plannable(p.query) {
                        return None;
                    }
                    let hash = self.hash_of(p.query, p.param_types);
                    let shared = name_of(hash);
                    let mapped = self
                        .statements
                        .get(&b""[..])
                        .is_some_and(|s| s.shared == shared);
                    if !mapped {
                        if !self.recent_unnamed.contains(&hash) {
                            return None;
                        }
                        self.statements.insert(
                            Vec::new(),
                            ClientStatement::new(shared, &p, self.lax_strings),
                        );
                    }
                    made_parse = true;
                }
                b'B' => {
                    let (name, _) = extended::bind_statement(msg)?;
                    // an unnamed statement is in the mapping only when kept prepared
                    let s = self.statements.get(name).filter(|s| s.multiplexable)?;
                    batch.push(extended::rebuild_bind(msg, &s.shared)?);
                    if !needs.iter().any(|(n, _)| *n == s.shared) {
                        if needs.len() == MUX_MAX_STATEMENTS {
                            return None;
                        }
                        needs.push((s.shared.clone(), s.parse.clone()));
                    }
                }
                b'E' => batch.push(chunk.slice(pos..pos + total)),
                b'D' if extended::target(msg).is_some_and(|(k, _)| k == b'P') => {
                    batch.push(chunk.slice(pos..pos + total))
                }
                b'S' => {
                    batch.push(chunk.slice(pos..pos + total));
                    synced = true;
                }
                _ => return None,
            }
            pos += total;
        }
        (synced && pos == chunk.len() && !needs.is_empty()).then_some(MuxBatch {
            batch,
            needs,
            made_parse,
        })
    }

    /// Records a named Parse that pgsift answered itself (from the cache):
    /// the statement is prepared on a server at its first use there.
    pub fn register_parse(&mut self, msg: &[u8]) {
        if let Some(p) = extended::parse_parse(msg).filter(|p| !p.name.is_empty()) {
            let shared = self.name_for(p.query, p.param_types);
            self.statements.insert(
                p.name.to_vec(),
                ClientStatement::new(shared, &p, self.lax_strings),
            );
        }
    }

    fn expect(&mut self, expect: Expect, forward: bool, parse_of: Option<Arc<str>>) {
        self.replies.push_back(Reply::Server {
            expect,
            forward,
            parse_of,
            bound: None,
            close_of: None,
            sync: false,
            undo: None,
        });
    }

    /// What the message whose entry was booked last did to the client's
    /// statement names.
    fn undo_last(&mut self, undo: Option<Undo>) {
        if let (Some(Reply::Server { undo: u, .. }), Some(undo)) = (self.replies.back_mut(), undo) {
            *u = Some(Box::new(undo));
        }
    }

    /// An injected Close of the shared statement `name`: its reply is
    /// swallowed.
    fn expect_close(&mut self, name: Arc<str>) {
        self.replies.push_back(Reply::Server {
            expect: Expect::Count(1),
            forward: false,
            parse_of: None,
            bound: None,
            close_of: Some(name),
            sync: false,
            undo: None,
        });
    }

    /// A Sync: its ReadyForQuery, and the end of what an error skips.
    fn expect_sync(&mut self) {
        self.replies.push_back(Reply::Server {
            expect: Expect::UntilReady,
            forward: true,
            parse_of: None,
            bound: None,
            close_of: None,
            sync: true,
            undo: None,
        });
    }

    /// Prepares a client's statement on the server if it lacks it; true
    /// when that took a Parse.
    fn ensure_prepared(
        &mut self,
        s: &ClientStatement,
        server: &mut ServerConnection,
        limit: usize,
        dest: &mut Vec<Bytes>,
    ) -> bool {
        if server.prepared.touch(&s.shared) {
            return false;
        }
        self.evict_for(&s.shared, server, limit, dest);
        dest.push(s.parse.clone());
        self.expect(Expect::Count(1), false, Some(s.shared.clone()));
        true
    }

    /// A Sync pgsift sends after a Parse of its own that a simple Query
    /// follows: if the Parse fails, the server skips messages up to a
    /// Sync, the Query included, and without one the client would wait for
    /// its answer for ever. The Sync's ReadyForQuery is swallowed, and the
    /// session never sees it (it owes the client nothing).
    fn inject_sync(&mut self, dest: &mut Vec<Bytes>) {
        dest.push(Bytes::from_static(b"S\0\0\0\x04"));
        self.replies.push_back(Reply::Server {
            expect: Expect::UntilReady,
            forward: false,
            parse_of: None,
            bound: None,
            close_of: None,
            sync: true,
            undo: None,
        });
    }

    /// The client's name of the statement a SQL `DEALLOCATE name` in `sql`
    /// drops, when the client prepared it through the protocol (the server
    /// knows it by its shared name). Not in a failed transaction: there the
    /// server refuses the DEALLOCATE, as Postgres does, and nothing changes.
    /// Nor in a pipeline behind replies still owed (it goes as written).
    fn mapped_deallocation(&self, sql: &[u8]) -> Option<Vec<u8>> {
        // nor behind replies still owed: an error among them would make
        // the server skip the DEALLOCATE that pgsift had already booked
        if !self.rename_named || self.failed_transaction || !self.replies.is_empty() {
            return None;
        }
        deallocated(sql).filter(|name| self.statements.contains_key(name))
    }

    /// Forgets the client's statement `name` and returns the DEALLOCATE the
    /// server runs instead, after the statement is made sure to be there
    /// (so the reply is the server's own). Rails and libpq before 17 evict
    /// statements from their caches so.
    fn deallocate(
        &mut self,
        name: &[u8],
        server: &mut ServerConnection,
        limit: usize,
        dest: &mut Vec<Bytes>,
    ) -> (String, bool) {
        let Some(s) = self.statements.remove(name) else {
            return (String::new(), false);
        };
        let parsed = self.ensure_prepared(&s, server, limit, dest);
        server.prepared.remove(&s.shared);
        (format!("DEALLOCATE \"{}\"", s.shared), parsed)
    }

    /// The client uses the server's unnamed statement (a Bind or Describe
    /// the message at `pos` is) without having prepared it there: when
    /// another client may have left one, it is closed first, so that the
    /// client gets Postgres's 26000 and not another client's statement.
    /// A client's own Parse, Bind and Execute cost nothing more.
    fn close_unnamed_of_another(
        &mut self,
        server: &mut ServerConnection,
        out: &mut Out<'_>,
        pos: usize,
    ) {
        if server.unnamed_of == 0 || server.unnamed_of == self.client {
            return;
        }
        out.cut(pos, pos);
        out.dest.push(extended::build_target(b'C', b'S', ""));
        self.expect_close(Arc::from(""));
        server.unnamed_of = 0;
    }

    /// The client sent a DISCARD ALL or DEALLOCATE ALL: its statement names
    /// are free again, and what it sends after it finds none of the
    /// server's statements, so they are prepared again (not answered by
    /// pgsift), after a Close in case the reset fails or never runs (a
    /// Parse of it never executed). Not in a failed transaction, where the
    /// server refuses it.
    /// Returns the names it freed (given back if the reset does not run).
    fn reset_sent(
        &mut self,
        server: &mut ServerConnection,
    ) -> Option<HashMap<Vec<u8>, ClientStatement>> {
        if self.failed_transaction {
            return None;
        }
        for name in server.prepared.take_all() {
            if !server.stale_statements.contains(&name) {
                server.stale_statements.push(name);
            }
        }
        // (its unnamed statement stays)
        let (unnamed, freed) = std::mem::take(&mut self.statements)
            .into_iter()
            .partition(|(name, _)| name.is_empty());
        self.statements = unnamed;
        Some(freed)
    }

    /// The server ran a DISCARD ALL or DEALLOCATE ALL: it holds only the
    /// statements prepared after it, whose Parses are still owed replies
    /// (nothing of the others is left to close).
    fn statements_reset(&mut self, server: &mut ServerConnection) {
        // the client's names it freed stay free
        if let Some(Reply::Server { undo, .. }) = self.replies.front_mut() {
            if matches!(undo.as_deref(), Some(Undo::Reset(_))) {
                *undo = None;
            }
        }
        let owed: Vec<&Arc<str>> = self
            .replies
            .iter()
            .filter_map(|r| match r {
                Reply::Server {
                    parse_of: Some(name),
                    ..
                } => Some(name),
                _ => None,
            })
            .collect();
        server.prepared.retain(|name| owed.contains(&name));
        server.stale_statements.retain(|name| owed.contains(&name));
    }

    /// Records `name` as prepared on the server, closing the least recently
    /// used statement first when the server is full, and `name` itself when
    /// the server may still hold it (see [`Pipeline::may_hold`]).
    fn evict_for(
        &mut self,
        name: &Arc<str>,
        server: &mut ServerConnection,
        limit: usize,
        dest: &mut Vec<Bytes>,
    ) {
        if let Some(victim) = server.prepared.insert(name.clone(), limit) {
            dest.push(extended::build_target(b'C', b'S', &victim));
            self.expect_close(victim);
        }
        if self.may_hold(name, server) {
            // closing a statement that does not exist is no error
            server.stale_statements.retain(|n| n != name);
            dest.push(extended::build_target(b'C', b'S', name));
            self.expect_close(name.clone());
        }
    }

    /// True when the server may hold `name` though it is not booked as
    /// prepared: it is still to be closed, or its Close comes before a
    /// Sync still owed (an error before that Sync would make the server
    /// skip it).
    fn may_hold(&self, name: &Arc<str>, server: &ServerConnection) -> bool {
        if server.stale_statements.contains(name) {
            return true;
        }
        let mut synced = false;
        for r in self.replies.iter().rev() {
            match r {
                Reply::Server { sync: true, .. } => synced = true,
                Reply::Server {
                    close_of: Some(n), ..
                } if n == name => return synced,
                _ => {}
            }
        }
        false
    }

    /// Made-up replies whose turn has come go to the client, unless a
    /// server reply the client is owed comes after them: then they wait and
    /// go out with it, in one write and one wake-up of the client instead of
    /// two (a skipped Parse's ParseComplete travels with the Bind's reply).
    pub fn emit_made_unless_server_follows(&mut self, dest: &mut Vec<Bytes>) {
        let server_follows = self
            .replies
            .iter()
            .skip_while(|r| matches!(r, Reply::Made(..)))
            .any(|r| matches!(r, Reply::Server { forward: true, .. }));
        // after a Flush the client may wait for these replies before it
        // sends anything that makes the server answer
        if self.flush_seen || !server_follows {
            self.emit_made(dest);
        }
    }

    /// Made-up replies whose turn has come go to the client.
    pub fn emit_made(&mut self, dest: &mut Vec<Bytes>) {
        while let Some(Reply::Made(bytes, _)) = self.replies.front() {
            dest.push(Bytes::from_static(bytes));
            self.replies.pop_front();
        }
    }

    /// Routes the complete server messages at the start of `rbuf`: replies
    /// the client is owed go to `dest` (as slices of the buffer, in order,
    /// with made-up replies in their places), replies to injected messages
    /// are dropped. `on_message` sees every message (tag, whole message).
    /// Fails on bytes that are no backend message (a type no backend sends,
    /// a length out of bounds): the server is then unusable.
    pub fn server_messages<F>(
        &mut self,
        server: &mut ServerConnection,
        dest: &mut Vec<Bytes>,
        mut on_message: F,
    ) -> Result<(), FrameError>
    where
        F: FnMut(u8, &[u8]),
    {
        let mut pos = 0;
        // made-up replies held back for this reply go first
        self.emit_made(dest);
        while let Some((tag, total)) = peek_frame(&server.rbuf[pos..], MAX_SERVER_MESSAGE)? {
            if !is_backend_type(tag) {
                return Err(FrameError::UnknownType(tag));
            }
            if tag == b'Z' && !valid_ready(&server.rbuf[pos..pos + total]) {
                return Err(FrameError::BadReady);
            }
            // (the ReadyForQuery of a Sync pgsift injected is no client's)
            let injected_ready = tag == b'Z'
                && matches!(
                    self.replies.front(),
                    Some(Reply::Server {
                        sync: true,
                        forward: false,
                        ..
                    })
                );
            if !injected_ready {
                on_message(tag, &server.rbuf[pos..pos + total]);
            }
            match tag {
                b'C' if is_discard_tag(&server.rbuf[pos + 5..pos + total]) => {
                    self.statements_reset(server);
                    server.synced = None;
                }
                b'S' => {
                    server.synced = None;
                    note_parameter_status(
                        &mut server.params,
                        &mut server.applied,
                        &server.rbuf[pos + 5..pos + total],
                    )
                }
                _ => {}
            }
            if matches!(tag, b'N' | b'S' | b'A') {
                pos += total;
                continue;
            }
            while matches!(self.replies.front(), Some(Reply::CopyEnd)) {
                self.replies.pop_front();
            }
            match tag {
                b'G' => self.copy_in_started(),
                // a server in copy-in mode sends neither before it has left
                // it: the copy failed (or ended), and the client may skip
                // CopyDone/CopyFail, so its next Sync counts again
                b'E' | b'Z' => self.copy_in = false,
                _ => {}
            }
            let is_error = tag == b'E';
            if is_error && is_stale_plan_error(&server.rbuf[pos..pos + total]) {
                // every later use of this shared statement on this server
                // would fail the same way: close it before the next batch
                if let Some(Reply::Server {
                    bound: Some(name), ..
                }) = self.replies.front()
                {
                    server.prepared.remove(name);
                    server.stale_statements.push(name.clone());
                }
            }
            let (forward, done, expect) = match self.replies.front_mut() {
                Some(Reply::Server {
                    expect, forward, ..
                }) => {
                    let done = match expect {
                        Expect::Count(n) => {
                            *n = n.saturating_sub(1);
                            *n == 0 || is_error
                        }
                        Expect::Execute => matches!(tag, b'C' | b'I' | b's' | b'E'),
                        Expect::UntilReady => tag == b'Z',
                    };
                    (*forward || is_error, done, *expect)
                }
                _ => {
                    // nothing owed, or out of step: pass it on, and never
                    // reuse this server
                    self.desync = true;
                    (true, false, Expect::UntilReady)
                }
            };
            if tag == b'Z' && expect != Expect::UntilReady {
                self.desync = true;
            }
            if !forward {
                if pos > 0 {
                    dest.push(server.rbuf.split_to(pos).freeze());
                }
                server.rbuf.advance(total);
                pos = 0;
            } else {
                pos += total;
            }
            if done {
                let reply = self.replies.pop_front();
                self.answered(reply, is_error, expect != Expect::UntilReady, server);
                if matches!(self.replies.front(), Some(Reply::Made(..))) {
                    if pos > 0 {
                        dest.push(server.rbuf.split_to(pos).freeze());
                        pos = 0;
                    }
                    self.emit_made(dest);
                }
            }
        }
        if pos > 0 {
            dest.push(server.rbuf.split_to(pos).freeze());
        }
        // a copy end the client sent before the server's CopyInResponse,
        // now with nothing owed before it, owes nothing itself: left on the
        // list, it would keep the client's server bound to it until the
        // server sent something more
        while matches!(self.replies.front(), Some(Reply::CopyEnd)) {
            self.replies.pop_front();
        }
        Ok(())
    }

    /// CopyInResponse: until the client ends the copy, the server ignores
    /// Sync; Syncs already sent since the COPY's Execute owe no reply.
    fn copy_in_started(&mut self) {
        let mut i = 1;
        let mut ended = false;
        while i < self.replies.len() {
            match self.replies[i] {
                Reply::CopyEnd => {
                    ended = true;
                    break;
                }
                Reply::Server {
                    expect: Expect::UntilReady,
                    ..
                } => {
                    self.replies.remove(i);
                }
                _ => i += 1,
            }
        }
        self.copy_in = !ended;
    }

    /// True when a reply still owed may be a CopyInResponse (the client
    /// may end a COPY before the server has said it started).
    fn copy_may_start(&self) -> bool {
        self.replies.iter().any(|r| {
            matches!(
                r,
                Reply::Server {
                    expect: Expect::Execute | Expect::UntilReady,
                    forward: true,
                    ..
                }
            )
        })
    }

    /// The message `reply` was owed for is answered. If it failed
    /// (`is_error`), what it prepared is not on the server, what it did to
    /// the client's statement names is undone, and unless it was a Query or
    /// FunctionCall (`skips`) the server skips to the next Sync. If not, a
    /// reset it was to run and did not run is undone.
    fn answered(
        &mut self,
        reply: Option<Reply>,
        is_error: bool,
        skips: bool,
        server: &mut ServerConnection,
    ) {
        let mut undo = Vec::new();
        if let Some(Reply::Server {
            parse_of, undo: u, ..
        }) = reply
        {
            match parse_of {
                Some(name) if is_error => server.prepared.remove(&name),
                _ => {}
            }
            undo.extend(u.map(|u| *u));
        }
        if !is_error {
            undo.retain(|u| matches!(u, Undo::Reset(_)));
        } else if skips {
            self.skip_to_sync(server, &mut undo);
        }
        // the latest change of a name first
        for u in undo.into_iter().rev() {
            match u {
                Undo::Name {
                    name,
                    before,
                    after,
                } => {
                    let now = self.statements.get(&name).map(|s| &s.shared);
                    if now != after.as_ref() {
                        continue;
                    }
                    match before {
                        Some(before) => self.statements.insert(name, before),
                        None => self.statements.remove(&name),
                    };
                }
                Undo::Reset(freed) => {
                    for (name, statement) in freed {
                        self.statements.entry(name).or_insert(statement);
                    }
                }
            }
        }
    }

    /// A named Parse's name when the client has a statement of that name
    /// (transaction mode; not for a name that is not valid UTF-8 or one of
    /// pgsift's own, which are defined again as before).
    /// A name whose Parse the server has not answered yet is not taken for
    /// one in use: that Parse may still fail (then Postgres takes the name
    /// again), and pgsift defines it again as before.
    fn name_in_use<'a>(&self, p: &extended::ParseMsg<'a>) -> Option<&'a str> {
        if !self.rename_named || p.name.is_empty() || !self.statements.contains_key(p.name) {
            return None;
        }
        let unconfirmed = self.replies.iter().any(|r| {
            matches!(r, Reply::Server { undo: Some(u), .. }
                if matches!(&**u, Undo::Name { name, .. } if name.as_slice() == p.name))
        });
        if unconfirmed {
            return None;
        }
        std::str::from_utf8(p.name)
            .ok()
            .filter(|n| !n.starts_with("pgsift_"))
    }

    /// After an error the server ignores everything up to Sync, a Query
    /// or FunctionCall too; so do the owed replies (Parses that never ran
    /// are forgotten on the server; statements whose Close never ran are
    /// closed before the next batch; the client's statement names they
    /// defined go to `undo`, in order).
    fn skip_to_sync(&mut self, server: &mut ServerConnection, undo: &mut Vec<Undo>) {
        let mut kept = Vec::new();
        let mut skipped_any = false;
        // The client has not sent its Sync yet unless one is owed: what it
        // sends until then is skipped by the server, so it must not be
        // booked either.
        self.skipping = true;
        while let Some(front) = self.replies.front() {
            if let Reply::Server { sync: true, .. } = front {
                self.skipping = false;
                break;
            }
            match self.replies.pop_front() {
                Some(Reply::Server {
                    expect,
                    parse_of,
                    close_of,
                    undo: u,
                    ..
                }) => {
                    if let Some(name) = parse_of {
                        server.prepared.remove(&name);
                    }
                    kept.extend(close_of);
                    if expect == Expect::UntilReady {
                        self.skipped_ready += 1;
                    }
                    undo.extend(u.map(|u| *u));
                }
                Some(Reply::Made(_, u)) => undo.extend(u.map(|u| *u)),
                _ => {}
            }
            skipped_any = true;
        }
        if self.skipping {
            // no Sync owed: a DISCARD ALL / DEALLOCATE ALL parsed since the
            // last Execute or Sync is among what the server skips, and the
            // names it freed are the client's again
            if let Some(freed) = self.pending_reset.take() {
                undo.push(Undo::Reset(freed));
            }
        }
        if skipped_any && server.unnamed_of == self.client {
            // this client's unnamed Parse may be among the skipped: the
            // server may still hold another client's unnamed statement
            server.unnamed_of = crate::backend::server::ANOTHER_CLIENT;
        }
        // (one booked as prepared again is closed before its Parse: see
        // `may_hold`)
        for name in kept {
            if name.is_empty() {
                // another client's unnamed statement is still there (unless
                // this client's Parse after the Sync replaced it)
                if server.unnamed_of == 0 {
                    server.unnamed_of = crate::backend::server::ANOTHER_CLIENT;
                }
            } else if !server.prepared.contains(&name) && !server.stale_statements.contains(&name) {
                server.stale_statements.push(name);
            }
        }
    }
}

/// True when a text runs DISCARD ALL or DEALLOCATE [PREPARE] ALL (alone or
/// among other statements, comments anywhere), which drop every prepared
/// statement.
pub fn resets_statements(sql: &[u8]) -> bool {
    // (most texts have neither word: no copy without comments)
    let sql = comments::blank_comments(sql);
    sql.split(|b| *b == b';').any(|statement| {
        let mut words = statement
            .split(|&b| comments::is_space(b))
            .filter(|w| !w.is_empty());
        let mut next = || words.next().map(<[u8]>::to_ascii_lowercase);
        match next().as_deref() {
            Some(b"discard") => next().as_deref() == Some(b"all") && next().is_none(),
            Some(b"deallocate") => {
                let mut word = next();
                if word.as_deref() == Some(b"prepare") {
                    word = next();
                }
                word.as_deref() == Some(b"all") && next().is_none()
            }
            _ => false,
        }
    })
}

/// The statement name of a text that is one `DEALLOCATE [PREPARE] name`
/// (not `ALL`; comments anywhere), as the client named it at Parse: an
/// unquoted name folded to lower case, a quoted one as written.
pub fn deallocated(sql: &[u8]) -> Option<Vec<u8>> {
    if !comments::starts_with_word(sql, "deallocate") {
        return None;
    }
    let sql = comments::blank_comments(sql);
    let space = |c: char| c.is_ascii() && comments::is_space(c as u8);
    let text = std::str::from_utf8(&sql).ok()?.trim_matches(space);
    let text = text
        .strip_suffix(';')
        .unwrap_or(text)
        .trim_end_matches(space);
    let mut rest = text.get(10..)?.trim_start_matches(space);
    let prepare = rest
        .get(..7)
        .is_some_and(|w| w.eq_ignore_ascii_case("prepare"));
    if prepare && rest[7..].starts_with(space) {
        rest = rest[7..].trim_start_matches(space);
    }
    if let Some(quoted) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if quoted.is_empty() || quoted.replace("\"\"", "").contains('"') {
            return None;
        }
        return Some(quoted.replace("\"\"", "\"").into_bytes());
    }
    let plain = !rest.is_empty()
        && rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    (plain && !rest.eq_ignore_ascii_case("all")).then(|| rest.to_ascii_lowercase().into_bytes())
}

/// Bytes of a complete message at the start of a buffer, for tests.
#[cfg(test)]
fn frames(b: &[u8]) -> Vec<u8> {
    let mut tags = vec![];
    crate::protocol::frame::scan(b, usize::MAX >> 1, |t, _| tags.push(t)).unwrap();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deallocate_names_its_statement_as_parse_did() {
        let q = |sql: &str| deallocated(sql.as_bytes()).map(|n| String::from_utf8(n).unwrap());
        assert_eq!(q("DEALLOCATE a12").as_deref(), Some("a12"));
        assert_eq!(
            q("  deallocate prepare _pg3_0 ;").as_deref(),
            Some("_pg3_0")
        );
        assert_eq!(q("DEALLOCATE S1").as_deref(), Some("s1"));
        assert_eq!(q("DEALLOCATE \"S1\"").as_deref(), Some("S1"));
        assert_eq!(q("/* evict */ DEALLOCATE a12").as_deref(), Some("a12"));
        assert_eq!(
            q("-- evict\rDEALLOCATE /* x */ PREPARE\t\"S1\" -- y").as_deref(),
            Some("S1")
        );
        assert_eq!(q("-- DEALLOCATE a12"), None);
        assert_eq!(q("DEALLOCATE ALL"), None);
        assert_eq!(q("DEALLOCATE PREPARE ALL"), None);
        assert_eq!(q("DEALLOCATE a; SELECT 1"), None);
        assert_eq!(q("DEALLOCATEa"), None);
        assert_eq!(q("SELECT 1"), None);
        // any text from a client, cut anywhere, is read without a panic
        let text = "DEALLOCATE prepare \"é€\"\"x\" aé€ ;";
        for (i, _) in text.char_indices() {
            for (j, _) in text.char_indices().skip(i) {
                q(&text[i..j]);
            }
        }
        assert_eq!(q("DEALLOCATE aé€"), None);
        assert_eq!(q("DEALLOCATE abcdefgé"), None);
        assert_eq!(q("DEALLOCATE \"é€\"").as_deref(), Some("é€"));
    }

    #[test]
    fn resets_of_every_statement_are_recognised() {
        for q in [
            "DISCARD ALL",
            "  discard  all ;",
            "deallocate prepare all",
            "DEALLOCATE ALL",
            "SELECT 1; DEALLOCATE ALL",
            "SET x = 1;\n\tDISCARD ALL;",
            "/* reset */ DISCARD ALL",
            "-- reset\rDISCARD /* every */ ALL",
            "DEALLOCATE/**/PREPARE\x0bALL",
        ] {
            assert!(resets_statements(q.as_bytes()), "{q}");
        }
        for q in [
            "DISCARD PLANS",
            "DISCARD ALL x",
            "DEALLOCATE a",
            "DEALLOCATE PREPARE x",
            "SELECT 'discard all'",
            "-- DISCARD ALL",
            "/* DISCARD ALL */ SELECT 1",
            "discard",
            "",
        ] {
            assert!(!resets_statements(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn shared_names_depend_on_text_and_parameter_types_only() {
        assert_eq!(
            shared_name(b"SELECT $1", b"\0\x01\0\0\0\x17"),
            shared_name(b"SELECT $1", b"\0\x01\0\0\0\x17")
        );
        assert_ne!(
            shared_name(b"SELECT $1", b"\0\0"),
            shared_name(b"SELECT $1", b"\0\x01\0\0\0\x17")
        );
        assert!(shared_name(b"x", b"").starts_with("pgsift_"));
    }

    #[test]
    fn a_search_path_gives_the_same_text_another_shared_name() {
        let set = |v: &str| vec![("search_path".to_owned(), v.to_owned())];
        assert_eq!(search_path_salt(&[]), 0);
        assert_ne!(search_path_salt(&set("a")), 0);
        assert_ne!(search_path_salt(&set("a")), search_path_salt(&set("b")));
        let mut p = Pipeline::new(true, true);
        let plain = p.name_for(b"SELECT * FROM t", b"\0\0");
        assert_eq!(plain, shared_name(b"SELECT * FROM t", b"\0\0"));
        p.salt = search_path_salt(&set("tenant_a"));
        let a = p.name_for(b"SELECT * FROM t", b"\0\0");
        p.salt = search_path_salt(&set("tenant_b"));
        let b = p.name_for(b"SELECT * FROM t", b"\0\0");
        assert!(plain != a && a != b && plain != b);
    }

    #[test]
    fn statements_that_may_leave_session_state_dirty_their_server_and_share_none() {
        let s = |sql: &str, lax: bool| {
            let p = extended::ParseMsg {
                name: b"s",
                query: sql.as_bytes(),
                param_types: b"\0\0",
            };
            let c = ClientStatement::new(shared_name(p.query, b""), &p, lax);
            (c.dirties, c.multiplexable)
        };
        assert_eq!(s("SELECT 1", false), (false, true));
        assert_eq!(s("/* c */ SELECT 1", false), (false, true));
        for sql in [
            "SELECT 1 AS x INTO TEMP t",
            "/* c */ CALL p()",
            "SELECT set_config('a.b', 'c', false)",
        ] {
            assert_eq!(s(sql, false), (true, false), "{sql}");
        }
        // with standard_conforming_strings off, a backslash may hide anything
        let hidden = "SELECT 'x\\' -- ' INTO TEMP t\n";
        assert_eq!(s(hidden, false), (false, true));
        assert_eq!(s(hidden, true), (true, false));
    }

    #[test]
    fn only_statements_the_server_plans_are_plannable() {
        for q in [
            "SELECT 1",
            "  select * from t",
            "(SELECT 1) UNION (SELECT 2)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "insert into t values ($1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "VALUES (1)",
            "TABLE t",
            // comments are space to the server
            "/* c */ SELECT 1",
            "-- c\r( /* d */ (SELECT 1))",
        ] {
            assert!(plannable(q.as_bytes()), "{q}");
        }
        for q in [
            "SET search_path = x",
            "BEGIN",
            "CREATE TABLE t (a int)",
            "SHOW TimeZone",
            "selectx 1",
            "/* SELECT */ SET search_path = x",
            "-- SELECT\nBEGIN",
            "",
        ] {
            assert!(!plannable(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn a_made_up_reply_travels_with_the_server_reply_after_it() {
        let mut p = Pipeline::new(true, true);
        // a skipped Parse, then a forwarded Bind and Sync
        p.replies.push_back(Reply::Made(PARSE_COMPLETE, None));
        p.expect(Expect::Count(1), true, None);
        p.expect_sync();
        let mut out = vec![];
        p.emit_made_unless_server_follows(&mut out);
        assert!(out.is_empty(), "held for the Bind's reply");
        // a skipped Parse answered alone (Parse + Flush): out at once
        let mut q = Pipeline::new(true, true);
        q.replies.push_back(Reply::Made(PARSE_COMPLETE, None));
        q.expect(Expect::Count(1), false, None);
        q.emit_made_unless_server_follows(&mut out);
        assert_eq!(frames(&out.concat()), vec![b'1']);
        // after a Flush the client may be waiting for it: out at once
        let mut f = Pipeline::new(true, true);
        f.replies.push_back(Reply::Made(PARSE_COMPLETE, None));
        f.expect(Expect::Count(1), true, None);
        f.flush_seen = true;
        let mut out = vec![];
        f.emit_made_unless_server_follows(&mut out);
        assert_eq!(frames(&out.concat()), vec![b'1']);
    }

    /// An ErrorResponse with these fields (type letter + value each).
    fn error_msg(fields: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for f in fields {
            body.extend_from_slice(f.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn the_stale_plan_error_is_recognised() {
        let english = "Mcached plan must not change result type";
        assert!(is_stale_plan_error(&error_msg(&[
            "SERROR", "C0A000", english
        ])));
        assert!(!is_stale_plan_error(&error_msg(&[
            "SERROR",
            "C0A000",
            "Msomething else"
        ])));
        // a translated message (lc_messages) is recognised by its routine
        assert!(is_stale_plan_error(&error_msg(&[
            "SERROR",
            "C0A000",
            "Mder Plan hat sich geändert",
            "RRevalidateCachedQuery",
        ])));
    }

    #[test]
    fn made_up_replies_wait_for_their_turn() {
        let mut p = Pipeline::default();
        p.expect(Expect::Count(1), true, None);
        p.replies.push_back(Reply::Made(PARSE_COMPLETE, None));
        let mut out = vec![];
        p.emit_made(&mut out);
        assert!(out.is_empty(), "a server reply is owed first");
        p.replies.pop_front();
        p.emit_made(&mut out);
        assert_eq!(frames(&out.concat()), vec![b'1']);
    }
}
