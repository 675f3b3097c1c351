//! The free-space guard (beyond Kafka, as Redpanda does): below `log.dir.min.free.bytes` of free
//! space on the data directory's filesystem, produce is refused with KAFKA_STORAGE_ERROR
//! (retriable, so producers wait and retry) while everything that reads or frees space goes on:
//! consumers, offset commits, topic deletion, retention. The disk then never fills, and an
//! operator can recover without the broker ever meeting ENOSPC.
//!
//! Checking free space is a `statvfs`, so it is not done per request: the guard re-checks after
//! a share of the threshold has been written, after a second, or when what was written since the
//! last check may have brought free space below the threshold, whichever comes first.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// The default threshold: the smaller of this and [`DEFAULT_SHARE_PERCENT`] of the filesystem.
const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
const DEFAULT_SHARE_PERCENT: u64 = 5;
/// Free space is checked again at least this often while produce requests come.
const RECHECK_MS: i64 = 1000;

/// Produce was refused because the disk is nearly full.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the disk is nearly full: {free_bytes} bytes free on {dir}, below log.dir.min.free.bytes ({min_free_bytes}); produce resumes once space is freed (delete topics or records, or lower retention)")]
pub struct DiskNearlyFull {
    pub dir: String,
    pub free_bytes: u64,
    pub min_free_bytes: u64,
}

#[derive(Debug)]
pub struct FreeSpaceGuard {
    dir: PathBuf,
    /// 0: no guard.
    min_free_bytes: u64,
    /// Bytes admitted since the last check after which the next admission checks again.
    recheck_bytes: u64,
    written_since_check: AtomicU64,
    checked_at_ms: AtomicI64,
    free_bytes: AtomicU64,
    nearly_full: AtomicBool,
    /// One check at a time; the others go on with the last answer.
    checking: Mutex<()>,
}

impl FreeSpaceGuard {
    /// A guard for the filesystem of `dir`, from `log.dir.min.free.bytes` (-1: the default).
    pub fn new(dir: &Path, setting: i64, now_ms: i64) -> io::Result<FreeSpaceGuard> {
        let (free, total) = statvfs(dir)?;
        let min_free_bytes = match setting {
            s if s < 0 => DEFAULT_MIN_FREE_BYTES.min(total / 100 * DEFAULT_SHARE_PERCENT),
            s => s as u64,
        };
        let guard = FreeSpaceGuard {
            dir: dir.to_path_buf(),
            min_free_bytes,
            recheck_bytes: (min_free_bytes / 4).clamp(64 << 10, 256 << 20),
            written_since_check: AtomicU64::new(0),
            checked_at_ms: AtomicI64::new(now_ms),
            free_bytes: AtomicU64::new(free),
            nearly_full: AtomicBool::new(false),
            checking: Mutex::new(()),
        };
        guard.update(free);
        Ok(guard)
    }

    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes
    }

    /// Admits a produce of `bytes`, or refuses it if the disk is nearly full.
    pub fn admit(&self, bytes: u64, now_ms: i64) -> Result<(), DiskNearlyFull> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let written = self.written_since_check.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let stale = now_ms - self.checked_at_ms.load(Ordering::Relaxed) >= RECHECK_MS;
        // Near the threshold, by what was written since the last look, look again at once.
        let estimate = self
            .free_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(written);
        if written >= self.recheck_bytes || stale || estimate < self.min_free_bytes {
            self.check(now_ms);
        }
        if self.nearly_full.load(Ordering::Relaxed) {
            return Err(DiskNearlyFull {
                dir: self.dir.display().to_string(),
                free_bytes: self.free_bytes.load(Ordering::Relaxed),
                min_free_bytes: self.min_free_bytes,
            });
        }
        Ok(())
    }

    fn check(&self, now_ms: i64) {
        let Ok(_one) = self.checking.try_lock() else {
            return;
        };
        self.written_since_check.store(0, Ordering::Relaxed);
        self.checked_at_ms.store(now_ms, Ordering::Relaxed);
        match statvfs(&self.dir) {
            Ok((free, _)) => self.update(free),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory")
            }
        }
    }

    fn update(&self, free: u64) {
        self.free_bytes.store(free, Ordering::Relaxed);
        let full = self.min_free_bytes > 0 && free < self.min_free_bytes;
        let was = self.nearly_full.swap(full, Ordering::Relaxed);
        if full && !was {
            tracing::warn!(dir = %self.dir.display(), free_bytes = free, min_free_bytes = self.min_free_bytes, "data directory nearly full: refusing produce (KAFKA_STORAGE_ERROR) until space is freed; consumers, offset commits, topic deletion and retention go on");
        } else if was && !full {
            tracing::info!(dir = %self.dir.display(), free_bytes = free, "free space is back above log.dir.min.free.bytes: accepting produce again");
        }
    }
}

/// Room the metadata log needs before a change that writes `records` records is proposed: a
/// write the disk cannot take would stop the metadata quorum, so a change that might not fit is
/// refused instead (KAFKA_STORAGE_ERROR), whatever `log.dir.min.free.bytes` says.
pub fn check_metadata_room(dir: &Path, records: usize) -> Result<(), String> {
    const BASE: u64 = 256 << 10;
    const PER_RECORD: u64 = 512;
    let needed = BASE.saturating_add(PER_RECORD.saturating_mul(records as u64));
    match statvfs(dir) {
        Ok((free, _)) if free < needed => Err(format!(
            "the disk of the metadata log is full: {free} bytes free on {}, {needed} needed",
            dir.display()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "cannot read the free space of {}: {e}",
            dir.display()
        )),
    }
}

/// Free bytes (available to unprivileged users) and total bytes of the filesystem of `path`.
pub fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `st` points to writable memory of the
    // right type, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // 64-bit counts on the 64-bit Linux targets Caudal builds for.
    let block = st.f_frsize;
    Ok((
        st.f_bavail.saturating_mul(block),
        st.f_blocks.saturating_mul(block),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_threshold_is_the_smaller_of_1_gib_and_5_percent() {
        let dir = tempfile::tempdir().unwrap();
        let (_, total) = statvfs(dir.path()).unwrap();
        let guard = FreeSpaceGuard::new(dir.path(), -1, 0).unwrap();
        assert_eq!(guard.min_free_bytes(), (1 << 30).min(total / 100 * 5));
        assert_eq!(
            FreeSpaceGuard::new(dir.path(), 0, 0)
                .unwrap()
                .min_free_bytes(),
            0
        );
    }

    #[test]
    fn produce_is_refused_below_the_threshold_and_admitted_again_when_it_is_met() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = statvfs(dir.path()).unwrap();
        let guard = FreeSpaceGuard::new(dir.path(), (free * 2) as i64, 0).unwrap();
        let refused = guard.admit(100, 0).unwrap_err();
        assert!(
            refused.to_string().contains("log.dir.min.free.bytes"),
            "{refused}"
        );
        let open = FreeSpaceGuard::new(dir.path(), 1, 0).unwrap();
        assert!(open.admit(100, 0).is_ok());
        assert!(FreeSpaceGuard::new(dir.path(), 0, 0)
            .unwrap()
            .admit(u64::MAX / 2, 0)
            .is_ok());
    }
}
