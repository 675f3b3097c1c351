//! The file operations of the partition log, behind two small traits so that tests can put a
//! faulty disk under the real log: ENOSPC after any byte, EIO on a read, a write or an fsync,
//! torn writes. [`OsDisk`] is the real one; [`BoundedDisk`] the real one with a budget of open
//! files; `faults::FaultyDisk` the one tests use.
//!
//! Only the operations on segment and index files go through here: they are where a failure can
//! leave the log behind its files. Directory operations (listing, renaming, removing) use
//! `std::fs` directly.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Replaces `dir/name` with `bytes`: written to a temporary file beside it and renamed over it,
/// so a crash leaves the old file or the new one, never a mix. With `durable`, the file and the
/// directory are fsync'd. A failed write removes the temporary file (the disk may be full).
pub(crate) fn replace_file(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        Ok(())
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Opens the files of a log.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Opens `path` for positioned reads and appends, creating it if `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn LogFile>>;
}

/// One open segment or index file.
pub trait LogFile: Send + Sync + fmt::Debug {
    /// Fills `buf` from `position`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Fills `buf` from `position` only if that takes no waiting for the device (the bytes are
    /// in the page cache): `Ok(false)` when the read would block, or when the file cannot tell.
    /// Callers on async workers try this first and read on a blocking thread otherwise.
    fn read_cached_at(&self, _buf: &mut [u8], _position: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Appends `parts`, in order, at the end of the file. On an error any prefix of them may
    /// have been written: the caller puts the file back to its previous length.
    fn append(&self, parts: &[&[u8]]) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// fsync of the data (and the size). After an error nothing about the file is trusted.
    fn sync_data(&self) -> io::Result<()>;
}

/// The operating system's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(OsFile(open_for_append(path, create)?)))
    }
}

/// Appends `parts` to `file` in order, finishing a short vectored write part by part.
fn append_all(mut file: &File, parts: &[&[u8]]) -> io::Result<()> {
    let slices: Vec<io::IoSlice<'_>>;
    let written = match parts {
        [one] => return file.write_all(one),
        [a, b] => file.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])?,
        _ => {
            slices = parts.iter().map(|p| io::IoSlice::new(p)).collect();
            file.write_vectored(&slices)?
        }
    };
    let mut skip = written;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        file.write_all(&part[skip..])?;
        skip = 0;
    }
    Ok(())
}

/// The operating system's files, with at most `max_open` of them open at a time: a broker with
/// 10,000 partitions keeps three files per segment, far more than an ordinary open-file limit
/// allows. Files are opened when used and closed again, least recently used first, when more
/// than `max_open` are open; a closed file reopens transparently at its next use. Recency is a
/// clock (second chance): using an open file only sets a flag, so the hot path takes no shared
/// lock.
#[derive(Debug, Clone)]
pub struct BoundedDisk {
    cache: Arc<FileCache>,
}

#[derive(Debug)]
struct FileCache {
    max_open: usize,
    /// The files open now, in clock order.
    open: Mutex<ClockRing>,
    reopened: AtomicU64,
}

#[derive(Debug, Default)]
struct ClockRing {
    files: Vec<Weak<CachedFile>>,
    hand: usize,
}

#[derive(Debug)]
struct CachedFile {
    path: PathBuf,
    /// The file's (device, inode): a reopen that finds another file at the path (a compacted
    /// segment renamed over it) fails rather than read the new file at the old one's positions.
    identity: (u64, u64),
    file: Mutex<Option<Arc<File>>>,
    used: AtomicBool,
    cache: Arc<FileCache>,
    /// Itself, for the cache's ring.
    me: Weak<CachedFile>,
}

impl BoundedDisk {
    /// A disk keeping at most `max_open` (at least 2) files open.
    pub fn new(max_open: usize) -> Self {
        BoundedDisk {
            cache: Arc::new(FileCache {
                max_open: max_open.max(2),
                open: Mutex::new(ClockRing::default()),
                reopened: AtomicU64::new(0),
            }),
        }
    }

    /// How many files are open now.
    pub fn open_files(&self) -> usize {
        self.cache.ring().files.len()
    }

    /// How many times a closed file was opened again.
    pub fn reopened(&self) -> u64 {
        self.cache.reopened.load(Ordering::Relaxed)
    }
}

impl Disk for BoundedDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn LogFile>> {
        let opened = Arc::new(open_for_append(path, create)?);
        let identity = identity(&opened)?;
        let file = Arc::new_cyclic(|me| CachedFile {
            path: path.to_path_buf(),
            identity,
            file: Mutex::new(Some(opened)),
            used: AtomicBool::new(true),
            cache: self.cache.clone(),
            me: me.clone(),
        });
        self.cache.admit(&file.me);
        Ok(file)
    }
}

impl FileCache {
    fn ring(&self) -> std::sync::MutexGuard<'_, ClockRing> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `file` as open, closing others while more than `max_open` are.
    fn admit(&self, file: &Weak<CachedFile>) {
        let mut ring = self.ring();
        ring.files.push(file.clone());
        // Two turns of the clock clear every flag, so this ends; files in use (their lock
        // held) are skipped, so it may end with a few more than max_open open.
        let mut budget = 2 * ring.files.len();
        while ring.files.len() > self.max_open && budget > 0 {
            budget -= 1;
            if ring.hand >= ring.files.len() {
                ring.hand = 0;
            }
            let hand = ring.hand;
            let Some(candidate) = ring.files[hand].upgrade() else {
                ring.files.swap_remove(hand);
                continue;
            };
            if Weak::ptr_eq(&ring.files[hand], file)
                || candidate.used.swap(false, Ordering::Relaxed)
            {
                ring.hand += 1;
                continue;
            }
            let Ok(mut open) = candidate.file.try_lock() else {
                ring.hand += 1;
                continue;
            };
            // Reads and fsyncs in flight keep their own handle; the descriptor closes when the
            // last of them ends.
            *open = None;
            drop(open);
            ring.files.swap_remove(hand);
        }
    }
}

impl CachedFile {
    /// Runs `op` on the open file, opening it again first if it was closed.
    fn with<T>(&self, op: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let (file, reopened) = {
            let mut open = self.file.lock().unwrap_or_else(|p| p.into_inner());
            match &*open {
                Some(f) => {
                    self.used.store(true, Ordering::Relaxed);
                    (f.clone(), false)
                }
                None => {
                    // Never created again: a file deleted meanwhile stays deleted.
                    let f = Arc::new(open_for_append(&self.path, false)?);
                    if identity(&f)? != self.identity {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{} was replaced since it was opened", self.path.display()),
                        ));
                    }
                    *open = Some(f.clone());
                    (f, true)
                }
            }
        };
        if reopened {
            self.cache.reopened.fetch_add(1, Ordering::Relaxed);
            self.used.store(true, Ordering::Relaxed);
            self.cache.admit(&self.me);
        }
        op(&file)
    }
}

impl LogFile for CachedFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.with(|f| f.read_exact_at(buf, position))
    }
    fn read_cached_at(&self, buf: &mut [u8], position: u64) -> io::Result<bool> {
        let file = {
            let open = self.file.lock().unwrap_or_else(|p| p.into_inner());
            match &*open {
                Some(f) => f.clone(),
                // Opening it again is file-system work: leave that to a blocking thread.
                None => return Ok(false),
            }
        };
        self.used.store(true, Ordering::Relaxed);
        read_cached(&file, buf, position)
    }
    fn append(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.with(|f| append_all(f, parts))
    }
    fn size(&self) -> io::Result<u64> {
        self.with(|f| Ok(f.metadata()?.len()))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|f| f.set_len(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.with(|f| f.sync_data())
    }
}

/// Set once the kernel or file system says it cannot read with `RWF_NOWAIT`: every read then goes
/// to a blocking thread without asking again.
static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// `read_exact_at` from the page cache only (Linux `preadv2` with `RWF_NOWAIT`): `Ok(false)` as
/// soon as a part is not cached, or if the file system does not support it. A failure the
/// blocking read would also meet is left for it to report.
fn read_cached(file: &File, buf: &mut [u8], position: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    if NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let Ok(offset) = libc::off_t::try_from(position + done as u64) else {
            return Ok(false);
        };
        // SAFETY: the iovec points into `rest`, which outlives the call and is `iov_len` bytes
        // long; `file` keeps the descriptor open for the call.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
                    if !NOWAIT_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                        tracing::info!(error = %e, "reads cannot be limited to the page cache here; fetches read on blocking threads");
                    }
                    Ok(false)
                }
                Some(libc::EAGAIN | libc::EINVAL) => Ok(false),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        done += n as usize;
    }
    Ok(true)
}

/// The (device, inode) of an open file.
fn identity(file: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// A file for positioned reads and appends, as the log keeps its files.
fn open_for_append(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(create)
        .truncate(false)
        .open(path)
}

#[derive(Debug)]
struct OsFile(File);

impl LogFile for OsFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, position)
    }

    fn read_cached_at(&self, buf: &mut [u8], position: u64) -> io::Result<bool> {
        read_cached(&self.0, buf, position)
    }

    fn append(&self, parts: &[&[u8]]) -> io::Result<()> {
        append_all(&self.0, parts)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_disk_keeps_its_budget_and_reopens_files_transparently() {
        let dir = tempfile::tempdir().unwrap();
        let disk = BoundedDisk::new(3);
        let files: Vec<Arc<dyn LogFile>> = (0..10)
            .map(|i| {
                disk.open(&dir.path().join(format!("{i}.log")), true)
                    .unwrap()
            })
            .collect();
        assert!(disk.open_files() <= 3, "{} open", disk.open_files());
        for round in 0..3u8 {
            for (i, f) in files.iter().enumerate() {
                f.append(&[&[round, i as u8], b"-"]).unwrap();
                assert!(disk.open_files() <= 3, "{} open", disk.open_files());
            }
        }
        for (i, f) in files.iter().enumerate() {
            let mut buf = [0u8; 9];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, [0, i as u8, b'-', 1, i as u8, b'-', 2, i as u8, b'-']);
            assert_eq!(f.size().unwrap(), 9);
            f.set_len(3).unwrap();
            f.sync_data().unwrap();
            assert_eq!(
                std::fs::metadata(dir.path().join(format!("{i}.log")))
                    .unwrap()
                    .len(),
                3
            );
        }
        assert!(disk.reopened() > 0, "the budget never closed a file");
        drop(files);
        let f = disk.open(&dir.path().join("fresh.log"), true).unwrap();
        f.append(&[b"x"]).unwrap();
        assert!(disk.open_files() <= 3);
    }

    #[test]
    fn cached_reads_come_from_open_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let disk = BoundedDisk::new(3);
        let files: Vec<Arc<dyn LogFile>> = (0..10u8)
            .map(|i| {
                let f = disk
                    .open(&dir.path().join(format!("{i}.log")), true)
                    .unwrap();
                f.append(&[&[i; 4]]).unwrap();
                f
            })
            .collect();
        let mut closed = 0;
        for (i, f) in files.iter().enumerate() {
            let mut buf = [0u8; 4];
            if f.read_cached_at(&mut buf, 0).unwrap() {
                assert_eq!(buf, [i as u8; 4]);
            } else {
                // Closed by the budget: reopening it is left to a blocking read.
                closed += 1;
            }
        }
        // The budget keeps about three open, and those are read from the page cache.
        assert!(
            (7..10).contains(&closed),
            "{closed} of 10 files read as not cached"
        );
        for (i, f) in files.iter().enumerate() {
            let mut buf = [0u8; 4];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, [i as u8; 4]);
        }
    }

    #[test]
    fn a_closed_file_replaced_meanwhile_is_not_read_in_place_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = BoundedDisk::new(2);
        let path = dir.path().join("0.log");
        let old = disk.open(&path, true).unwrap();
        old.append(&[b"old bytes"]).unwrap();
        // Closed by the budget, then a new file is renamed over its path (a compaction swap).
        let others: Vec<_> = (1..4)
            .map(|i| {
                disk.open(&dir.path().join(format!("{i}.log")), true)
                    .unwrap()
            })
            .collect();
        std::fs::write(dir.path().join("new"), b"new bytes").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        let mut buf = [0u8; 9];
        let read = old.read_exact_at(&mut buf, 0);
        assert!(read.is_err(), "read {:?} from the replacement", buf);
        drop(others);
    }

    #[test]
    fn a_closed_file_deleted_meanwhile_is_not_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let disk = BoundedDisk::new(2);
        let path = dir.path().join("gone.log");
        let gone = disk.open(&path, true).unwrap();
        // A third file makes the clock close the least recently used one: `gone`.
        let _a = disk.open(&dir.path().join("a.log"), true).unwrap();
        let _b = disk.open(&dir.path().join("b.log"), true).unwrap();
        assert_eq!(disk.open_files(), 2);
        std::fs::remove_file(&path).unwrap();
        let e = gone.append(&[b"late"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists(), "a deleted file came back");
    }
}

/// A disk that fails when told to, for the tests of the failure paths.
#[cfg(test)]
pub(crate) mod faults {
    use std::sync::Mutex;

    use super::*;

    /// Which operation a fault hits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Read,
        Write,
        Sync,
        SetLen,
        Open,
    }

    /// One injected failure.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fault {
        /// The disk is full after `bytes` more bytes: that write is cut there and fails with
        /// ENOSPC, and so does every write after it until [`FaultyDisk::free_space`].
        NoSpaceAfter { bytes: u64 },
        /// The `nth` (from 0) operation of kind `op` from now fails with EIO; a failing write
        /// first writes `torn` bytes of what it was given (a torn write).
        Eio { op: Op, nth: u64, torn: u64 },
    }

    #[derive(Debug, Default)]
    struct State {
        /// Armed faults; each fires once.
        faults: Vec<Fault>,
        full: bool,
        counts: [u64; 5],
        fired: u64,
    }

    /// The OS disk with one fault armed at a time. Clones share their state.
    #[derive(Debug, Clone, Default)]
    pub struct FaultyDisk {
        state: Arc<Mutex<State>>,
    }

    fn index(op: Op) -> usize {
        match op {
            Op::Read => 0,
            Op::Write => 1,
            Op::Sync => 2,
            Op::SetLen => 3,
            Op::Open => 4,
        }
    }

    /// What a write may do: all of it, or `n` bytes and then fail.
    enum Allowed {
        All,
        Cut(u64, io::Error),
    }

    impl FaultyDisk {
        pub fn new() -> Self {
            Self::default()
        }

        /// Arms `fault` beside any armed ones. Operations are counted from the latest `arm`.
        pub fn arm(&self, fault: Fault) {
            let mut s = self.lock();
            s.faults.push(fault);
            s.counts = [0; 5];
        }

        /// Ends a disk-full condition and disarms every fault.
        pub fn free_space(&self) {
            let mut s = self.lock();
            s.faults.clear();
            s.full = false;
        }

        /// How many injected failures were returned.
        pub fn fired(&self) -> u64 {
            self.lock().fired
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Counts an operation; an error if the armed fault hits it.
        fn check(&self, op: Op) -> io::Result<()> {
            let mut s = self.lock();
            let n = s.counts[index(op)];
            s.counts[index(op)] += 1;
            let hit = s
                .faults
                .iter()
                .position(|f| matches!(*f, Fault::Eio { op: o, nth, .. } if o == op && nth == n));
            match hit {
                Some(i) => {
                    s.faults.remove(i);
                    s.fired += 1;
                    Err(io::Error::from_raw_os_error(5)) // EIO
                }
                None => Ok(()),
            }
        }

        fn allow_write(&self, len: u64) -> Allowed {
            let mut s = self.lock();
            if s.full {
                s.fired += 1;
                return Allowed::Cut(0, enospc());
            }
            let n = s.counts[index(Op::Write)];
            s.counts[index(Op::Write)] += 1;
            for i in 0..s.faults.len() {
                match s.faults[i] {
                    Fault::NoSpaceAfter { bytes } if bytes < len => {
                        s.faults.remove(i);
                        s.full = true;
                        s.fired += 1;
                        return Allowed::Cut(bytes, enospc());
                    }
                    Fault::NoSpaceAfter { bytes } => {
                        s.faults[i] = Fault::NoSpaceAfter { bytes: bytes - len };
                    }
                    Fault::Eio {
                        op: Op::Write,
                        nth,
                        torn,
                    } if nth == n => {
                        s.faults.remove(i);
                        s.fired += 1;
                        return Allowed::Cut(torn.min(len), io::Error::from_raw_os_error(5));
                    }
                    Fault::Eio { .. } => {}
                }
            }
            Allowed::All
        }
    }

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }

    impl Disk for FaultyDisk {
        fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn LogFile>> {
            self.check(Op::Open)?;
            Ok(Arc::new(FaultyFile {
                file: open_for_append(path, create)?,
                disk: self.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct FaultyFile {
        file: File,
        disk: FaultyDisk,
    }

    impl LogFile for FaultyFile {
        fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
            self.disk.check(Op::Read)?;
            self.file.read_exact_at(buf, position)
        }

        fn append(&self, parts: &[&[u8]]) -> io::Result<()> {
            let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let (mut budget, error) = match self.disk.allow_write(len) {
                Allowed::All => (len, None),
                Allowed::Cut(n, e) => (n, Some(e)),
            };
            let mut file = &self.file;
            for part in parts {
                let n = (part.len() as u64).min(budget) as usize;
                file.write_all(&part[..n])?;
                budget -= n as u64;
            }
            match error {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }

        fn size(&self) -> io::Result<u64> {
            Ok(self.file.metadata()?.len())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.disk.check(Op::SetLen)?;
            self.file.set_len(len)
        }

        fn sync_data(&self) -> io::Result<()> {
            self.disk.check(Op::Sync)?;
            self.file.sync_data()
        }
    }
}
