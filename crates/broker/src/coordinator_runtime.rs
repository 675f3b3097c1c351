//! The group coordinator at run time, in the shape of Kafka's coordinator runtime
//! (`CoordinatorRuntime.java`): one shard per `__consumer_offsets` partition this broker leads,
//! each with its own coordinator state machine. A shard is made `Loading` when this broker
//! becomes leader of its partition, replayed from that partition on a blocking thread, then
//! `Active`; when the leadership goes, the members waiting on it are answered NOT_COORDINATOR
//! and the shard is dropped. The runtime performs each shard's effects (answers waiting joins
//! and syncs, appends records to the shard's partition) and keeps each shard's next clock
//! deadline for the one clock task that ticks them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::{Bytes, BytesMut};
use caudal_coordinator::errors::{COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR};
use caudal_coordinator::{
    partition_for, Coordinator, Effect, GroupConfig, JoinResponse, Ms, OffsetsRecord, SyncResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::{oneshot, watch, Notify};

use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::topics::Topics;

/// Kafka's name for the topic holding groups and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Where a waiting JoinGroup or SyncGroup gets its answer.
pub type Responder = oneshot::Sender<Answer>;

#[derive(Debug)]
pub enum Answer {
    Join(JoinResponse),
    Sync(SyncResponse),
}

/// Offsets below `end` in `partition` must be durable before the request is answered.
pub type DurableWait = (Arc<Partition>, i64);

/// Why this broker cannot serve a group: Kafka's answers, both of which send the client back to
/// FindCoordinator or to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// No shard for the group's partition here: this broker does not lead it.
    #[error("this broker is not the group's coordinator")]
    NotCoordinator,
    /// The group's shard is still replaying its partition.
    #[error("the group's coordinator is loading")]
    LoadInProgress,
}

impl CoordinatorError {
    /// Kafka's error code.
    pub fn code(self) -> i16 {
        match self {
            CoordinatorError::NotCoordinator => NOT_COORDINATOR,
            CoordinatorError::LoadInProgress => COORDINATOR_LOAD_IN_PROGRESS,
        }
    }
}

/// A shard's partition could not be replayed.
#[derive(Debug, thiserror::Error)]
#[error("loading __consumer_offsets-{partition}: {reason}")]
pub struct LoadError {
    pub partition: i32,
    pub reason: String,
}

/// What loading shards found, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    pub shards: usize,
    pub groups: usize,
    pub records: usize,
}

/// The `__consumer_offsets` leadership this broker gained and lost in one metadata change, losses
/// first (a partition can be lost by a deleted topic and gained by its successor at once).
#[derive(Debug, Default)]
pub struct ShardChanges {
    /// The topic's partition count, when the topic exists.
    pub partition_count: Option<i32>,
    pub lost: Vec<i32>,
    pub gained: Vec<(i32, Arc<Partition>)>,
}

#[derive(Debug)]
enum ShardState {
    Loading,
    Active {
        coordinator: Coordinator<Responder>,
        loaded: Loaded,
    },
    /// The partition could not be replayed: NOT_COORDINATOR, as Kafka answers for a failed load.
    Failed(String),
    /// The leadership went while a request held the shard.
    Unloaded,
}

/// One `__consumer_offsets` partition this broker leads, and the groups that map to it.
#[derive(Debug)]
struct Shard {
    index: i32,
    partition: Arc<Partition>,
    state: Mutex<ShardState>,
    /// When this shard's clock ticks next, in ms since the epoch: never while loading, at once
    /// when loaded. Set by the clock after each tick; lowered (under the state's lock) by a
    /// request that set an earlier deadline.
    next_tick: AtomicI64,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the shard up: members waiting on a join or sync are answered NOT_COORDINATOR.
    fn unload(&self) {
        let state = std::mem::replace(&mut *self.lock(), ShardState::Unloaded);
        self.next_tick.store(Ms::MAX, Ordering::SeqCst);
        if let ShardState::Active { coordinator, .. } = state {
            answer(coordinator.unload().into_iter().filter_map(|e| match e {
                Effect::Join(r, resp) => Some((r, Answer::Join(resp))),
                Effect::Sync(r, resp) => Some((r, Answer::Sync(resp))),
                _ => None,
            }));
        }
    }
}

fn answer(answers: impl IntoIterator<Item = (Responder, Answer)>) {
    for (r, answer) in answers {
        // A client that went away leaves nobody to answer.
        let _ = r.send(answer);
    }
}

#[derive(Debug)]
pub struct CoordinatorRuntime {
    config: GroupConfig,
    /// Every shard ticks at least this often (`offsets.retention.check.interval.ms`), so
    /// committed offsets expire with no member deadline pending.
    check_every_ms: Ms,
    /// The partition count of `__consumer_offsets`, by which groups map to partitions.
    partition_count: AtomicI32,
    shards: RwLock<HashMap<i32, Arc<Shard>>>,
    /// Wakes the group clock after a shard's next tick was lowered.
    clock: Notify,
    /// Counts shards that finished loading or went, for [`wait_loaded`](Self::wait_loaded).
    loads: watch::Sender<u64>,
}

impl CoordinatorRuntime {
    /// A runtime with no shards yet.
    pub fn new(config: &BrokerConfig) -> CoordinatorRuntime {
        // Bounded so that adding it to the time cannot overflow, whatever the setting says.
        const CHECK_EVERY_MAX_MS: Ms = 24 * 60 * 60 * 1000;
        let check_every_ms = config
            .offsets_retention_check_interval_ms()
            .clamp(1, CHECK_EVERY_MAX_MS);
        CoordinatorRuntime::with_config(config.group_config(), check_every_ms)
    }

    fn with_config(config: GroupConfig, check_every_ms: Ms) -> CoordinatorRuntime {
        CoordinatorRuntime {
            config,
            check_every_ms,
            partition_count: AtomicI32::new(0),
            shards: RwLock::new(HashMap::new()),
            clock: Notify::new(),
            loads: watch::Sender::new(0),
        }
    }

    fn shards(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i32, Arc<Shard>>> {
        self.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shards_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i32, Arc<Shard>>> {
        self.shards.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard `group_id` maps to, if this broker has one.
    fn shard_of(&self, group_id: &str) -> Result<Arc<Shard>, CoordinatorError> {
        let index = partition_for(group_id, self.partition_count.load(Ordering::Relaxed));
        self.shards()
            .get(&index)
            .cloned()
            .ok_or(CoordinatorError::NotCoordinator)
    }

    /// Applies the leadership changes of one metadata change: shards lost are given up, shards
    /// gained start loading.
    pub fn apply(self: &Arc<Self>, changes: ShardChanges) {
        if let Some(n) = changes.partition_count {
            self.partition_count.store(n, Ordering::Relaxed);
        }
        if !(changes.lost.is_empty() && changes.gained.is_empty()) {
            tracing::info!(
                gained = changes.gained.len(),
                lost = changes.lost.len(),
                "group coordinator shards changed"
            );
        }
        for index in changes.lost {
            self.resign(index);
        }
        for (index, partition) in changes.gained {
            self.elect(index, partition);
        }
    }

    /// This broker now leads `__consumer_offsets-{index}`: makes its shard and loads it on a
    /// blocking thread. A shard already loading or loaded from the same replica stays, as
    /// Kafka keeps it across a new leader epoch.
    pub fn elect(self: &Arc<Self>, index: i32, partition: Arc<Partition>) {
        let shard = Arc::new(Shard {
            index,
            partition,
            state: Mutex::new(ShardState::Loading),
            next_tick: AtomicI64::new(Ms::MAX),
        });
        let replaced = {
            let mut shards = self.shards_mut();
            if let Some(current) = shards.get(&index) {
                let failed = matches!(*current.lock(), ShardState::Failed(_));
                if Arc::ptr_eq(&current.partition, &shard.partition) && !failed {
                    return;
                }
            }
            shards.insert(index, shard.clone())
        };
        if let Some(old) = replaced {
            old.unload();
        }
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || {
            // A replay that panics must still end the shard's loading: a shard left Loading
            // would answer COORDINATOR_LOAD_IN_PROGRESS for ever and hold up the start.
            let loaded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.load(&shard)));
            if loaded.is_err() {
                {
                    let mut state = shard.lock();
                    if matches!(*state, ShardState::Loading) {
                        *state = ShardState::Failed("its replay panicked".to_string());
                    }
                }
                tracing::error!(partition = shard.index, "replaying a __consumer_offsets partition panicked; this broker does not coordinate its groups");
                runtime.loads.send_modify(|n| *n += 1);
            }
        });
    }

    /// This broker no longer leads `__consumer_offsets-{index}`: drops its shard, answering the
    /// members waiting on it NOT_COORDINATOR.
    pub fn resign(&self, index: i32) {
        let removed = self.shards_mut().remove(&index);
        if let Some(shard) = removed {
            shard.unload();
            self.loads.send_modify(|n| *n += 1);
        }
    }

    /// Replays the shard's partition into a fresh coordinator and makes the shard active,
    /// unless it was given up meanwhile. Blocking.
    fn load(&self, shard: &Shard) {
        let mut coordinator = Coordinator::new(self.config.clone());
        let replayed = replay_partition(&shard.partition, &mut coordinator, crate::now_ms());
        {
            let mut state = shard.lock();
            if matches!(*state, ShardState::Loading) {
                *state = match replayed {
                    Ok(records) => {
                        let loaded = Loaded {
                            shards: 1,
                            groups: coordinator.group_count(),
                            records,
                        };
                        tracing::debug!(
                            partition = shard.index,
                            groups = loaded.groups,
                            records,
                            "group coordinator shard loaded"
                        );
                        // Due at once: the clock learns its deadlines.
                        shard.next_tick.store(0, Ordering::SeqCst);
                        ShardState::Active {
                            coordinator,
                            loaded,
                        }
                    }
                    Err(e) => {
                        tracing::error!(partition = shard.index, error = %e, "could not load the groups of a __consumer_offsets partition; this broker does not coordinate them");
                        ShardState::Failed(e.to_string())
                    }
                };
            }
        }
        self.clock.notify_one();
        self.loads.send_modify(|n| *n += 1);
    }

    /// Waits until no shard is loading; returns what the shards hold. Fails if a shard could
    /// not be loaded.
    pub async fn wait_loaded(&self) -> Result<Loaded, LoadError> {
        let mut loads = self.loads.subscribe();
        loop {
            loads.borrow_and_update();
            let mut total = Loaded::default();
            let mut loading = false;
            for shard in self.shards().values() {
                match &*shard.lock() {
                    ShardState::Loading => loading = true,
                    ShardState::Active { loaded, .. } => {
                        total.shards += loaded.shards;
                        total.groups += loaded.groups;
                        total.records += loaded.records;
                    }
                    ShardState::Failed(reason) => {
                        return Err(LoadError {
                            partition: shard.index,
                            reason: reason.clone(),
                        })
                    }
                    ShardState::Unloaded => {}
                }
            }
            if !loading {
                return Ok(total);
            }
            // The sender lives as long as `self`.
            let _ = loads.changed().await;
        }
    }

    /// Runs `f` on the coordinator of `group_id`'s shard and performs the effects it returns.
    /// Records are appended while the shard is still locked, so the log holds them in the order
    /// the state changed. Returns `f`'s result and the append to wait on before answering.
    pub fn run<T>(
        &self,
        group_id: &str,
        now: Ms,
        f: impl FnOnce(&mut Coordinator<Responder>) -> (T, Vec<Effect<Responder>>),
    ) -> Result<(T, Option<DurableWait>), CoordinatorError> {
        let shard = self.shard_of(group_id)?;
        self.run_on(&shard, now, f)
    }

    fn run_on<T>(
        &self,
        shard: &Shard,
        now: Ms,
        f: impl FnOnce(&mut Coordinator<Responder>) -> (T, Vec<Effect<Responder>>),
    ) -> Result<(T, Option<DurableWait>), CoordinatorError> {
        let mut answers = Vec::new();
        let mut wait = None;
        let mut tick_by: Option<Ms> = None;
        let mut wake_clock = false;
        let result = {
            let mut state = shard.lock();
            let coordinator = match &mut *state {
                ShardState::Active { coordinator, .. } => coordinator,
                ShardState::Loading => return Err(CoordinatorError::LoadInProgress),
                ShardState::Failed(_) | ShardState::Unloaded => {
                    return Err(CoordinatorError::NotCoordinator)
                }
            };
            let (result, effects) = f(coordinator);
            let mut records: Vec<(Bytes, Option<Bytes>)> = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Join(r, resp) => answers.push((r, Answer::Join(resp))),
                    Effect::Sync(r, resp) => answers.push((r, Answer::Sync(resp))),
                    Effect::Stabilized(s) => tracing::info!(
                        group = %s.group_id,
                        generation = s.generation_id,
                        members = s.members,
                        join_ms = s.join_ms,
                        sync_ms = s.sync_ms,
                        "group stabilized"
                    ),
                    Effect::TickBy(at) => tick_by = Some(tick_by.map_or(at, |t| t.min(at))),
                    Effect::Write(record) => {
                        // A group's records go to the partition of the shard that holds it. That
                        // is the partition the group maps to, unless partitions were added to
                        // `__consumer_offsets` since (Kafka allows it; the group then maps
                        // elsewhere and starts over there, as in Kafka).
                        records.push(record.encode());
                    }
                }
            }
            if !records.is_empty() {
                match append_records(&shard.partition, &records, now) {
                    Ok(end) => wait = Some((shard.partition.clone(), end)),
                    Err(e) => {
                        tracing::error!(partition = shard.index, error = %e, "writing to __consumer_offsets failed")
                    }
                }
            }
            // Under the lock, so the clock's own store after a tick cannot hide this deadline.
            if let Some(at) = tick_by {
                wake_clock = shard.next_tick.fetch_min(at, Ordering::SeqCst) > at;
            }
            result
        };
        if wake_clock {
            self.clock.notify_one();
        }
        answer(answers);
        Ok((result, wait))
    }

    /// Reads the coordinator of `group_id`'s shard without changing it.
    pub fn read<T>(
        &self,
        group_id: &str,
        f: impl FnOnce(&Coordinator<Responder>) -> T,
    ) -> Result<T, CoordinatorError> {
        let shard = self.shard_of(group_id)?;
        let state = shard.lock();
        match &*state {
            ShardState::Active { coordinator, .. } => Ok(f(coordinator)),
            ShardState::Loading => Err(CoordinatorError::LoadInProgress),
            ShardState::Failed(_) | ShardState::Unloaded => Err(CoordinatorError::NotCoordinator),
        }
    }

    /// Reads every active shard, in partition order (ListGroups). COORDINATOR_LOAD_IN_PROGRESS
    /// while any shard is loading, as Kafka answers.
    pub fn read_all<T>(
        &self,
        mut f: impl FnMut(&Coordinator<Responder>) -> T,
    ) -> Result<Vec<T>, CoordinatorError> {
        let mut shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        shards.sort_by_key(|s| s.index);
        let mut out = Vec::with_capacity(shards.len());
        for shard in shards {
            match &*shard.lock() {
                ShardState::Active { coordinator, .. } => out.push(f(coordinator)),
                ShardState::Loading => return Err(CoordinatorError::LoadInProgress),
                ShardState::Failed(_) | ShardState::Unloaded => {}
            }
        }
        Ok(out)
    }

    /// Advances the clock of every shard whose deadline has come to `now`, and notes when each
    /// must tick next: at its earliest deadline, and at least every offsets check interval.
    pub fn tick_due(&self, now: Ms) {
        let due: Vec<Arc<Shard>> = self
            .shards()
            .values()
            .filter(|s| s.next_tick.load(Ordering::SeqCst) <= now)
            .cloned()
            .collect();
        let check_by = now.saturating_add(self.check_every_ms);
        for shard in due {
            let _ = self.run_on(&shard, now, |c| {
                let effects = c.tick(now);
                let next = c.next_deadline().unwrap_or(Ms::MAX).min(check_by);
                shard.next_tick.store(next, Ordering::SeqCst);
                ((), effects)
            });
        }
    }

    /// When the clock must tick next: the earliest shard deadline, as last computed or lowered
    /// by a request.
    pub fn next_tick(&self) -> Ms {
        self.shards()
            .values()
            .map(|s| s.next_tick.load(Ordering::SeqCst))
            .min()
            .unwrap_or(Ms::MAX)
    }

    /// Resolves once a request has set a deadline earlier than its shard's next tick, or a shard
    /// finished loading (at once if that happened since the last call).
    pub async fn clock_lowered(&self) {
        self.clock.notified().await
    }
}

/// Creates `__consumer_offsets` if it does not exist, with Kafka's settings for it.
pub async fn create_offsets_topic(config: &BrokerConfig, topics: &Topics) -> io::Result<()> {
    if topics.get(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    // Compacted, segments of offsets.topic.segment.bytes.
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        (
            "segment.bytes".to_string(),
            config.offsets_topic_segment_bytes().to_string(),
        ),
    ]);
    // offsets.topic.replication.factor, or one replica per live broker in a smaller cluster.
    let live = i16::try_from(topics.live_brokers())
        .unwrap_or(i16::MAX)
        .max(1);
    let replication_factor = config.offsets_topic_replication_factor().min(live);
    let created = topics
        .create_placed(
            OFFSETS_TOPIC,
            config.offsets_topic_partitions(),
            replication_factor,
            Vec::new(),
            configs,
            false,
        )
        .await;
    match created {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::other(
            "creating __consumer_offsets returned nothing",
        )),
        // Another broker of the cluster made it first.
        Err(crate::topics::TopicError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Why a coordinator's write was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("fsync: {0}")]
    Io(#[from] io::Error),
    /// Kafka's code from the partition: its leadership moved, or its ISR shrank below
    /// `min.insync.replicas`.
    #[error("not replicated: error code {0}")]
    Replication(i16),
    #[error("not on every in-sync replica within offsets.commit.timeout.ms")]
    TimedOut,
}

impl CommitError {
    /// Kafka's answer to the request whose write failed: NOT_COORDINATOR if the partition's
    /// leadership moved (the client looks for the new coordinator), else
    /// COORDINATOR_NOT_AVAILABLE; both are retried.
    pub fn code(&self) -> i16 {
        use kafka_protocol::error::ResponseError as E;
        match self {
            CommitError::Replication(code) if *code == E::NotLeaderOrFollower.code() => {
                NOT_COORDINATOR
            }
            _ => E::CoordinatorNotAvailable.code(),
        }
    }
}

/// Waits for the append in `wait`, if any, to be durable here and then on every in-sync
/// replica of its partition (Kafka's coordinator writes with acks=all), for at most `timeout`.
pub async fn wait_committed(
    wait: Option<DurableWait>,
    timeout: std::time::Duration,
) -> Result<(), CommitError> {
    let Some((partition, end)) = wait else {
        return Ok(());
    };
    let committed = async {
        partition.wait_durable(end).await?;
        partition
            .wait_replicated(end)
            .await
            .map_err(CommitError::Replication)
    };
    tokio::time::timeout(timeout, committed)
        .await
        .unwrap_or(Err(CommitError::TimedOut))
}

/// Appends records as one uncompressed batch; returns the log end offset after it.
fn append_records(
    partition: &Partition,
    records: &[(Bytes, Option<Bytes>)],
    now: Ms,
) -> io::Result<i64> {
    let batch = encode_batch(records, now)?;
    partition.append_own(&batch, now)
}

/// `(key, value)` records as one uncompressed batch, as the broker writes its own records.
pub(crate) fn encode_batch(records: &[(Bytes, Option<Bytes>)], now: Ms) -> io::Result<BytesMut> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset minus sequence changes.
            sequence: i as i32 - 1,
            timestamp: now,
            key: Some(key.clone()),
            value: value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(io::Error::other)?;
    Ok(buf)
}

/// Replays one `__consumer_offsets` partition into the coordinator; returns the record count.
fn replay_partition(
    partition: &Partition,
    coordinator: &mut Coordinator<Responder>,
    now: Ms,
) -> io::Result<usize> {
    let (mut offset, end) = {
        let log = partition.log();
        (log.log_start_offset(), log.log_end_offset())
    };
    let mut count = 0;
    while offset < end {
        let plan = partition
            .log()
            .read(offset, 1 << 20, end, true)
            .map_err(io::Error::other)?;
        let Some(plan) = plan else { break };
        let mut bytes = plan.read()?;
        if bytes.is_empty() {
            break;
        }
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("__consumer_offsets-{}: {e}", partition.index),
            )
        })?;
        for set in sets {
            for record in set.records {
                offset = offset.max(record.offset + 1);
                match OffsetsRecord::decode(record.key, record.value) {
                    Ok(r) => {
                        coordinator.replay(r, now);
                        count += 1;
                    }
                    Err(e) => {
                        tracing::warn!(partition = partition.index, offset = record.offset, error = %e, "skipping an unreadable __consumer_offsets record")
                    }
                }
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use caudal_coordinator::{JoinRequest, OffsetCommit};
    use caudal_storage::{LogConfig, PartitionLog};
    use uuid::Uuid;

    use super::*;
    use crate::partition::tests::ready;

    const NOW: Ms = 1_700_000_000_000;
    const CHECK_EVERY_MS: Ms = 60_000;

    fn runtime(partitions: i32) -> Arc<CoordinatorRuntime> {
        let runtime = Arc::new(CoordinatorRuntime::with_config(
            GroupConfig::default(),
            CHECK_EVERY_MS,
        ));
        runtime.apply(ShardChanges {
            partition_count: Some(partitions),
            ..ShardChanges::default()
        });
        runtime
    }

    fn partition(dir: &Path, index: i32) -> Arc<Partition> {
        let (log, _) = PartitionLog::open(
            &dir.join(format!("{OFFSETS_TOPIC}-{index}")),
            LogConfig::default(),
            0,
        )
        .unwrap();
        Partition::start(OFFSETS_TOPIC.into(), Uuid::nil(), index, log)
    }

    /// A group id that maps to `index` of `partitions`.
    fn group_on(index: i32, partitions: i32) -> String {
        (0..)
            .map(|i| format!("group-{i}"))
            .find(|g| partition_for(g, partitions) == index)
            .unwrap()
    }

    fn commit(
        runtime: &CoordinatorRuntime,
        group: &str,
        offset: i64,
    ) -> Result<i16, CoordinatorError> {
        let commits = vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }];
        let (errors, wait) = runtime.run(group, NOW, |c| {
            c.commit_offsets(group, -1, "", None, commits, NOW)
        })?;
        assert!(
            wait.is_some(),
            "a commit is written to the shard's partition"
        );
        Ok(errors[0])
    }

    fn committed(runtime: &CoordinatorRuntime, group: &str) -> Result<Vec<i64>, CoordinatorError> {
        runtime.read(group, |c| {
            c.fetch_offsets(group, None)
                .into_iter()
                .map(|o| o.offset)
                .collect()
        })
    }

    /// A join that waits out the initial rebalance delay.
    fn join(runtime: &CoordinatorRuntime, group: &str) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let req = JoinRequest {
            group_id: group.into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: false,
        };
        runtime
            .run(group, NOW, |c| ((), c.join(req, tx, NOW)))
            .unwrap();
        rx
    }

    #[tokio::test]
    async fn a_gained_shard_loads_its_partition_and_answers_for_its_groups_only() {
        let dir = tempfile::tempdir().unwrap();
        let (p0, p1) = (partition(dir.path(), 0), partition(dir.path(), 1));
        let (g0, g1) = (group_on(0, 2), group_on(1, 2));
        let first = runtime(2);
        first.elect(0, p0.clone());
        first.wait_loaded().await.unwrap();
        assert_eq!(commit(&first, &g0, 42), Ok(0));
        assert_eq!(
            commit(&first, &g1, 7),
            Err(CoordinatorError::NotCoordinator),
            "a group of a partition this broker does not lead"
        );

        // Another runtime gains both partitions: it replays what the first wrote.
        let second = runtime(2);
        second.apply(ShardChanges {
            partition_count: Some(2),
            lost: Vec::new(),
            gained: vec![(0, p0), (1, p1)],
        });
        let loaded = second.wait_loaded().await.unwrap();
        assert_eq!((loaded.shards, loaded.groups), (2, 1), "{loaded:?}");
        assert!(loaded.records >= 1, "{loaded:?}");
        assert_eq!(
            committed(&second, &g0),
            Ok(vec![42]),
            "the commit was replayed"
        );
        assert_eq!(committed(&second, &g1), Ok(vec![]));
        let listed = second.read_all(|c| c.list().len()).unwrap();
        assert_eq!(listed, vec![1, 0], "one group, in partition 0's shard");
    }

    #[tokio::test]
    async fn a_shard_answers_load_in_progress_until_its_partition_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = partition(dir.path(), 0);
        let runtime = runtime(1);
        let group = group_on(0, 1);
        {
            // Holding the log holds the replay.
            let _log = p0.log();
            runtime.elect(0, p0.clone());
            assert_eq!(
                committed(&runtime, &group),
                Err(CoordinatorError::LoadInProgress)
            );
            assert_eq!(
                commit(&runtime, &group, 1),
                Err(CoordinatorError::LoadInProgress)
            );
            assert_eq!(
                runtime.read_all(|_| ()),
                Err(CoordinatorError::LoadInProgress),
                "ListGroups answers the error while a shard loads"
            );
            assert_eq!(
                runtime.next_tick(),
                Ms::MAX,
                "a loading shard is never ticked"
            );
        }
        runtime.wait_loaded().await.unwrap();
        assert_eq!(commit(&runtime, &group, 1), Ok(0));
        assert_eq!(committed(&runtime, &group), Ok(vec![1]));
        assert_eq!(runtime.next_tick(), 0, "a loaded shard ticks at once");
    }

    #[tokio::test]
    async fn a_lost_shard_answers_its_waiting_joins_and_then_every_request_not_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(1);
        let group = group_on(0, 1);
        runtime.elect(0, partition(dir.path(), 0));
        runtime.wait_loaded().await.unwrap();
        let mut waiting = join(&runtime, &group);
        assert!(
            waiting.try_recv().is_err(),
            "the join waits out the initial rebalance delay"
        );
        runtime.apply(ShardChanges {
            partition_count: Some(1),
            lost: vec![0],
            gained: Vec::new(),
        });
        match waiting.await {
            Ok(Answer::Join(j)) => assert_eq!(j.error, NOT_COORDINATOR, "{j:?}"),
            other => panic!("the waiting join was not answered NOT_COORDINATOR: {other:?}"),
        }
        assert_eq!(
            committed(&runtime, &group),
            Err(CoordinatorError::NotCoordinator)
        );
        assert_eq!(
            commit(&runtime, &group, 1),
            Err(CoordinatorError::NotCoordinator)
        );
        assert_eq!(
            runtime.read_all(|_| ()),
            Ok(vec![]),
            "no shard left to list"
        );
        assert_eq!(runtime.wait_loaded().await.unwrap(), Loaded::default());
    }

    #[tokio::test]
    async fn the_clock_ticks_the_shards_that_are_due_and_a_join_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(2);
        runtime.elect(0, partition(dir.path(), 0));
        runtime.elect(1, partition(dir.path(), 1));
        runtime.wait_loaded().await.unwrap();
        runtime.tick_due(NOW);
        assert_eq!(
            runtime.next_tick(),
            NOW + CHECK_EVERY_MS,
            "idle shards tick at the check interval"
        );
        let lowered = runtime.clock_lowered();
        tokio::pin!(lowered);
        assert!(ready(&mut lowered), "the loads woke the clock");

        let group = group_on(0, 2);
        let mut waiting = join(&runtime, &group);
        let lowered = runtime.clock_lowered();
        tokio::pin!(lowered);
        assert!(ready(&mut lowered), "a join's deadline wakes the clock");
        let join_deadline = NOW + GroupConfig::default().initial_rebalance_delay_ms;
        assert_eq!(runtime.next_tick(), join_deadline);

        runtime.tick_due(join_deadline);
        match waiting.try_recv() {
            Ok(Answer::Join(j)) => assert_eq!(j.error, 0, "{j:?}"),
            other => panic!("the join was not answered at its deadline: {other:?}"),
        }
        let next: Vec<Ms> = {
            let shards = runtime.shards();
            let mut next: Vec<_> = shards
                .values()
                .map(|s| (s.index, s.next_tick.load(Ordering::SeqCst)))
                .collect();
            next.sort();
            next.into_iter().map(|(_, t)| t).collect()
        };
        assert_eq!(
            next[1],
            NOW + CHECK_EVERY_MS,
            "the shard that was not due was not ticked"
        );
        assert!(
            next[0] > join_deadline,
            "the ticked shard has a later deadline"
        );
    }
}
