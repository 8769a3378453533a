//! A requestor's local record of each provider, built from verified receipts.
//!
//! [`Reputation`] is the in-memory record the scheduler reads and updates: results accepted,
//! results verified (re-run, matched by another copy, or passed a custom check), the streak of
//! results accepted since the provider's last failure, the times it was caught, and whether it
//! is banned. The streak sets a provider's spot-check rate and its place in the dispatch
//! order; a caught provider is banned until [`Reputation::forgive`].
//!
//! [`ReputationStore`] keeps the records in an embedded database (redb: transactional,
//! crash-safe), so a requestor remembers providers across runs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::identity::NodeId;

/// What a requestor knows of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Results accepted.
    pub accepted: u64,
    /// Results checked and found right.
    pub verified: u64,
    /// Results accepted since the last failure.
    pub streak: u64,
    /// Times caught with a wrong result or a receipt that did not verify.
    pub caught: u64,
    /// Banned: caught, and not forgiven since.
    pub banned: bool,
}

/// Every provider's record, with the ones changed since the last save.
#[derive(Debug, Clone, Default)]
pub struct Reputation {
    records: HashMap<NodeId, Record>,
    dirty: HashSet<NodeId>,
}

impl Reputation {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of `node` (empty for a provider never seen).
    pub fn get(&self, node: &NodeId) -> Record {
        self.records.get(node).copied().unwrap_or_default()
    }

    /// Whether `node` is banned.
    pub fn is_banned(&self, node: &NodeId) -> bool {
        self.get(node).banned
    }

    /// Every record.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Record)> {
        self.records.iter()
    }

    /// `count` results of `node` accepted.
    pub fn accepted(&mut self, node: NodeId, count: u64) {
        self.update(node, |record| {
            record.accepted += count;
            record.streak += count;
        });
    }

    /// `count` results of `node` checked and found right.
    pub fn verified(&mut self, node: NodeId, count: u64) {
        self.update(node, |record| record.verified += count);
    }

    /// `node` was caught: banned, and its streak starts again from nothing.
    pub fn caught(&mut self, node: NodeId) {
        self.update(node, |record| {
            record.caught += 1;
            record.streak = 0;
            record.banned = true;
        });
    }

    /// Lifts the ban on `node`; it is checked from the initial rate again, since its streak
    /// was reset when it was caught.
    pub fn forgive(&mut self, node: NodeId) {
        self.update(node, |record| record.banned = false);
    }

    fn update(&mut self, node: NodeId, change: impl FnOnce(&mut Record)) {
        change(self.records.entry(node).or_default());
        self.dirty.insert(node);
    }

    /// Records changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<(NodeId, Record)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|node| (node, self.get(&node)))
            .collect()
    }

    /// Whether records changed since [`take_dirty`](Self::take_dirty).
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

/// A reputation database could not be opened, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reputation database {path}: {message}")]
pub struct StoreError {
    /// The database file.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("provider_records_v1");

/// Provider records on disk.
#[derive(Debug)]
pub struct ReputationStore {
    db: Db,
}

impl ReputationStore {
    /// Opens the database at `path`, creating it (and its directory) when missing. One process
    /// holds it at a time: opening waits up to 3 s for another holder to close it, then fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Db::open(path).map_err(|message| StoreError {
            path: path.into(),
            message,
        })?;
        Ok(Self { db })
    }

    fn error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.db.path.clone(),
            message: error.to_string(),
        }
    }

    /// Every record stored. A record that does not decode is skipped with a warning, never
    /// fatal: the provider is then treated as new.
    pub fn load(&self) -> Result<Reputation, StoreError> {
        let mut reputation = Reputation::new();
        self.db
            .scan(RECORDS, |key, value| {
                let node = <[u8; 32]>::try_from(key)
                    .ok()
                    .and_then(|bytes| NodeId::from_bytes(bytes).ok());
                match (node, postcard::from_bytes::<Record>(value).ok()) {
                    (Some(node), Some(record)) => {
                        reputation.records.insert(node, record);
                    }
                    _ => tracing::warn!(path = %self.db.path.display(), "skipped a corrupt provider record"),
                }
            })
            .map_err(|e| self.error(e))?;
        Ok(reputation)
    }

    /// Writes `records` in one transaction.
    pub fn save(&self, records: &[(NodeId, Record)]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let write = self.db.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = write.open_table(RECORDS).map_err(|e| self.error(e))?;
            for (node, record) in records {
                let value = postcard::to_allocvec(record).map_err(|e| self.error(e))?;
                table
                    .insert(node.as_bytes().as_slice(), value.as_slice())
                    .map_err(|e| self.error(e))?;
            }
        }
        write.commit().map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    #[test]
    fn records_survive_a_reopen_and_bans_last_until_forgiven() {
        let dir = std::env::temp_dir().join(format!("golem-reputation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("reputation.redb");
        let honest = NodeKey::from_secret([1; 32]).node_id();
        let cheater = NodeKey::from_secret([2; 32]).node_id();
        {
            let store = ReputationStore::open(&path).expect("opens");
            assert_eq!(store.load().expect("loads").iter().count(), 0);
            let mut reputation = Reputation::new();
            reputation.accepted(honest, 10);
            reputation.verified(honest, 4);
            reputation.accepted(cheater, 7);
            reputation.caught(cheater);
            store.save(&reputation.take_dirty()).expect("saves");
            assert!(!reputation.is_dirty());
        }
        let store = ReputationStore::open(&path).expect("reopens");
        let mut reputation = store.load().expect("loads");
        assert_eq!(
            reputation.get(&honest),
            Record {
                accepted: 10,
                verified: 4,
                streak: 10,
                caught: 0,
                banned: false
            }
        );
        let record = reputation.get(&cheater);
        assert_eq!((record.accepted, record.streak, record.caught), (7, 0, 1));
        assert!(reputation.is_banned(&cheater));
        reputation.forgive(cheater);
        store.save(&reputation.take_dirty()).expect("saves");
        assert!(!store.load().expect("loads").is_banned(&cheater));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
