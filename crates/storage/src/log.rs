//! A partition's log: an ordered set of segments, the newest one active.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::batch::{
    assign_offset, control_marker, BatchError, BatchIter, ControlMarker, ValidBatch,
    BATCH_HEADER_LEN,
};
use crate::compact::{CleanedRuns, CompactionPlan, CompactionReport, SegmentView};
use crate::disk::{Disk, LogFile, OsDisk};
use crate::epochs::{LeaderEpochCache, LEADER_EPOCH_CHECKPOINT_FILE};
use crate::producers::{EndedTxn, ProducerStates, SequenceCheck, SequenceError};
use crate::segment::{LookupError, Segment, SegmentRecovery};
use crate::snapshots;
use crate::txnindex::{self, AbortedTxn};

const RECOVERY_POINT_FILE: &str = "recovery-point";
/// The log start offset, once it has been moved inside a segment (DeleteRecords, a Raft purge).
/// Without the file the log starts at its first segment.
const LOG_START_OFFSET_FILE: &str = "log-start-offset";

/// Per-partition log settings, named after the Kafka topic configs they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment is older than this.
    pub segment_ms: i64,
    /// `index.interval.bytes`: bytes of log between offset index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 means no limit.
    pub retention_bytes: i64,
    /// `cleanup.policy` includes `compact`: keep the latest record of each key.
    pub compact: bool,
    /// `delete.retention.ms`: how long tombstones survive compaction.
    pub delete_retention_ms: i64,
    /// The most bytes a produced batch's records may inflate to when decompressed to be checked
    /// (`max.message.bytes` times `message.max.decompression.factor`).
    pub max_decompressed_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            compact: false,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            max_decompressed_bytes: 32 * 1_048_588,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Corrupt(#[from] BatchError),
    #[error("batch of {size} bytes is larger than max.message.bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the partition is offline until a restart recovers it: {0}")]
    Offline(String),
    /// A follower's append of a batch that starts below its log end (or below the end of the
    /// batch before it, or whose offsets overflow): the leader's log and this one disagree.
    #[error("a batch at offset {base_offset} is below the log end offset {log_end_offset}")]
    BelowLogEnd {
        base_offset: i64,
        log_end_offset: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the partition is offline until a restart recovers it: {0}")]
    Offline(String),
}

/// The limits a produced batch is checked against, copied out of the log so the check can run
/// without its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendLimits {
    pub max_message_bytes: usize,
    pub max_decompressed_bytes: usize,
}

/// What `open` found and did, for the log line.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub recovered_segments: usize,
    pub rebuilt_indexes: usize,
    pub truncated_bytes: u64,
    pub reasons: Vec<String>,
}

/// The result of an append: the offsets given to the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch was a producer's retry of one already stored at these offsets.
    pub duplicate: bool,
}

/// A planned read of stored bytes, taken under the partition's lock and carried out without it.
#[derive(Debug)]
pub struct ReadPlan {
    file: Arc<dyn LogFile>,
    position: u64,
    available: u64,
    max_bytes: usize,
    min_one_batch: bool,
    max_offset: i64,
}

impl ReadPlan {
    /// Reads whole batches, at most `max_bytes` of them (or the first batch whatever its size if
    /// `min_one_batch`), none at or past `max_offset`.
    pub fn read(&self) -> io::Result<Bytes> {
        let read =
            self.read_with(|buf, position| self.file.read_exact_at(buf, position).map(|()| true))?;
        Ok(read.unwrap_or_default())
    }

    /// [`read`](Self::read) if the bytes are in the page cache, so that it never waits for the
    /// device; `None` when some are not (read them on a blocking thread instead).
    pub fn read_cached(&self) -> io::Result<Option<Bytes>> {
        self.read_with(|buf, position| self.file.read_cached_at(buf, position))
    }

    /// The read, with `read_at` filling a buffer from a position, or saying it would block.
    fn read_with(
        &self,
        read_at: impl Fn(&mut [u8], u64) -> io::Result<bool>,
    ) -> io::Result<Option<Bytes>> {
        let want = (self.available as usize).min(self.max_bytes);
        let mut buf = filled_buffer(want.max(BATCH_HEADER_LEN.min(self.available as usize)));
        if !read_at(&mut buf, self.position)? {
            return Ok(None);
        }
        let mut iter = BatchIter::new(&buf);
        let mut end = 0;
        for (at, h) in iter.by_ref() {
            if h.base_offset() >= self.max_offset {
                break;
            }
            end = at + h.total_len().unwrap_or(0);
        }
        if end == 0 && self.min_one_batch {
            // The first batch is larger than max_bytes: Kafka returns it whole so the consumer
            // can make progress.
            if let Some(h) = crate::batch::BatchHeader::parse(&buf)
                .ok()
                .filter(|h| h.base_offset() < self.max_offset)
            {
                if let Ok(len) = h.total_len() {
                    if len as u64 <= self.available {
                        let mut whole = filled_buffer(len);
                        if !read_at(&mut whole, self.position)? {
                            return Ok(None);
                        }
                        return Ok(Some(whole.freeze()));
                    }
                }
            }
        }
        buf.truncate(end);
        Ok(Some(buf.freeze()))
    }
}

/// A buffer of `len` bytes for a read to overwrite. Allocated then filled, not allocated zeroed:
/// an allocator may zero a recycled large block by handing its pages back to the kernel, so that
/// every page of a multi-megabyte fetch buffer faults in again at the read.
fn filled_buffer(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(len);
    buf.resize(len, 0);
    buf
}

/// The fsyncs that make every offset below `up_to` durable; run it without the lock, then hand
/// it to [`PartitionLog::flush_done`].
#[derive(Debug)]
pub struct FlushJob {
    files: Vec<Arc<dyn LogFile>>,
    /// The log's directory, when a file was created or renamed in it since its last fsync (a
    /// segment roll, the epoch checkpoint).
    dir: Option<PathBuf>,
    /// The log's count of directory changes when the job was made.
    dir_changes: u64,
    /// Set when the job makes every sealed segment durable: the recovery point may then move.
    checkpoint: Option<Checkpoint>,
    /// The transaction index files written since their last fsync (segment base, write number),
    /// in `log_dir`.
    txn_indexes: Vec<(i64, u64)>,
    log_dir: PathBuf,
    pub up_to: i64,
}

/// A recovery point a [`FlushJob`] makes true, and what must hold for it to be recorded.
#[derive(Debug)]
struct Checkpoint {
    /// The base offset of the active segment: every segment below it is in the job.
    at: i64,
    /// The log's truncation count when the job was made; a truncation since voids the checkpoint.
    truncations: u64,
    /// The epoch checkpoint written (unsynced) for the job, and the cache's version it holds.
    epochs: Option<(PathBuf, u64)>,
}

impl FlushJob {
    pub fn run(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        for &(base, _) in &self.txn_indexes {
            txnindex::sync(&self.log_dir, base)?;
        }
        if let Some((path, _)) = self.checkpoint.as_ref().and_then(|c| c.epochs.as_ref()) {
            File::open(path)?.sync_all()?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    config: LogConfig,
    /// Why the log stopped taking writes and serving reads, once a failure left its files in a
    /// state it cannot vouch for (a failed repair, a failed fsync). Only a restart, which
    /// recovers the log from its files, brings it back.
    offline: Option<String>,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    flushed_offset: i64,
    recovery_point: i64,
    producers: ProducerStates,
    /// Where each leader epoch began (see [`crate::epochs`]).
    epochs: LeaderEpochCache,
    /// The epoch stamped on the batches this log appends as leader.
    leader_epoch: i32,
    /// Sealed segments below this were compacted by the last pass.
    compacted_through: i64,
    /// Counts truncations, so a compaction pass built from records since cut away is dropped.
    truncations: u64,
    /// Counts segment rolls, whose new files are durable only once the directory is fsync'd
    /// (by the next flush, as appends to the new segment are); `dir_synced` is the count the
    /// last directory fsync covered.
    dir_changes: u64,
    dir_synced: u64,
    last_compaction_ms: i64,
    /// The aborted transactions, by the base of the segment holding their abort marker (see
    /// [`crate::txnindex`]), each segment's in marker order.
    aborted: BTreeMap<i64, Vec<AbortedTxn>>,
    /// Index files written since their last fsync, with the write's number in
    /// `txn_index_writes`, so a flush that ran meanwhile does not clear a later write.
    txn_index_dirty: BTreeMap<i64, u64>,
    txn_index_writes: u64,
}

impl PartitionLog {
    /// Opens the log in `dir` (creating it if needed), recovering what was written after the
    /// last checkpoint.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> io::Result<(PartitionLog, RecoveryReport)> {
        Self::open_on(Arc::new(OsDisk), dir, config, now_ms)
    }

    /// [`open`](Self::open), with the log's files on `disk`.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> io::Result<(PartitionLog, RecoveryReport)> {
        fs::create_dir_all(dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let recovery_point = read_recovery_point(dir);
        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        // Segments wholly below the recovery point were synced and checkpointed: trust them.
        // The last segment at or below the recovery point, and everything after, is scanned.
        let first_scanned = bases
            .iter()
            .rposition(|&b| b <= recovery_point)
            .unwrap_or(0);
        for (i, &base) in bases.iter().enumerate() {
            let segment = if i < first_scanned {
                let (seg, rebuilt) =
                    Segment::open_trusted(&*disk, dir, base, config.index_interval_bytes, now_ms)?;
                if rebuilt {
                    report.rebuilt_indexes += 1;
                    report
                        .reasons
                        .push(format!("segment {base}: index rebuilt"));
                }
                seg
            } else {
                let mut seg =
                    Segment::create(&*disk, dir, base, config.index_interval_bytes, now_ms)?;
                let SegmentRecovery {
                    truncated_bytes,
                    reason,
                    ..
                } = seg.recover()?;
                report.recovered_segments += 1;
                report.rebuilt_indexes += 1;
                if truncated_bytes > 0 {
                    report.truncated_bytes += truncated_bytes;
                    report.reasons.push(format!(
                        "segment {base}: truncated {truncated_bytes} bytes ({})",
                        reason.unwrap_or_default()
                    ));
                }
                seg
            };
            let truncated = report.truncated_bytes > 0;
            segments.insert(base, segment);
            if truncated && i + 1 < bases.len() {
                // Corruption inside a segment that others follow: as Kafka does, the log ends
                // at the corruption and the later segments go.
                for &later in &bases[i + 1..] {
                    let (seg, _) = Segment::open_trusted(
                        &*disk,
                        dir,
                        later,
                        config.index_interval_bytes,
                        now_ms,
                    )?;
                    report
                        .reasons
                        .push(format!("segment {later}: after a corrupt segment, removed"));
                    seg.delete()?;
                }
                break;
            }
        }
        // A segment that starts below where its predecessor ends overlaps it: the remains of a
        // compaction interrupted between its rename and its deletes. Its records are in the
        // compacted segment, so it goes. (Gaps between segments are normal after compaction.)
        let mut expected_next: Option<i64> = None;
        let mut overlapping = Vec::new();
        for (&base, seg) in &segments {
            if expected_next.is_some_and(|next| base < next) {
                overlapping.push(base);
                continue;
            }
            expected_next = Some(seg.next_offset());
        }
        for base in overlapping {
            if let Some(seg) = segments.remove(&base) {
                report.reasons.push(format!(
                    "segment {base}: overlaps the segment before it, removed"
                ));
                seg.delete()?;
            }
        }
        // Leftovers of a compaction interrupted before its rename.
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "cleaned") {
                fs::remove_file(&path)?;
            }
        }
        if segments.is_empty() {
            segments.insert(
                0,
                Segment::create(&*disk, dir, 0, config.index_interval_bytes, now_ms)?,
            );
        }
        // Segments wholly below a checkpointed log start offset are what a move of the log start
        // left behind when it stopped before deleting them.
        let checkpointed_start = read_offset_file(dir, LOG_START_OFFSET_FILE);
        let below: Vec<i64> = segments
            .iter()
            .filter(|(_, seg)| seg.next_offset() <= checkpointed_start)
            .map(|(&base, _)| base)
            .collect();
        for base in below {
            if segments.len() > 1 {
                if let Some(seg) = segments.remove(&base) {
                    seg.delete()?;
                }
            }
        }
        report.segments = segments.len();
        let first_base = segments.keys().next().copied().unwrap_or(0);
        let end = segments
            .values()
            .next_back()
            .map_or(0, Segment::next_offset);
        let log_start_offset = first_base.max(checkpointed_start.min(end));
        // The recovered segments' batches name their epochs: entries the checkpoint has for them
        // (or lacks) are taken from the batches. Without a readable checkpoint, every segment.
        let scanned_from = bases.get(first_scanned).copied().unwrap_or(0);
        let mut checkpointed_latest = None;
        let (mut epochs, walk_from) = match LeaderEpochCache::load(dir) {
            Ok(Some(mut cache)) => {
                checkpointed_latest = cache.latest();
                cache.truncate_from_end(scanned_from);
                (cache, scanned_from)
            }
            Ok(None) => (LeaderEpochCache::default(), i64::MIN),
            Err(e) => {
                report
                    .reasons
                    .push(format!("leader-epoch checkpoint unreadable ({e}), rebuilt"));
                (LeaderEpochCache::default(), i64::MIN)
            }
        };
        for seg in segments.values().filter(|s| s.base_offset() >= walk_from) {
            seg.for_each_header(|h| epochs.assign(h.partition_leader_epoch(), h.base_offset()))?;
        }
        // An epoch that began at the log end (leadership taken, nothing appended in it yet) is
        // in no batch: the checkpoint is its only record, and it still holds for this log.
        if let Some(entry) = checkpointed_latest.filter(|e| e.start_offset == end) {
            if epochs
                .latest()
                .is_none_or(|latest| entry.epoch > latest.epoch)
            {
                epochs.assign(entry.epoch, entry.start_offset);
            }
        }
        epochs.truncate_from_start(log_start_offset);
        let leader_epoch = epochs.latest().map_or(0, |e| e.epoch);
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            disk,
            offline: None,
            config,
            segments,
            log_start_offset,
            flushed_offset: 0,
            recovery_point,
            producers: ProducerStates::default(),
            epochs,
            leader_epoch,
            compacted_through: 0,
            truncations: 0,
            dir_changes: 0,
            dir_synced: 0,
            last_compaction_ms: now_ms,
            aborted: BTreeMap::new(),
            txn_index_dirty: BTreeMap::new(),
            txn_index_writes: 0,
        };
        log.load_txn_indexes()?;
        // Everything past the recovery point is replayed, so the abort markers there are
        // indexed even if their index entries were lost with the page cache.
        log.reload_producers(now_ms, scanned_from)?;
        log.remove_stray_snapshots();
        // What is on disk now survived a restart; count it as flushed.
        log.flushed_offset = log.log_end_offset();
        Ok((log, report))
    }

    /// Idempotent producers' state comes back from the newest producer snapshot at or below the
    /// log end, and the batches after it; without a readable snapshot, from every segment. A
    /// retry that arrives after a restart (or a truncation) is still recognised, however many
    /// segments ago its producer last wrote. Snapshots past the log end (written before a
    /// truncation, or before a crash lost what they follow) are removed first.
    ///
    /// The replay starts at or below `replay_from`, and indexes the abort markers it meets that
    /// the transaction indexes lack.
    fn reload_producers(&mut self, now_ms: i64, replay_from: i64) -> io::Result<()> {
        let end = self.log_end_offset();
        let first_base = self.segments.keys().next().copied().unwrap_or(0);
        let offsets = snapshots::list(&self.dir)?;
        snapshots::remove(&self.dir, &offsets, |o| o > end || o < first_base);
        let newest = end.min(replay_from.max(first_base));
        let (from, mut producers) = snapshots::load_latest(&self.dir, &offsets, first_base, newest)
            .unwrap_or((i64::MIN, ProducerStates::default()));
        let mut aborts = Vec::new();
        for seg in self.segments.values().filter(|s| s.next_offset() > from) {
            let mut unreadable = None;
            seg.for_each_header_at(|position, h| {
                if h.base_offset() < from {
                    return;
                }
                let ended = producers.record(h, h.base_offset(), now_ms, None);
                let Some(ended) = ended else { return };
                let len = h.total_len().unwrap_or(0);
                match seg.read_batch(position, len) {
                    Ok(batch) => {
                        if control_marker(&batch).is_some_and(|m| !m.commit) {
                            let lso = stable_after(&producers, &ended);
                            aborts.push(aborted(&ended, lso));
                        }
                    }
                    Err(e) => unreadable = Some(e),
                }
            })?;
            if let Some(e) = unreadable {
                return Err(e);
            }
        }
        self.producers = producers;
        for entry in aborts {
            self.index_abort(entry)?;
        }
        Ok(())
    }

    /// Reads every segment's transaction index; removes the index files of segments that are
    /// gone (a deletion interrupted by a crash).
    fn load_txn_indexes(&mut self) -> io::Result<()> {
        for base in txnindex::list(&self.dir)? {
            if !self.segments.contains_key(&base) {
                txnindex::rewrite(&self.dir, base, &[])?;
                continue;
            }
            let entries = txnindex::read(&self.dir, base)?;
            if !entries.is_empty() {
                self.aborted.insert(base, entries);
            }
        }
        Ok(())
    }

    /// Adds an aborted transaction to the index of the segment holding its marker, unless it
    /// is there already.
    fn index_abort(&mut self, entry: AbortedTxn) -> io::Result<()> {
        let base = self
            .segments
            .range(..=entry.last_offset)
            .next_back()
            .map_or(entry.last_offset, |(&b, _)| b);
        let list = self.aborted.entry(base).or_default();
        let known = list
            .iter()
            .any(|e| e.producer_id == entry.producer_id && e.last_offset == entry.last_offset);
        if known {
            return Ok(());
        }
        list.push(entry);
        list.sort_unstable_by_key(|e| e.last_offset);
        if txnindex::append(&self.dir, base, &entry)? {
            self.dir_changes += 1;
        }
        self.txn_index_writes += 1;
        self.txn_index_dirty.insert(base, self.txn_index_writes);
        Ok(())
    }

    /// After the segments changed (truncation, retention, compaction): drops the aborted
    /// transactions whose markers are gone (cut away, or `removed` by compaction with every
    /// record of the transaction) and files each one under the segment now holding its marker,
    /// rewriting the index files that changed.
    fn reindex_txns(&mut self, removed: &HashSet<i64>) -> io::Result<()> {
        if self.aborted.is_empty() {
            return Ok(());
        }
        let end = self.log_end_offset();
        let first_base = self.segments.keys().next().copied().unwrap_or(0);
        let old = std::mem::take(&mut self.aborted);
        for entry in old.values().flatten() {
            if entry.last_offset < end
                && entry.last_offset >= first_base
                && !removed.contains(&entry.last_offset)
            {
                let base = self
                    .segments
                    .range(..=entry.last_offset)
                    .next_back()
                    .map_or(first_base, |(&b, _)| b);
                self.aborted.entry(base).or_default().push(*entry);
            }
        }
        let bases: BTreeSet<i64> = old.keys().chain(self.aborted.keys()).copied().collect();
        for base in bases {
            let now = self.aborted.get(&base).map_or(&[][..], Vec::as_slice);
            if old.get(&base).map_or(&[][..], Vec::as_slice) != now {
                txnindex::rewrite(&self.dir, base, now)?;
                self.dir_changes += 1;
                self.txn_index_writes += 1;
                self.txn_index_dirty.insert(base, self.txn_index_writes);
            }
        }
        Ok(())
    }

    /// The aborted transactions a `read_committed` fetch from `from` up to `upper` must list:
    /// those whose marker is at or past `from` and that began below `upper`.
    pub fn aborted_txns(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        let start = self
            .aborted
            .range(..=from)
            .next_back()
            .map_or(i64::MIN, |(&b, _)| b);
        self.aborted
            .range(start..)
            .flat_map(|(_, list)| list)
            .filter(|e| e.last_offset >= from && e.first_offset < upper)
            .copied()
            .collect()
    }

    /// Writes the producer snapshot at `offset`, the log end or a new segment's base; `durable`
    /// syncs it. A failure costs only replay at the next start, so it is logged, not returned.
    fn snapshot_producers(&self, offset: i64, durable: bool) {
        if let Err(e) = snapshots::write(&self.dir, offset, &self.producers, durable) {
            tracing::warn!(dir = %self.dir.display(), offset, error = %e, "could not write a producer state snapshot; the next start replays more of the log");
        }
    }

    /// Keeps the snapshots at segment bases (a truncation may need them) and the newest one (a
    /// clean close's, at the log end); removes the rest.
    fn remove_stray_snapshots(&self) {
        let Ok(offsets) = snapshots::list(&self.dir) else {
            return;
        };
        let newest = offsets.last().copied();
        snapshots::remove(&self.dir, &offsets, |o| {
            Some(o) != newest && !self.segments.contains_key(&o)
        });
    }

    /// Removes the snapshots below the first segment: the batches they follow are gone.
    fn remove_snapshots_below_start(&self) {
        let first_base = self.segments.keys().next().copied().unwrap_or(0);
        if let Ok(offsets) = snapshots::list(&self.dir) {
            snapshots::remove(&self.dir, &offsets, |o| o < first_base);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The epoch stamped on appended batches.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// Sets the epoch stamped on the batches appended from now on (this replica became leader
    /// in `epoch`). An epoch newer than any the cache knows begins here, at the log end offset,
    /// as Kafka's `Partition.makeLeader` records it: OffsetForLeaderEpoch then answers for a
    /// leader that has appended nothing yet, and the entry is checkpointed like any other
    /// change of the cache. An older or known epoch only changes what is stamped.
    pub fn set_leader_epoch(&mut self, epoch: i32) {
        self.leader_epoch = epoch;
        if self
            .epochs
            .latest()
            .is_none_or(|latest| epoch > latest.epoch)
        {
            self.epochs.assign(epoch, self.log_end_offset());
        }
    }

    /// The leader-epoch cache: where each epoch began.
    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// Where epoch `requested` ended in this log, as OffsetForLeaderEpoch answers:
    /// `(epoch, end offset)`, or `(-1, -1)` if unknown.
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        self.epochs.end_offset_for(requested, self.log_end_offset())
    }
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
    /// Replaces the log's settings (a topic config was altered). They take effect from the next
    /// append (size limits, rolls), retention or compaction pass; `index.interval.bytes`
    /// applies from the next segment, existing files are not rewritten.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }
    /// What a produced batch is checked against before it is appended.
    pub fn append_limits(&self) -> AppendLimits {
        AppendLimits {
            max_message_bytes: self.config.max_message_bytes,
            max_decompressed_bytes: self.config.max_decompressed_bytes,
        }
    }
    /// Why the log is offline, if it is.
    pub fn offline_reason(&self) -> Option<&str> {
        self.offline.as_deref()
    }
    /// Takes the log offline: no more appends, reads or checkpoints until a restart. The first
    /// reason is kept.
    pub fn mark_offline(&mut self, reason: String) {
        if self.offline.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, "partition offline until a restart recovers it");
            self.offline = Some(reason);
        }
    }
    /// Stops the log quietly for good (its topic is being deleted, or was never created): no
    /// more appends, reads, flushes or checkpoints.
    pub fn retire(&mut self, reason: &str) {
        self.offline.get_or_insert_with(|| reason.to_string());
    }
    fn check_online(&self) -> Result<(), String> {
        match &self.offline {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }
    /// Offsets below this are on disk (fsync'd).
    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        // `open` guarantees at least one segment and nothing removes the last.
        match self.segments.values().next_back() {
            Some(s) => s,
            None => unreachable!("a partition log always has an active segment"),
        }
    }
    fn active_mut(&mut self) -> &mut Segment {
        match self.segments.values_mut().next_back() {
            Some(s) => s,
            None => unreachable!("a partition log always has an active segment"),
        }
    }

    /// Validates one batch as a producer sent it, without touching the log. The CPU-heavy part
    /// of an append (the CRC pass); call it before taking the partition's lock.
    pub fn validate(&self, batch: &[u8]) -> Result<ValidBatch, AppendError> {
        validate_for_append(batch, self.append_limits())
    }

    /// Appends a batch validated by [`validate`](Self::validate), assigning its offsets.
    pub fn append_validated(
        &mut self,
        batch: &[u8],
        valid: ValidBatch,
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        self.check_online().map_err(AppendError::Offline)?;
        let producer_header = crate::batch::BatchHeader::parse(batch)?;
        if let SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        } = self.producers.check(&producer_header)?
        {
            return Ok(AppendInfo {
                base_offset,
                last_offset,
                duplicate: true,
            });
        }
        let base_offset = self.log_end_offset();
        let last_offset = base_offset + i64::from(valid.last_offset_delta);
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&batch[..BATCH_HEADER_LEN]);
        assign_offset(&mut header, base_offset, self.leader_epoch);
        let body = &batch[BATCH_HEADER_LEN..valid.total_len];
        if valid.rewrite_max_timestamp {
            crate::batch::rewrite_max_timestamp(&mut header, body, valid.max_timestamp);
        }
        self.write_batch(&header, body, &valid, base_offset, last_offset, now_ms)?;
        self.producers
            .record(&producer_header, base_offset, now_ms, None);
        self.epochs.assign(self.leader_epoch, base_offset);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            duplicate: false,
        })
    }

    /// Writes one batch whose header carries its offsets, rolling first if the active segment
    /// is full, too old, or cannot index `last_offset` (the new segment starts at the batch).
    fn write_batch(
        &mut self,
        header: &[u8; BATCH_HEADER_LEN],
        body: &[u8],
        valid: &ValidBatch,
        base_offset: i64,
        last_offset: i64,
        now_ms: i64,
    ) -> Result<(), AppendError> {
        let len = valid.total_len as u64;
        let active = self.active();
        let beyond_index = last_offset - active.base_offset() > i64::from(i32::MAX);
        if active.is_empty() {
            if beyond_index {
                // Only a follower meets this: a gap in the leader's log past what the empty
                // active segment could index.
                self.replace_empty_active(base_offset, now_ms)?;
            }
        } else if beyond_index
            || active.size() + len > self.config.segment_bytes
            || now_ms - active.created_ms() >= self.config.segment_ms
        {
            self.roll_at(base_offset, now_ms)?;
        }
        let appended =
            self.active_mut()
                .append(header, body, valid.last_offset_delta, valid.max_timestamp);
        if let Err(failure) = appended {
            if let Some(repair) = failure.repair_error {
                self.mark_offline(format!(
                    "an append failed ({}) and putting the segment back to its last whole batch failed too ({repair})",
                    failure.error
                ));
            }
            return Err(AppendError::Io(failure.error));
        }
        Ok(())
    }

    /// Appends what a leader sent this follower: whole batches with the offsets, leader epochs
    /// and timestamps they carry, checked (lengths, CRC, framing) but not stamped again. The
    /// producer states and the epoch cache follow them, unchecked, as Kafka's follower does.
    /// Batches must start at or past the log end and follow one another (a compacted leader's
    /// log has gaps). Every batch is checked before any is written, so a refusal appends
    /// nothing. A partial batch at the end of `records` (a response cut at its size limit) is
    /// left for the next fetch. Returns the offsets appended, `None` if no whole batch came.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, AppendError> {
        self.check_online().map_err(AppendError::Offline)?;
        let whole = self.check_follower_batches(records)?;
        let mut rest = &records[..whole];
        let mut info: Option<AppendInfo> = None;
        while !rest.is_empty() {
            let parsed = crate::batch::BatchHeader::parse(rest)?;
            let valid = crate::batch::validate_batch(rest)?;
            let base_offset = parsed.base_offset();
            let last_offset = base_offset + i64::from(valid.last_offset_delta);
            let mut header = [0u8; BATCH_HEADER_LEN];
            header.copy_from_slice(&rest[..BATCH_HEADER_LEN]);
            let body = &rest[BATCH_HEADER_LEN..valid.total_len];
            self.write_batch(&header, body, &valid, base_offset, last_offset, now_ms)?;
            let marker = control_marker(rest);
            let ended = self.producers.record(
                &parsed,
                base_offset,
                now_ms,
                marker.map(|m| m.coordinator_epoch),
            );
            if let Some(e) = ended.filter(|_| marker.is_some_and(|m| !m.commit)) {
                let lso = stable_after(&self.producers, &e);
                self.index_abort(aborted(&e, lso))?;
            }
            self.epochs
                .assign(parsed.partition_leader_epoch(), base_offset);
            info = Some(AppendInfo {
                base_offset: info.map_or(base_offset, |i| i.base_offset),
                last_offset,
                duplicate: false,
            });
            rest = &rest[valid.total_len..];
        }
        Ok(info)
    }

    /// Checks the whole batches at the start of `records` for a follower's append: each one
    /// intact and starting past the previous one's last offset, the first at or past the log
    /// end. Returns how many bytes they take.
    fn check_follower_batches(&self, records: &[u8]) -> Result<usize, AppendError> {
        let mut at = 0;
        let mut next = self.log_end_offset();
        while records.len() - at >= BATCH_HEADER_LEN {
            let rest = &records[at..];
            if crate::batch::BatchHeader::parse(rest)?.total_len()? > rest.len() {
                break;
            }
            let valid = crate::batch::validate_batch(rest)?;
            let base_offset = crate::batch::BatchHeader::parse(rest)?.base_offset();
            if base_offset < next {
                return Err(AppendError::BelowLogEnd {
                    base_offset,
                    log_end_offset: next,
                });
            }
            next = base_offset
                .checked_add(i64::from(valid.last_offset_delta) + 1)
                .ok_or(AppendError::BelowLogEnd {
                    base_offset,
                    log_end_offset: next,
                })?;
            at += valid.total_len;
        }
        Ok(at)
    }

    /// Appends a transaction marker for `producer_id` (Kafka's WriteTxnMarkers, on the leader):
    /// refused from an older producer epoch or an older coordinator. Returns where it went and
    /// the transaction it ended, if the producer had one open here.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: ControlMarker,
        now_ms: i64,
    ) -> Result<(AppendInfo, Option<EndedTxn>), AppendError> {
        self.check_online().map_err(AppendError::Offline)?;
        self.producers
            .check_marker(producer_id, producer_epoch, marker.coordinator_epoch)?;
        let batch = crate::batch::control_batch(producer_id, producer_epoch, marker, now_ms);
        let valid = crate::batch::validate_batch(&batch)?;
        let base_offset = self.log_end_offset();
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&batch[..BATCH_HEADER_LEN]);
        assign_offset(&mut header, base_offset, self.leader_epoch);
        let body = &batch[BATCH_HEADER_LEN..valid.total_len];
        self.write_batch(&header, body, &valid, base_offset, base_offset, now_ms)?;
        let parsed = crate::batch::BatchHeader::parse(&header)?;
        let ended =
            self.producers
                .record(&parsed, base_offset, now_ms, Some(marker.coordinator_epoch));
        self.epochs.assign(self.leader_epoch, base_offset);
        if let Some(e) = ended.filter(|_| !marker.commit) {
            let lso = stable_after(&self.producers, &e);
            self.index_abort(aborted(&e, lso))?;
        }
        let info = AppendInfo {
            base_offset,
            last_offset: base_offset,
            duplicate: false,
        };
        Ok((info, ended))
    }

    /// Each producer's epoch, last batch and open transaction (DescribeProducers).
    pub fn producer_summaries(&self) -> Vec<crate::producers::ProducerSummary> {
        self.producers.summaries()
    }

    /// Whether `producer_id` at `producer_epoch` has a transaction open in this log: its
    /// further transactional batches here need no verification by the coordinator.
    pub fn has_open_txn(&self, producer_id: i64, producer_epoch: i16) -> bool {
        self.producers.has_open_txn(producer_id, producer_epoch)
    }

    /// Appends a transactional batch its coordinator verified while this log ended at
    /// `verified_at` (KIP-890), unless a marker of its producer was appended since: the
    /// transaction it was verified for is over, and the batch would open one nobody ends.
    pub fn append_verified(
        &mut self,
        batch: &[u8],
        valid: ValidBatch,
        verified_at: i64,
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        let h = crate::batch::BatchHeader::parse(batch)?;
        self.producers
            .check_verified(h.producer_id(), verified_at)?;
        self.append_validated(batch, valid, now_ms)
    }

    /// The first offset of the oldest transaction still open in this log, if any: the last
    /// stable offset is at most this (and at most the high watermark).
    pub fn first_open_txn_offset(&self) -> Option<i64> {
        self.producers.first_open_txn_offset()
    }

    /// Validates and appends every batch in `records` (for the broker's own writes).
    pub fn append(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, AppendError> {
        let mut rest = records;
        let mut info: Option<AppendInfo> = None;
        while !rest.is_empty() {
            let valid = self.validate(rest)?;
            let appended = self.append_validated(rest, valid, now_ms)?;
            info = Some(match info {
                Some(first) => AppendInfo {
                    last_offset: appended.last_offset,
                    ..first
                },
                None => appended,
            });
            rest = &rest[valid.total_len..];
        }
        Ok(info)
    }

    /// Starts a new active segment at the log end offset. Nothing is fsync'd here: the files
    /// are created and the old segment's last index entry written, and the next flush makes
    /// them durable with the appends that follow (the directory included).
    pub fn roll(&mut self, now_ms: i64) -> io::Result<()> {
        self.roll_at(self.log_end_offset(), now_ms)
    }

    /// [`roll`](Self::roll) to a new segment at `base`, at or past the log end.
    fn roll_at(&mut self, base: i64, now_ms: i64) -> io::Result<()> {
        self.active_mut().seal()?;
        let segment = self.create_segment(base, now_ms)?;
        self.segments.insert(base, segment);
        self.dir_changes += 1;
        // The producers as of the new segment's base: a start replays from here at most.
        self.snapshot_producers(base, false);
        Ok(())
    }

    /// Replaces the empty active segment with one at `base`, past the log end.
    fn replace_empty_active(&mut self, base: i64, now_ms: i64) -> io::Result<()> {
        let segment = self.create_segment(base, now_ms)?;
        let empty = self.segments.pop_last();
        self.segments.insert(base, segment);
        self.dir_changes += 1;
        if let Some((old, empty)) = empty {
            if let Err(e) = empty.delete() {
                // Empty files below the new active segment: the next start reads them as an
                // empty segment.
                tracing::warn!(dir = %self.dir.display(), base = old, error = %e, "could not remove an empty segment");
            }
        }
        Ok(())
    }

    fn create_segment(&self, base: i64, now_ms: i64) -> io::Result<Segment> {
        Segment::create(
            &*self.disk,
            &self.dir,
            base,
            self.config.index_interval_bytes,
            now_ms,
        )
        .inspect_err(|_| {
            // Leave nothing half-made behind: the old segment stays active.
            remove_segment_files(&self.dir, base);
        })
    }

    /// Plans a read from `offset`: whole batches, up to `max_bytes` (or the first batch whatever
    /// its size if `min_one_batch`), none at or past `max_offset` (the high watermark).
    pub fn read(
        &mut self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<Option<ReadPlan>, ReadError> {
        self.check_online().map_err(ReadError::Offline)?;
        let log_end_offset = self.log_end_offset();
        if offset < self.log_start_offset || offset > log_end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset >= max_offset.min(log_end_offset) {
            return Ok(None);
        }
        // The segment holding `offset`, or (after compaction left a gap) the ones after it.
        let mut next = self
            .segments
            .range(..=offset)
            .next_back()
            .or_else(|| self.segments.range(offset + 1..).next())
            .map(|(&base, _)| base);
        while let Some(base) = next {
            next = self.next_segment_after(base);
            let plan = self.checked_lookup(base, |segment| {
                if segment.next_offset() <= offset {
                    return Ok(None);
                }
                Ok(segment.position_of(offset)?.map(|position| ReadPlan {
                    file: segment.log_file().clone(),
                    position,
                    available: segment.size() - position,
                    max_bytes,
                    min_one_batch,
                    max_offset,
                }))
            })?;
            if plan.is_some() {
                return Ok(plan);
            }
        }
        Ok(None)
    }

    fn next_segment_after(&self, base: i64) -> Option<i64> {
        self.segments.range(base + 1..).next().map(|(&b, _)| b)
    }

    /// The earliest offset whose record timestamp is at or after `timestamp`, with that timestamp.
    pub fn offset_for_timestamp(
        &mut self,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        self.check_online().map_err(ReadError::Offline)?;
        let mut next = self.segments.keys().next().copied();
        while let Some(base) = next {
            next = self.next_segment_after(base);
            let limit = self.config.max_decompressed_bytes;
            if let Some(found) =
                self.checked_lookup(base, |s| s.offset_for_timestamp(timestamp, limit))?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Runs `lookup` on segment `base`; if the segment's offset index proves wrong, rebuilds the
    /// index from the log and runs it again.
    fn checked_lookup<T>(
        &mut self,
        base: i64,
        lookup: impl Fn(&Segment) -> Result<T, LookupError>,
    ) -> Result<T, ReadError> {
        let Some(segment) = self.segments.get_mut(&base) else {
            return Err(ReadError::Io(io::Error::other(format!(
                "no segment {base}"
            ))));
        };
        let mismatch = match lookup(segment) {
            Ok(t) => return Ok(t),
            Err(LookupError::Io(e)) => return Err(ReadError::Io(e)),
            Err(mismatch) => mismatch,
        };
        tracing::warn!(dir = %self.dir.display(), segment = base, problem = %mismatch, "offset index is wrong; rebuilding it from the log");
        if let Err(e) = segment.rebuild_indexes() {
            let reason = format!("segment {base}: rebuilding its index failed: {e}");
            self.mark_offline(reason.clone());
            return Err(ReadError::Offline(reason));
        }
        match lookup(segment) {
            Ok(t) => Ok(t),
            Err(LookupError::Io(e)) => Err(ReadError::Io(e)),
            Err(still) => {
                let reason = format!("segment {base}: index still wrong after a rebuild: {still}");
                self.mark_offline(reason.clone());
                Err(ReadError::Offline(reason))
            }
        }
    }

    /// The largest timestamp in the log and the offset that carries it (ListOffsets MAX_TIMESTAMP).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.segments
            .values()
            .filter(|s| s.max_timestamp() >= 0)
            .max_by_key(|s| s.max_timestamp())
            .map(|s| (s.offset_of_max_timestamp(), s.max_timestamp()))
    }

    /// The fsyncs needed to make everything appended so far durable, if any. When they reach
    /// the active segment and sealed segments lie past the recovery point, the job also syncs
    /// those segments' indexes and the epoch checkpoint (written here, unsynced), so that
    /// [`flush_done`](Self::flush_done) can move the recovery point without an fsync under the
    /// caller's lock.
    pub fn flush_job(&mut self) -> Option<FlushJob> {
        let up_to = self.log_end_offset();
        if up_to <= self.flushed_offset || self.offline.is_some() {
            return None;
        }
        let mut files: Vec<Arc<dyn LogFile>> = self
            .segments
            .values()
            .filter(|s| s.next_offset() > self.flushed_offset && !s.is_empty())
            .map(|s| s.log_file().clone())
            .collect();
        let active_base = self.active().base_offset();
        let checkpoint = (up_to >= active_base && self.recovery_point < active_base)
            .then(|| self.checkpoint_for(active_base, &mut files))
            .flatten();
        let dir_changes = self.dir_changes;
        let dir = (dir_changes != self.dir_synced
            || checkpoint.as_ref().is_some_and(|c| c.epochs.is_some()))
        .then(|| self.dir.clone());
        let txn_indexes = self
            .txn_index_dirty
            .iter()
            .map(|(&base, &write)| (base, write))
            .collect();
        Some(FlushJob {
            files,
            dir,
            dir_changes,
            checkpoint,
            txn_indexes,
            log_dir: self.dir.clone(),
            up_to,
        })
    }

    /// Adds the sealed segments past the recovery point to `files` and writes the epoch
    /// checkpoint if it changed; `None` (no checkpoint this time) if that write fails.
    fn checkpoint_for(
        &mut self,
        active_base: i64,
        files: &mut Vec<Arc<dyn LogFile>>,
    ) -> Option<Checkpoint> {
        for s in self.segments.range(..active_base).map(|(_, s)| s) {
            if s.next_offset() > self.recovery_point {
                files.extend(s.files().into_iter().cloned());
            }
        }
        // Segments below the recovery point are not walked at start: the epochs they began
        // must be in the checkpoint first.
        let epochs = if self.epochs.is_dirty() {
            let version = self.epochs.version();
            if let Err(e) = self.epochs.write(&self.dir, false) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the leader epoch checkpoint; the recovery point stays");
                return None;
            }
            Some((self.dir.join(LEADER_EPOCH_CHECKPOINT_FILE), version))
        } else {
            None
        };
        Some(Checkpoint {
            at: active_base,
            truncations: self.truncations,
            epochs,
        })
    }

    /// Records that a [`FlushJob`] finished; moves the recovery point when the job made the
    /// sealed segments durable. The recovery point file is written unsynced: a lost or stale
    /// one only makes the next start recover more.
    pub fn flush_done(&mut self, job: &FlushJob) -> io::Result<()> {
        self.flushed_offset = self.flushed_offset.max(job.up_to);
        for (base, write) in &job.txn_indexes {
            if self.txn_index_dirty.get(base) == Some(write) {
                self.txn_index_dirty.remove(base);
            }
        }
        if job.dir.is_some() {
            self.dir_synced = self.dir_synced.max(job.dir_changes);
        }
        let Some(c) = &job.checkpoint else {
            return Ok(());
        };
        // A truncation since the job was made rewrote both checkpoints itself.
        if c.truncations != self.truncations || self.recovery_point >= c.at {
            return Ok(());
        }
        if let Some((_, version)) = c.epochs {
            self.epochs.mark_durable_as_of(version);
        }
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, c.at, false)?;
        self.recovery_point = c.at;
        Ok(())
    }

    /// Records that a [`FlushJob`] failed: what it was to make durable may not be on disk, and
    /// an fsync is not retried (after a failed fsync the page cache cannot be trusted), so the
    /// log goes offline.
    pub fn flush_failed(&mut self, error: &io::Error) {
        self.mark_offline(format!("fsync failed: {error}"));
    }

    /// Syncs everything and writes the recovery checkpoint: a clean shutdown needs no scan.
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(reason) = &self.offline {
            // No checkpoint: the next start must recover the log from its files.
            return Err(io::Error::other(format!(
                "not checkpointed: offline ({reason})"
            )));
        }
        for s in self.segments.values() {
            s.sync_all()?;
        }
        for base in std::mem::take(&mut self.txn_index_dirty).into_keys() {
            txnindex::sync(&self.dir, base)?;
        }
        self.write_epochs_if_dirty()?;
        let end = self.log_end_offset();
        self.snapshot_producers(end, true);
        write_recovery_point(&self.dir, end)?;
        self.recovery_point = end;
        self.flushed_offset = end;
        Ok(())
    }

    /// A clean close done for many logs at once, in two halves around a sync of the whole
    /// filesystem, so that shutting down thousands of partitions costs two syncs instead of
    /// several fsyncs each. This half writes the epoch checkpoint without syncing it and
    /// returns the offset the data reaches; the caller syncs the filesystem (everything
    /// appended is then on disk), calls [`checkpoint_synced`](Self::checkpoint_synced) with
    /// that offset, and syncs again.
    pub fn prepare_close(&mut self) -> io::Result<i64> {
        self.check_online().map_err(io::Error::other)?;
        if self.epochs.is_dirty() {
            self.epochs.write(&self.dir, false)?;
        }
        let end = self.log_end_offset();
        self.snapshot_producers(end, false);
        Ok(end)
    }

    /// The second half of [`prepare_close`](Self::prepare_close): everything below `up_to`
    /// and the epoch checkpoint are on disk. Records the recovery point (unsynced: the caller
    /// syncs the filesystem once more).
    pub fn checkpoint_synced(&mut self, up_to: i64) -> io::Result<()> {
        self.check_online().map_err(io::Error::other)?;
        self.epochs.mark_durable();
        // The filesystem sync covered the transaction indexes too.
        self.txn_index_dirty.clear();
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, up_to, false)?;
        self.recovery_point = up_to;
        self.flushed_offset = self.flushed_offset.max(up_to);
        Ok(())
    }

    /// Compacts the sealed segments if the log is compacted and something changed since the last
    /// pass (or tombstones may have expired), all at once. The broker splits the pass instead
    /// ([`compaction_plan`](Self::compaction_plan), [`CompactionPlan::build`],
    /// [`finish_compaction`](Self::finish_compaction)) so that the log is locked only at its
    /// ends.
    pub fn compact(&mut self, now_ms: i64) -> io::Result<Option<CompactionReport>> {
        let Some(plan) = self.compaction_plan(now_ms) else {
            return Ok(None);
        };
        let cleaned = plan.build()?;
        self.finish_compaction(cleaned, now_ms)
    }

    /// What a compaction pass would rewrite now, if anything: runs of sealed segments that fit
    /// together in one segment. Cheap: no file is read.
    pub fn compaction_plan(&mut self, now_ms: i64) -> Option<CompactionPlan> {
        if !self.config.compact || self.segments.len() < 2 || self.offline.is_some() {
            return None;
        }
        let active_base = self.active().base_offset();
        let tombstones_due = now_ms - self.last_compaction_ms > self.config.delete_retention_ms;
        if active_base <= self.compacted_through && !tombstones_due {
            return None;
        }
        let segments: Vec<SegmentView> = self.segments.values().map(SegmentView::of).collect();
        // A segment holding records of an open transaction waits until it is decided.
        let stable_offset = self.first_open_txn_offset().unwrap_or(i64::MAX);
        let mut runs: Vec<Vec<usize>> = Vec::new();
        let mut run_bytes = 0u64;
        for (i, seg) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(i64::MAX, |next| next.base);
            if seg.base >= active_base || end > stable_offset {
                break;
            }
            match runs.last_mut() {
                Some(run) if run_bytes + seg.size <= self.config.segment_bytes => {
                    run.push(i);
                    run_bytes += seg.size;
                }
                _ => {
                    runs.push(vec![i]);
                    run_bytes = seg.size;
                }
            }
        }
        Some(CompactionPlan {
            dir: self.dir.clone(),
            segments,
            runs,
            tombstones_before_ms: now_ms - self.config.delete_retention_ms,
            active_base,
            truncations: self.truncations,
            stable_offset,
            // In marker order, which for one producer is also the order of first offsets.
            aborted: self
                .aborted
                .values()
                .flatten()
                .fold(HashMap::new(), |mut by, e| {
                    by.entry(e.producer_id)
                        .or_insert_with(Vec::new)
                        .push((e.first_offset, e.last_offset));
                    by
                }),
            segments_before: self.segments.len(),
            bytes_before: self.size_bytes(),
        })
    }

    /// Swaps in the runs a pass rewrote, if their segments are still as planned. If any changed
    /// meanwhile (retention removed one, a truncation cut it) the pass is dropped (`None`) and
    /// the next one starts afresh.
    pub fn finish_compaction(
        &mut self,
        cleaned: CleanedRuns,
        now_ms: i64,
    ) -> io::Result<Option<CompactionReport>> {
        let CleanedRuns {
            plan,
            records_removed,
            markers_removed,
        } = cleaned;
        // A truncation may have cut the newer records (in the active segment, say) that made
        // older ones obsolete: then nothing of the pass may be kept.
        let unchanged = |log: &PartitionLog, run: &[usize]| {
            log.offline.is_none()
                && log.truncations == plan.truncations
                && run.iter().all(|&i| {
                    plan.segments.get(i).is_some_and(|view| {
                        log.segments
                            .get(&view.base)
                            .is_some_and(|seg| view.matches(seg))
                    })
                })
        };
        if !plan.runs.iter().all(|run| unchanged(self, run)) {
            plan.discard();
            return Ok(None);
        }
        if let Err(e) = self.swap_in_runs(&plan, now_ms) {
            plan.discard();
            return Err(e);
        }
        self.compacted_through = plan.active_base;
        self.last_compaction_ms = now_ms;
        self.reindex_txns(&markers_removed)?;
        Ok(Some(CompactionReport {
            segments_before: plan.segments_before,
            segments_after: self.segments.len(),
            records_removed,
            bytes_before: plan.bytes_before,
            bytes_after: self.size_bytes(),
        }))
    }

    fn swap_in_runs(&mut self, plan: &CompactionPlan, now_ms: i64) -> io::Result<()> {
        for run in &plan.runs {
            let bases: Vec<i64> = run
                .iter()
                .filter_map(|&i| plan.segments.get(i).map(|v| v.base))
                .collect();
            let Some(&first) = bases.first() else {
                continue;
            };
            crate::compact::swap_in(&self.dir, first)?;
            for base in &bases {
                if let Some(seg) = self.segments.remove(base) {
                    if *base == first {
                        drop(seg); // its .log was replaced; its indexes are rebuilt below
                    } else {
                        seg.delete()?;
                    }
                }
            }
            let mut cleaned = Segment::create(
                &*self.disk,
                &self.dir,
                first,
                self.config.index_interval_bytes,
                now_ms,
            )?;
            cleaned.recover()?;
            cleaned.seal()?;
            cleaned.sync_all()?;
            self.segments.insert(first, cleaned);
        }
        Ok(())
    }

    /// Forgets idempotent producers silent for longer than `expiration_ms`.
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producers.expire(now_ms, expiration_ms)
    }

    /// Deletes sealed segments past `retention.ms` or beyond `retention.bytes`; returns how many.
    pub fn apply_retention(&mut self, now_ms: i64) -> io::Result<usize> {
        if self.offline.is_some() {
            return Ok(0);
        }
        let mut deleted = 0;
        let mut total = self.size_bytes() as i64;
        while self.segments.len() > 1 {
            let Some((&base, oldest)) = self.segments.iter().next() else {
                break;
            };
            let expired = self.config.retention_ms >= 0
                && oldest.max_timestamp() >= 0
                && now_ms - oldest.max_timestamp() > self.config.retention_ms;
            let oversize = self.config.retention_bytes >= 0
                && total - oldest.size() as i64 >= self.config.retention_bytes;
            if !(expired || oversize) {
                break;
            }
            if let Some(seg) = self.segments.remove(&base) {
                total -= seg.size() as i64;
                seg.delete()?;
                deleted += 1;
            }
        }
        if let Some(&first) = self.segments.keys().next() {
            self.log_start_offset = self.log_start_offset.max(first);
        }
        self.epochs.truncate_from_start(self.log_start_offset);
        if deleted > 0 {
            self.remove_snapshots_below_start();
            self.reindex_txns(&HashSet::new())?;
        }
        Ok(deleted)
    }

    /// Writes the epoch checkpoint (file synced; the caller syncs the directory) if it changed.
    fn write_epochs_if_dirty(&mut self) -> io::Result<()> {
        if self.epochs.is_dirty() {
            self.epochs.write(&self.dir, true)?;
        }
        Ok(())
    }

    /// Removes everything at and after `offset`, durably: the log then ends at `offset` (or
    /// earlier, at the start of the batch that holds it). A follower does this where its log
    /// diverged from the leader's; Raft where a new leader overwrites an uncommitted tail. At or
    /// below the log start, the whole log goes and it starts again at `offset`.
    ///
    /// A failure part-way takes the log offline: its files then hold the old log, the truncated
    /// one, or something between that only the recovery of the next start can sort out.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> io::Result<()> {
        self.check_online().map_err(io::Error::other)?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        let whole = offset <= self.log_start_offset;
        self.truncate_files(offset, whole, now_ms).inspect_err(|e| {
            self.mark_offline(format!("truncation to offset {offset} failed: {e}"));
        })
    }

    /// Empties the log and starts it again at `offset`, durably, wherever `offset` lies; after a
    /// restart the log is empty at `offset` too. Kafka's `truncateFullyAndStartAt`: a Raft
    /// follower does this when a snapshot replaces its log, whose end may then lie far behind.
    /// A failure part-way takes the log offline, as with [`truncate_to`](Self::truncate_to).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64, now_ms: i64) -> io::Result<()> {
        self.check_online().map_err(io::Error::other)?;
        self.truncate_files(offset, true, now_ms).inspect_err(|e| {
            self.mark_offline(format!("emptying the log to start at {offset} failed: {e}"));
        })
    }

    fn truncate_files(&mut self, offset: i64, whole: bool, now_ms: i64) -> io::Result<()> {
        self.truncations += 1;
        let doomed: Vec<i64> = if whole {
            self.segments.keys().copied().collect()
        } else {
            self.segments.range(offset..).map(|(&b, _)| b).collect()
        };
        // Newest first, so that a crash part-way leaves a log that is a prefix of the old one.
        for &base in doomed.iter().rev() {
            if let Some(seg) = self.segments.remove(&base) {
                seg.delete()?;
            }
        }
        if whole {
            let fresh = Segment::create(
                &*self.disk,
                &self.dir,
                offset,
                self.config.index_interval_bytes,
                now_ms,
            )?;
            self.segments.insert(offset, fresh);
            self.log_start_offset = offset;
            write_offset_file(&self.dir, LOG_START_OFFSET_FILE, offset, true)?;
        } else if let Some(last) = self.segments.values_mut().next_back() {
            last.truncate_to(offset)?;
            last.sync_all()?;
        }
        let end = self.log_end_offset();
        self.epochs.truncate_from_end(end);
        if whole {
            // An empty log has no epochs, wherever it starts.
            self.epochs.truncate_from_end(i64::MIN);
        }
        self.flushed_offset = self.flushed_offset.min(end);
        self.compacted_through = self.compacted_through.min(end);
        if whole {
            // The log starts again: what producers did in the old one says nothing of the new.
            let offsets = snapshots::list(&self.dir)?;
            snapshots::remove(&self.dir, &offsets, |_| true);
        }
        self.reindex_txns(&HashSet::new())?;
        self.reload_producers(now_ms, i64::MAX)?;
        self.write_epochs_if_dirty()?;
        // The recovery point must not vouch for a segment that is active again: later appends
        // to it are not synced before the next roll.
        let recovery_point = self.recovery_point.min(self.active().base_offset());
        write_recovery_point(&self.dir, recovery_point)?;
        self.recovery_point = recovery_point;
        Ok(())
    }

    /// Moves the log start offset forward to `offset` (DeleteRecords, a Raft purge): reads below
    /// it are out of range from now on, the new start is checkpointed, and segments wholly below
    /// it are deleted. An offset past the log end is refused.
    pub fn advance_log_start(&mut self, offset: i64, now_ms: i64) -> io::Result<()> {
        self.check_online().map_err(io::Error::other)?;
        let end = self.log_end_offset();
        if offset > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log start offset {offset} is past the log end {end}"),
            ));
        }
        if offset <= self.log_start_offset {
            return Ok(());
        }
        write_offset_file(&self.dir, LOG_START_OFFSET_FILE, offset, true)?;
        self.log_start_offset = offset;
        self.epochs.truncate_from_start(offset);
        if !self.active().is_empty() && self.active().next_offset() <= offset {
            self.roll(now_ms)?;
        }
        let active_base = self.active().base_offset();
        let below: Vec<i64> = self
            .segments
            .range(..active_base)
            .filter(|(_, seg)| seg.next_offset() <= offset)
            .map(|(&b, _)| b)
            .collect();
        for base in below {
            if let Some(seg) = self.segments.remove(&base) {
                seg.delete()?;
            }
        }
        self.remove_snapshots_below_start();
        self.reindex_txns(&HashSet::new())
    }

    /// Removes the whole log from disk.
    pub fn delete(self) -> io::Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(dir)
    }
}

/// Validates one produced batch: the batch checks plus `max.message.bytes`.
/// Where the log is stable once `ended` is: below the oldest transaction still open, and at
/// most just past `ended`'s marker.
fn stable_after(producers: &ProducerStates, ended: &EndedTxn) -> i64 {
    let past_marker = ended.last_offset + 1;
    producers
        .first_open_txn_offset()
        .map_or(past_marker, |o| o.min(past_marker))
}

fn aborted(ended: &EndedTxn, last_stable_offset: i64) -> AbortedTxn {
    AbortedTxn {
        producer_id: ended.producer_id,
        first_offset: ended.first_offset,
        last_offset: ended.last_offset,
        last_stable_offset,
    }
}

pub fn validate_for_append(batch: &[u8], limits: AppendLimits) -> Result<ValidBatch, AppendError> {
    // The size first: a batch over the limit is refused without decompressing it.
    if let Ok(len) = crate::batch::BatchHeader::parse(batch).and_then(|h| h.total_len()) {
        if len > limits.max_message_bytes {
            return Err(AppendError::TooLarge {
                size: len,
                max: limits.max_message_bytes,
            });
        }
    }
    Ok(crate::batch::validate_produced_batch(
        batch,
        limits.max_decompressed_bytes,
    )?)
}

/// Removes a segment's files, if they exist (a roll that failed half-way).
fn remove_segment_files(dir: &Path, base: i64) {
    let stem = crate::segment::file_stem(base);
    for ext in ["log", "index", "timeindex"] {
        let _ = fs::remove_file(dir.join(format!("{stem}.{ext}")));
    }
}

fn read_recovery_point(dir: &Path) -> i64 {
    read_offset_file(dir, RECOVERY_POINT_FILE)
}

fn write_recovery_point(dir: &Path, offset: i64) -> io::Result<()> {
    write_offset_file(dir, RECOVERY_POINT_FILE, offset, true)
}

/// An offset kept in a file of its own; 0 if the file is missing or unreadable.
fn read_offset_file(dir: &Path, name: &str) -> i64 {
    fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes an offset file: a temporary file renamed over the old one, synced with its directory
/// if `durable`.
fn write_offset_file(dir: &Path, name: &str, offset: i64, durable: bool) -> io::Result<()> {
    crate::disk::replace_file(dir, name, format!("{offset}\n").as_bytes(), durable)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "log_fault_tests.rs"]
mod fault_tests;
