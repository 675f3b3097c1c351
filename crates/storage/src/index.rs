//! Sparse indexes beside each segment, in Kafka's layout: `.index` maps a relative offset (u32)
//! to a file position (u32); `.timeindex` maps a timestamp (i64) to a relative offset (u32).
//! Entries are appended in increasing key order and looked up by binary search with positioned
//! reads, so an index costs no memory however large the log grows.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, LogFile};

/// Which index: sets the entry size and how the key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// 8-byte entries: relative offset u32, position u32.
    Offset,
    /// 12-byte entries: timestamp i64, relative offset u32.
    Time,
}

impl IndexKind {
    pub const fn entry_len(self) -> u64 {
        match self {
            IndexKind::Offset => 8,
            IndexKind::Time => 12,
        }
    }
}

/// One index entry: `key` is the relative offset (offset index) or timestamp (time index);
/// `value` is the position (offset index) or relative offset (time index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: i64,
    pub value: u32,
}

#[derive(Debug)]
pub struct Index {
    kind: IndexKind,
    path: PathBuf,
    file: Arc<dyn LogFile>,
    entries: u64,
    last: Option<IndexEntry>,
}

impl Index {
    /// Opens (or creates) the index at `path`, dropping any partial entry at its end.
    pub fn open(disk: &dyn Disk, path: &Path, kind: IndexKind) -> io::Result<Index> {
        let file = disk.open(path, true)?;
        let len = file.size()?;
        let whole = len - len % kind.entry_len();
        if whole != len {
            file.set_len(whole)?;
        }
        let mut index = Index {
            kind,
            path: path.to_path_buf(),
            file,
            entries: whole / kind.entry_len(),
            last: None,
        };
        if index.entries > 0 {
            index.last = Some(index.entry(index.entries - 1)?);
        }
        Ok(index)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &Arc<dyn LogFile> {
        &self.file
    }

    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.last
    }

    fn entry(&self, n: u64) -> io::Result<IndexEntry> {
        let mut buf = [0u8; 12];
        let len = self.kind.entry_len() as usize;
        self.file
            .read_exact_at(&mut buf[..len], n * self.kind.entry_len())?;
        Ok(decode_entry(self.kind, &buf[..len]))
    }

    /// Appends an entry; keys must not go backwards (a smaller key is ignored).
    pub fn append(&mut self, key: i64, value: u32) -> io::Result<()> {
        if self.last.is_some_and(|last| key <= last.key) {
            return Ok(());
        }
        let mut buf = [0u8; 12];
        let len = match self.kind {
            IndexKind::Offset => {
                let rel = u32::try_from(key).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "relative offset over u32")
                })?;
                buf[..4].copy_from_slice(&rel.to_be_bytes());
                buf[4..8].copy_from_slice(&value.to_be_bytes());
                8
            }
            IndexKind::Time => {
                buf[..8].copy_from_slice(&key.to_be_bytes());
                buf[8..12].copy_from_slice(&value.to_be_bytes());
                12
            }
        };
        self.file.append(&[&buf[..len]])?;
        self.entries += 1;
        self.last = Some(IndexEntry { key, value });
        Ok(())
    }

    /// The last entry whose key is at most `key`.
    pub fn floor(&self, key: i64) -> io::Result<Option<IndexEntry>> {
        if self.last.is_some_and(|last| last.key <= key) {
            return Ok(self.last);
        }
        let (mut lo, mut hi) = (0u64, self.entries);
        let mut found = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.entry(mid)?;
            if e.key <= key {
                found = Some(e);
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(found)
    }

    /// Empties the index (before a rebuild).
    pub fn clear(&mut self) -> io::Result<()> {
        self.truncate_to(0)
    }

    /// Keeps the first `entries` entries: puts the index back after a failed append.
    pub fn truncate_to(&mut self, entries: u64) -> io::Result<()> {
        let entries = entries.min(self.entries);
        self.file.set_len(entries * self.kind.entry_len())?;
        self.entries = entries;
        self.last = match entries {
            0 => None,
            n => Some(self.entry(n - 1)?),
        };
        Ok(())
    }

    /// Checks the entries are in increasing key order and, for the offset index, point inside a
    /// log of `log_len` bytes. A failed check means the index must be rebuilt.
    pub fn looks_sane(&self, log_len: u64) -> io::Result<bool> {
        // One read of the whole file (an index is at most a few MiB), not a read per entry.
        let len = (self.entries * self.kind.entry_len()) as usize;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, 0)?;
        let mut prev: Option<IndexEntry> = None;
        for raw in bytes.chunks_exact(self.kind.entry_len() as usize) {
            let e = decode_entry(self.kind, raw);
            if prev.is_some_and(|p| e.key <= p.key) {
                return Ok(false);
            }
            if self.kind == IndexKind::Offset && u64::from(e.value) >= log_len.max(1) {
                return Ok(false);
            }
            prev = Some(e);
        }
        Ok(true)
    }
}

/// An entry from its bytes (`raw` is exactly one entry long).
fn decode_entry(kind: IndexKind, raw: &[u8]) -> IndexEntry {
    let u32_at = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    match kind {
        IndexKind::Offset => IndexEntry {
            key: i64::from(u32_at(0)),
            value: u32_at(4),
        },
        IndexKind::Time => {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&raw[..8]);
            IndexEntry {
                key: i64::from_be_bytes(ts),
                value: u32_at(8),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OsDisk;

    #[test]
    fn floor_finds_the_last_entry_at_or_below() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&OsDisk, &dir.path().join("0.index"), IndexKind::Offset).unwrap();
        for i in 0..100 {
            idx.append(i * 10, (i * 1000) as u32).unwrap();
        }
        assert_eq!(idx.floor(-1).unwrap(), None);
        assert_eq!(idx.floor(0).unwrap().unwrap().value, 0);
        assert_eq!(idx.floor(15).unwrap().unwrap().key, 10);
        assert_eq!(idx.floor(990).unwrap().unwrap().value, 99_000);
        assert_eq!(idx.floor(5000).unwrap().unwrap().key, 990);
        drop(idx);
        let idx = Index::open(&OsDisk, &dir.path().join("0.index"), IndexKind::Offset).unwrap();
        assert_eq!(idx.len(), 100);
        assert_eq!(idx.floor(555).unwrap().unwrap().key, 550);
    }

    #[test]
    fn a_torn_entry_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut idx = Index::open(&OsDisk, &path, IndexKind::Time).unwrap();
        idx.append(100, 1).unwrap();
        idx.append(200, 2).unwrap();
        drop(idx);
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut &f, &[1, 2, 3]).unwrap();
        let idx = Index::open(&OsDisk, &path, IndexKind::Time).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.last(), Some(IndexEntry { key: 200, value: 2 }));
    }
}
