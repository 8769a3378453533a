//! Content-addressed blobs: a store (memory, optionally backed by a directory) and their
//! transfer on QUIC streams of their own, checked against their hash before use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::room::FairRoom;
use crate::disk::{DEFAULT_DISK_RESERVE, DirQuota};
use crate::identity::NodeId;
use crate::net::{BAD_FRAME, FramedRecv, FramedSend, StreamError};
use crate::proto::message::{BlobHeader, BlobId};

/// A blob a job refers to, with its id.
#[derive(Clone)]
pub struct Blob {
    id: BlobId,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Blob {
    /// The blob of `bytes`; hashes them.
    pub fn new(bytes: Arc<[u8]>) -> Self {
        Self {
            id: BlobId::of(&bytes),
            bytes,
        }
    }

    /// The blob of `bytes` whose id was computed before (a module's hash, embedded at build
    /// time), so large blobs used by every job are not hashed again for each. A wrong id costs
    /// the job, not its correctness: providers check every blob against its id and refuse a
    /// mismatch.
    pub fn with_id(id: BlobId, bytes: Arc<[u8]>) -> Self {
        debug_assert_eq!(
            id,
            BlobId::of(&bytes),
            "a blob's id is the hash of its bytes"
        );
        Self { id, bytes }
    }

    /// Its id.
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// Its bytes.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }
}

/// Bytes written to a blob stream at a time.
const CHUNK: usize = 1 << 20;

/// A blob could not be received or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The announced blob is larger than this node accepts.
    #[error("blob {id} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The blob.
        id: BlobId,
        /// Its announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes do not hash to the blob's id.
    #[error("the bytes received for blob {expected} hash to {actual}")]
    HashMismatch {
        /// The id announced.
        expected: BlobId,
        /// The hash of what arrived.
        actual: BlobId,
    },
    /// The stream carried fewer or more bytes than announced.
    #[error("blob {id} announced {expected} bytes, the stream carried {received}")]
    Length {
        /// The blob.
        id: BlobId,
        /// The announced length.
        expected: u64,
        /// What arrived.
        received: u64,
    },
    /// The stream broke or its header was not a blob header.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A blob no batch of the connection asked for: its bytes are not read.
    #[error("blob {id} was not asked for")]
    NotAsked {
        /// The blob.
        id: BlobId,
    },
    /// The stream delivered the blob's bytes slower than [`MIN_BLOB_RATE`] after its first
    /// [`BLOB_GRACE`]: room reserved for a blob is not held by a peer that barely sends it.
    #[error("blob {id} arrived at {rate} bytes/s, below {MIN_BLOB_RATE} bytes/s")]
    TooSlow {
        /// The blob.
        id: BlobId,
        /// Bytes a second it arrived at.
        rate: u64,
    },
    /// The stream did not deliver the blob in time.
    #[error("the blob did not arrive within {wait:?}")]
    Timeout {
        /// How long it had.
        wait: std::time::Duration,
    },
    /// The disk cache could not be written.
    #[error("cannot store blob {id} in {path}: {message}")]
    Disk {
        /// The blob.
        id: BlobId,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
}

/// Blobs by id, in memory and optionally in a directory that survives restarts.
///
/// Memory holds at most [`BlobStore::DEFAULT_MEMORY_BYTES`] (or the cap given): past it the
/// oldest blobs are dropped from memory. A dropped blob is read back from the directory, or,
/// without one, asked for again by the next batch that needs it.
#[derive(Debug)]
pub struct BlobStore {
    memory: Mutex<Memory>,
    dir: Option<(PathBuf, DirQuota)>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Memory {
    blobs: HashMap<BlobId, Arc<[u8]>>,
    /// Insertion order, for eviction.
    order: std::collections::VecDeque<BlobId>,
    bytes: usize,
}

impl Memory {
    fn insert(&mut self, id: BlobId, bytes: Arc<[u8]>, cap: usize) {
        if self.blobs.contains_key(&id) {
            return;
        }
        self.bytes += bytes.len();
        self.blobs.insert(id, bytes);
        self.order.push_back(id);
        // Keep the newest blob even when it alone exceeds the cap: a batch is about to use it.
        while self.bytes > cap && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front() {
                self.remove(&old);
            }
        }
    }

    fn remove(&mut self, id: &BlobId) {
        if let Some(bytes) = self.blobs.remove(id) {
            self.bytes -= bytes.len();
            self.order.retain(|kept| kept != id);
        }
    }
}

impl Default for BlobStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl BlobStore {
    /// Bytes of blobs kept in memory by default.
    pub const DEFAULT_MEMORY_BYTES: usize = 1 << 30;

    /// A store in memory only.
    pub fn in_memory() -> Self {
        Self {
            memory: Mutex::default(),
            dir: None,
            cap: Self::DEFAULT_MEMORY_BYTES,
        }
    }

    /// Bytes of blobs kept on disk by default.
    pub const DEFAULT_DISK_BYTES: u64 = 16 << 30;

    /// A store that also keeps blobs as files in `dir` (created if missing), up to
    /// [`DEFAULT_DISK_BYTES`](Self::DEFAULT_DISK_BYTES) and never into the last
    /// [`DEFAULT_DISK_RESERVE`] bytes free on the disk; see [`on_disk_within`](Self::on_disk_within).
    pub fn on_disk(dir: &Path) -> std::io::Result<Self> {
        Self::on_disk_within(dir, Self::DEFAULT_DISK_BYTES, DEFAULT_DISK_RESERVE)
    }

    /// A store that also keeps blobs as files in `dir` (created if missing): at most
    /// `max_bytes` of them, the oldest deleted first to make room, and none written while the
    /// disk has less than `reserve` bytes free besides (the blob is then kept in memory only).
    /// Blobs found there are served after a restart, and a file that no longer matches its
    /// name is deleted instead of served.
    pub fn on_disk_within(dir: &Path, max_bytes: u64, reserve: u64) -> std::io::Result<Self> {
        let quota = DirQuota::open(dir, max_bytes, reserve)?;
        Ok(Self {
            dir: Some((dir.to_owned(), quota)),
            ..Self::in_memory()
        })
    }

    /// Bytes of blobs kept on disk now.
    pub fn disk_bytes(&self) -> u64 {
        self.dir.as_ref().map_or(0, |(_, quota)| quota.bytes())
    }

    /// Caps the bytes kept in memory.
    pub fn with_memory_cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }

    /// Bytes of blobs held in memory now.
    pub fn memory_bytes(&self) -> usize {
        self.memory().bytes
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, id: &BlobId) -> Option<PathBuf> {
        self.dir.as_ref().map(|(dir, _)| dir.join(id.to_hex()))
    }

    fn quota(&self) -> Option<&DirQuota> {
        self.dir.as_ref().map(|(_, quota)| quota)
    }

    /// Whether the store holds `id`.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.memory().blobs.contains_key(id) || self.path(id).is_some_and(|path| path.is_file())
    }

    /// The blob `id`, if the store holds it.
    pub fn get(&self, id: &BlobId) -> Option<Arc<[u8]>> {
        if let Some(bytes) = self.memory().blobs.get(id) {
            return Some(Arc::clone(bytes));
        }
        let path = self.path(id)?;
        let bytes = std::fs::read(&path).ok()?;
        if BlobId::of(&bytes) != *id {
            tracing::warn!(path = %path.display(), "cached blob does not match its name; deleted");
            let _ = std::fs::remove_file(&path);
            if let Some(quota) = self.quota() {
                quota.removed(&id.to_hex());
            }
            return None;
        }
        let bytes: Arc<[u8]> = bytes.into();
        self.memory().insert(*id, Arc::clone(&bytes), self.cap);
        Some(bytes)
    }

    /// Adds `bytes` under their own id.
    pub fn insert(&self, bytes: impl Into<Arc<[u8]>>) -> Result<BlobId, BlobError> {
        let bytes = bytes.into();
        let id = BlobId::of(&bytes);
        self.store(id, bytes)?;
        Ok(id)
    }

    /// Adds bytes received for `id`, after checking that they hash to it.
    pub fn insert_checked(&self, id: BlobId, bytes: Vec<u8>) -> Result<Arc<[u8]>, BlobError> {
        let actual = BlobId::of(&bytes);
        if actual != id {
            return Err(BlobError::HashMismatch {
                expected: id,
                actual,
            });
        }
        let bytes: Arc<[u8]> = bytes.into();
        self.store(id, Arc::clone(&bytes))?;
        Ok(bytes)
    }

    /// Adds bytes already checked against `id` (by [`receive_blob`]).
    pub(crate) fn insert_received(&self, id: BlobId, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store(id, bytes.into())
    }

    fn store(&self, id: BlobId, bytes: Arc<[u8]>) -> Result<(), BlobError> {
        if let Some((dir, quota)) = &self.dir {
            let name = id.to_hex();
            let path = dir.join(&name);
            if path.is_file() {
                // Already kept.
            } else if quota.admit(&name, bytes.len() as u64) {
                // Write aside and rename, so a crash never leaves a partial file under the id;
                // aside under a name of its own, as two connections may store one blob at once.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let partial = dir.join(format!("{name}.{write}.partial"));
                let written = std::fs::write(&partial, &bytes)
                    .and_then(|()| std::fs::rename(&partial, &path));
                if let Err(error) = written {
                    quota.removed(&name);
                    let _ = std::fs::remove_file(&partial);
                    return Err(BlobError::Disk {
                        id,
                        path,
                        message: error.to_string(),
                    });
                }
            } else {
                tracing::warn!(
                    blob = %id,
                    len = bytes.len(),
                    "blob kept in memory only: the disk quota or the free-space reserve leaves no room"
                );
            }
        }
        self.memory().insert(id, bytes, self.cap);
        Ok(())
    }

    /// Drops the in-memory copy of `id` (a disk copy stays).
    pub fn evict(&self, id: &BlobId) {
        self.memory().remove(id);
    }
}

/// Sends a blob on a new unidirectional stream of `connection`; returns the bytes sent.
pub(crate) async fn send_blob(
    connection: &iroh::endpoint::Connection,
    id: BlobId,
    bytes: &[u8],
) -> Result<u64, StreamError> {
    let io = |error: &dyn std::fmt::Display| StreamError::Io(error.to_string());
    let stream = connection.open_uni().await.map_err(|error| io(&error))?;
    let mut framed = FramedSend::new(stream, HEADER_LIMIT);
    framed
        .send(&BlobHeader {
            id,
            len: bytes.len() as u64,
        })
        .await?;
    let mut stream = framed.into_inner();
    for chunk in bytes.chunks(CHUNK) {
        stream.write_all(chunk).await.map_err(|error| io(&error))?;
    }
    stream.finish().map_err(|error| io(&error))?;
    Ok(bytes.len() as u64)
}

/// Bytes a second a blob stream must deliver after its first [`BLOB_GRACE`].
pub const MIN_BLOB_RATE: u64 = 64 << 10;

/// How long a blob stream may deliver nothing before [`MIN_BLOB_RATE`] applies.
pub const BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long `bytes` take at [`MIN_BLOB_RATE`].
fn rate_time(bytes: u64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(bytes as f64 / MIN_BLOB_RATE as f64)
}

/// Largest blob header frame.
const HEADER_LIMIT: usize = 256;

/// Receives a blob from `peer` on a unidirectional stream: reads its header, refuses a blob
/// above `limit` bytes or one `wanted` does not name, waits for room for its bytes in `room`
/// (in KiB, held while they are read; a peer holding less goes first), then reads and hashes
/// it (on a blocking thread) and refuses bytes that do not hash to the announced id. Memory
/// grows with the bytes that arrive, not with the length announced.
pub(crate) async fn receive_blob(
    stream: iroh::endpoint::RecvStream,
    limit: u64,
    wanted: impl Fn(&BlobId) -> bool,
    room: &Arc<FairRoom<NodeId>>,
    peer: NodeId,
) -> Result<(BlobId, Vec<u8>), BlobError> {
    let mut framed = FramedRecv::new(stream, HEADER_LIMIT);
    let header: BlobHeader = framed
        .recv()
        .await?
        .ok_or_else(|| StreamError::Io("the blob stream ended before its header".into()))?;
    let (first, mut stream) = framed.into_raw();
    let BlobHeader { id, len } = header;
    let refuse = |stream: &mut iroh::endpoint::RecvStream| {
        let _ = stream.stop(iroh::endpoint::VarInt::from_u32(BAD_FRAME));
    };
    if len > limit {
        refuse(&mut stream);
        return Err(BlobError::TooLarge { id, len, limit });
    }
    if !wanted(&id) {
        refuse(&mut stream);
        return Err(BlobError::NotAsked { id });
    }
    let expected = usize::try_from(len).map_err(|_| BlobError::TooLarge { id, len, limit })?;
    let _room = room.acquire(peer, len.div_ceil(1024)).await;
    let mut bytes = Vec::with_capacity(expected.min(CHUNK));
    bytes.extend_from_slice(&first);
    let started = std::time::Instant::now();
    while bytes.len() <= expected {
        // Past the grace, the bytes so far must have come at the minimum rate; a read waits
        // at most until they would fall below it.
        let due = started + BLOB_GRACE.max(rate_time(bytes.len() as u64 + 1));
        let read = tokio::time::timeout_at(due.into(), stream.read_chunk(CHUNK)).await;
        match read {
            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
            Ok(Ok(None)) => break,
            Ok(Err(error)) => return Err(StreamError::Io(error.to_string()).into()),
            Err(_) => {
                refuse(&mut stream);
                let elapsed = started.elapsed().as_secs_f64().max(f64::EPSILON);
                return Err(BlobError::TooSlow {
                    id,
                    rate: (bytes.len() as f64 / elapsed) as u64,
                });
            }
        }
    }
    if bytes.len() != expected {
        refuse(&mut stream);
        return Err(BlobError::Length {
            id,
            expected: len,
            received: bytes.len() as u64,
        });
    }
    let (actual, bytes) = tokio::task::spawn_blocking(move || (BlobId::of(&bytes), bytes))
        .await
        .map_err(|error| StreamError::Io(error.to_string()))?;
    if actual != id {
        return Err(BlobError::HashMismatch {
            expected: id,
            actual,
        });
    }
    Ok((id, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_store_serves_blobs_after_a_restart_and_drops_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("golem-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = {
            let store = BlobStore::on_disk(&dir).unwrap();
            store.insert(b"scene".to_vec()).unwrap()
        };
        let store = BlobStore::on_disk(&dir).unwrap();
        assert!(store.contains(&id));
        assert_eq!(store.get(&id).as_deref(), Some(&b"scene"[..]));

        let other = BlobStore::on_disk(&dir).unwrap();
        std::fs::write(dir.join(id.to_hex()), b"tampered").unwrap();
        assert_eq!(other.get(&id), None, "a corrupt file is not served");
        assert!(!other.contains(&id), "and it is gone");

        let wrong = other.insert_checked(id, b"not the scene".to_vec());
        assert!(matches!(wrong, Err(BlobError::HashMismatch { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_keeps_the_newest_blobs_within_its_cap() {
        let store = BlobStore::in_memory().with_memory_cap(10);
        let a = store.insert(vec![1; 6]).unwrap();
        let b = store.insert(vec![2; 4]).unwrap();
        assert_eq!(store.memory_bytes(), 10);
        let c = store.insert(vec![3; 5]).unwrap();
        assert!(!store.contains(&a), "the oldest blob is dropped");
        assert!(store.contains(&b) && store.contains(&c));
        assert_eq!(store.memory_bytes(), 9);
        let big = store.insert(vec![4; 50]).unwrap();
        assert!(
            store.contains(&big),
            "a blob above the cap is still kept while it is newest"
        );
        assert_eq!(store.memory_bytes(), 50);
    }

    #[test]
    fn the_disk_keeps_the_newest_blobs_within_its_quota() {
        let dir = std::env::temp_dir().join(format!("golem-blob-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::on_disk_within(&dir, 10, 0).unwrap();
        let a = store.insert(vec![1; 6]).unwrap();
        let b = store.insert(vec![2; 4]).unwrap();
        let c = store.insert(vec![3; 5]).unwrap();
        let files = |id: &BlobId| dir.join(id.to_hex()).is_file();
        assert!(!files(&a), "the oldest file is deleted");
        assert!(files(&b) && files(&c));
        assert_eq!(store.disk_bytes(), 9);
        let big = store.insert(vec![4; 11]).unwrap();
        assert!(!files(&big), "a blob above the quota is not written");
        assert!(store.contains(&big), "it is kept in memory");
        assert_eq!(store.disk_bytes(), 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
