//! One segment of a partition log: `<base offset>.log` plus its `.index` and `.timeindex`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, validate_batch, BatchHeader, BATCH_HEADER_LEN};
use crate::disk::{Disk, LogFile};
use crate::index::{Index, IndexKind};

/// The file name stem Kafka uses: the base offset, zero-padded to 20 digits.
pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// What recovering a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentRecovery {
    pub batches: u64,
    pub truncated_bytes: u64,
    pub reason: Option<String>,
}

/// An append that failed: its error, and the error of putting the segment back to its last
/// whole batch if that failed too (the segment can then no longer be trusted).
#[derive(Debug)]
pub struct AppendFailure {
    pub error: io::Error,
    pub repair_error: Option<io::Error>,
}

/// Why a lookup by offset failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The offset index sent the lookup somewhere that is not the start of the batch it names:
    /// the index is wrong and must be rebuilt.
    #[error("offset index entry for offset {offset} points at position {position}, which {found}")]
    IndexMismatch {
        offset: i64,
        position: u64,
        found: String,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The in-memory state of a segment, taken before an append to put it back if the append fails.
#[derive(Debug, Clone, Copy)]
struct Mark {
    size: u64,
    offset_entries: u64,
    time_entries: u64,
    bytes_since_index: u64,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    log: Arc<dyn LogFile>,
    size: u64,
    offset_index: Index,
    time_index: Index,
    index_interval_bytes: u64,
    bytes_since_index: u64,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    /// When this segment was created (or opened), for time-based rolling.
    created_ms: i64,
}

impl Segment {
    /// Creates a new segment, or opens an existing one that the caller will [`recover`](Self::recover).
    pub fn create(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> io::Result<Segment> {
        // An existing file is left as found: the caller recovers it before use.
        Self::open_files(disk, dir, base_offset, index_interval_bytes, now_ms, true)
    }

    /// The segment's three files, opened (or created), with nothing yet read from them.
    fn open_files(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
        create: bool,
    ) -> io::Result<Segment> {
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let log = disk.open(&log_path, create)?;
        let index = |ext: &str, kind| Index::open(disk, &dir.join(format!("{stem}.{ext}")), kind);
        Ok(Segment {
            base_offset,
            log_path,
            size: 0,
            log,
            offset_index: index("index", IndexKind::Offset)?,
            time_index: index("timeindex", IndexKind::Time)?,
            index_interval_bytes,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: now_ms,
        })
    }

    /// Opens a sealed segment that a clean checkpoint vouches for: trusts the log, checks the
    /// indexes and rebuilds them if they look wrong. Returns whether a rebuild happened.
    pub fn open_trusted(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> io::Result<(Segment, bool)> {
        let mut seg =
            Self::open_files(disk, dir, base_offset, index_interval_bytes, now_ms, false)?;
        let size = seg.log.size()?;
        seg.size = size;
        let indexes_ok = (size == 0 || !seg.offset_index.is_empty())
            && seg.offset_index.looks_sane(size)?
            && seg.time_index.looks_sane(size)?;
        if !indexes_ok {
            seg.recover()?;
            return Ok((seg, true));
        }
        // The next offset comes from the last batch: start at the last index entry and walk.
        let mut position = seg
            .offset_index
            .last()
            .map(|e| u64::from(e.value))
            .unwrap_or(0);
        let mut header = [0u8; BATCH_HEADER_LEN];
        while position < size {
            if seg.log.read_exact_at(&mut header, position).is_err() {
                break;
            }
            let h = match BatchHeader::parse(&header) {
                Ok(h) => h,
                Err(_) => break,
            };
            let Ok(len) = h.total_len() else { break };
            if h.base_offset() < seg.next_offset || h.last_offset() == i64::MAX {
                // Offsets that do not follow on: the header is damaged; scan properly.
                break;
            }
            seg.next_offset = h.last_offset() + 1;
            position += len as u64;
        }
        if position != size {
            seg.recover()?;
            return Ok((seg, true));
        }
        if let Some(last) = seg.time_index.last() {
            seg.max_timestamp = last.key;
            seg.offset_of_max_timestamp = base_offset + i64::from(last.value);
        }
        Ok((seg, false))
    }

    /// Scans the whole segment, checking every batch (lengths, magic, CRC, counts); truncates at
    /// the first bad or torn batch and rebuilds both indexes from what is left.
    pub fn recover(&mut self) -> io::Result<SegmentRecovery> {
        self.offset_index.clear()?;
        self.time_index.clear()?;
        self.bytes_since_index = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        let file_len = self.log.size()?;
        let mut report = SegmentRecovery::default();
        let mut position = 0u64;
        let mut buf = Vec::new();
        let mut header = [0u8; BATCH_HEADER_LEN];
        while position < file_len {
            let remaining = file_len - position;
            if remaining < BATCH_HEADER_LEN as u64 {
                report.reason = Some(format!("{remaining} bytes of a torn batch header"));
                break;
            }
            self.log.read_exact_at(&mut header, position)?;
            let len = match BatchHeader::parse(&header).and_then(|h| h.total_len()) {
                Ok(len) if len as u64 <= remaining => len,
                Ok(len) => {
                    report.reason = Some(format!("batch of {len} bytes cut off after {remaining}"));
                    break;
                }
                Err(e) => {
                    report.reason = Some(e.to_string());
                    break;
                }
            };
            buf.resize(len, 0);
            self.log.read_exact_at(&mut buf, position)?;
            let valid = match validate_batch(&buf) {
                Ok(v) => v,
                Err(e) => {
                    report.reason = Some(e.to_string());
                    break;
                }
            };
            let h = BatchHeader::parse(&buf).map_err(io::Error::other)?;
            if h.base_offset() < self.next_offset || h.last_offset() == i64::MAX {
                report.reason = Some(format!(
                    "batch at offset {} does not follow offset {}",
                    h.base_offset(),
                    self.next_offset - 1
                ));
                break;
            }
            self.size = position;
            self.note_batch(
                h.base_offset(),
                valid.last_offset_delta,
                valid.max_timestamp,
                len as u64,
            )?;
            position += len as u64;
            report.batches += 1;
        }
        self.size = position;
        if position < file_len {
            report.truncated_bytes = file_len - position;
            self.log.set_len(position)?;
        }
        Ok(report)
    }

    /// Updates indexes and counters for a batch written at `self.size`, then advances size.
    fn note_batch(
        &mut self,
        base_offset: i64,
        last_offset_delta: i32,
        max_timestamp: i64,
        len: u64,
    ) -> io::Result<()> {
        let position = self.size;
        let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.offset_of_max_timestamp = last_offset;
        }
        if self.offset_index.is_empty() || self.bytes_since_index >= self.index_interval_bytes {
            let rel = base_offset - self.base_offset;
            let pos =
                u32::try_from(position).map_err(|_| io::Error::other("segment over 4 GiB"))?;
            self.offset_index.append(rel, pos)?;
            self.time_index.append(
                self.max_timestamp,
                (self.offset_of_max_timestamp - self.base_offset) as u32,
            )?;
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.size = position + len;
        self.next_offset = last_offset + 1;
        Ok(())
    }

    /// Appends one validated batch whose first `BATCH_HEADER_LEN` bytes are `header` (already
    /// carrying its assigned base offset) and the rest `body`. If any write fails (the log or an
    /// index), the segment is put back to its last whole batch before the error is returned, so
    /// the files never run ahead of (or behind) what the log acknowledged.
    pub fn append(
        &mut self,
        header: &[u8; BATCH_HEADER_LEN],
        body: &[u8],
        last_offset_delta: i32,
        max_timestamp: i64,
    ) -> Result<(), AppendFailure> {
        let base_offset = BatchHeader::parse(header)
            .map(|h| h.base_offset())
            .unwrap_or(self.next_offset);
        debug_assert!(base_offset >= self.next_offset, "offsets must increase");
        let len = (header.len() + body.len()) as u64;
        let mark = self.mark();
        let written = self
            .log
            .append(&[header, body])
            .and_then(|()| self.note_batch(base_offset, last_offset_delta, max_timestamp, len));
        written.map_err(|error| AppendFailure {
            error,
            repair_error: self.restore(mark).err(),
        })
    }

    fn mark(&self) -> Mark {
        Mark {
            size: self.size,
            offset_entries: self.offset_index.len(),
            time_entries: self.time_index.len(),
            bytes_since_index: self.bytes_since_index,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
            offset_of_max_timestamp: self.offset_of_max_timestamp,
        }
    }

    /// Puts the segment back to `mark`: files truncated, counters as they were.
    fn restore(&mut self, mark: Mark) -> io::Result<()> {
        self.size = mark.size;
        self.bytes_since_index = mark.bytes_since_index;
        self.next_offset = mark.next_offset;
        self.max_timestamp = mark.max_timestamp;
        self.offset_of_max_timestamp = mark.offset_of_max_timestamp;
        self.log.set_len(mark.size)?;
        self.offset_index.truncate_to(mark.offset_entries)?;
        self.time_index.truncate_to(mark.time_entries)
    }

    /// Rebuilds both indexes from the batch headers (a lookup found the offset index wrong).
    /// Unlike [`recover`](Self::recover) it neither checks CRCs nor truncates: the log is
    /// trusted, only the indexes are not. An error if the headers do not chain to the end.
    pub fn rebuild_indexes(&mut self) -> io::Result<()> {
        let size = self.size;
        self.offset_index.clear()?;
        self.time_index.clear()?;
        self.bytes_since_index = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        self.size = 0;
        let mut header = [0u8; BATCH_HEADER_LEN];
        while self.size < size {
            self.log.read_exact_at(&mut header, self.size)?;
            let h = BatchHeader::parse(&header).map_err(io::Error::other)?;
            let len = h.total_len().map_err(io::Error::other)? as u64;
            if h.base_offset() < self.next_offset || self.size + len > size {
                self.size = size;
                return Err(io::Error::other(format!(
                    "segment {}: the batch headers do not chain at position {}",
                    self.base_offset, self.size
                )));
            }
            self.note_batch(
                h.base_offset(),
                h.last_offset_delta(),
                h.max_timestamp(),
                len,
            )?;
        }
        Ok(())
    }

    /// Cuts the segment before the first batch that holds `offset` or a later one and rebuilds
    /// its indexes from what is left. Returns how many bytes went.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<u64> {
        let position = match self.position_of(offset) {
            Ok(position) => position,
            Err(LookupError::Io(e)) => return Err(e),
            Err(LookupError::IndexMismatch { .. }) => {
                self.rebuild_indexes()?;
                self.position_of(offset)
                    .map_err(|e| io::Error::other(e.to_string()))?
            }
        };
        let Some(position) = position else {
            return Ok(0);
        };
        let removed = self.size - position;
        self.log.set_len(position)?;
        self.size = position;
        self.rebuild_indexes()?;
        Ok(removed)
    }

    /// The file position of the first batch that holds `offset` or a later one. The offset index
    /// is checked where it is used: the entry must land on the start of a batch with the offset
    /// it names, or the lookup fails with [`LookupError::IndexMismatch`].
    pub fn position_of(&self, offset: i64) -> Result<Option<u64>, LookupError> {
        let entry = self.offset_index.floor(offset - self.base_offset)?;
        let mut position = entry.map(|e| u64::from(e.value)).unwrap_or(0);
        // The entry's batch, checked at the first header the walk reads anyway.
        let mut expected = entry.map(|e| self.base_offset + e.key);
        let mismatch = |expected: i64, position: u64, found: String| LookupError::IndexMismatch {
            offset: expected,
            position,
            found,
        };
        if let Some(expected) = expected {
            if position + BATCH_HEADER_LEN as u64 > self.size {
                let found = format!("is past the end ({})", self.size);
                return Err(mismatch(expected, position, found));
            }
        }
        let mut header = [0u8; BATCH_HEADER_LEN];
        while position < self.size {
            self.log.read_exact_at(&mut header, position)?;
            let h = BatchHeader::parse(&header).map_err(io::Error::other)?;
            let len = h.total_len();
            if let Some(expected) = expected.take() {
                let fits = len
                    .as_ref()
                    .is_ok_and(|&len| position + len as u64 <= self.size);
                if h.base_offset() != expected || h.magic() != 2 || !fits {
                    let found = format!(
                        "holds no batch of that offset (base offset {}, magic {})",
                        h.base_offset(),
                        h.magic()
                    );
                    return Err(mismatch(expected, position, found));
                }
            }
            if h.last_offset() >= offset {
                return Ok(Some(position));
            }
            position += len.map_err(io::Error::other)? as u64;
        }
        Ok(None)
    }

    /// Calls `f` with every batch header in the segment, in order (headers only are read).
    pub fn for_each_header(&self, mut f: impl FnMut(&BatchHeader<'_>)) -> io::Result<()> {
        self.for_each_header_at(|_, h| f(h))
    }

    /// [`for_each_header`](Self::for_each_header), with each batch's position in the file.
    pub fn for_each_header_at(&self, mut f: impl FnMut(u64, &BatchHeader<'_>)) -> io::Result<()> {
        let mut header = [0u8; BATCH_HEADER_LEN];
        let mut position = 0;
        while position < self.size {
            self.log.read_exact_at(&mut header, position)?;
            let h = BatchHeader::parse(&header).map_err(io::Error::other)?;
            f(position, &h);
            position += h.total_len().map_err(io::Error::other)? as u64;
        }
        Ok(())
    }

    /// The `len` bytes of the batch at `position`.
    pub fn read_batch(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.log.read_exact_at(&mut out, position)?;
        Ok(out)
    }

    /// The first offset whose batch has a max timestamp at or after `timestamp`, with that
    /// timestamp: within uncompressed batches the exact record is found.
    /// A compressed batch is decompressed (to at most `max_decompressed_bytes`) to find the record.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        max_decompressed_bytes: usize,
    ) -> Result<Option<(i64, i64)>, LookupError> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let start_offset = self
            .time_index
            .floor(timestamp - 1)?
            .map(|e| self.base_offset + i64::from(e.value))
            .filter(|&o| o < self.next_offset)
            .unwrap_or(self.base_offset);
        let Some(mut position) = self.position_of(start_offset)? else {
            return Ok(None);
        };
        let mut header = [0u8; BATCH_HEADER_LEN];
        while position < self.size {
            self.log.read_exact_at(&mut header, position)?;
            let h = BatchHeader::parse(&header).map_err(io::Error::other)?;
            let len = h.total_len().map_err(io::Error::other)?;
            if h.max_timestamp() >= timestamp {
                if !h.is_log_append_time() {
                    let mut buf = vec![0u8; len];
                    self.log.read_exact_at(&mut buf, position)?;
                    if let Some(found) =
                        first_record_at_or_after(&buf, timestamp, max_decompressed_bytes)
                    {
                        return Ok(Some(found));
                    }
                }
                return Ok(Some((h.base_offset(), h.max_timestamp())));
            }
            position += len as u64;
        }
        Ok(None)
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub fn offset_of_max_timestamp(&self) -> i64 {
        self.offset_of_max_timestamp
    }
    pub fn log_file(&self) -> &Arc<dyn LogFile> {
        &self.log
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Seals the segment: records its final max timestamp in the time index.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.max_timestamp >= 0 {
            let entries = self.time_index.len();
            let appended = self.time_index.append(
                self.max_timestamp,
                (self.offset_of_max_timestamp - self.base_offset) as u32,
            );
            if let Err(e) = appended {
                // Not a torn entry left behind: a later append would land after it.
                self.time_index.truncate_to(entries)?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The segment's log file and both index files, to fsync without the segment at hand.
    pub fn files(&self) -> [&Arc<dyn LogFile>; 3] {
        [&self.log, self.offset_index.file(), self.time_index.file()]
    }

    /// fsyncs the log and both indexes.
    pub fn sync_all(&self) -> io::Result<()> {
        self.log.sync_data()?;
        self.offset_index.file().sync_data()?;
        self.time_index.file().sync_data()
    }

    pub fn delete(self) -> io::Result<()> {
        let paths = [
            self.log_path.clone(),
            self.offset_index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
        ];
        drop(self);
        for p in paths {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Walks the records of one batch (decompressing them if need be) for the first with a
/// timestamp at or after `timestamp`.
fn first_record_at_or_after(
    batch: &[u8],
    timestamp: i64,
    max_decompressed_bytes: usize,
) -> Option<(i64, i64)> {
    let h = BatchHeader::parse(batch).ok()?;
    let body = batch.get(BATCH_HEADER_LEN..)?;
    let decompressed;
    let mut rest = match h.compression() {
        0 => body,
        codec => {
            let mut out = Vec::new();
            let n = crate::compression::decompress(codec, body, max_decompressed_bytes, &mut out)
                .ok()?;
            out.truncate(n);
            decompressed = out;
            &decompressed[..]
        }
    };
    for _ in 0..h.records_count() {
        let (len, used) = batch::read_varint(rest)?;
        let record = rest.get(used..used + usize::try_from(len).ok()?)?;
        // attributes (1 byte), then timestamp delta (varlong), then offset delta (varint)
        let (ts_delta, ts_used) = batch::read_varlong(record.get(1..)?)?;
        let (offset_delta, _) = batch::read_varint(record.get(1 + ts_used..)?)?;
        let record_ts = h.base_timestamp() + ts_delta;
        if record_ts >= timestamp {
            return Some((h.base_offset() + i64::from(offset_delta), record_ts));
        }
        rest = rest.get(used + record.len()..)?;
    }
    None
}
