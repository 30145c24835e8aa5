//! Facts about a database that decide cacheability and that only the server
//! knows: which functions are IMMUTABLE (read from `pg_proc`, never a hand
//! list: a name counts as immutable only if every overload is) and which
//! tables have row-level security. Loaded once per database in the
//! background; until then, statements that depend on them are not cached.

use crate::backend::Pool;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::Arc;

/// What pgsift knows about one database.
#[derive(Debug, Default)]
pub struct DatabaseFacts {
    /// functions whose every overload is IMMUTABLE
    pub immutable: HashSet<String>,
    /// functions none of whose overloads is VOLATILE (they cannot write)
    pub not_volatile: HashSet<String>,
    /// functions with a VOLATILE overload: with the two above, every
    /// function the catalog had
    pub volatile: HashSet<String>,
    /// tables with row-level security enabled
    pub rls_tables: HashSet<String>,
    /// relations whose rows a write to another relation changes, or that
    /// pgsift never sees written: views, partitioned tables and their
    /// partitions, inheritance parents and children, foreign tables. Each
    /// relation has a version of its own, so a cached read of one of them
    /// would outlive a write to the table behind it.
    pub derived: HashSet<String>,
    /// tables whose writes can change other tables: user triggers, rules,
    /// or foreign keys with cascading actions pointing at them
    pub side_effects: HashSet<String>,
    /// transactions may default to REPEATABLE READ or SERIALIZABLE (the
    /// server's `default_transaction_isolation`, or an `ALTER DATABASE` /
    /// `ALTER ROLE ... SET` of it): a read inside one answers from a
    /// snapshot that may predate acknowledged writes, so nothing of this
    /// database is cached
    pub strict_isolation: bool,
    /// shared cache: the schema epoch read before the catalog was (the
    /// facts are current while it has not moved)
    pub schema_epoch: Option<u64>,
    /// when the catalog was read
    pub loaded: Option<std::time::Instant>,
}

/// Facts this old that do not know a function a statement calls are read
/// again (the function may have been created since, through another
/// pgsift sharing the cache, whose schema change this one did not see).
const RELOAD_UNKNOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl DatabaseFacts {
    /// True when a read of these relations may be cached: none has
    /// row-level security (rows depend on who reads) or is [`derived`].
    ///
    /// [`derived`]: DatabaseFacts::derived
    pub fn cacheable_reads(&self, reads: &[String]) -> bool {
        reads.iter().all(|t| {
            let name = super::table_name(t);
            !self.rls_tables.contains(&name) && !self.derived.contains(&name)
        })
    }

    /// True when the facts should be read again because they do not know
    /// one of `functions` and are old enough for that to mean something.
    pub fn stale_for(&self, functions: &[String]) -> bool {
        self.loaded
            .is_some_and(|t| t.elapsed() >= RELOAD_UNKNOWN_AFTER)
            && functions.iter().any(|n| {
                !self.immutable.contains(n)
                    && !self.not_volatile.contains(n)
                    && !self.volatile.contains(n)
            })
    }
}

/// Facts per database.
#[derive(Default)]
pub struct VolatilityTable {
    facts: DashMap<Arc<str>, Arc<DatabaseFacts>>,
    loading: DashMap<Arc<str>, ()>,
    /// how many times each database's facts were forgotten: a load that
    /// saw its database's count move while it read the catalog may have
    /// read it before the DDL that made the forget, and keeps nothing
    forgets: DashMap<Arc<str>, u64>,
    /// the shared store whose schema epoch facts are read under
    pub shared: Option<Arc<super::remote::RedisStore>>,
}

const QUERY: &str = "SELECT 'i', proname FROM pg_catalog.pg_proc GROUP BY proname HAVING bool_and(provolatile = 'i') \
                     UNION ALL SELECT 'v', proname FROM pg_catalog.pg_proc GROUP BY proname HAVING bool_or(provolatile = 'v') \
                     UNION ALL SELECT 'n', proname FROM pg_catalog.pg_proc GROUP BY proname HAVING NOT bool_or(provolatile = 'v') \
                     UNION ALL SELECT 'r', relname FROM pg_catalog.pg_class WHERE relrowsecurity \
                     UNION ALL SELECT 'w', c.relname FROM pg_catalog.pg_class c WHERE c.relhasrules \
                        OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) \
                     UNION ALL SELECT 'w', c.relname FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.confrelid \
                        WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd')) \
                     UNION ALL SELECT 'd', c.relname FROM pg_catalog.pg_class c WHERE c.relkind IN ('v', 'p', 'f') \
                        OR c.relispartition OR c.relhassubclass \
                        OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) \
                     UNION ALL SELECT 's', 'default_transaction_isolation' \
                        WHERE current_setting('default_transaction_isolation') NOT IN ('read committed', 'read uncommitted') \
                        OR EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) g \
                          WHERE g LIKE 'default\\_transaction\\_isolation=%' \
                          AND lower(trim(both '\"' FROM split_part(g, '=', 2))) NOT IN ('read committed', 'read uncommitted') \
                          AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())))";

impl VolatilityTable {
    /// Facts per database; with a shared store, read under its schema epoch.
    pub fn new(shared: Option<Arc<super::remote::RedisStore>>) -> VolatilityTable {
        VolatilityTable {
            shared,
            ..Default::default()
        }
    }

    /// The facts of a database, once loaded.
    pub fn get(&self, db: &Arc<str>) -> Option<Arc<DatabaseFacts>> {
        self.facts.get(db).map(|f| f.clone())
    }

    /// Starts loading a database's facts through one of its pools (once).
    pub fn load(self: &Arc<Self>, db: Arc<str>, pool: Arc<Pool>) {
        if self.facts.contains_key(&db) || self.loading.insert(db.clone(), ()).is_some() {
            return;
        }
        let table = self.clone();
        let forgets = self.forgotten(&db);
        tokio::spawn(async move {
            let schema_epoch = match &table.shared {
                Some(s) => s.schema_epoch(&db).await,
                None => None,
            };
            let result = async {
                let mut co = pool.checkout().await.map_err(|e| e.to_string())?;
                let rows = co.server.query_rows(QUERY).await;
                match rows {
                    Ok(rows) => {
                        pool.checkin(co);
                        Ok(rows)
                    }
                    Err(e) => {
                        pool.discard(co);
                        Err(e.to_string())
                    }
                }
            }
            .await;
            match result {
                Ok(rows) => {
                    let mut facts = DatabaseFacts {
                        schema_epoch,
                        loaded: Some(std::time::Instant::now()),
                        ..Default::default()
                    };
                    for r in rows {
                        if let [Some(kind), Some(name)] = r.as_slice() {
                            let name = name.to_ascii_lowercase();
                            match kind.as_str() {
                                "i" => facts.immutable.insert(name),
                                "n" => facts.not_volatile.insert(name),
                                "v" => facts.volatile.insert(name),
                                "w" => facts.side_effects.insert(name),
                                "d" => facts.derived.insert(name),
                                "s" => {
                                    facts.strict_isolation = true;
                                    true
                                }
                                _ => facts.rls_tables.insert(name),
                            };
                        }
                    }
                    tracing::debug!(database = %db, immutable = facts.immutable.len(), rls = facts.rls_tables.len(), "loaded function volatility");
                    // (checked after the insert too: a forget between the
                    // check and the insert would otherwise be lost)
                    let current = || table.forgotten(&db);
                    if current() == forgets {
                        table.facts.insert(db.clone(), Arc::new(facts));
                        if current() != forgets {
                            table.facts.remove(&db);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "could not read pg_proc; nothing with functions is cached yet")
                }
            }
            table.loading.remove(&db);
        });
    }

    /// Forgets what is known (DDL may have changed functions or policies).
    pub fn forget(&self, db: &Arc<str>) {
        *self.forgets.entry(db.clone()).or_insert(0) += 1;
        self.facts.remove(db);
    }

    /// How many times `db`'s facts were forgotten.
    fn forgotten(&self, db: &Arc<str>) -> u64 {
        self.forgets.get(db).map_or(0, |n| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_of_rls_tables_and_derived_relations_are_not_cacheable() {
        let mut f = DatabaseFacts::default();
        f.rls_tables.insert("secret".into());
        f.derived.insert("post_summaries".into());
        assert!(f.cacheable_reads(&["posts".into(), "public.users".into()]));
        assert!(!f.cacheable_reads(&["posts".into(), "public.\"Secret\"".into()]));
        assert!(!f.cacheable_reads(&["app.post_summaries".into()]));
    }

    #[test]
    fn only_old_facts_that_miss_a_function_are_stale() {
        let mut f = DatabaseFacts {
            loaded: Some(Instant::now() - Duration::from_secs(5)),
            ..Default::default()
        };
        f.immutable.insert("lower".into());
        f.not_volatile.insert("lower".into());
        f.volatile.insert("random".into());
        // known functions, volatile or not: nothing to read again
        assert!(!f.stale_for(&["lower".into(), "random".into()]));
        // a function the catalog did not have when it was read
        assert!(f.stale_for(&["twice".into()]));
        // just read: a missing function is missing (no reload per statement)
        f.loaded = Some(Instant::now());
        assert!(!f.stale_for(&["twice".into()]));
    }
}
