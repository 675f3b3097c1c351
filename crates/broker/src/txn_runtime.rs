//! The transaction coordinator at run time: one shard per `__transaction_state` partition this
//! broker leads (see [`crate::shards`]), each a [`TxnCoordinator`] replayed from its partition.
//!
//! A request runs its coordinator's steps to the end: a fresh producer id is allocated when
//! asked for, and a record to write is appended to the shard's partition and waited for on
//! every in-sync replica (Kafka's coordinator writes with acks=all) before its outcome goes back
//! to the coordinator and the producer is answered. Markers and the records that follow them
//! (the Complete record, retries) run in the background: markers through a [`MarkerWriter`],
//! retried until they are written or the shard goes; a new leader of the partition resumes the
//! transactions it finds prepared. The clock aborts transactions past their timeout and expires
//! idle transactional ids.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use caudal_coordinator::txn::{
    Markers, Reply, Step, TxnConfig, TxnCoordinator, TxnError, TxnMetadata, Write, Written,
};
use caudal_coordinator::txn_records::{decode, encode_key, encode_value, TxnPartition};
use caudal_coordinator::Ms;

use crate::coordinator_runtime::{append_records, replay_records, wait_committed};
use crate::partition::Partition;
use crate::shards::{CoordinatorError, LoadError, Loaded, ShardChanges, ShardCoordinator, Shards};

/// Kafka's name for the topic holding transactions.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Creates `__transaction_state` if it does not exist, with Kafka's settings for it:
/// compacted, `transaction.state.log.*` partitions, replicas, segment size and minimum ISR.
pub async fn create_txn_topic(
    config: &crate::config::BrokerConfig,
    topics: &crate::topics::Topics,
) -> io::Result<()> {
    let replication_factor = config.txn_topic_replication_factor();
    let live = i64::try_from(topics.live_brokers()).unwrap_or(i64::MAX);
    let min_isr = config
        .txn_topic_min_isr()
        .min(i64::from(replication_factor))
        .min(live)
        .max(1);
    let configs = std::collections::BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        (
            "segment.bytes".to_string(),
            config.txn_topic_segment_bytes().to_string(),
        ),
        ("min.insync.replicas".to_string(), min_isr.to_string()),
    ]);
    crate::coordinator_runtime::create_internal_topic(
        topics,
        TXN_TOPIC,
        config.txn_topic_partitions(),
        replication_factor,
        configs,
    )
    .await
}

/// The pause before markers or a record that failed are tried again.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// One `__transaction_state` partition's coordinator, and what a new leader must finish.
#[derive(Debug)]
pub struct TxnShard {
    coordinator: TxnCoordinator,
    /// Transactions found prepared at load: their markers are written at the first tick.
    resume: Vec<Written>,
}

impl ShardCoordinator for TxnShard {
    type Config = TxnConfig;
    const TOPIC: &'static str = TXN_TOPIC;
    const KEYS: &'static str = "transactional ids";

    fn load(config: &TxnConfig, partition: &Partition, now: Ms) -> io::Result<(Self, Loaded)> {
        // Markers carry the leader epoch of this partition, so a partition leader can refuse a
        // deposed coordinator's.
        let mut coordinator = TxnCoordinator::new(TxnConfig {
            coordinator_epoch: partition.leader_epoch(),
            ..*config
        });
        let records = replay_records(partition, |record| {
            let offset = record.offset;
            match decode(record.key, record.value) {
                Ok((id, record)) => {
                    coordinator.replay(&id, record);
                    true
                }
                Err(e) => {
                    tracing::warn!(partition = partition.index, offset, error = %e, "skipping an unreadable __transaction_state record");
                    false
                }
            }
        })?;
        let resume = coordinator.finish_loading(now);
        let loaded = Loaded {
            shards: 1,
            keys: coordinator.iter().count(),
            records,
        };
        Ok((
            TxnShard {
                coordinator,
                resume,
            },
            loaded,
        ))
    }

    /// Nothing waits inside the coordinator: requests wait on their own writes, which fail
    /// once the partition is no longer led here.
    fn unload(self) {}
}

type Shard = crate::shards::Shard<TxnShard>;

/// A boxed future, for the trait object and the recursion between writes and what follows
/// them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why some markers could not be written, and which partitions still lack theirs (they are
/// tried again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("writing transaction markers: {reason}")]
pub struct MarkerError {
    pub pending: Vec<TxnPartition>,
    pub reason: String,
}

/// Writes a transaction's markers to its partitions, wherever they are led.
pub trait MarkerWriter: Send + Sync + std::fmt::Debug {
    /// Resolves once every marker is on every in-sync replica of its partition (a partition
    /// that no longer exists counts as done), or with the partitions still to do.
    fn write(&self, markers: Markers) -> BoxFuture<Result<(), MarkerError>>;
}

#[derive(Debug)]
pub struct TxnRuntime {
    shards: Arc<Shards<TxnShard>>,
    /// How long a record may take to reach every in-sync replica.
    write_timeout: Duration,
    markers: Arc<dyn MarkerWriter>,
    /// How often each shard looks for timed-out transactions and expired ids
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    check_every_ms: Ms,
}

impl TxnRuntime {
    pub fn new(
        config: TxnConfig,
        write_timeout: Duration,
        check_every_ms: Ms,
        markers: Arc<dyn MarkerWriter>,
    ) -> Arc<TxnRuntime> {
        Arc::new(TxnRuntime {
            shards: Arc::new(Shards::new(config)),
            write_timeout,
            markers,
            check_every_ms: check_every_ms.max(1),
        })
    }

    /// Applies the leadership changes of one metadata change.
    pub fn apply(&self, changes: ShardChanges) {
        self.shards.apply(changes);
    }

    pub fn elect(&self, index: i32, partition: Arc<Partition>) {
        self.shards.elect(index, partition);
    }

    pub fn resign(&self, index: i32) {
        self.shards.resign(index);
    }

    pub async fn wait_loaded(&self) -> Result<Loaded, LoadError> {
        self.shards.wait_loaded().await
    }

    /// The `__transaction_state` partition `transactional_id` maps to.
    pub fn partition_of(&self, transactional_id: &str) -> i32 {
        self.shards.partition_of(transactional_id)
    }

    /// A transactional id's state, if this broker coordinates it.
    pub fn describe(&self, transactional_id: &str) -> Result<Option<TxnMetadata>, i16> {
        self.shards
            .shard_of(transactional_id)
            .and_then(|s| s.with(|s| s.coordinator.get(transactional_id).cloned()))
            .map_err(CoordinatorError::code)
    }

    /// Every transactional id this broker coordinates, with its state, in id order;
    /// COORDINATOR_LOAD_IN_PROGRESS while a shard is loading, as Kafka answers.
    pub fn list(&self) -> Result<Vec<(String, TxnMetadata)>, i16> {
        let mut out = Vec::new();
        for shard in self.shards.sorted() {
            match shard.with(|s| {
                s.coordinator
                    .iter()
                    .map(|(id, m)| (id.to_string(), m.clone()))
                    .collect::<Vec<_>>()
            }) {
                Ok(txns) => out.extend(txns),
                Err(CoordinatorError::LoadInProgress) => {
                    return Err(CoordinatorError::LoadInProgress.code())
                }
                Err(_) => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// InitProducerId with a transactional id: the producer's id and epoch.
    pub async fn init_producer_id<F>(
        self: &Arc<Self>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fresh_id: impl Fn() -> F,
    ) -> Result<(i64, i16), i16>
    where
        F: Future<Output = Result<i64, i16>>,
    {
        let reply = self
            .drive(transactional_id, fresh_id, |c, id, now| {
                c.init_producer_id(transactional_id, timeout_ms, expected, id, now)
            })
            .await?;
        match reply {
            Reply::ProducerId {
                producer_id,
                producer_epoch,
            } => Ok((producer_id, producer_epoch)),
            _ => Err(TxnError::CoordinatorNotAvailable.code()),
        }
    }

    /// AddPartitionsToTxn and AddOffsetsToTxn.
    pub async fn add_partitions(
        self: &Arc<Self>,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        partitions: &[TxnPartition],
        client_version: i16,
    ) -> Result<(), i16> {
        let no_ids = || async { Err(TxnError::CoordinatorNotAvailable.code()) };
        self.drive(transactional_id, no_ids, |c, _, now| {
            c.add_partitions(
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
                client_version,
                now,
            )
        })
        .await
        .map(|_| ())
    }

    /// The verify-only AddPartitionsToTxn of KIP-890: whether each partition is in the
    /// transaction.
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        partitions: &[TxnPartition],
    ) -> Result<Vec<Result<(), i16>>, i16> {
        let shard = self
            .shards
            .shard_of(transactional_id)
            .map_err(CoordinatorError::code)?;
        let verified = shard
            .with(|s| {
                s.coordinator.verify_partitions(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    partitions,
                )
            })
            .map_err(CoordinatorError::code)?;
        verified
            .map(|each| {
                each.into_iter()
                    .map(|r| r.map_err(TxnError::code))
                    .collect()
            })
            .map_err(TxnError::code)
    }

    /// EndTxn: answered once the commit or abort is decided (its Prepare record written);
    /// the id and epoch the producer goes on with (-1s for transactions version 1).
    pub async fn end_txn<F>(
        self: &Arc<Self>,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        commit: bool,
        client_version: i16,
        fresh_id: impl Fn() -> F,
    ) -> Result<(i64, i16), i16>
    where
        F: Future<Output = Result<i64, i16>>,
    {
        let reply = self
            .drive(transactional_id, fresh_id, |c, id, now| {
                c.end_txn(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    commit,
                    client_version,
                    id,
                    now,
                )
            })
            .await?;
        match reply {
            Reply::Ended {
                producer_id,
                producer_epoch,
            } => Ok((producer_id, producer_epoch)),
            _ => Err(TxnError::CoordinatorNotAvailable.code()),
        }
    }

    /// Runs a request's steps on its shard to the end.
    async fn drive<F>(
        self: &Arc<Self>,
        transactional_id: &str,
        fresh_id: impl Fn() -> F,
        mut call: impl FnMut(&mut TxnCoordinator, Option<i64>, Ms) -> Step,
    ) -> Result<Reply, i16>
    where
        F: Future<Output = Result<i64, i16>>,
    {
        let shard = self
            .shards
            .shard_of(transactional_id)
            .map_err(CoordinatorError::code)?;
        let mut id = None;
        loop {
            let step = shard
                .with(|s| call(&mut s.coordinator, id.take(), crate::now_ms()))
                .map_err(CoordinatorError::code)?;
            match step {
                Step::Done(reply) => return reply.map_err(TxnError::code),
                Step::NeedProducerId => id = Some(fresh_id().await?),
                Step::Write(write) => {
                    let reply = self.perform(shard, write).await;
                    return reply
                        .unwrap_or(Err(TxnError::CoordinatorNotAvailable))
                        .map_err(TxnError::code);
                }
            }
        }
    }

    /// Writes a record, hands its outcome to the coordinator and starts what follows; the
    /// answer for whoever waits on it.
    fn perform(
        self: &Arc<Self>,
        shard: Arc<Shard>,
        write: Write,
    ) -> BoxFuture<Option<Result<Reply, TxnError>>> {
        let runtime = self.clone();
        Box::pin(async move {
            let key = encode_key(&write.transactional_id);
            let value = write.record.as_ref().map(encode_value);
            let appended = append_records(&shard.partition, &[(key, value)], crate::now_ms());
            let result = match appended {
                Ok(end) => {
                    wait_committed(Some((shard.partition.clone(), end)), runtime.write_timeout)
                        .await
                        .map_err(|e| {
                            if e.code() == CoordinatorError::NotCoordinator.code() {
                                TxnError::NotCoordinator
                            } else {
                                TxnError::CoordinatorNotAvailable
                            }
                        })
                }
                Err(e) => {
                    tracing::debug!(partition = shard.index, error = %e, "writing to __transaction_state failed");
                    Err(TxnError::NotCoordinator)
                }
            };
            let failed = result.is_err();
            let written = shard.with(|s| s.coordinator.written(write, result, crate::now_ms()));
            match written {
                Ok(written) => {
                    let reply = written.reply;
                    runtime.follow_up(&shard, written, failed);
                    reply
                }
                Err(e) => Some(Err(match e {
                    CoordinatorError::NotCoordinator => TxnError::NotCoordinator,
                    CoordinatorError::LoadInProgress | CoordinatorError::WriteFailed => {
                        TxnError::CoordinatorNotAvailable
                    }
                })),
            }
        })
    }

    /// Starts the markers and the record that follow a write, in the background; after a
    /// write that `failed`, the record (its retry) waits a little first.
    fn follow_up(self: &Arc<Self>, shard: &Arc<Shard>, written: Written, failed: bool) {
        if let Some(markers) = written.markers {
            let runtime = self.clone();
            let shard = shard.clone();
            tokio::spawn(async move { runtime.write_markers(shard, markers).await });
        }
        if let Some(then) = written.then {
            let runtime = self.clone();
            let shard = shard.clone();
            tokio::spawn(async move {
                if failed {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                runtime.perform(shard, then).await;
            });
        }
    }

    /// Writes markers until they are written or the shard goes; then the Complete record.
    async fn write_markers(self: Arc<Self>, shard: Arc<Shard>, markers: Markers) {
        let mut pending = markers.clone();
        loop {
            if !self.still_leads(&shard) {
                return;
            }
            match self.markers.write(pending.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(transactional_id = %markers.transactional_id, error = %e, "transaction markers not written yet; retrying");
                    pending.partitions = e.pending;
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
        let complete = shard.with(|s| {
            s.coordinator.markers_written(
                &markers.transactional_id,
                markers.producer_id,
                markers.producer_epoch,
                crate::now_ms(),
            )
        });
        if let Ok(Some(write)) = complete {
            self.perform(shard, write).await;
        }
    }

    fn still_leads(&self, shard: &Arc<Shard>) -> bool {
        self.shards
            .all()
            .get(&shard.index)
            .is_some_and(|current| Arc::ptr_eq(current, shard))
    }

    /// Advances the clock of every shard that is due: resumes what a load found prepared,
    /// aborts transactions past their timeout, expires idle transactional ids.
    pub fn tick_due(self: &Arc<Self>, now: Ms) {
        for shard in self.shards.due(now) {
            let work = shard.with(|s| {
                let resume = std::mem::take(&mut s.resume);
                let writes = s.coordinator.tick(now);
                shard
                    .next_tick
                    .store(now.saturating_add(self.check_every_ms), Ordering::SeqCst);
                (resume, writes)
            });
            let Ok((resume, writes)) = work else { continue };
            for written in resume {
                self.follow_up(&shard, written, false);
            }
            for write in writes {
                let runtime = self.clone();
                let shard = shard.clone();
                tokio::spawn(async move { runtime.perform(shard, write).await });
            }
        }
    }

    /// When the clock must tick next.
    pub fn next_tick(&self) -> Ms {
        self.shards.next_tick()
    }

    /// Resolves once a shard finished loading.
    pub async fn clock_lowered(&self) {
        self.shards.clock_lowered().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicI64};
    use std::sync::Mutex;

    use caudal_coordinator::txn_records::TxnState;
    use caudal_storage::{ControlMarker, LogConfig, PartitionLog};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use uuid::Uuid;

    use super::*;

    fn partition(dir: &Path, topic: &str, index: i32) -> Arc<Partition> {
        let (log, _) = PartitionLog::open(
            &dir.join(format!("{topic}-{index}")),
            LogConfig::default(),
            0,
        )
        .unwrap();
        Partition::start(topic.into(), Uuid::nil(), index, log)
    }

    /// Writes markers to the partitions it was given, as a broker does for those it leads;
    /// fails while told to.
    #[derive(Debug, Default)]
    struct LocalMarkers {
        partitions: Mutex<HashMap<TxnPartition, Arc<Partition>>>,
        failing: AtomicBool,
    }

    impl MarkerWriter for LocalMarkers {
        fn write(&self, m: Markers) -> BoxFuture<Result<(), MarkerError>> {
            if self.failing.load(Ordering::SeqCst) {
                return Box::pin(std::future::ready(Err(MarkerError {
                    pending: m.partitions,
                    reason: "told to fail".into(),
                })));
            }
            let map = self.partitions.lock().unwrap();
            let targets: Vec<Arc<Partition>> = m
                .partitions
                .iter()
                .filter_map(|p| map.get(p).cloned())
                .collect();
            Box::pin(async move {
                let marker = ControlMarker {
                    commit: m.committed,
                    coordinator_epoch: m.coordinator_epoch,
                };
                let failed = |reason: String| MarkerError {
                    pending: m.partitions.clone(),
                    reason,
                };
                for p in targets {
                    let end = p
                        .append_marker(m.producer_id, m.producer_epoch, marker, crate::now_ms())
                        .map_err(|e| failed(e.to_string()))?;
                    wait_committed(Some((p, end)), Duration::from_secs(5))
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                }
                Ok(())
            })
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        state: Arc<Partition>,
        orders: Arc<Partition>,
        markers: Arc<LocalMarkers>,
        runtime: Arc<TxnRuntime>,
        ids: Arc<AtomicI64>,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let state = partition(dir.path(), TXN_TOPIC, 0);
        let orders = partition(dir.path(), "orders", 0);
        let markers = Arc::new(LocalMarkers::default());
        markers
            .partitions
            .lock()
            .unwrap()
            .insert(("orders".to_string(), 0), orders.clone());
        let runtime = TxnRuntime::new(
            TxnConfig::default(),
            Duration::from_secs(5),
            10_000,
            markers.clone(),
        );
        runtime.apply(ShardChanges {
            partition_count: Some(1),
            ..ShardChanges::default()
        });
        runtime.elect(0, state.clone());
        runtime.wait_loaded().await.unwrap();
        Setup {
            _dir: dir,
            state,
            orders,
            markers,
            runtime,
            ids: Arc::new(AtomicI64::new(1000)),
        }
    }

    impl Setup {
        async fn init(&self, timeout_ms: i32) -> (i64, i16) {
            let ids = self.ids.clone();
            let fresh = move || {
                let ids = ids.clone();
                async move { Ok(ids.fetch_add(1, Ordering::SeqCst)) }
            };
            self.runtime
                .init_producer_id("app", timeout_ms, None, fresh)
                .await
                .unwrap()
        }

        async fn end(&self, p: (i64, i16), commit: bool) -> Result<(i64, i16), i16> {
            let none = || async { Err(-1) };
            self.runtime.end_txn("app", p, commit, 0, none).await
        }

        /// A transactional batch of `p` to orders-0, after adding the partition.
        async fn produce(&self, p: (i64, i16), sequence: i32) {
            let orders = [("orders".to_string(), 0)];
            self.runtime
                .add_partitions("app", p, &orders, 0)
                .await
                .unwrap();
            let record = Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: p.0,
                producer_epoch: p.1,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence,
                timestamp: crate::now_ms(),
                key: None,
                value: Some(bytes::Bytes::from_static(b"in a transaction")),
                headers: Default::default(),
            };
            let mut buf = bytes::BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(&mut buf, [&record], &options).unwrap();
            self.orders.append_own(&buf, crate::now_ms()).unwrap();
        }

        fn state(&self) -> Option<TxnState> {
            self.runtime
                .describe("app")
                .unwrap()
                .map(|m| m.record.state)
        }

        async fn until(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !done(self) {
                assert!(tokio::time::Instant::now() < deadline, "never: {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[tokio::test]
    async fn a_commit_writes_its_markers_and_a_new_leader_finds_it_complete() {
        let s = setup().await;
        let p = s.init(60_000).await;
        assert_eq!(p, (1000, 0));
        s.produce(p, 0).await;
        assert_eq!(s.orders.log().first_open_txn_offset(), Some(0));
        assert_eq!(s.end(p, true).await, Ok((-1, -1)));
        s.until("the transaction completes", |s| {
            s.state() == Some(TxnState::CompleteCommit)
        })
        .await;
        assert_eq!(s.orders.log().first_open_txn_offset(), None);
        assert_eq!(s.orders.log().aborted_txns(0, i64::MAX), vec![]);
        // The next leader of the partition replays it.
        s.runtime.resign(0);
        assert_eq!(
            s.runtime.describe("app"),
            Err(CoordinatorError::NotCoordinator.code())
        );
        s.runtime.elect(0, s.state.clone());
        s.runtime.wait_loaded().await.unwrap();
        assert_eq!(s.state(), Some(TxnState::CompleteCommit));
        assert_eq!(
            s.init(60_000).await,
            (1000, 1),
            "the next producer is fenced in"
        );
    }

    #[tokio::test]
    async fn markers_a_coordinator_could_not_write_are_written_by_the_next_one() {
        let s = setup().await;
        let p = s.init(60_000).await;
        s.produce(p, 0).await;
        s.markers.failing.store(true, Ordering::SeqCst);
        assert_eq!(s.end(p, false).await, Ok((-1, -1)), "answered once decided");
        assert_eq!(s.state(), Some(TxnState::PrepareAbort));
        // Another producer must wait for the abort to finish.
        let ids = s.ids.clone();
        let fresh = move || {
            let ids = ids.clone();
            async move { Ok(ids.fetch_add(1, Ordering::SeqCst)) }
        };
        assert_eq!(
            s.runtime.init_producer_id("app", 60_000, None, fresh).await,
            Err(TxnError::ConcurrentTransactions.code())
        );
        s.runtime.resign(0);
        s.runtime.elect(0, s.state.clone());
        s.runtime.wait_loaded().await.unwrap();
        assert_eq!(s.state(), Some(TxnState::PrepareAbort));
        s.markers.failing.store(false, Ordering::SeqCst);
        s.runtime.tick_due(crate::now_ms());
        s.until("the abort completes", |s| {
            s.state() == Some(TxnState::CompleteAbort)
        })
        .await;
        let aborted = s.orders.log().aborted_txns(0, i64::MAX);
        assert_eq!(aborted.len(), 1);
        assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (p.0, 0));
    }

    #[tokio::test]
    async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
        let s = setup().await;
        let p = s.init(1_000).await;
        s.produce(p, 0).await;
        s.runtime.tick_due(crate::now_ms());
        assert_eq!(s.state(), Some(TxnState::Ongoing), "not yet");
        s.runtime.tick_due(crate::now_ms() + 60_000);
        s.until("the abort completes", |s| {
            s.state() == Some(TxnState::CompleteAbort)
        })
        .await;
        assert_eq!(s.orders.log().first_open_txn_offset(), None);
        assert_eq!(s.orders.log().aborted_txns(0, i64::MAX).len(), 1);
        let orders = [("orders".to_string(), 0)];
        assert_eq!(
            s.runtime.add_partitions("app", p, &orders, 0).await,
            Err(TxnError::ProducerFenced.code())
        );
    }
}
