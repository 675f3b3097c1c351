//! A partition as the broker serves it: the log behind a lock, the group commit that makes
//! appends durable for `acks=all`, and the replica state read without the lock (leader epoch,
//! high watermark).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kafka_protocol::error::ResponseError as E;

use caudal_metadata::PartitionRegistration;
use caudal_storage::{AppendError, AppendInfo, PartitionLog, ValidBatch};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::replica_state::{
    AlterOutcome, BrokerStatus, Diverging, FollowerFetch, LeaderState, Proposal, ReplicaSettings,
};

#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub topic_id: Uuid,
    pub index: i32,
    log: Mutex<PartitionLog>,
    /// Offsets below this value are fsync'd.
    durable: watch::Sender<i64>,
    flush_wanted: Arc<Notify>,
    /// Woken after each append: the fetches waiting for data of this partition look again.
    appended: Notify,
    /// The epoch of this replica's leadership, as clients see it in Metadata and check in
    /// Fetch, ListOffsets and OffsetForLeaderEpoch.
    leader_epoch: AtomicI32,
    /// What consumers may read up to. Kept apart from the log end: on one replica it follows
    /// each append; with followers it moves only when every in-sync replica has the data.
    high_watermark: AtomicI64,
    /// Whether this replica leads the partition: only a leader takes produce and serves
    /// consumers.
    leader: AtomicBool,
    /// The leader's view of its followers (`replica_state.rs`) while this replica leads a
    /// partition with more than one replica; `None` otherwise. Never locked while the log is.
    replication: Mutex<Option<LeaderState>>,
    /// Whether `replication` holds a state: a single replica's appends skip its lock and move
    /// the high watermark themselves.
    replicated: AtomicBool,
    /// The topic's `min.insync.replicas`, which a partition of one replica checks too: with
    /// more than 1, `acks=all` is refused there, as Kafka refuses it.
    min_insync_replicas: AtomicUsize,
    /// The replicas a reassignment is adding, whose fetches `leader.replication.throttled.rate`
    /// limits; empty otherwise.
    adding: Mutex<Vec<i32>>,
}

impl Partition {
    /// Wraps an opened log and starts its flusher on the current tokio runtime.
    /// The replica starts as the leader, at the epoch its log last recorded.
    pub fn start(topic: String, topic_id: Uuid, index: i32, log: PartitionLog) -> Arc<Partition> {
        let (durable, _) = watch::channel(log.flushed_offset());
        let flush_wanted = Arc::new(Notify::new());
        let partition = Arc::new(Partition {
            topic,
            topic_id,
            index,
            leader: AtomicBool::new(true),
            leader_epoch: AtomicI32::new(log.leader_epoch()),
            high_watermark: AtomicI64::new(log.log_end_offset()),
            log: Mutex::new(log),
            durable,
            flush_wanted: flush_wanted.clone(),
            appended: Notify::new(),
            replication: Mutex::new(None),
            replicated: AtomicBool::new(false),
            min_insync_replicas: AtomicUsize::new(1),
            adding: Mutex::new(Vec::new()),
        });
        tokio::spawn(flusher(Arc::downgrade(&partition), flush_wanted));
        partition
    }

    /// The log, for reads and appends. Never held across an await or an fsync.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        // A panic while holding the lock would have been a bug in storage; the log itself
        // stays consistent (appends are whole or not at all), so keep serving.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a validated batch; returns where it went and the log start offset after it
    /// (for the produce response), under one lock.
    pub fn append(
        &self,
        batch: &[u8],
        valid: ValidBatch,
        now_ms: i64,
    ) -> Result<(AppendInfo, i64), AppendError> {
        self.append_checked(batch, valid, None, now_ms)
    }

    /// Appends a transactional batch its coordinator verified while the log ended at
    /// `verified_at`, as [`append`](Self::append) does, unless its transaction ended since
    /// (`PartitionLog::append_verified`).
    pub fn append_verified(
        &self,
        batch: &[u8],
        valid: ValidBatch,
        verified_at: i64,
        now_ms: i64,
    ) -> Result<(AppendInfo, i64), AppendError> {
        self.append_checked(batch, valid, Some(verified_at), now_ms)
    }

    fn append_checked(
        &self,
        batch: &[u8],
        valid: ValidBatch,
        verified_at: Option<i64>,
        now_ms: i64,
    ) -> Result<(AppendInfo, i64), AppendError> {
        let replicated = self.replicated.load(Ordering::Acquire);
        let (appended, end) = {
            let mut log = self.log();
            let info = match verified_at {
                Some(at) => log.append_verified(batch, valid, at, now_ms)?,
                None => log.append_validated(batch, valid, now_ms)?,
            };
            let end = log.log_end_offset();
            if !replicated {
                // The only replica has it: it is committed.
                self.high_watermark.fetch_max(end, Ordering::AcqRel);
            }
            ((info, log.log_start_offset()), end)
        };
        if replicated {
            self.update_high_watermark(end, now_ms);
        }
        if !appended.0.duplicate {
            self.appended.notify_waiters();
        }
        Ok(appended)
    }

    /// Appends records the broker made itself (the group coordinator's) as the leader, and
    /// moves the high watermark as [`append`](Self::append) does; returns the log end after
    /// them. Refused once this replica no longer leads: the image follower makes it a follower
    /// before the coordinator gives up the shard, and a write in between must not land.
    pub fn append_own(&self, batch: &[u8], now_ms: i64) -> std::io::Result<i64> {
        self.append_as_leader(now_ms, |log| {
            log.append(batch, now_ms)
                .map(|_| ())
                .map_err(std::io::Error::other)
        })?
        .ok_or_else(|| std::io::Error::other("this broker no longer leads the partition"))
    }

    /// Appends a transaction marker as leader (WriteTxnMarkers, or the transaction coordinator
    /// on this broker); returns the log end offset after it, for the caller to wait on.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: caudal_storage::ControlMarker,
        now_ms: i64,
    ) -> Result<i64, AppendError> {
        self.append_as_leader(now_ms, |log| {
            log.append_marker(producer_id, producer_epoch, marker, now_ms)
                .map(|_| ())
        })?
        .ok_or_else(|| AppendError::Offline("this broker no longer leads the partition".into()))
    }

    /// Runs the broker's own append `write` on the log while this replica leads (`None` when it
    /// does not), then moves the high watermark as client appends do and wakes the waiting
    /// fetches; the log end after it.
    fn append_as_leader<E>(
        &self,
        now_ms: i64,
        write: impl FnOnce(&mut PartitionLog) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        let replicated = self.replicated.load(Ordering::Acquire);
        let end = {
            let mut log = self.log();
            if !self.is_leader() {
                return Ok(None);
            }
            write(&mut log)?;
            let end = log.log_end_offset();
            if !replicated {
                self.high_watermark.fetch_max(end, Ordering::AcqRel);
            }
            end
        };
        if replicated {
            self.update_high_watermark(end, now_ms);
        }
        self.appended.notify_waiters();
        Ok(Some(end))
    }

    fn replication(&self) -> MutexGuard<'_, Option<LeaderState>> {
        self.replication
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the high watermark as the followers allow, given the log's end.
    fn update_high_watermark(&self, log_end_offset: i64, now_ms: i64) {
        let moved = match self.replication().as_mut() {
            Some(state) => state
                .update_high_watermark(log_end_offset, now_ms)
                .then(|| state.high_watermark()),
            None => None,
        };
        if let Some(hw) = moved {
            self.high_watermark.fetch_max(hw, Ordering::AcqRel);
        }
    }

    /// Takes the partition's replicas and ISR from the image while this replica leads it: a
    /// new leader epoch starts a new leader state (every follower's position unknown until it
    /// fetches), a change under the same epoch (an ISR change) updates it. A partition of one
    /// replica, or one this replica does not lead, has none.
    pub fn set_replicas(
        &self,
        local_id: i32,
        registration: &PartitionRegistration,
        settings: ReplicaSettings,
        now_ms: i64,
    ) {
        self.min_insync_replicas
            .store(settings.min_insync_replicas, Ordering::Release);
        {
            let mut adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
            if *adding != registration.adding {
                adding.clone_from(&registration.adding);
            }
        }
        let mut state = self.replication();
        if registration.leader != local_id || registration.replicas.len() <= 1 {
            *state = None;
            self.replicated.store(false, Ordering::Release);
            return;
        }
        match state.as_mut() {
            Some(s) if s.leader_epoch() == registration.leader_epoch => {
                s.set_settings(settings);
                s.image_changed(
                    registration.partition_epoch,
                    &registration.replicas,
                    &registration.isr,
                    now_ms,
                )
            }
            _ => {
                let end = self.log().log_end_offset();
                *state = Some(LeaderState::new(
                    local_id,
                    registration.leader_epoch,
                    registration.partition_epoch,
                    &registration.replicas,
                    &registration.isr,
                    end,
                    self.high_watermark(),
                    settings,
                    now_ms,
                ));
            }
        }
        drop(state);
        self.replicated.store(true, Ordering::Release);
        // A smaller ISR (a member fenced) may let the high watermark move without an append,
        // and the produce requests waiting on the old ISR look again.
        let end = self.log().log_end_offset();
        self.update_high_watermark(end, now_ms);
        self.appended.notify_waiters();
    }

    /// Whether `replica_id` is being added to this partition by a reassignment: its fetches are
    /// throttled.
    pub fn is_adding(&self, replica_id: i32) -> bool {
        self.adding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&replica_id)
    }

    /// A topic config changed: the ISR rules read the new settings from now on.
    pub fn set_replica_settings(&self, settings: ReplicaSettings) {
        self.min_insync_replicas
            .store(settings.min_insync_replicas, Ordering::Release);
        if let Some(s) = self.replication().as_mut() {
            s.set_settings(settings);
        }
    }

    /// A follower takes the leader's high watermark, as far as its own log reaches (Kafka's
    /// follower: it may move back if the leader's did).
    pub fn follow_high_watermark(&self, leader_high_watermark: i64) {
        let end = self.log().log_end_offset();
        let new = leader_high_watermark.min(end);
        if self.high_watermark.swap(new, Ordering::AcqRel) != new {
            // Consumers reading from this follower (KIP-392) wait on it.
            self.appended.notify_waiters();
        }
    }

    /// Sets the high watermark back to the log start, for a replica of a replicated partition
    /// opened from disk: its log may end with batches no other replica has (they were never
    /// acknowledged), and consumers must not read them until the ISR has them. As a leader,
    /// the high watermark moves up again as soon as the followers report their positions; as a
    /// follower, it takes the leader's.
    pub fn forget_high_watermark(&self) {
        let start = self.log().log_start_offset();
        self.high_watermark.store(start, Ordering::Release);
    }

    /// Keeps the high watermark at or below `offset` (the log was truncated there).
    pub fn cap_high_watermark(&self, offset: i64) {
        self.high_watermark.fetch_min(offset, Ordering::AcqRel);
    }

    /// Whether an `acks=all` produce may append: the committed ISR holds at least
    /// `min.insync.replicas` (else NOT_ENOUGH_REPLICAS, nothing appended).
    pub fn enough_replicas(&self) -> bool {
        if !self.replicated.load(Ordering::Acquire) {
            return self.min_insync_replicas.load(Ordering::Acquire) <= 1;
        }
        self.replication()
            .as_ref()
            .is_none_or(LeaderState::enough_replicas)
    }

    /// Waits until every in-sync replica has the offsets below `end_offset` (the high watermark
    /// passed them), as an `acks=all` produce must. Kafka's error code if the partition stops
    /// being led here (NOT_LEADER_OR_FOLLOWER) or the ISR shrank below `min.insync.replicas`
    /// meanwhile (NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    pub async fn wait_replicated(&self, end_offset: i64) -> Result<(), i16> {
        loop {
            let moved = self.next_append();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if !self.is_leader() {
                return Err(E::NotLeaderOrFollower.code());
            }
            if self.high_watermark() >= end_offset && !self.replicated.load(Ordering::Acquire) {
                return Ok(());
            }
            let acknowledged = self
                .replication()
                .as_ref()
                .map(|s| s.acknowledged(end_offset - 1));
            match acknowledged {
                None | Some(Some(true)) => return Ok(()),
                Some(Some(false)) => return Err(E::NotEnoughReplicasAfterAppend.code()),
                Some(None) => {}
            }
            moved.await;
        }
    }

    /// Takes the controller's answer to this partition's ISR proposal and returns the proposal
    /// to send again, if any. A committed change may let the high watermark move.
    pub fn alter_partition_done(&self, outcome: AlterOutcome, now_ms: i64) -> Option<Proposal> {
        let end = self.log().log_end_offset();
        let (again, moved) = {
            let mut state = self.replication();
            let state = state.as_mut()?;
            let again = state.alter_partition_done(outcome);
            let moved = state
                .update_high_watermark(end, now_ms)
                .then(|| state.high_watermark());
            (again, moved)
        };
        if let Some(hw) = moved {
            self.high_watermark.fetch_max(hw, Ordering::AcqRel);
            self.appended.notify_waiters();
        }
        again
    }

    /// Proposes taking the followers that lag out of the ISR, if any do and no proposal is in
    /// flight (see `LeaderState::maybe_shrink`).
    pub fn maybe_shrink_isr(&self, now_ms: i64) -> Option<Proposal> {
        if !self.replicated.load(Ordering::Acquire) {
            return None;
        }
        let end = self.log().log_end_offset();
        self.replication().as_mut()?.maybe_shrink(end, now_ms)
    }

    /// Checks a follower's fetch of this partition before anything is read: the error code
    /// to answer it with, or where the follower's log leaves this one (answer with that and no
    /// records). `broker` is the image's registration of the follower's broker.
    pub fn check_follower_fetch(
        &self,
        fetch: &FollowerFetch,
        broker: Option<BrokerStatus>,
    ) -> Result<Option<Diverging>, i16> {
        if !self.is_leader() {
            return Err(E::NotLeaderOrFollower.code());
        }
        self.check_leader_epoch(fetch.current_leader_epoch)?;
        let (log_start_offset, epoch_end) = {
            let log = self.log();
            let epoch_end = (fetch.last_fetched_epoch >= 0)
                .then(|| log.end_offset_for_epoch(fetch.last_fetched_epoch));
            (log.log_start_offset(), epoch_end)
        };
        match self.replication().as_ref() {
            Some(state) => state
                .check_fetch(fetch, log_start_offset, broker, |_| {
                    epoch_end.unwrap_or((-1, -1))
                })
                .map_err(|refusal| refusal.code()),
            // Led here with no followers: whoever asks is not one.
            None if fetch.current_leader_epoch >= 0 => Err(E::UnknownLeaderEpoch.code()),
            None => Err(E::NotLeaderOrFollower.code()),
        }
    }

    /// Records a follower's fetch that [`check_follower_fetch`](Self::check_follower_fetch)
    /// let through; `leader_end` is this log's end read before the fetch's read. Moves the
    /// high watermark if the follower's position allows (waking the fetches waiting on it),
    /// and returns an ISR change to propose to the controller, if any.
    pub fn record_follower_fetch(
        &self,
        fetch: &FollowerFetch,
        leader_end: i64,
        brokers: impl Fn(i32) -> Option<BrokerStatus>,
        now_ms: i64,
    ) -> Option<Proposal> {
        let (moved, proposal) = {
            let mut state = self.replication();
            let state = state.as_mut()?;
            let (moved, proposal) = state.record_fetch(fetch, leader_end, brokers, now_ms);
            (moved.then(|| state.high_watermark()), proposal)
        };
        if let Some(hw) = moved {
            self.high_watermark.fetch_max(hw, Ordering::AcqRel);
            self.appended.notify_waiters();
        }
        proposal
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Kafka's last stable offset: below it every transaction is decided, and
    /// `read_committed` consumers read up to it.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        last_stable_offset(hw, &self.log())
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Stops leading: produce and fetch from clients get NOT_LEADER_OR_FOLLOWER. Fetches
    /// waiting on this partition wake to answer.
    pub fn become_follower(&self) {
        let epoch = self.leader_epoch();
        self.set_leadership(false, epoch);
    }

    /// Leads (or follows) the partition at `epoch`, as the metadata image says. A replica that
    /// becomes leader at a new epoch stamps it on the batches it appends from now on, and its
    /// log's epoch cache records at once that the epoch began at the log end (Kafka's
    /// `makeLeader`), even the first epoch of a fresh log. Fetches waiting
    /// on this partition wake when leadership or epoch change, so that they answer (a former
    /// leader must not keep a consumer waiting for data it will not get).
    pub fn set_leadership(&self, leader: bool, epoch: i32) {
        let changed = {
            // Under the log lock, so no append stamps the old epoch after the new one is set.
            let mut log = self.log();
            if leader {
                log.set_leader_epoch(epoch);
            }
            // Readers check the flag, then the epoch: a leader gets its epoch before it is
            // seen leading, and stops leading before its epoch moves on, so no reader sees it
            // leading at an epoch it does not lead at.
            let (was_leader, old_epoch) = if leader {
                let old_epoch = self.leader_epoch.swap(epoch, Ordering::AcqRel);
                (self.leader.swap(true, Ordering::AcqRel), old_epoch)
            } else {
                let was_leader = self.leader.swap(false, Ordering::AcqRel);
                (was_leader, self.leader_epoch.swap(epoch, Ordering::AcqRel))
            };
            was_leader != leader || old_epoch != epoch
        };
        if !leader {
            *self.replication() = None;
            self.replicated.store(false, Ordering::Release);
        }
        if changed {
            self.appended.notify_waiters();
        }
    }

    /// Checks a client's idea of the current leader epoch (-1: none given) against this
    /// replica's: an older one is FENCED_LEADER_EPOCH (the client's metadata is stale), a newer
    /// one UNKNOWN_LEADER_EPOCH (this replica has not heard of that leadership yet).
    pub fn check_leader_epoch(&self, current: i32) -> Result<(), i16> {
        let epoch = self.leader_epoch();
        match current {
            -1 => Ok(()),
            c if c < epoch => Err(E::FencedLeaderEpoch.code()),
            c if c > epoch => Err(E::UnknownLeaderEpoch.code()),
            _ => Ok(()),
        }
    }

    /// Resolves at the next append to this partition. Enable it (`Notified::enable`) before
    /// reading, so an append between the read and the wait is not missed.
    pub fn next_append(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Waits until every offset below `end_offset` is on disk. Concurrent waiters share fsyncs:
    /// one flush covers everything appended before it started.
    pub async fn wait_durable(&self, end_offset: i64) -> io::Result<()> {
        let mut rx = self.durable.subscribe();
        loop {
            let durable = *rx.borrow_and_update();
            if durable >= end_offset {
                return Ok(());
            }
            if durable < 0 {
                return Err(io::Error::other("flushing the partition failed"));
            }
            self.flush_wanted.notify_one();
            if rx.changed().await.is_err() {
                return Err(io::Error::other("partition closed"));
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Wake the flusher so it sees the partition is gone and exits.
        self.flush_wanted.notify_one();
    }
}

/// One per partition: waits for a flush request, fsyncs everything appended so far without the
/// lock, then tells the waiters. Exits when the partition is dropped.
async fn flusher(partition: std::sync::Weak<Partition>, flush_wanted: Arc<Notify>) {
    loop {
        let Some(p) = partition.upgrade() else { return };
        let wanted = flush_wanted.notified();
        tokio::pin!(wanted);
        wanted.as_mut().enable();
        let job = p.log().flush_job();
        match job {
            Some(job) => {
                let result = tokio::task::spawn_blocking(move || job.run().map(|_| job)).await;
                match result {
                    Ok(Ok(job)) => {
                        let up_to = job.up_to;
                        let done = p.log().flush_done(&job);
                        if let Err(e) = done {
                            tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "writing the recovery checkpoint failed");
                            if p.log().offline_reason().is_some() {
                                p.durable.send_replace(-1);
                                return;
                            }
                        }
                        p.durable.send_if_modified(|d| {
                            let moved = up_to > *d;
                            *d = (*d).max(up_to);
                            moved
                        });
                    }
                    Ok(Err(e)) => {
                        tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fsync failed; acks=all producers get an error");
                        p.log().flush_failed(&e);
                        p.durable.send_replace(-1);
                        return;
                    }
                    Err(_) => return,
                }
            }
            None => {
                drop(p);
                wanted.await;
            }
        }
    }
}

/// The last stable offset of `log` whose high watermark is `high_watermark`: the high
/// watermark, or the start of the oldest open transaction if that is lower. For callers that
/// hold the log's lock already.
pub fn last_stable_offset(high_watermark: i64, log: &PartitionLog) -> i64 {
    log.first_open_txn_offset()
        .map_or(high_watermark, |o| o.min(high_watermark))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use caudal_storage::{LogConfig, PartitionLog};

    use super::*;
    use crate::replica_state::Diverging;

    fn batch(value: &[u8]) -> bytes::BytesMut {
        let record = (
            Bytes::from_static(b"k"),
            Some(Bytes::copy_from_slice(value)),
        );
        crate::coordinator_runtime::encode_batch(&[record], 0, None).unwrap()
    }

    fn partition(dir: &std::path::Path, index: i32) -> Arc<Partition> {
        let (log, _) =
            PartitionLog::open(&dir.join(format!("t-{index}")), LogConfig::default(), 0).unwrap();
        Partition::start("t".into(), Uuid::nil(), index, log)
    }

    /// Whether a future is done, polled once.
    pub(crate) fn ready(f: &mut std::pin::Pin<&mut impl Future>) -> bool {
        matches!(
            f.as_mut().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(_)
        )
    }

    #[tokio::test]
    async fn a_waiting_fetch_wakes_for_appends_to_its_partition_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (partition(dir.path(), 0), partition(dir.path(), 1));
        let waiting = a.next_append();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let append = |p: &Partition| {
            let bytes = batch(b"x");
            let valid = p.log().validate(&bytes).unwrap();
            p.append(&bytes, valid, 0).unwrap();
        };
        append(&b);
        assert!(!ready(&mut waiting), "woken by another partition's append");
        append(&a);
        assert!(
            ready(&mut waiting),
            "not woken by its own partition's append"
        );
    }

    fn append(p: &Partition, value: &[u8]) {
        let bytes = batch(value);
        let valid = p.log().validate(&bytes).unwrap();
        p.append(&bytes, valid, 0).unwrap();
    }

    /// Leader 1 at `epoch` of replicas [1, 2], both in the ISR.
    fn lead_with_follower(p: &Partition, epoch: i32) {
        lead_with(p, epoch, &[1, 2], 1);
    }

    /// Leader 1 at `epoch` of replicas [1, 2], ISR `isr`, `min.insync.replicas` as given.
    fn lead_with(p: &Partition, epoch: i32, isr: &[i32], min_insync_replicas: usize) {
        p.set_leadership(true, epoch);
        let registration = PartitionRegistration {
            replicas: vec![1, 2],
            isr: isr.to_vec(),
            leader: 1,
            leader_epoch: epoch,
            partition_epoch: epoch,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let settings = ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas,
        };
        p.set_replicas(1, &registration, settings, 0);
    }

    /// Leader 1 at epoch 1 of a partition of one replica.
    fn lead_alone(p: &Partition, partition_epoch: i32, min_insync_replicas: usize, now_ms: i64) {
        let registration = PartitionRegistration {
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 1,
            partition_epoch,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let settings = ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas,
        };
        p.set_replicas(1, &registration, settings, now_ms);
    }

    fn follower_fetch(fetch_offset: i64, epoch: i32, last_fetched_epoch: i32) -> FollowerFetch {
        FollowerFetch {
            replica_id: 2,
            broker_epoch: -1,
            current_leader_epoch: epoch,
            fetch_offset,
            last_fetched_epoch,
        }
    }

    const BROKER_2: BrokerStatus = BrokerStatus {
        epoch: 7,
        active: true,
    };

    #[tokio::test]
    async fn with_a_follower_the_high_watermark_moves_when_the_follower_has_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path(), 0);
        lead_with_follower(&p, 1);
        append(&p, b"a");
        append(&p, b"b");
        assert_eq!(p.high_watermark(), 0, "the follower has nothing yet");
        let waiting = p.next_append();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let f = follower_fetch(1, 1, 1);
        assert_eq!(p.check_follower_fetch(&f, Some(BROKER_2)), Ok(None));
        p.record_follower_fetch(&f, 2, |_| Some(BROKER_2), 10);
        assert_eq!(p.high_watermark(), 1);
        assert!(
            ready(&mut waiting),
            "consumers waiting on the high watermark wake"
        );
        p.record_follower_fetch(&follower_fetch(2, 1, 1), 2, |_| Some(BROKER_2), 20);
        assert_eq!(p.high_watermark(), 2);
        // A single replica again: appends move it themselves.
        lead_alone(&p, 2, 1, 30);
        append(&p, b"c");
        assert_eq!(p.high_watermark(), 3);
    }

    #[tokio::test]
    async fn a_single_replica_refuses_acks_all_when_min_insync_replicas_is_above_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path(), 0);
        lead_alone(&p, 1, 2, 0);
        assert!(
            !p.enough_replicas(),
            "Kafka refuses: 1 in-sync replica, 2 wanted"
        );
        lead_alone(&p, 1, 1, 0);
        assert!(p.enough_replicas());
        // An altered topic config applies to the open partition.
        p.set_replica_settings(ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas: 2,
        });
        assert!(!p.enough_replicas());
    }

    #[tokio::test]
    async fn a_replica_opened_from_disk_learns_its_high_watermark_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path(), 0);
        append(&p, b"a");
        append(&p, b"b");
        assert_eq!(p.high_watermark(), 2);
        // Reopened as the leader of two replicas: its tail may be on no other replica.
        p.forget_high_watermark();
        lead_with(&p, 2, &[1, 2], 1);
        assert_eq!(
            p.high_watermark(),
            0,
            "nothing is known to be on the follower"
        );
        p.record_follower_fetch(&follower_fetch(1, 2, 1), 2, |_| Some(BROKER_2), 10);
        assert_eq!(p.high_watermark(), 1);
        // The follower, silent past replica.lag.time.max.ms, leaves the ISR: the leader
        // alone has everything.
        let registration = PartitionRegistration {
            replicas: vec![1, 2],
            isr: vec![1],
            leader: 1,
            leader_epoch: 2,
            partition_epoch: 3,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let settings = ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas: 1,
        };
        p.set_replicas(1, &registration, settings, 40_000);
        assert_eq!(
            p.high_watermark(),
            2,
            "the smaller ISR moves it without an append"
        );
    }

    #[tokio::test]
    async fn acks_all_waits_for_the_isr_and_honours_min_insync_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path(), 0);
        lead_with(&p, 1, &[1, 2], 2);
        assert!(p.enough_replicas());
        append(&p, b"a");
        let waiting = p.wait_replicated(1);
        tokio::pin!(waiting);
        assert!(!ready(&mut waiting), "answered before the follower has it");
        p.record_follower_fetch(&follower_fetch(1, 1, 1), 1, |_| Some(BROKER_2), 10);
        assert!(ready(&mut waiting), "not answered once the follower has it");
        // The ISR shrinks to the leader alone: acks=all is refused before the append, and a
        // write already waiting is not acknowledged (the high watermark holds while the ISR is
        // below the minimum; the produce times out, as Kafka's does).
        append(&p, b"b");
        let waiting = p.wait_replicated(2);
        tokio::pin!(waiting);
        assert!(!ready(&mut waiting));
        lead_with(&p, 1, &[1], 2);
        assert!(!p.enough_replicas());
        p.record_follower_fetch(&follower_fetch(2, 1, 1), 2, |_| Some(BROKER_2), 20);
        assert_eq!(p.high_watermark(), 1);
        assert!(!ready(&mut waiting));
        // Leadership goes: the waiting write is told.
        p.become_follower();
        assert!(ready(&mut waiting));
    }

    #[tokio::test]
    async fn a_follower_fetch_is_checked_against_the_leaders_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path(), 0);
        // Epoch 1 holds offsets 0 and 1, epoch 3 begins at 2.
        lead_with_follower(&p, 1);
        append(&p, b"a");
        append(&p, b"b");
        lead_with_follower(&p, 3);
        append(&p, b"c");
        let check = |f: FollowerFetch| p.check_follower_fetch(&f, Some(BROKER_2));
        assert_eq!(check(follower_fetch(2, 3, 1)), Ok(None));
        // A follower that wrote offsets 2 and 3 under epoch 2 as a deposed leader.
        assert_eq!(
            check(follower_fetch(4, 3, 2)),
            Ok(Some(Diverging {
                epoch: 1,
                end_offset: 2
            }))
        );
        assert_eq!(
            check(follower_fetch(2, 1, 1)),
            Err(E::FencedLeaderEpoch.code())
        );
        assert_eq!(
            check(follower_fetch(2, 4, 1)),
            Err(E::UnknownLeaderEpoch.code())
        );
        let stranger = FollowerFetch {
            replica_id: 5,
            ..follower_fetch(2, 3, 1)
        };
        assert_eq!(check(stranger), Err(E::UnknownLeaderEpoch.code()));
        p.become_follower();
        assert_eq!(
            check(follower_fetch(2, 3, 1)),
            Err(E::NotLeaderOrFollower.code())
        );
        // A single replica has no followers to serve.
        let single = partition(dir.path(), 1);
        assert_eq!(
            single.check_follower_fetch(&follower_fetch(0, -1, -1), Some(BROKER_2)),
            Err(E::NotLeaderOrFollower.code())
        );
    }
}
