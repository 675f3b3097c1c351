//! Log compaction (`cleanup.policy=compact`): of every key, only the record with the highest
//! offset stays; a tombstone (null value) stays until `delete.retention.ms` after it was written,
//! so consumers catching up see the deletion, then goes too.
//!
//! Only sealed segments are rewritten, keeping every surviving record's offset; neighbouring
//! segments are merged while they fit in `segment.bytes`. The rewrite goes to a `.cleaned` file
//! that is synced and then renamed over the first segment of the run, after which the rest of the
//! run is deleted. A crash in between leaves segments overlapping the renamed one, and opening the
//! log drops those (see `PartitionLog::open`). Batches are decoded record by record here; this is
//! one of the few places the broker must understand records. Compressed batches are kept whole.
//!
//! A pass has three parts, so that the partition stays available while it runs: a
//! [`CompactionPlan`] taken under the log's lock (which segments, and a view of their files),
//! the rewrite built from that view without the lock ([`CompactionPlan::build`]), and the swap,
//! under the lock again, if the segments are still as planned (`PartitionLog::finish_compaction`).
//! Appends meanwhile go to the active segment, which is never rewritten. If a planned segment
//! changed meanwhile (retention) or the log was truncated (which may have cut the newer records
//! that made older ones obsolete), the whole pass is dropped.
//!
//! Transactions, as Kafka's cleaner treats them: only records below the last stable offset count
//! (a record of an open transaction may yet be aborted, so it must not make an older record
//! obsolete), and only segments wholly below it are rewritten. Records of aborted transactions
//! never count and are removed. A commit or abort marker stays while any record of its
//! transaction does (a reader, or the group coordinator replaying `__consumer_offsets`, needs it
//! to settle them), and once none does, it goes after `delete.retention.ms`, like a tombstone.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{read_varint, read_varlong, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD};
use crate::disk::LogFile;
use crate::segment::{file_stem, Segment};

/// What one compaction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_before: usize,
    pub segments_after: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The parts of one uncompressed record that compaction needs, plus its raw bytes.
struct RecordView<'a> {
    attributes: u8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value_is_null: bool,
    /// Everything after the offset delta (key, value, headers), copied as is on rewrite.
    tail: &'a [u8],
}

fn read_len(bytes: &[u8]) -> Option<(Option<usize>, usize)> {
    let (len, used) = read_varint(bytes)?;
    if len < 0 {
        return Some((None, used));
    }
    Some((Some(len as usize), used))
}

/// Parses the records of an uncompressed batch body (after the header).
fn records(mut body: &[u8], count: i32) -> Option<Vec<RecordView<'_>>> {
    let mut out = Vec::with_capacity(usize::try_from(count).ok()?.min(body.len()));
    for _ in 0..count {
        let (len, used) = read_varint(body)?;
        let record = body.get(used..used + usize::try_from(len).ok()?)?;
        body = &body[used + record.len()..];
        let attributes = *record.first()?;
        let mut at = 1;
        let (timestamp_delta, n) = read_varlong(record.get(at..)?)?;
        at += n;
        let (offset_delta, n) = read_varint(record.get(at..)?)?;
        at += n;
        let tail = record.get(at..)?;
        let (key_len, n) = read_len(tail)?;
        let key = match key_len {
            Some(k) => Some(tail.get(n..n + k)?),
            None => None,
        };
        let after_key = n + key_len.unwrap_or(0);
        let (value_len, _) = read_len(tail.get(after_key..)?)?;
        out.push(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value_is_null: value_len.is_none(),
            tail,
        });
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A segment's file as it was when a pass was planned: its first `size` bytes are whole batches
/// that do not change while the file exists.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub base: i64,
    pub file: Arc<dyn LogFile>,
    pub size: u64,
}

impl SegmentView {
    pub fn of(segment: &Segment) -> SegmentView {
        SegmentView {
            base: segment.base_offset(),
            file: segment.log_file().clone(),
            size: segment.size(),
        }
    }

    /// Whether `segment` is still the one seen, unchanged.
    pub fn matches(&self, segment: &Segment) -> bool {
        Arc::ptr_eq(&self.file, segment.log_file()) && self.size == segment.size()
    }
}

/// What a compaction pass will rewrite, taken under the log's lock.
#[derive(Debug)]
pub struct CompactionPlan {
    pub(crate) dir: PathBuf,
    /// Every segment, the active one included (its newer keys supersede older records).
    pub(crate) segments: Vec<SegmentView>,
    /// Runs of sealed segments that fit together in one segment, as indexes into `segments`.
    pub(crate) runs: Vec<Vec<usize>>,
    pub(crate) tombstones_before_ms: i64,
    /// The active segment's base: everything below was sealed when planned.
    pub(crate) active_base: i64,
    /// The log's count of truncations when planned.
    pub(crate) truncations: u64,
    /// The first offset of the oldest open transaction, or `i64::MAX`: records from there on
    /// do not count, and no run reaches it.
    pub(crate) stable_offset: i64,
    /// The aborted transactions of the log: producer id to (first offset, marker offset).
    pub(crate) aborted: HashMap<i64, Vec<(i64, i64)>>,
    pub(crate) segments_before: usize,
    pub(crate) bytes_before: u64,
}

/// The rewritten runs, each in its `.cleaned` file (synced), ready to swap in.
#[derive(Debug)]
pub struct CleanedRuns {
    pub(crate) plan: CompactionPlan,
    pub(crate) records_removed: u64,
    /// Offsets of the markers removed: their transactions left no record behind.
    pub(crate) markers_removed: HashSet<i64>,
}

impl CompactionPlan {
    /// Reads the planned segments and writes each run's survivors to its `.cleaned` file. Holds
    /// no lock: run it off the async workers, with the log free for appends and reads.
    pub fn build(self) -> io::Result<CleanedRuns> {
        let built = (|| {
            let rules = Rules {
                latest: latest_offsets(&self.segments, self.stable_offset, &self.aborted)?,
                tombstones_before_ms: self.tombstones_before_ms,
                aborted: &self.aborted,
                markers: HashSet::new(),
            };
            let rules = Rules {
                markers: removable_markers(&self.segments, &self.runs, &rules)?,
                ..rules
            };
            let mut removed = 0;
            for run in &self.runs {
                let members: Vec<&SegmentView> =
                    run.iter().filter_map(|&i| self.segments.get(i)).collect();
                removed += rewrite_run(&self.dir, &members, &rules)?;
            }
            Ok((removed, rules.markers))
        })();
        match built {
            Ok((records_removed, markers_removed)) => Ok(CleanedRuns {
                plan: self,
                records_removed,
                markers_removed,
            }),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Removes whatever `.cleaned` files this pass left.
    pub(crate) fn discard(&self) {
        for run in &self.runs {
            if let Some(first) = run.first().and_then(|&i| self.segments.get(i)) {
                let _ = fs::remove_file(cleaned_path(&self.dir, first.base));
            }
        }
    }
}

fn cleaned_path(dir: &Path, first_base: i64) -> PathBuf {
    dir.join(format!("{}.log.cleaned", file_stem(first_base)))
}

/// Calls `f(header, whole batch)` for every batch of a segment file.
fn for_each_batch(
    segment: &SegmentView,
    mut f: impl FnMut(&BatchHeader<'_>, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let file = &segment.file;
    let mut buf = Vec::new();
    let mut header = [0u8; BATCH_HEADER_LEN];
    let mut position = 0u64;
    while position < segment.size {
        file.read_exact_at(&mut header, position)?;
        let len = BatchHeader::parse(&header)
            .and_then(|h| h.total_len())
            .map_err(io::Error::other)?;
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, position)?;
        let h = BatchHeader::parse(&buf).map_err(io::Error::other)?;
        f(&h, &buf)?;
        position += len as u64;
    }
    Ok(())
}

/// Whether a batch is data of a transaction that was aborted. A producer's aborted ranges are
/// in offset order and apart (one transaction at a time), so one binary search finds the range
/// that could hold the batch.
fn is_aborted(h: &BatchHeader<'_>, aborted: &HashMap<i64, Vec<(i64, i64)>>) -> bool {
    h.is_transactional()
        && !h.is_control()
        && aborted.get(&h.producer_id()).is_some_and(|ranges| {
            let at = ranges.partition_point(|&(first, _)| first <= h.base_offset());
            at > 0 && ranges[at - 1].1 >= h.base_offset()
        })
}

/// The offset of the latest record of every key below `stable_offset`, over the given segments,
/// aborted transactions left out.
fn latest_offsets(
    segments: &[SegmentView],
    stable_offset: i64,
    aborted: &HashMap<i64, Vec<(i64, i64)>>,
) -> io::Result<HashMap<Vec<u8>, i64>> {
    let mut latest = HashMap::new();
    for segment in segments {
        for_each_batch(segment, |h, batch| {
            if h.compression() != 0 || h.is_control() || is_aborted(h, aborted) {
                return Ok(());
            }
            for r in records(&batch[BATCH_HEADER_LEN..], h.records_count()).unwrap_or_default() {
                let offset = h.base_offset() + i64::from(r.offset_delta);
                if let (Some(key), true) = (r.key, offset < stable_offset) {
                    latest.insert(key.to_vec(), offset);
                }
            }
            Ok(())
        })?;
    }
    Ok(latest)
}

/// What a pass keeps and removes.
struct Rules<'a> {
    /// The offset of the latest record of every key: older records of the key go.
    latest: HashMap<Vec<u8>, i64>,
    /// Tombstones, and markers of transactions without records, written before this go.
    tombstones_before_ms: i64,
    aborted: &'a HashMap<i64, Vec<(i64, i64)>>,
    /// Offsets of the markers to remove.
    markers: HashSet<i64>,
}

impl Rules<'_> {
    /// Whether a record of an uncompressed data batch stays.
    fn keeps(&self, h: &BatchHeader<'_>, r: &RecordView<'_>) -> bool {
        let offset = h.base_offset() + i64::from(r.offset_delta);
        let newest = match r.key {
            Some(key) => self.latest.get(key).is_none_or(|&l| l == offset),
            None => true,
        };
        let expired_tombstone =
            r.value_is_null && h.base_timestamp() + r.timestamp_delta < self.tombstones_before_ms;
        newest && !expired_tombstone
    }

    /// Whether anything of a data batch in a run stays.
    fn keeps_any(&self, h: &BatchHeader<'_>, batch: &[u8]) -> bool {
        if is_aborted(h, self.aborted) {
            return false;
        }
        if h.compression() != 0 {
            return true;
        }
        match records(&batch[BATCH_HEADER_LEN..], h.records_count()) {
            Some(all) => all.iter().any(|r| self.keeps(h, r)),
            None => true,
        }
    }
}

/// The markers in the runs whose transactions have no record left after the pass (in the runs
/// or anywhere else in the log) and that are older than the tombstone horizon.
fn removable_markers(
    segments: &[SegmentView],
    runs: &[Vec<usize>],
    rules: &Rules<'_>,
) -> io::Result<HashSet<i64>> {
    let in_runs: HashSet<usize> = runs.iter().flatten().copied().collect();
    // Per producer: whether a record of its current transaction stays.
    let mut live: HashMap<i64, bool> = HashMap::new();
    let mut removable = HashSet::new();
    for (i, segment) in segments.iter().enumerate() {
        let rewritten = in_runs.contains(&i);
        for_each_batch(segment, |h, batch| {
            if !h.is_transactional() {
                return Ok(());
            }
            if h.is_control() {
                let stays = live.remove(&h.producer_id()).unwrap_or(false);
                if rewritten && !stays && h.max_timestamp() < rules.tombstones_before_ms {
                    removable.insert(h.base_offset());
                }
            } else if !rewritten || rules.keeps_any(h, batch) {
                live.insert(h.producer_id(), true);
            }
            Ok(())
        })?;
    }
    Ok(removable)
}

/// Rewrites the segments of one run into `<first base>.log.cleaned`; returns the records dropped.
fn rewrite_run(dir: &Path, run: &[&SegmentView], rules: &Rules<'_>) -> io::Result<u64> {
    let first = run.first().map(|s| s.base).unwrap_or(0);
    let path = cleaned_path(dir, first);
    let mut out = io::BufWriter::new(File::create(&path)?);
    let mut removed = 0u64;
    let mut scratch = Vec::new();
    for segment in run {
        for_each_batch(segment, |h, batch| {
            if h.is_control() && rules.markers.contains(&h.base_offset()) {
                removed += 1;
                return Ok(());
            }
            if is_aborted(h, rules.aborted) {
                removed += u64::try_from(h.records_count()).unwrap_or(0);
                return Ok(());
            }
            if h.compression() != 0 || h.is_control() {
                return out.write_all(batch);
            }
            let Some(all) = records(&batch[BATCH_HEADER_LEN..], h.records_count()) else {
                // Unparseable records in a CRC-valid batch: keep them rather than lose data.
                return out.write_all(batch);
            };
            let keep: Vec<&RecordView<'_>> = all.iter().filter(|r| rules.keeps(h, r)).collect();
            removed += (all.len() - keep.len()) as u64;
            if keep.len() == all.len() {
                return out.write_all(batch);
            }
            let (Some(first_kept), Some(last_kept)) = (keep.first(), keep.last()) else {
                return Ok(());
            };
            let base = h.base_offset() + i64::from(first_kept.offset_delta);
            scratch.clear();
            scratch.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
            for r in &keep {
                let mut rec = Vec::with_capacity(r.tail.len() + 16);
                rec.push(r.attributes);
                put_varint(&mut rec, r.timestamp_delta);
                put_varint(&mut rec, h.base_offset() + i64::from(r.offset_delta) - base);
                rec.extend_from_slice(r.tail);
                put_varint(&mut scratch, rec.len() as i64);
                scratch.extend_from_slice(&rec);
            }
            let batch_length = (scratch.len() - LOG_OVERHEAD) as i32;
            let last_delta = (h.base_offset() + i64::from(last_kept.offset_delta) - base) as i32;
            scratch[0..8].copy_from_slice(&base.to_be_bytes());
            scratch[8..12].copy_from_slice(&batch_length.to_be_bytes());
            scratch[23..27].copy_from_slice(&last_delta.to_be_bytes());
            scratch[57..61].copy_from_slice(&(keep.len() as i32).to_be_bytes());
            let crc = crc32c::crc32c(&scratch[21..]);
            scratch[17..21].copy_from_slice(&crc.to_be_bytes());
            out.write_all(&scratch)
        })?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(removed)
}

/// Replaces the run's first segment with its cleaned file and removes the rest of the run.
pub(crate) fn swap_in(dir: &Path, first_base: i64) -> io::Result<()> {
    fs::rename(
        cleaned_path(dir, first_base),
        dir.join(format!("{}.log", file_stem(first_base))),
    )?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// `(offset delta, key, value)` of each record, for tests.
    pub fn records(body: &[u8], count: i32) -> Vec<(i32, String, Option<String>)> {
        super::records(body, count)
            .unwrap()
            .into_iter()
            .map(|r| {
                let key = String::from_utf8_lossy(r.key.unwrap_or_default()).into_owned();
                let value = if r.value_is_null {
                    None
                } else {
                    let (len, n) = super::read_len(r.tail).unwrap();
                    let after_key = n + len.unwrap_or(0);
                    let (vlen, m) = super::read_len(&r.tail[after_key..]).unwrap();
                    Some(
                        String::from_utf8_lossy(
                            &r.tail[after_key + m..after_key + m + vlen.unwrap_or(0)],
                        )
                        .into_owned(),
                    )
                };
                (r.offset_delta, key, value)
            })
            .collect()
    }
}
