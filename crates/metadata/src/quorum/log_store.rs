//! The Raft log: a `PartitionLog` in `__cluster_metadata-0/`, plus `quorum-state` for the vote,
//! the committed log id and the purged log id.
//!
//! Each entry is one record batch whose base offset is the entry's index and whose partition
//! leader epoch is its term (see `entry.rs`), so the log's offsets are Raft's indexes and its
//! epoch cache is Raft's term history. File work runs on tokio's blocking threads; the log sits
//! behind one mutex shared by the store and its readers (replication tasks read while the core
//! appends), held for each whole operation, reads and fsyncs included. Metadata entries are
//! small and few, so one writer at a time costs little; `get_log_state` and `read_vote` only
//! read memory but may wait on that lock, on an async worker.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use caudal_storage::batch::BatchIter;
use caudal_storage::{LogConfig, PartitionLog};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::entry::{decode_entry, encode_entry, epoch, offset, StoredLogId, StoredVote};
use super::files::{replace, Durability};
use super::{blocking, now_ms, QuorumStoreError, QuorumTypes};

const QUORUM_STATE_FILE: &str = "quorum-state";
/// Bytes read from the log per pass when openraft asks for a range of entries.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Settings of the metadata log, named after Kafka's where Kafka has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataLogConfig {
    /// `metadata.log.segment.bytes`. Smaller than Kafka's 1 GiB so a purge after a snapshot
    /// frees space: whole segments are what a purge deletes.
    pub segment_bytes: u64,
    /// The largest entry the log accepts: a controller decision is at most 16 MiB of records.
    pub max_entry_bytes: usize,
}

impl Default for MetadataLogConfig {
    fn default() -> Self {
        MetadataLogConfig {
            segment_bytes: 16 * 1024 * 1024,
            max_entry_bytes: 17 * 1024 * 1024,
        }
    }
}

impl MetadataLogConfig {
    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            max_message_bytes: self.max_entry_bytes,
            max_decompressed_bytes: self.max_entry_bytes,
            // Raft decides what goes (purge), never time or size.
            retention_ms: -1,
            retention_bytes: -1,
            compact: false,
            ..LogConfig::default()
        }
    }
}

/// What `quorum-state` holds. Caudal's own JSON, never openraft's serde form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct QuorumState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vote: Option<StoredVote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    committed: Option<StoredLogId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purged: Option<StoredLogId>,
}

#[derive(Debug)]
struct Inner {
    log: PartitionLog,
    state: QuorumState,
    state_path: PathBuf,
    /// The last entry in the log, or the purged id when the log holds none; kept in memory so
    /// `get_log_state` reads nothing.
    last: Option<StoredLogId>,
    /// Only for openraft's storage suite; see [`Inner::make_room`].
    map_like_appends: bool,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock left the log as the panicking operation left it; the log
    // itself goes offline on a failed write, so carrying on reads only what it vouches for.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The Raft log storage over the metadata `PartitionLog`.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Shared,
}

/// Reads entries for replication while the store appends.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Shared,
}

impl LogStore {
    /// Opens (or creates) the metadata log in `dir` and its `quorum-state`, and repairs what a
    /// crash between recording a purge and carrying it out left behind. Blocking.
    pub fn open(dir: &Path, config: &MetadataLogConfig) -> Result<LogStore, QuorumStoreError> {
        let (mut log, report) = PartitionLog::open(dir, config.log_config(), now_ms()).map_err(
            QuorumStoreError::io(format!("opening the metadata log in {}", dir.display())),
        )?;
        if !report.reasons.is_empty() {
            tracing::warn!(dir = %dir.display(), reasons = ?report.reasons, "metadata log recovered");
        }
        let state_path = dir.join(QUORUM_STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| QuorumStoreError::Json {
                    what: "quorum-state",
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => QuorumState::default(),
            Err(e) => {
                return Err(QuorumStoreError::io(format!(
                    "reading {}",
                    state_path.display()
                ))(e))
            }
        };
        if let Some(purged) = state.purged {
            start_after(&mut log, purged)?;
        }
        let mut inner = Inner {
            log,
            state,
            state_path,
            last: None,
            map_like_appends: false,
        };
        inner.last = inner.find_last()?;
        Ok(LogStore {
            shared: Arc::new(Mutex::new(inner)),
        })
    }

    /// Lets appends overwrite and skip entries, as openraft's storage suite expects of a map.
    #[cfg(test)]
    pub(crate) fn with_map_like_appends(self) -> LogStore {
        lock(&self.shared).map_like_appends = true;
        self
    }

    async fn with<T, F>(&self, work: F) -> Result<T, QuorumStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, QuorumStoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        blocking(move || work(&mut lock(&shared))).await
    }

    /// Syncs and checkpoints the log, so the next open need not scan it. Blocking.
    pub fn close(&self) -> Result<(), QuorumStoreError> {
        lock(&self.shared)
            .log
            .close()
            .map_err(QuorumStoreError::io("closing the metadata log"))
    }
}

/// Moves the log's start past `purged`, emptying it when its end is not beyond.
fn start_after(log: &mut PartitionLog, purged: StoredLogId) -> Result<(), QuorumStoreError> {
    let start = offset(purged.index)? + 1;
    if log.log_start_offset() >= start {
        return Ok(());
    }
    let now = now_ms();
    let done = if start <= log.log_end_offset() {
        log.advance_log_start(start, now)
    } else {
        log.truncate_fully_and_start_at(start, now)
    };
    done.map_err(QuorumStoreError::io(format!(
        "moving the metadata log start to {start}"
    )))
}

impl Inner {
    fn save_state(&self, durability: Durability) -> Result<(), QuorumStoreError> {
        let bytes = serde_json::to_vec(&self.state).map_err(|source| QuorumStoreError::Json {
            what: "quorum-state",
            source,
        })?;
        replace(&self.state_path, &bytes, durability).map_err(QuorumStoreError::io(format!(
            "writing {}",
            self.state_path.display()
        )))
    }

    fn find_last(&mut self) -> Result<Option<StoredLogId>, QuorumStoreError> {
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        if end > start {
            let entries = read_range(self, end - 1, end, Start::Exact)?;
            if let Some(entry) = entries.last() {
                return Ok(Some(StoredLogId::from(&entry.log_id)));
            }
        }
        Ok(self.state.purged)
    }

    /// Handles an entry that does not go at the log end. A log holding nothing has no last entry
    /// to follow, so it may start anywhere. Anything else is refused: openraft truncates before
    /// it overwrites and purges before it skips, so a gap or an overlap here is a bug that must
    /// stop the node, not be papered over. Except under openraft's storage suite, which treats
    /// the log as a map and writes entries anywhere: then the log is cut back or started over.
    fn make_room(
        &mut self,
        raft_index: u64,
        index: i64,
        start: i64,
        end: i64,
        now: i64,
    ) -> Result<(), QuorumStoreError> {
        let restart = |log: &mut PartitionLog| {
            log.truncate_fully_and_start_at(index, now)
                .map_err(QuorumStoreError::io("restarting the metadata log"))
        };
        if start == end {
            return restart(&mut self.log);
        }
        if !self.map_like_appends {
            return Err(QuorumStoreError::NotContiguous {
                index: raft_index,
                log_end: end as u64,
            });
        }
        if index > end {
            restart(&mut self.log)
        } else {
            self.log
                .truncate_to(index, now)
                .map_err(QuorumStoreError::io("truncating the metadata log"))
        }
    }

    fn append(&mut self, entries: Vec<Entry<QuorumTypes>>) -> Result<(), QuorumStoreError> {
        let now = now_ms();
        for entry in &entries {
            let index = offset(entry.log_id.index)?;
            let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
            if index != end {
                self.make_room(entry.log_id.index, index, start, end, now)?;
            }
            let batch = encode_entry(entry, now)?;
            self.log
                .set_leader_epoch(epoch(entry.log_id.leader_id.term)?);
            self.log.append(&batch, now)?;
            self.last = Some(StoredLogId::from(&entry.log_id));
        }
        if let Some(job) = self.log.flush_job() {
            if let Err(e) = job.run() {
                self.log.flush_failed(&e);
                return Err(QuorumStoreError::io("syncing the metadata log")(e));
            }
            self.log
                .flush_done(&job)
                .map_err(QuorumStoreError::io("checkpointing the metadata log"))?;
        }
        Ok(())
    }
}

/// Whether a read may start past what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Whatever of the range the log still holds (openraft's `try_get_log_entries`, a map
    /// lookup in its model).
    Held,
    /// Exactly where asked: replication sends what it reads after the entry before `from`, so
    /// a read that skipped purged entries would hand a follower a log with a hole.
    Exact,
}

/// Reads the entries at offsets `[from, to)` that the log still holds.
fn read_range(
    inner: &mut Inner,
    from: i64,
    to: i64,
    start: Start,
) -> Result<Vec<Entry<QuorumTypes>>, QuorumStoreError> {
    let log_start = inner.log.log_start_offset();
    if start == Start::Exact && from < log_start && from < to {
        return Err(QuorumStoreError::Purged {
            index: from as u64,
            log_start: log_start as u64,
        });
    }
    let mut offset = from.max(log_start);
    let to = to.min(inner.log.log_end_offset());
    let mut entries = Vec::new();
    while offset < to {
        let Some(plan) = inner.log.read(offset, READ_CHUNK_BYTES, to, true)? else {
            break;
        };
        let bytes = plan
            .read()
            .map_err(QuorumStoreError::io("reading the metadata log"))?;
        let before = offset;
        for (at, header) in BatchIter::new(&bytes) {
            let len = header
                .total_len()
                .map_err(|e| QuorumStoreError::corrupt("a metadata batch", e.to_string()))?;
            if header.base_offset() < offset {
                continue;
            }
            let entry = decode_entry(&bytes[at..at + len])?;
            offset = header.base_offset() + 1;
            entries.push(entry);
        }
        if offset == before {
            return Err(QuorumStoreError::corrupt(
                format!("metadata log at offset {offset}"),
                "a read returned no whole entry",
            ));
        }
    }
    Ok(entries)
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let from = match range.start_bound() {
        Bound::Included(&v) => clamp(v),
        Bound::Excluded(&v) => clamp(v).saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&v) => clamp(v).saturating_add(1),
        Bound::Excluded(&v) => clamp(v),
        Bound::Unbounded => i64::MAX,
    };
    (from, to)
}

fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl FnOnce(QuorumStoreError) -> StorageError<u64> {
    move |e| {
        tracing::error!(error = %e, "metadata log storage failed");
        StorageIOError::new(subject, verb, &e).into()
    }
}

async fn read_entries(
    shared: &Shared,
    (from, to): (i64, i64),
    start: Start,
) -> Result<Vec<Entry<QuorumTypes>>, StorageError<u64>> {
    let shared = shared.clone();
    blocking(move || read_range(&mut lock(&shared), from, to, start))
        .await
        .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Read))
}

fn exact(start: u64, end: u64) -> (i64, i64) {
    bounds(&(start..end))
}

impl RaftLogReader<QuorumTypes> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<QuorumTypes>>, StorageError<u64>> {
        read_entries(&self.shared, bounds(&range), Start::Held).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<QuorumTypes>>, StorageError<u64>> {
        read_entries(&self.shared, exact(start, end), Start::Exact).await
    }
}

impl RaftLogReader<QuorumTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<QuorumTypes>>, StorageError<u64>> {
        read_entries(&self.shared, bounds(&range), Start::Held).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<QuorumTypes>>, StorageError<u64>> {
        read_entries(&self.shared, exact(start, end), Start::Exact).await
    }
}

impl RaftLogStorage<QuorumTypes> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<QuorumTypes>, StorageError<u64>> {
        let inner = lock(&self.shared);
        Ok(LogState {
            last_purged_log_id: inner.state.purged.map(StoredLogId::to_raft),
            last_log_id: inner.last.map(StoredLogId::to_raft),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = StoredVote::from(vote);
        self.with(move |inner| {
            inner.state.vote = Some(vote);
            inner.save_state(Durability::Durable)
        })
        .await
        .map_err(storage_error(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(lock(&self.shared).state.vote.map(StoredVote::to_raft))
    }

    /// Not synced to the directory: a stale committed id after a crash only means applying
    /// less at start, before the leader's next heartbeat says more.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let committed = committed.as_ref().map(StoredLogId::from);
        self.with(move |inner| {
            if inner.state.committed == committed {
                return Ok(());
            }
            inner.state.committed = committed;
            inner.save_state(Durability::WholeButMaybeOld)
        })
        .await
        .map_err(storage_error(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(lock(&self.shared).state.committed.map(StoredLogId::to_raft))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<QuorumTypes>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<QuorumTypes>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.with(move |inner| inner.append(entries))
            .await
            .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Write))?;
        // Only now is everything appended on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.with(move |inner| {
            let at = offset(log_id.index)?;
            inner
                .log
                .truncate_to(at, now_ms())
                .map_err(QuorumStoreError::io(format!(
                    "truncating the metadata log to {at}"
                )))?;
            inner.last = inner.find_last()?;
            Ok(())
        })
        .await
        .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let purged = StoredLogId::from(&log_id);
        self.with(move |inner| {
            if inner.state.purged.is_some_and(|p| p >= purged) {
                return Ok(());
            }
            // Recorded first: a crash before the log moves is repaired by the next open.
            inner.state.purged = Some(purged);
            inner.save_state(Durability::Durable)?;
            start_after(&mut inner.log, purged)?;
            if inner.last.is_none_or(|last| last < purged) {
                inner.last = Some(purged);
            }
            Ok(())
        })
        .await
        .map_err(storage_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn blank(term: u64, index: u64) -> Entry<QuorumTypes> {
        Entry {
            log_id: StoredLogId { term, index }.to_raft(),
            payload: EntryPayload::Blank,
        }
    }

    fn id(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(StoredLogId { term, index }.to_raft())
    }

    #[test]
    fn an_entry_that_does_not_follow_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), &MetadataLogConfig::default()).unwrap();
        let mut inner = lock(&store.shared);
        inner.append(vec![blank(1, 0), blank(1, 1)]).unwrap();
        assert!(matches!(
            inner.append(vec![blank(1, 3)]),
            Err(QuorumStoreError::NotContiguous {
                index: 3,
                log_end: 2
            })
        ));
        assert!(matches!(
            inner.append(vec![blank(2, 1)]),
            Err(QuorumStoreError::NotContiguous { index: 1, .. })
        ));
        inner.append(vec![blank(2, 2)]).unwrap();
        assert_eq!(inner.last, Some(StoredLogId { term: 2, index: 2 }));
    }

    #[tokio::test]
    async fn vote_committed_purge_and_entries_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = MetadataLogConfig {
            segment_bytes: 300,
            ..MetadataLogConfig::default()
        };
        {
            let mut store = LogStore::open(dir.path(), &config).unwrap();
            let entries = (0..8).map(|i| blank(1 + i / 3, i)).collect();
            lock(&store.shared).append(entries).unwrap();
            store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            store.save_committed(id(2, 5)).await.unwrap();
            store.purge(id(1, 2).unwrap()).await.unwrap();
            store.truncate(id(3, 7).unwrap()).await.unwrap();
            // No close: what each call made durable is all there is.
        }
        let mut store = LogStore::open(dir.path(), &config).unwrap();
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 2))
        );
        assert_eq!(store.read_committed().await.unwrap(), id(2, 5));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, id(1, 2));
        assert_eq!(state.last_log_id, id(3, 6));
        let indexes: Vec<u64> = store
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, [3, 4, 5, 6]);
        // Replication reads exactly where it asks, or fails: never past a purged hole.
        assert!(store.limited_get_log_entries(2, 5).await.is_err());
        assert_eq!(store.limited_get_log_entries(3, 5).await.unwrap().len(), 2);
        // The entries' terms are the batches' epochs.
        let terms: Vec<u64> = store
            .try_get_log_entries(3..=6)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, [2, 2, 2, 3]);
    }

    #[tokio::test]
    async fn a_purge_past_the_log_end_restarts_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = MetadataLogConfig::default();
        {
            let mut store = LogStore::open(dir.path(), &config).unwrap();
            lock(&store.shared)
                .append(vec![blank(1, 0), blank(1, 1)])
                .unwrap();
            // A follower installed a snapshot covering up to index 40.
            store.purge(id(4, 40).unwrap()).await.unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(
                (state.last_purged_log_id, state.last_log_id),
                (id(4, 40), id(4, 40))
            );
            lock(&store.shared).append(vec![blank(4, 41)]).unwrap();
        }
        let mut store = LogStore::open(dir.path(), &config).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(
            (state.last_purged_log_id, state.last_log_id),
            (id(4, 40), id(4, 41))
        );
        assert_eq!(store.try_get_log_entries(0..).await.unwrap().len(), 1);
    }

    #[test]
    fn a_purge_recorded_but_not_carried_out_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = MetadataLogConfig::default();
        {
            let store = LogStore::open(dir.path(), &config).unwrap();
            let mut inner = lock(&store.shared);
            inner.append((0..5).map(|i| blank(1, i)).collect()).unwrap();
            // The crash came between writing quorum-state and moving the log start.
            inner.state.purged = Some(StoredLogId { term: 1, index: 2 });
            inner.save_state(Durability::Durable).unwrap();
        }
        let store = LogStore::open(dir.path(), &config).unwrap();
        assert_eq!(lock(&store.shared).log.log_start_offset(), 3);
    }

    #[tokio::test]
    async fn a_torn_last_entry_is_dropped_at_open_and_the_log_goes_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let config = MetadataLogConfig::default();
        {
            let store = LogStore::open(dir.path(), &config).unwrap();
            lock(&store.shared)
                .append((0..4).map(|i| blank(1, i)).collect())
                .unwrap();
        }
        // A crash tore the last batch: only part of it reached the disk.
        let segment = dir.path().join(format!("{:020}.log", 0));
        let len = std::fs::metadata(&segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(len - 7).unwrap();
        drop(file);
        let mut store = LogStore::open(dir.path(), &config).unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, id(1, 2));
        lock(&store.shared).append(vec![blank(2, 3)]).unwrap();
        let terms: Vec<u64> = store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, [1, 1, 1, 2]);
    }
}
