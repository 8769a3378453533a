//! The embedded databases (redb) the requestor keeps: provider records, the ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// How long opening waits for another holder of the database to let go.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// A database and where it lives (an empty path for one in memory).
pub(crate) struct Db {
    pub(crate) db: redb::Database,
    pub(crate) path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the database at `path`, creating it (and its directory) when missing. One process
    /// holds a database at a time; a requestor that was just dropped may still hold it for a
    /// moment while its task winds down, so opening waits up to 3 s for the holder to let go,
    /// then fails.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut waited = Duration::ZERO;
        loop {
            match redb::Database::create(path) {
                Ok(db) => {
                    return Ok(Self {
                        db,
                        path: path.into(),
                    });
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if waited < OPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                    waited += Duration::from_millis(50);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A database in memory, gone with the process.
    pub(crate) fn in_memory() -> Result<Self, String> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            db,
            path: PathBuf::new(),
        })
    }

    /// Calls `each` with every row of `table` in key order; a table never written has none.
    pub(crate) fn scan<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<'_, K, V>,
        mut each: impl FnMut(K::SelfType<'_>, V::SelfType<'_>),
    ) -> Result<(), String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = match read.open_table(table) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        for row in table.iter().map_err(|e| e.to_string())? {
            let (key, value) = row.map_err(|e| e.to_string())?;
            each(key.value(), value.value());
        }
        Ok(())
    }
}

/// A table of amounts keyed by 32 bytes (a node id, a receipt key).
pub(crate) type Amounts = TableDefinition<'static, &'static [u8; 32], u128>;

/// Adds `amount` to the value at `key` (0 when missing), saturating; returns the new value.
pub(crate) fn add_amount(
    table: &mut redb::Table<'_, &'static [u8; 32], u128>,
    key: &[u8; 32],
    amount: u128,
) -> Result<u128, redb::StorageError> {
    let before = table.get(key)?.map_or(0, |guard| guard.value());
    let after = before.saturating_add(amount);
    table.insert(key, after)?;
    Ok(after)
}
