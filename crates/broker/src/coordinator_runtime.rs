//! The group coordinator at run time: one shard per `__consumer_offsets` partition this broker
//! leads (see [`crate::shards`]), each with its own group coordinator state machine. When a
//! shard's leadership goes, the members waiting on it are answered NOT_COORDINATOR. The runtime
//! performs each shard's effects (answers waiting joins and syncs, appends records to the
//! shard's partition) and keeps each shard's next clock deadline for the group clock.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use caudal_coordinator::errors::NOT_COORDINATOR;
use caudal_coordinator::{
    Coordinator, Effect, GroupConfig, JoinResponse, Ms, OffsetsRecord, SyncResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::oneshot;

use crate::config::BrokerConfig;
use crate::partition::Partition;
pub use crate::shards::{CoordinatorError, LoadError, Loaded, ShardChanges};
use crate::shards::{ShardCoordinator, Shards};
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

/// A record's key and value (`None`: a tombstone).
type KeyValue = (Bytes, Option<Bytes>);

/// Offsets below `end` in `partition` must be durable before the request is answered.
pub type DurableWait = (Arc<Partition>, i64);

impl ShardCoordinator for Coordinator<Responder> {
    type Config = GroupConfig;
    const TOPIC: &'static str = OFFSETS_TOPIC;
    const KEYS: &'static str = "groups";

    fn load(config: &GroupConfig, partition: &Partition, now: Ms) -> io::Result<(Self, Loaded)> {
        let mut coordinator = Coordinator::new(config.clone());
        let records = replay_partition(partition, &mut coordinator, now)?;
        let loaded = Loaded {
            shards: 1,
            keys: coordinator.group_count(),
            records,
        };
        Ok((coordinator, loaded))
    }

    /// Members waiting on a join or sync are answered NOT_COORDINATOR.
    fn unload(self) {
        answer(
            Coordinator::unload(self)
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Join(r, resp) => Some((r, Answer::Join(resp))),
                    Effect::Sync(r, resp) => Some((r, Answer::Sync(resp))),
                    _ => None,
                }),
        );
    }
}

type Shard = crate::shards::Shard<Coordinator<Responder>>;

fn answer(answers: impl IntoIterator<Item = (Responder, Answer)>) {
    for (r, answer) in answers {
        // A client that went away leaves nobody to answer.
        let _ = r.send(answer);
    }
}

#[derive(Debug)]
pub struct CoordinatorRuntime {
    /// Every shard ticks at least this often (`offsets.retention.check.interval.ms`), so
    /// committed offsets expire with no member deadline pending.
    check_every_ms: Ms,
    shards: Arc<Shards<Coordinator<Responder>>>,
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
            check_every_ms,
            shards: Arc::new(Shards::new(config)),
        }
    }

    /// Applies the leadership changes of one metadata change: shards lost are given up (their
    /// waiting members answered NOT_COORDINATOR), shards gained start loading.
    pub fn apply(&self, changes: ShardChanges) {
        self.shards.apply(changes);
    }

    /// This broker now leads `__consumer_offsets-{index}`: its shard loads.
    pub fn elect(&self, index: i32, partition: Arc<Partition>) {
        self.shards.elect(index, partition);
    }

    /// This broker no longer leads `__consumer_offsets-{index}`: its shard goes.
    pub fn resign(&self, index: i32) {
        self.shards.resign(index);
    }

    /// Waits until no shard is loading; returns what the shards hold.
    pub async fn wait_loaded(&self) -> Result<Loaded, LoadError> {
        self.shards.wait_loaded().await
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
        let shard = self.shards.shard_of(group_id)?;
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
        let mut failed_txn = false;
        let result = shard.with(|coordinator| {
            let (result, effects) = f(coordinator);
            let mut records: Vec<(Bytes, Option<Bytes>)> = Vec::new();
            // Transactional offset commits, a batch per producer.
            let mut txn_records: BTreeMap<(i64, i16), Vec<KeyValue>> = BTreeMap::new();
            let mut tick_by: Option<Ms> = None;
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
                    Effect::WriteTxn {
                        producer_id,
                        producer_epoch,
                        record,
                    } => txn_records
                        .entry((producer_id, producer_epoch))
                        .or_default()
                        .push(record.encode()),
                }
            }
            for (producer, records) in txn_records {
                let appended = encode_batch(&records, now, Some(producer))
                    .and_then(|batch| shard.partition.append_own(&batch, now));
                match appended {
                    Ok(end) => wait = Some((shard.partition.clone(), end)),
                    Err(e) => {
                        tracing::warn!(partition = shard.index, error = %e, "writing transactional offsets to __consumer_offsets failed");
                        failed_txn = true;
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
                self.shards.tick_by(shard, at);
            }
            result
        })?;
        answer(answers);
        if failed_txn {
            return Err(CoordinatorError::WriteFailed);
        }
        Ok((result, wait))
    }

    /// A transaction marker landed in `__consumer_offsets-{index}`, led here: the offsets its
    /// producer committed in the transaction count now (`commit`), or are dropped.
    pub fn complete_txn(&self, index: i32, producer_id: i64, producer_epoch: i16, commit: bool) {
        let shard = self.shards.all().get(&index).cloned();
        if let Some(shard) = shard {
            let _ = shard
                .with(|c| c.complete_txn(producer_id, producer_epoch, commit, crate::now_ms()));
        }
    }

    /// Reads the coordinator of `group_id`'s shard without changing it.
    pub fn read<T>(
        &self,
        group_id: &str,
        f: impl FnOnce(&Coordinator<Responder>) -> T,
    ) -> Result<T, CoordinatorError> {
        self.shards.shard_of(group_id)?.with(|c| f(c))
    }

    /// Reads every active shard, in partition order (ListGroups). COORDINATOR_LOAD_IN_PROGRESS
    /// while any shard is loading, as Kafka answers.
    pub fn read_all<T>(
        &self,
        mut f: impl FnMut(&Coordinator<Responder>) -> T,
    ) -> Result<Vec<T>, CoordinatorError> {
        let mut out = Vec::new();
        for shard in self.shards.sorted() {
            match shard.with(|c| f(c)) {
                Ok(t) => out.push(t),
                Err(CoordinatorError::LoadInProgress) => {
                    return Err(CoordinatorError::LoadInProgress)
                }
                Err(CoordinatorError::NotCoordinator | CoordinatorError::WriteFailed) => {}
            }
        }
        Ok(out)
    }

    /// Advances the clock of every shard whose deadline has come to `now`, and notes when each
    /// must tick next: at its earliest deadline, and at least every offsets check interval.
    pub fn tick_due(&self, now: Ms) {
        let check_by = now.saturating_add(self.check_every_ms);
        for shard in self.shards.due(now) {
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
        self.shards.next_tick()
    }

    /// Resolves once a request has set a deadline earlier than its shard's next tick, or a shard
    /// finished loading (at once if that happened since the last call).
    pub async fn clock_lowered(&self) {
        self.shards.clock_lowered().await
    }
}

/// Creates `__consumer_offsets` if it does not exist, with Kafka's settings for it.
pub async fn create_offsets_topic(config: &BrokerConfig, topics: &Topics) -> io::Result<()> {
    // Compacted, segments of offsets.topic.segment.bytes.
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        (
            "segment.bytes".to_string(),
            config.offsets_topic_segment_bytes().to_string(),
        ),
    ]);
    create_internal_topic(
        topics,
        OFFSETS_TOPIC,
        config.offsets_topic_partitions(),
        config.offsets_topic_replication_factor(),
        configs,
    )
    .await
}

/// Creates an internal topic if it does not exist, with `replication_factor` replicas or one
/// per live broker in a smaller cluster, as Kafka makes them.
pub(crate) async fn create_internal_topic(
    topics: &Topics,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
) -> io::Result<()> {
    if topics.get(name).is_some() {
        return Ok(());
    }
    let live = i16::try_from(topics.live_brokers())
        .unwrap_or(i16::MAX)
        .max(1);
    let created = topics
        .create_placed(
            name,
            partitions,
            replication_factor.min(live),
            Vec::new(),
            configs,
            false,
        )
        .await;
    match created {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::other(format!(
            "creating {name} returned nothing"
        ))),
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
pub(crate) fn append_records(
    partition: &Partition,
    records: &[(Bytes, Option<Bytes>)],
    now: Ms,
) -> io::Result<i64> {
    let batch = encode_batch(records, now, None)?;
    partition.append_own(&batch, now)
}

/// `(key, value)` records as one uncompressed batch, as the broker writes its own records; in
/// the transaction of `txn` (producer id and epoch, no sequence numbers) if given.
pub(crate) fn encode_batch(
    records: &[(Bytes, Option<Bytes>)],
    now: Ms,
    txn: Option<(i64, i16)>,
) -> io::Result<BytesMut> {
    let (producer_id, producer_epoch) = txn.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: txn.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
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
    replay_records(partition, |record| {
        let (producer_id, producer_epoch) = (record.producer_id, record.producer_epoch);
        if record.control {
            // A transaction's marker: its offsets count now, or never.
            let commit = record
                .key
                .as_ref()
                .and_then(|k| k.get(2..4))
                .is_some_and(|t| t == [0, 1]);
            coordinator.complete_txn(producer_id, producer_epoch, commit, now);
            return true;
        }
        match OffsetsRecord::decode(record.key, record.value) {
            Ok(r) if record.transactional => {
                coordinator.replay_txn(producer_id, producer_epoch, r);
                true
            }
            Ok(r) => {
                coordinator.replay(r, now);
                true
            }
            Err(e) => {
                tracing::warn!(partition = partition.index, offset = record.offset, error = %e, "skipping an unreadable __consumer_offsets record");
                false
            }
        }
    })
}

/// Reads every record of a coordinator's partition, in order, handing each to `f`; returns how
/// many `f` took (it says whether it could read the record).
pub(crate) fn replay_records(
    partition: &Partition,
    mut f: impl FnMut(Record) -> bool,
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
                format!("{}-{}: {e}", partition.topic, partition.index),
            )
        })?;
        for set in sets {
            for record in set.records {
                offset = offset.max(record.offset + 1);
                if f(record) {
                    count += 1;
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
    use caudal_coordinator::partition_for;

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
        assert_eq!((loaded.shards, loaded.keys), (2, 1), "{loaded:?}");
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
            let shards = runtime.shards.all();
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
