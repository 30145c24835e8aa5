//! The prepared statements a server connection holds (transaction mode):
//! pgsift's shared names, in least-recently-used order, bounded by
//! `max_prepared_statements`.

use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Statement names prepared on one server, with their last use.
#[derive(Debug, Default)]
pub struct PreparedOnServer {
    /// keyed by pgsift's own names (not client input): FxHash is safe here
    used: FxHashMap<Arc<str>, u64>,
    tick: u64,
}

impl PreparedOnServer {
    /// True (and marks it used) when the server has the statement.
    pub fn touch(&mut self, name: &Arc<str>) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// True when the server has the statement (its use is not recorded).
    pub fn contains(&self, name: &str) -> bool {
        self.used.contains_key(name)
    }

    /// Records a statement about to be prepared; returns the least recently
    /// used one to close when the server would hold more than `limit`.
    pub fn insert(&mut self, name: Arc<str>, limit: usize) -> Option<Arc<str>> {
        self.tick += 1;
        self.used.insert(name.clone(), self.tick);
        if limit == 0 || self.used.len() <= limit {
            return None;
        }
        let victim = self
            .used
            .iter()
            .filter(|(n, _)| **n != name)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }

    /// Forgets a statement (its Parse failed or was skipped by an error).
    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets everything (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// Forgets everything, returning the names it held.
    pub fn take_all(&mut self) -> Vec<Arc<str>> {
        self.used.drain().map(|(name, _)| name).collect()
    }

    /// Keeps only the statements `keep` is true for.
    pub fn retain(&mut self, mut keep: impl FnMut(&Arc<str>) -> bool) {
        self.used.retain(|name, _| keep(name));
    }

    /// How many statements the server holds.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// True when none.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_statement_is_evicted_over_the_limit() {
        let mut p = PreparedOnServer::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(p.insert(a.clone(), 2), None);
        assert_eq!(p.insert(b.clone(), 2), None);
        assert!(p.touch(&a));
        assert_eq!(p.insert(c.clone(), 2), Some(b.clone()));
        assert!(!p.touch(&b));
        assert_eq!(p.len(), 2);
    }
}
