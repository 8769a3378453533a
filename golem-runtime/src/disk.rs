//! Room on disk for what peers make a node keep (blobs, compiled modules): a quota per
//! directory, oldest files evicted first, and a reserve of free space that no quota eats into,
//! so the books on the same disk can always be written.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Free bytes kept on a disk by default: files of peers are not written past it.
pub const DEFAULT_DISK_RESERVE: u64 = 1 << 30;

/// The files of one directory, their bytes capped; see the [module](self).
#[derive(Debug)]
pub(crate) struct DirQuota {
    dir: PathBuf,
    max_bytes: u64,
    reserve: u64,
    files: Mutex<Files>,
}

#[derive(Debug, Default)]
struct Files {
    /// Oldest first: names and sizes.
    order: VecDeque<(String, u64)>,
    bytes: u64,
}

impl Files {
    fn forget(&mut self, name: &str) -> Option<u64> {
        let at = self.order.iter().position(|(kept, _)| kept == name)?;
        let (_, len) = self.order.remove(at)?;
        self.bytes -= len;
        Some(len)
    }
}

impl DirQuota {
    /// The quota of `dir` (created if missing): `max_bytes` of files, and writes refused while
    /// the disk has less than `reserve` bytes free besides. The files already there count,
    /// oldest (by modification time) first; a partial file left by a crash is deleted.
    pub(crate) fn open(dir: &Path, max_bytes: u64, reserve: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if !metadata.is_file() {
                continue;
            }
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|extension| extension == "partial")
            {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
            let name = entry.file_name().to_string_lossy().into_owned();
            found.push((modified, name, metadata.len()));
        }
        found.sort();
        let mut files = Files::default();
        for (_, name, len) in found {
            files.bytes += len;
            files.order.push_back((name, len));
        }
        let quota = Self {
            dir: dir.to_owned(),
            max_bytes,
            reserve,
            files: Mutex::new(files),
        };
        // A quota lowered since the last run applies at once.
        quota.evict_until(&mut quota.files(), 0);
        Ok(quota)
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the files counted now.
    pub(crate) fn bytes(&self) -> u64 {
        self.files().bytes
    }

    /// Whether the file `name` of `len` bytes may be written now: evicts the oldest files until
    /// it fits the quota and leaves the reserve free, and counts it from now on (call
    /// [`removed`](Self::removed) if it is not written after all). `false` when it cannot be
    /// (the file alone is larger than the quota, or the disk is too full even with every file
    /// evicted).
    pub(crate) fn admit(&self, name: &str, len: u64) -> bool {
        if len > self.max_bytes {
            return false;
        }
        let mut files = self.files();
        files.forget(name);
        if !self.evict_until(&mut files, len) {
            return false;
        }
        files.bytes += len;
        files.order.push_back((name.to_owned(), len));
        true
    }

    /// Evicts the oldest files until `len` more bytes fit the quota and the reserve.
    fn evict_until(&self, files: &mut Files, len: u64) -> bool {
        loop {
            let fits = files.bytes + len <= self.max_bytes;
            let free = free_bytes(&self.dir).is_none_or(|free| free >= self.reserve + len);
            if fits && free {
                return true;
            }
            let Some((oldest, size)) = files.order.pop_front() else {
                return false;
            };
            files.bytes -= size;
            if let Err(error) = std::fs::remove_file(self.dir.join(&oldest)) {
                tracing::debug!(file = %oldest, %error, "cannot evict a file");
            }
        }
    }

    /// Forgets the file `name`, deleted.
    pub(crate) fn removed(&self, name: &str) {
        self.files().forget(name);
    }
}

/// Free bytes on the disk of `path` for an unprivileged writer; `None` when it cannot be read.
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("golem-quota-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(quota: &DirQuota, dir: &Path, name: &str, len: usize) -> bool {
        if !quota.admit(name, len as u64) {
            return false;
        }
        std::fs::write(dir.join(name), vec![0; len]).unwrap();
        true
    }

    fn on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn the_oldest_files_are_evicted_to_stay_within_the_quota() {
        let dir = dir("evict");
        let quota = DirQuota::open(&dir, 10_000, 0).unwrap();
        assert!(write(&quota, &dir, "a", 4_000));
        assert!(write(&quota, &dir, "b", 4_000));
        assert!(write(&quota, &dir, "c", 4_000));
        assert!(!dir.join("a").exists(), "the oldest goes first");
        assert!(dir.join("b").exists() && dir.join("c").exists());
        assert_eq!(on_disk(&dir), 8_000);
        assert!(
            !write(&quota, &dir, "huge", 10_001),
            "larger than the quota"
        );
        assert_eq!(quota.bytes(), 8_000);
        // Counted again after a restart, and a lower quota applies at once.
        let reopened = DirQuota::open(&dir, 5_000, 0).unwrap();
        assert_eq!(reopened.bytes(), 4_000);
        assert_eq!(on_disk(&dir), 4_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_is_written_into_the_reserve() {
        let dir = dir("reserve");
        let free = free_bytes(&std::env::temp_dir()).expect("statvfs works here");
        // A reserve of more than the disk has free: every file would eat into it.
        let quota = DirQuota::open(&dir, u64::MAX / 4, free + (1 << 30)).unwrap();
        assert!(!write(&quota, &dir, "a", 1));
        assert_eq!(on_disk(&dir), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
