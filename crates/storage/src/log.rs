//! A partition's log: an ordered set of segments, the newest one active.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::batch::{assign_offset, BatchError, BatchIter, ValidBatch, BATCH_HEADER_LEN};
use crate::producers::{ProducerStates, SequenceCheck, SequenceError};
use crate::segment::{Segment, SegmentRecovery};

const RECOVERY_POINT_FILE: &str = "recovery-point";

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
    file: Arc<File>,
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
        let want = (self.available as usize).min(self.max_bytes);
        let mut buf = BytesMut::zeroed(want.max(BATCH_HEADER_LEN.min(self.available as usize)));
        self.file.read_exact_at(&mut buf, self.position)?;
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
                        let mut whole = BytesMut::zeroed(len);
                        self.file.read_exact_at(&mut whole, self.position)?;
                        return Ok(whole.freeze());
                    }
                }
            }
        }
        buf.truncate(end);
        Ok(buf.freeze())
    }
}

/// Files to fsync so that every offset below `up_to` is durable; run it without the lock.
#[derive(Debug)]
pub struct FlushJob {
    files: Vec<Arc<File>>,
    pub up_to: i64,
}

impl FlushJob {
    pub fn run(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    flushed_offset: i64,
    recovery_point: i64,
    producers: ProducerStates,
    /// Sealed segments below this were compacted by the last pass.
    compacted_through: i64,
    last_compaction_ms: i64,
}

impl PartitionLog {
    /// Opens the log in `dir` (creating it if needed), recovering what was written after the
    /// last checkpoint.
    pub fn open(
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
                    Segment::open_trusted(dir, base, config.index_interval_bytes, now_ms)?;
                if rebuilt {
                    report.rebuilt_indexes += 1;
                    report
                        .reasons
                        .push(format!("segment {base}: index rebuilt"));
                }
                seg
            } else {
                let mut seg = Segment::create(dir, base, config.index_interval_bytes, now_ms)?;
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
                    let (seg, _) =
                        Segment::open_trusted(dir, later, config.index_interval_bytes, now_ms)?;
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
                Segment::create(dir, 0, config.index_interval_bytes, now_ms)?,
            );
        }
        report.segments = segments.len();
        let log_start_offset = segments.keys().next().copied().unwrap_or(0);
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            flushed_offset: 0,
            recovery_point,
            producers: ProducerStates::default(),
            compacted_through: 0,
            last_compaction_ms: now_ms,
        };
        // Idempotent producers' recent batches come back from the active segment's headers, so
        // a retry that arrives after a restart is still recognised.
        let mut producers = ProducerStates::default();
        log.active()
            .for_each_header(|h| producers.record(h, h.base_offset(), now_ms))?;
        log.producers = producers;
        // What is on disk now survived a restart; count it as flushed.
        log.flushed_offset = log.log_end_offset();
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
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
        validate_for_append(batch, self.config.max_message_bytes)
    }

    /// Appends a batch validated by [`validate`](Self::validate), assigning its offsets.
    pub fn append_validated(
        &mut self,
        batch: &[u8],
        valid: ValidBatch,
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        let len = valid.total_len as u64;
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
        let active = self.active();
        let must_roll = !active.is_empty()
            && (active.size() + len > self.config.segment_bytes
                || now_ms - active.created_ms() >= self.config.segment_ms
                || last_offset - active.base_offset() > i64::from(i32::MAX));
        if must_roll {
            self.roll(now_ms)?;
        }
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&batch[..BATCH_HEADER_LEN]);
        assign_offset(&mut header, base_offset, 0);
        self.active_mut().append(
            &header,
            &batch[BATCH_HEADER_LEN..valid.total_len],
            valid.last_offset_delta,
            valid.max_timestamp,
        )?;
        self.producers.record(&producer_header, base_offset, now_ms);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            duplicate: false,
        })
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

    /// Starts a new active segment at the log end offset.
    pub fn roll(&mut self, now_ms: i64) -> io::Result<()> {
        let base = self.log_end_offset();
        self.active_mut().seal()?;
        let segment = Segment::create(&self.dir, base, self.config.index_interval_bytes, now_ms)?;
        self.segments.insert(base, segment);
        sync_dir(&self.dir)
    }

    /// Plans a read from `offset`: whole batches, up to `max_bytes` (or the first batch whatever
    /// its size if `min_one_batch`), none at or past `max_offset` (the high watermark).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<Option<ReadPlan>, ReadError> {
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
        for (_, segment) in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .chain(self.segments.range(offset + 1..))
        {
            if segment.next_offset() <= offset {
                continue;
            }
            let Some(position) = segment.position_of(offset)? else {
                continue;
            };
            let plan = ReadPlan {
                file: segment.log_file().clone(),
                position,
                available: segment.size() - position,
                max_bytes,
                min_one_batch,
                max_offset,
            };
            return Ok(Some(plan));
        }
        Ok(None)
    }

    /// The earliest offset whose record timestamp is at or after `timestamp`, with that timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        for segment in self.segments.values() {
            if let Some(found) = segment.offset_for_timestamp(timestamp)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The largest timestamp in the log and the offset that carries it (ListOffsets MAX_TIMESTAMP).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.segments
            .values()
            .filter(|s| s.max_timestamp() >= 0)
            .max_by_key(|s| s.max_timestamp())
            .map(|s| (s.offset_of_max_timestamp(), s.max_timestamp()))
    }

    /// The fsyncs needed to make everything appended so far durable, if any.
    pub fn flush_job(&self) -> Option<FlushJob> {
        let up_to = self.log_end_offset();
        if up_to <= self.flushed_offset {
            return None;
        }
        let files = self
            .segments
            .values()
            .filter(|s| s.next_offset() > self.flushed_offset && !s.is_empty())
            .map(|s| s.log_file().clone())
            .collect();
        Some(FlushJob { files, up_to })
    }

    /// Records that a [`FlushJob`] finished; checkpoints the recovery point when a sealed segment
    /// became durable.
    pub fn flush_done(&mut self, up_to: i64) -> io::Result<()> {
        self.flushed_offset = self.flushed_offset.max(up_to);
        let active_base = self.active().base_offset();
        if self.flushed_offset >= active_base && self.recovery_point < active_base {
            for s in self
                .segments
                .values()
                .filter(|s| s.base_offset() < active_base && s.next_offset() > self.recovery_point)
            {
                s.sync_all()?;
            }
            write_recovery_point(&self.dir, active_base)?;
            self.recovery_point = active_base;
        }
        Ok(())
    }

    /// Syncs everything and writes the recovery checkpoint: a clean shutdown needs no scan.
    pub fn close(&mut self) -> io::Result<()> {
        for s in self.segments.values() {
            s.sync_all()?;
        }
        let end = self.log_end_offset();
        write_recovery_point(&self.dir, end)?;
        self.recovery_point = end;
        self.flushed_offset = end;
        Ok(())
    }

    /// Compacts the sealed segments if the log is compacted and something changed since the last
    /// pass (or tombstones may have expired). Holds the log for the duration.
    pub fn compact(&mut self, now_ms: i64) -> io::Result<Option<crate::compact::CompactionReport>> {
        if !self.config.compact || self.segments.len() < 2 {
            return Ok(None);
        }
        let active_base = self.active().base_offset();
        let tombstones_due = now_ms - self.last_compaction_ms > self.config.delete_retention_ms;
        if active_base <= self.compacted_through && !tombstones_due {
            return Ok(None);
        }
        let mut report = crate::compact::CompactionReport {
            segments_before: self.segments.len(),
            bytes_before: self.size_bytes(),
            ..Default::default()
        };
        let latest = crate::compact::latest_offsets(self.segments.values())?;
        let tombstones_before = now_ms - self.config.delete_retention_ms;
        // Runs of sealed segments that fit together in one segment.
        let mut runs: Vec<Vec<i64>> = Vec::new();
        let mut run_bytes = 0u64;
        for (&base, seg) in self.segments.range(..active_base) {
            match runs.last_mut() {
                Some(run) if run_bytes + seg.size() <= self.config.segment_bytes => {
                    run.push(base);
                    run_bytes += seg.size();
                }
                _ => {
                    runs.push(vec![base]);
                    run_bytes = seg.size();
                }
            }
        }
        for run in runs {
            let members: Vec<&Segment> = run.iter().filter_map(|b| self.segments.get(b)).collect();
            report.records_removed +=
                crate::compact::rewrite_run(&self.dir, &members, &latest, tombstones_before)?;
            let first = run[0];
            crate::compact::swap_in(&self.dir, first)?;
            for base in &run {
                if let Some(seg) = self.segments.remove(base) {
                    if *base == first {
                        drop(seg); // its .log was replaced; its indexes are rebuilt below
                    } else {
                        seg.delete()?;
                    }
                }
            }
            let mut cleaned =
                Segment::create(&self.dir, first, self.config.index_interval_bytes, now_ms)?;
            cleaned.recover()?;
            cleaned.seal()?;
            cleaned.sync_all()?;
            self.segments.insert(first, cleaned);
        }
        self.compacted_through = active_base;
        self.last_compaction_ms = now_ms;
        report.segments_after = self.segments.len();
        report.bytes_after = self.size_bytes();
        Ok(Some(report))
    }

    /// Forgets idempotent producers silent for longer than `expiration_ms`.
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producers.expire(now_ms, expiration_ms)
    }

    /// Deletes sealed segments past `retention.ms` or beyond `retention.bytes`; returns how many.
    pub fn apply_retention(&mut self, now_ms: i64) -> io::Result<usize> {
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
        Ok(deleted)
    }

    /// Removes the whole log from disk.
    pub fn delete(self) -> io::Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(dir)
    }
}

/// Validates one produced batch: the batch checks plus `max.message.bytes`.
pub fn validate_for_append(
    batch: &[u8],
    max_message_bytes: usize,
) -> Result<ValidBatch, AppendError> {
    let valid = crate::batch::validate_produced_batch(batch)?;
    if valid.total_len > max_message_bytes {
        return Err(AppendError::TooLarge {
            size: valid.total_len,
            max: max_message_bytes,
        });
    }
    Ok(valid)
}

fn read_recovery_point(dir: &Path) -> i64 {
    fs::read_to_string(dir.join(RECOVERY_POINT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_recovery_point(dir: &Path, offset: i64) -> io::Result<()> {
    let tmp = dir.join(format!("{RECOVERY_POINT_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    writeln!(f, "{offset}")?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(RECOVERY_POINT_FILE))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
