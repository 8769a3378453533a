//! Opening the embedded databases (redb) the requestor keeps: provider records, the ledger.

use std::path::Path;
use std::time::Duration;

/// How long opening waits for another holder of the database to let go.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// Opens the database at `path`, creating it (and its directory) when missing. One process
/// holds a database at a time; a requestor that was just dropped may still hold it for a moment
/// while its task winds down, so opening waits up to 3 s for the holder to let go, then fails.
pub(crate) fn open(path: &Path) -> Result<redb::Database, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let mut waited = Duration::ZERO;
    loop {
        match redb::Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if waited < OPEN_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
