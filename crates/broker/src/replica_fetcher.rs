//! A follower's side of replication: one task per leader broker fetches, for every partition
//! this broker follows there, what the leader appended (Kafka's `ReplicaFetcherThread`) and
//! stores it as it is (`PartitionLog::append_as_follower`).
//!
//! Each round waits for everything appended so far to be fsync'd (the partition's group commit)
//! before it reports its log end in the next Fetch, so the leader's high watermark, and with it
//! `acks=all`, covers only what followers hold on disk. A follower told its log diverged
//! truncates to where the leader says; one fetching below the leader's log start starts again
//! there; one that is no longer fetching from the right leader or epoch waits for the image.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, RequestKind, ResponseKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::controller_connection::ControllerConnection;
use crate::partition::Partition;

/// Fetch v15 carries the follower's broker epoch (KIP-903) and is the newest Caudal serves
/// with the fields a follower needs; v16 only adds node endpoints.
const FETCH_VERSION: i16 = 15;

/// How a follower fetches: Kafka's `replica.fetch.*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSettings {
    /// `replica.fetch.wait.max.ms`.
    pub max_wait_ms: i32,
    /// `replica.fetch.min.bytes`.
    pub min_bytes: i32,
    /// `replica.fetch.max.bytes`: per partition.
    pub partition_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: the whole response.
    pub response_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: the pause after a failed round.
    pub backoff: Duration,
}

impl Default for FetchSettings {
    /// Kafka's defaults.
    fn default() -> Self {
        FetchSettings {
            max_wait_ms: 500,
            min_bytes: 1,
            partition_max_bytes: 1 << 20,
            response_max_bytes: 10 << 20,
            backoff: Duration::from_secs(1),
        }
    }
}

impl FetchSettings {
    /// The largest response frame read from a leader: the response bound, and room for a first
    /// batch larger than it (a leader always sends one whole) and the framing.
    fn max_frame(&self) -> usize {
        usize::try_from(self.response_max_bytes)
            .unwrap_or(0)
            .saturating_add(1 << 20)
    }
}

/// A partition this broker follows, and the leader epoch it follows it at.
#[derive(Debug, Clone)]
pub struct Followed {
    pub partition: Arc<Partition>,
    pub leader_epoch: i32,
}

type Partitions = BTreeMap<(Uuid, i32), Followed>;

/// The fetcher of one leader broker. Dropping it stops its task.
#[derive(Debug)]
pub struct Fetcher {
    address: String,
    partitions: Arc<Mutex<Partitions>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetcher {
    /// Starts fetching from the leader at `address` as broker `node_id`; `broker_epoch` gives
    /// this broker's current epoch (-1 before it registered).
    pub fn start(
        address: String,
        node_id: i32,
        settings: FetchSettings,
        broker_epoch: impl Fn() -> i64 + Send + 'static,
    ) -> Fetcher {
        let partitions = Arc::new(Mutex::new(Partitions::new()));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            address.clone(),
            node_id,
            settings,
            broker_epoch,
            partitions.clone(),
            changed.clone(),
        ));
        Fetcher {
            address,
            partitions,
            changed,
            task,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches `followed` from this leader from now on (at its new epoch, if it was already).
    pub fn follow(&self, followed: Followed) {
        let key = (followed.partition.topic_id, followed.partition.index);
        self.locked().insert(key, followed);
        self.changed.notify_one();
    }

    /// Stops fetching the partition; returns whether it was fetched.
    pub fn unfollow(&self, topic_id: Uuid, partition: i32) -> bool {
        self.locked().remove(&(topic_id, partition)).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.locked().is_empty()
    }
}

/// The fetchers of this broker, one per leader it follows partitions of, made and dropped as the
/// metadata image changes.
pub struct ReplicaFetchers {
    node_id: i32,
    /// The leaders' listener to fetch from (`inter.broker.listener.name`).
    listener: String,
    settings: FetchSettings,
    broker_epoch: Arc<dyn Fn() -> i64 + Send + Sync>,
    fetchers: Mutex<std::collections::HashMap<i32, Fetcher>>,
}

impl std::fmt::Debug for ReplicaFetchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaFetchers")
            .field("node_id", &self.node_id)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl ReplicaFetchers {
    pub fn new(
        node_id: i32,
        listener: String,
        settings: FetchSettings,
        broker_epoch: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> ReplicaFetchers {
        ReplicaFetchers {
            node_id,
            listener,
            settings,
            broker_epoch: Arc::new(broker_epoch),
            fetchers: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Follows what `image` says: each local replica that another broker leads is fetched from
    /// that leader (at its address on the inter-broker listener, at the partition's leader
    /// epoch); the rest are not. Call it on the runtime, after the image's replica changes are
    /// applied.
    pub fn update(&self, image: &caudal_metadata::MetadataImage, local: &[Arc<Partition>]) {
        let mut wanted: std::collections::HashMap<i32, (String, Vec<Followed>)> =
            std::collections::HashMap::new();
        for p in local {
            let Some(registration) = image.topic(p.topic_id).and_then(|t| {
                usize::try_from(p.index)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
            }) else {
                continue;
            };
            let leader = registration.leader;
            if leader < 0 || leader == self.node_id {
                continue;
            }
            let Some(endpoint) = image
                .broker(leader)
                .and_then(|b| b.endpoints.iter().find(|e| e.name == self.listener))
            else {
                tracing::warn!(leader, listener = %self.listener, "a partition leader has no endpoint on the inter-broker listener; its partitions are not fetched");
                continue;
            };
            let entry = wanted
                .entry(leader)
                .or_insert_with(|| (format!("{}:{}", endpoint.host, endpoint.port), Vec::new()));
            entry.1.push(Followed {
                partition: p.clone(),
                leader_epoch: registration.leader_epoch,
            });
        }
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        fetchers.retain(|leader, fetcher| {
            wanted
                .get(leader)
                .is_some_and(|(address, _)| address == fetcher.address())
        });
        for (leader, (address, followed)) in wanted {
            let fetcher = fetchers.entry(leader).or_insert_with(|| {
                let epoch = self.broker_epoch.clone();
                Fetcher::start(address, self.node_id, self.settings, move || epoch())
            });
            let keep: std::collections::HashSet<(Uuid, i32)> = followed
                .iter()
                .map(|f| (f.partition.topic_id, f.partition.index))
                .collect();
            fetcher.locked().retain(|key, _| keep.contains(key));
            for f in followed {
                fetcher.follow(f);
            }
        }
    }
}

async fn run(
    address: String,
    node_id: i32,
    settings: FetchSettings,
    broker_epoch: impl Fn() -> i64,
    partitions: Arc<Mutex<Partitions>>,
    changed: Arc<Notify>,
) {
    let mut connection: Option<ControllerConnection> = None;
    let mut correlation_id = 0i32;
    let mut failing = false;
    // The round in which each partition last got records: the order of the next request.
    let mut served: HashMap<(Uuid, i32), u64> = HashMap::new();
    let mut round_no = 0u64;
    loop {
        let wake = changed.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let mut round: Vec<Followed> = partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if round.is_empty() {
            served.clear();
            wake.await;
            continue;
        }
        round_no += 1;
        let followed: std::collections::HashSet<(Uuid, i32)> = round.iter().map(key_of).collect();
        served.retain(|key, _| followed.contains(key));
        fetch_order(&mut round, &served);
        // Report only what is on disk: the fetch offset of each partition is its log end once
        // that is fsync'd (sharing the fsync with the partition's other writers).
        for f in &round {
            let end = f.partition.log().log_end_offset();
            if f.partition.wait_durable(end).await.is_err() {
                tracing::error!(topic = %f.partition.topic, partition = f.partition.index, "a followed partition cannot be made durable; it is not fetched");
            }
        }
        let conn = match &connection {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match ControllerConnection::connect(
                &address,
                format!("caudal-replica-fetcher-{node_id}"),
                settings.max_frame(),
            )
            .await
            {
                Ok(c) => {
                    connection = Some(c.clone());
                    c
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(leader = %address, error = %e, "cannot reach a partition leader; retrying");
                    }
                    tokio::time::sleep(settings.backoff).await;
                    continue;
                }
            },
        };
        correlation_id = correlation_id.wrapping_add(1);
        let request = fetch_request(node_id, broker_epoch(), &round, &settings);
        let answer = conn
            .call_direct(
                ApiKey::Fetch,
                FETCH_VERSION,
                &RequestKind::Fetch(request),
                correlation_id,
            )
            .await;
        let response = match answer {
            Ok(ResponseKind::Fetch(r)) if r.error_code == 0 => r,
            Ok(other) => {
                tracing::debug!(leader = %address, answer = ?other, "a fetch from a leader was refused");
                tokio::time::sleep(settings.backoff).await;
                continue;
            }
            Err(e) => {
                connection = None;
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(leader = %address, error = %e, "fetching from a partition leader failed; retrying");
                }
                tokio::time::sleep(settings.backoff).await;
                continue;
            }
        };
        if std::mem::replace(&mut failing, false) {
            tracing::info!(leader = %address, "fetching from a partition leader again");
        }
        let by_key: HashMap<(Uuid, i32), &Followed> =
            round.iter().map(|f| (key_of(f), f)).collect();
        let mut any_error = false;
        for topic in response.responses {
            for data in topic.partitions {
                let key = (topic.topic_id, data.partition_index);
                let Some(f) = by_key.get(&key) else {
                    continue;
                };
                if data.records.as_ref().is_some_and(|r| !r.is_empty()) {
                    served.insert(key, round_no);
                }
                any_error |= !apply(&f.partition, data);
            }
        }
        if any_error {
            tokio::time::sleep(settings.backoff).await;
        }
    }
}

fn key_of(f: &Followed) -> (Uuid, i32) {
    (f.partition.topic_id, f.partition.index)
}

/// Orders a round's partitions as Kafka's follower does: a partition that got records moves to
/// the back, so partitions that got none, or got them longest ago, are asked for first. A
/// leader fills a response in the order asked until `replica.fetch.response.max.bytes`; in a
/// fixed order the partitions at the end would get nothing while those before them are busy.
fn fetch_order(round: &mut [Followed], served: &HashMap<(Uuid, i32), u64>) {
    round.sort_by_key(|f| served.get(&key_of(f)).copied().unwrap_or(0));
}

/// One Fetch for the round, its partitions in the round's order (grouped by topic, each topic
/// where its first partition comes).
fn fetch_request(
    node_id: i32,
    broker_epoch: i64,
    round: &[Followed],
    settings: &FetchSettings,
) -> FetchRequest {
    let mut topics: Vec<(Uuid, Vec<FetchPartition>)> = Vec::new();
    let mut topic_at: HashMap<Uuid, usize> = HashMap::new();
    for f in round {
        let (fetch_offset, log_start_offset, last_fetched_epoch) = {
            let log = f.partition.log();
            let last_epoch = log.epochs().entries().last().map_or(-1, |e| e.epoch);
            (log.log_end_offset(), log.log_start_offset(), last_epoch)
        };
        let at = *topic_at.entry(f.partition.topic_id).or_insert_with(|| {
            topics.push((f.partition.topic_id, Vec::new()));
            topics.len() - 1
        });
        topics[at].1.push(
            FetchPartition::default()
                .with_partition(f.partition.index)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(fetch_offset)
                .with_last_fetched_epoch(last_fetched_epoch)
                .with_log_start_offset(log_start_offset)
                .with_partition_max_bytes(settings.partition_max_bytes),
        );
    }
    FetchRequest::default()
        .with_replica_state(
            ReplicaState::default()
                .with_replica_id(BrokerId(node_id))
                .with_replica_epoch(broker_epoch),
        )
        .with_max_wait_ms(settings.max_wait_ms)
        .with_min_bytes(settings.min_bytes)
        .with_max_bytes(settings.response_max_bytes)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic_id, partitions)| {
                    FetchTopic::default()
                        .with_topic_id(topic_id)
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// Applies one partition's part of a leader's answer; whether it went without error.
fn apply(partition: &Partition, data: PartitionData) -> bool {
    let now = crate::now_ms();
    let code = data.error_code;
    if code == E::OffsetOutOfRange.code() {
        return out_of_range(partition, &data, now);
    }
    if code != 0 {
        // Not the leader at this epoch (yet), or gone: the image will say what to follow.
        tracing::debug!(topic = %partition.topic, partition = partition.index, code, "a leader refused a follower fetch");
        return false;
    }
    if data.diverging_epoch.epoch >= 0 {
        return truncate_diverged(
            partition,
            data.diverging_epoch.epoch,
            data.diverging_epoch.end_offset,
            now,
        );
    }
    let records = data.records.unwrap_or_default();
    let appended = {
        let mut log = partition.log();
        // Leadership changes under the log lock: once this replica leads, the old leader's
        // answers are not its to store.
        if partition.is_leader() {
            return false;
        }
        log.append_as_follower(&records, now)
    };
    match appended {
        Ok(_) => {
            partition.follow_high_watermark(data.high_watermark);
            true
        }
        Err(e) => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "could not append what the leader sent");
            false
        }
    }
}

/// The leader's log and this one left each other at `epoch`: keep only what both have.
fn truncate_diverged(partition: &Partition, epoch: i32, leader_end: i64, now: i64) -> bool {
    let mut log = partition.log();
    if partition.is_leader() {
        return false;
    }
    let (local_epoch, local_end) = log.end_offset_for_epoch(epoch);
    let target = if local_epoch == epoch {
        local_end.min(leader_end)
    } else if local_epoch >= 0 {
        // An older epoch here: its end, and the next fetch looks again.
        local_end
    } else {
        leader_end
    }
    .min(log.log_end_offset());
    tracing::info!(topic = %partition.topic, partition = partition.index, epoch, target, "truncating where this replica's log left the leader's");
    match log.truncate_to(target, now) {
        Ok(()) => {
            drop(log);
            partition.cap_high_watermark(target);
            true
        }
        Err(e) => {
            tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "truncation failed");
            false
        }
    }
}

/// The fetch offset is outside the leader's log: below its start (start again there) or past
/// its end (this replica has a tail the leader lacks: keep what the leader had committed).
fn out_of_range(partition: &Partition, data: &PartitionData, now: i64) -> bool {
    let mut log = partition.log();
    if partition.is_leader() {
        return false;
    }
    let end = log.log_end_offset();
    let result = if data.log_start_offset > end {
        log.truncate_fully_and_start_at(data.log_start_offset, now)
    } else if data.high_watermark >= 0 && data.high_watermark < end {
        log.truncate_to(data.high_watermark, now)
    } else {
        return false;
    };
    let new_end = log.log_end_offset();
    drop(log);
    partition.cap_high_watermark(new_end);
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "truncation failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use bytes::Bytes;
    use caudal_metadata::PartitionRegistration;
    use caudal_storage::{LogConfig, PartitionLog};

    use super::*;
    use crate::replica_manager::tp;
    use crate::replica_state::ReplicaSettings;
    use crate::{BrokerConfig, Server};

    fn batch(value: &[u8]) -> bytes::BytesMut {
        let record = (
            Bytes::from_static(b"k"),
            Some(Bytes::copy_from_slice(value)),
        );
        crate::coordinator_runtime::encode_batch(&[record], 0, None).unwrap()
    }

    fn append(p: &Partition, value: &[u8]) -> i64 {
        let bytes = batch(value);
        let valid = p.log().validate(&bytes).unwrap();
        p.append(&bytes, valid, crate::now_ms())
            .unwrap()
            .0
            .last_offset
    }

    /// Everything `p` holds, as a fetch would send it.
    fn stored(p: &Partition) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = p.log().log_start_offset();
        loop {
            let plan = p.log().read(offset, 1 << 20, i64::MAX, true).unwrap();
            let Some(plan) = plan else { return out };
            let bytes = plan.read().unwrap();
            for (_, h) in caudal_storage::batch::BatchIter::new(&bytes) {
                offset = h.last_offset() + 1;
            }
            out.extend_from_slice(&bytes);
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_copies_the_leader_over_tcp_and_acks_all_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("leader"));
        let server = Server::bind(config).await.unwrap();
        let broker = server.broker().clone();
        let address = server.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let topic = broker
            .topics
            .create("replicated", 1, BTreeMap::new(), false)
            .await
            .unwrap()
            .unwrap();
        let leader = broker.replicas.get(tp(topic.id, 0)).unwrap();
        let local = broker.config.node_id;
        let epoch = leader.leader_epoch();
        // Replicas beyond the leader are not placed yet: the leader learns of one by hand.
        let registration = PartitionRegistration {
            replicas: vec![local, local + 1],
            isr: vec![local, local + 1],
            leader: local,
            leader_epoch: epoch,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let settings = ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas: 2,
        };
        leader.set_replicas(local, &registration, settings, crate::now_ms());
        let before = leader.log().log_end_offset();
        let mut last = before;
        for i in 0..50 {
            last = append(&leader, format!("v{i}").as_bytes());
        }
        assert_eq!(
            leader.high_watermark(),
            before,
            "nothing is committed without the follower"
        );
        let acked = leader.wait_replicated(last + 1);
        tokio::pin!(acked);

        let (log, _) =
            PartitionLog::open(&dir.path().join("follower"), LogConfig::default(), 0).unwrap();
        let follower = Partition::start("replicated".into(), topic.id, 0, log);
        follower.set_leadership(false, epoch);
        let fetcher = Fetcher::start(address, local + 1, FetchSettings::default(), || -1);
        fetcher.follow(Followed {
            partition: follower.clone(),
            leader_epoch: epoch,
        });
        tokio::time::timeout(Duration::from_secs(20), &mut acked)
            .await
            .expect("acks=all answered once the follower has the batches")
            .unwrap();
        assert_eq!(
            stored(&follower),
            stored(&leader),
            "the follower's log is the leader's"
        );
        assert_eq!(leader.high_watermark(), last + 1);
        assert!(
            follower.log().flushed_offset() > last,
            "reported only once on disk"
        );
        // Later writes follow at once, and the follower learns the high watermark.
        let last = append(&leader, b"later");
        until("the follower has the later write and its commit", || {
            follower.log().log_end_offset() == last + 1 && follower.high_watermark() == last + 1
        })
        .await;
        assert!(fetcher.unfollow(topic.id, 0));
        assert!(fetcher.is_empty());
        let _ = stop.send(());
        let _ = serving.await;
    }

    #[tokio::test]
    async fn partitions_that_got_records_are_asked_for_last() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let followed = |topic: Uuid, index: i32| {
            let path = dir.path().join(format!("{topic}-{index}"));
            let (log, _) = PartitionLog::open(&path, LogConfig::default(), 0).unwrap();
            Followed {
                partition: Partition::start("t".into(), topic, index, log),
                leader_epoch: 3,
            }
        };
        // In the order a fetcher holds them: by topic id, then partition.
        let mut round = vec![followed(a, 0), followed(a, 1), followed(b, 0)];
        let order = |round: &[Followed]| round.iter().map(key_of).collect::<Vec<_>>();

        // Nothing served yet: the held order.
        fetch_order(&mut round, &HashMap::new());
        assert_eq!(order(&round), vec![(a, 0), (a, 1), (b, 0)]);
        // a-0 got records in round 2, a-1 in round 1, b-0 never: b-0, then a-1, then a-0.
        let served = HashMap::from([((a, 0), 2), ((a, 1), 1)]);
        fetch_order(&mut round, &served);
        assert_eq!(order(&round), vec![(b, 0), (a, 1), (a, 0)]);

        // The request keeps that order, each topic where its first partition comes, with the
        // settings' bounds.
        let settings = FetchSettings {
            partition_max_bytes: 8 << 20,
            response_max_bytes: 32 << 20,
            max_wait_ms: 250,
            ..FetchSettings::default()
        };
        let request = fetch_request(7, 11, &round, &settings);
        let asked: Vec<(Uuid, Vec<i32>)> = request
            .topics
            .iter()
            .map(|t| {
                (
                    t.topic_id,
                    t.partitions.iter().map(|p| p.partition).collect(),
                )
            })
            .collect();
        assert_eq!(asked, vec![(b, vec![0]), (a, vec![1, 0])]);
        assert!(request
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .all(|p| { p.partition_max_bytes == 8 << 20 && p.current_leader_epoch == 3 }));
        assert_eq!(
            (request.max_bytes, request.max_wait_ms, request.min_bytes),
            (32 << 20, 250, 1)
        );
        assert_eq!(request.replica_state.replica_id, BrokerId(7));
        assert_eq!(request.replica_state.replica_epoch, 11);
    }
}
