//! Aborted transaction indexes beside a log's segments, as Kafka keeps them: one
//! `<base>.txnindex` per segment that holds abort markers, each entry 34 bytes: version (i16,
//! 0), producer id (i64), first offset (i64), last offset (i64, the marker's) and the last
//! stable offset when the abort was written (i64). A `read_committed` fetch lists the aborted
//! transactions in the range it returns, so the consumer can drop their records.
//!
//! The log keeps every entry in memory too (aborts are rare); the files let a restart find
//! them without reading the segments below the recovery point. Entries are appended unsynced
//! and fsync'd by the log's next flush; a file is rewritten whole only when the segments
//! change under it (truncation, retention, compaction).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::segment::file_stem;

const SUFFIX: &str = ".txnindex";
const ENTRY_LEN: usize = 34;
const VERSION: i16 = 0;

/// A transaction its coordinator aborted: the records of `producer_id` from `first_offset` to
/// `last_offset` (its abort marker) are not to be read by `read_committed` consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..2].copy_from_slice(&VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<AbortedTxn> {
        let i64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            i64::from_be_bytes(x)
        };
        (b.len() == ENTRY_LEN && i16::from_be_bytes([b[0], b[1]]) == VERSION).then(|| AbortedTxn {
            producer_id: i64_at(2),
            first_offset: i64_at(10),
            last_offset: i64_at(18),
            last_stable_offset: i64_at(26),
        })
    }
}

pub(crate) fn path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{}{SUFFIX}", file_stem(base)))
}

/// The bases of the index files in `dir`.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(base) = name
            .to_string_lossy()
            .strip_suffix(SUFFIX)
            .and_then(|s| s.parse().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The entries of the segment at `base`: none if it has no file. A torn last entry (a crash
/// during its append) or an entry of an unknown version ends the list.
pub(crate) fn read(dir: &Path, base: i64) -> io::Result<Vec<AbortedTxn>> {
    read_file(&path(dir, base))
}

/// The entries of one index file, as [`read`] reads them (for tools).
pub fn read_file(path: &Path) -> io::Result<Vec<AbortedTxn>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks_exact(ENTRY_LEN)
        .map_while(AbortedTxn::decode)
        .collect())
}

/// Appends one entry to the segment's file (unsynced); whether the file was created.
pub(crate) fn append(dir: &Path, base: i64, entry: &AbortedTxn) -> io::Result<bool> {
    let p = path(dir, base);
    let created = !p.exists();
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)?
        .write_all(&entry.encode())?;
    Ok(created)
}

/// Replaces the segment's file with `entries` (unsynced); removes it when there are none.
pub(crate) fn rewrite(dir: &Path, base: i64, entries: &[AbortedTxn]) -> io::Result<()> {
    if entries.is_empty() {
        return match fs::remove_file(path(dir, base)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    let name = format!("{}{SUFFIX}", file_stem(base));
    crate::disk::replace_file(dir, &name, &bytes, false)
}

/// Syncs the segment's file, if it still exists.
pub(crate) fn sync(dir: &Path, base: i64) -> io::Result<()> {
    match fs::File::open(path(dir, base)) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: 1000 + n,
            first_offset: 10 * n,
            last_offset: 10 * n + 5,
            last_stable_offset: 10 * n + 6,
        }
    }

    #[test]
    fn entries_are_kafkas_34_bytes_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(append(dir.path(), 40, &entry(1)).unwrap());
        assert!(!append(dir.path(), 40, &entry(2)).unwrap());
        let bytes = fs::read(path(dir.path(), 40)).unwrap();
        assert_eq!(bytes.len(), 2 * ENTRY_LEN);
        assert_eq!(&bytes[0..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &1001i64.to_be_bytes());
        assert_eq!(read(dir.path(), 40).unwrap(), vec![entry(1), entry(2)]);
        assert_eq!(read(dir.path(), 7).unwrap(), vec![], "no file, no entries");
        assert_eq!(list(dir.path()).unwrap(), vec![40]);
    }

    #[test]
    fn a_torn_last_entry_is_dropped_and_rewrites_replace_or_remove() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 0, &entry(1)).unwrap();
        append(dir.path(), 0, &entry(2)).unwrap();
        let p = path(dir.path(), 0);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..ENTRY_LEN + 20]).unwrap();
        assert_eq!(read(dir.path(), 0).unwrap(), vec![entry(1)]);
        rewrite(dir.path(), 0, &[entry(3)]).unwrap();
        assert_eq!(read(dir.path(), 0).unwrap(), vec![entry(3)]);
        rewrite(dir.path(), 0, &[]).unwrap();
        assert!(!p.exists());
        sync(dir.path(), 0).unwrap();
    }
}
