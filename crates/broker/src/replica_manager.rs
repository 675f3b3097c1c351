//! The partitions this broker keeps a replica of, keyed by topic id and partition, as Kafka's
//! replica manager keeps them. Handlers reach a log only through here, and only a replica that
//! leads serves clients: a partition this broker holds no leading replica of is
//! NOT_LEADER_OR_FOLLOWER, which tells a client to refresh its metadata and go to the leader.
//!
//! The topic list of this node feeds it today (every partition local, every replica a leader);
//! the cluster's metadata image feeds it once brokers run on the controller quorum
//! ([`ReplicaManager::apply_changes`], [`ReplicaManager::load_from_image`]). The
//! background work on local logs (retention, compaction, the clean stop) lives here too, since it
//! concerns the replicas this broker keeps, whatever topics the cluster has.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use caudal_metadata::image::{ConfigResource, MetadataImage, PartitionRegistration};
pub use caudal_metadata::{LocalReplicaChanges, TopicIdPartition};
use caudal_storage::{Disk, PartitionLog};
use kafka_protocol::error::ResponseError as E;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::partition_dirs::{
    self, create_partition_dir, open_existing_log, partition_dir, read_partition_metadata,
    set_aside, write_partition_metadata,
};
use crate::replica_state::ReplicaSettings;

/// What opening the logs of new local replicas needs.
#[derive(Debug, Clone)]
pub struct LogContext<'a> {
    /// The data directory, this broker's id, and the defaults topic configs override.
    pub config: &'a BrokerConfig,
    /// Where the logs keep their files, with the broker's budget of open files.
    pub disk: Arc<dyn Disk>,
    pub now_ms: i64,
}

/// The ISR rules of topic `topic_id`: its `min.insync.replicas` over the broker's.
fn replica_settings(
    image: &MetadataImage,
    topic_id: Uuid,
    config: &BrokerConfig,
) -> ReplicaSettings {
    let no_overrides = BTreeMap::new();
    let overrides = image
        .topic(topic_id)
        .and_then(|t| image.config(&ConfigResource::topic(&t.name)))
        .unwrap_or(&no_overrides);
    config.replica_settings(overrides)
}

/// What [`ReplicaManager::apply_changes`] did, by partition.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Replicas opened from the directory they had.
    pub opened: Vec<TopicIdPartition>,
    /// Replicas made in a new directory.
    pub created: Vec<TopicIdPartition>,
    /// Replicas given up, their directories set aside to be removed.
    pub deleted: Vec<TopicIdPartition>,
    /// Replicas that could not be opened or made: they stay absent, so clients get
    /// NOT_LEADER_OR_FOLLOWER and Metadata reports them offline.
    pub failed: Vec<(TopicIdPartition, ReplicaError)>,
}

/// Why a local replica could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the metadata image has no topic {0}")]
    UnknownTopic(Uuid),
    #[error("{}: something other than a directory is in the way", .0.display())]
    NotADirectory(PathBuf),
    #[error("setting aside {}, which belongs to another topic: {source}", .path.display())]
    SetAside { path: PathBuf, source: io::Error },
    #[error("creating {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("opening {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
}

#[derive(Debug, Default)]
pub struct ReplicaManager {
    replicas: RwLock<HashMap<TopicIdPartition, Arc<Partition>>>,
    /// Why the last replica of a topic that could not be opened or made failed, by topic id:
    /// what a creation that is undone reports.
    failures: std::sync::Mutex<HashMap<Uuid, String>>,
}

impl ReplicaManager {
    pub fn new() -> ReplicaManager {
        ReplicaManager::default()
    }

    /// Why a replica of topic `topic_id` could not be opened or made, if one could not.
    pub fn failure(&self, topic_id: Uuid) -> Option<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&topic_id)
            .cloned()
    }

    /// The local replica of a partition, leader or not.
    pub fn get(&self, tp: TopicIdPartition) -> Option<Arc<Partition>> {
        self.read().get(&tp).cloned()
    }

    /// The local replica of a partition if it leads; NOT_LEADER_OR_FOLLOWER otherwise, for a
    /// partition the cluster has but whose leader is elsewhere (or nowhere).
    pub fn leader(&self, tp: TopicIdPartition) -> Result<Arc<Partition>, i16> {
        self.get(tp)
            .filter(|p| p.is_leader())
            .ok_or(E::NotLeaderOrFollower.code())
    }

    /// The local replica of a partition, leader or follower; NOT_LEADER_OR_FOLLOWER where this
    /// broker keeps none.
    pub fn local(&self, tp: TopicIdPartition) -> Result<Arc<Partition>, i16> {
        self.get(tp).ok_or(E::NotLeaderOrFollower.code())
    }

    /// Takes over opened replicas (tests build them by hand; the broker opens replicas from the
    /// metadata image).
    #[cfg(test)]
    pub(crate) fn add(&self, partitions: impl IntoIterator<Item = Arc<Partition>>) {
        let mut replicas = self.write();
        for p in partitions {
            replicas.insert(tp(p.topic_id, p.index), p);
        }
    }

    /// Every local replica, ordered by topic name and partition (stable log output).
    pub fn all(&self) -> Vec<Arc<Partition>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| (&a.topic, a.index).cmp(&(&b.topic, b.index)));
        all
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicIdPartition, Arc<Partition>>> {
        self.replicas.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicIdPartition, Arc<Partition>>> {
        self.replicas.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the local replicas in line with a delta of the metadata image: `changes` is what
    /// the delta meant for this broker (`MetadataDelta::local_changes`), `image` the image it
    /// built. Deleted replicas go first (so a topic re-created under the same name finds its
    /// directory free), then each replica this broker leads or follows is opened or made if it
    /// is not local yet and gets its leadership and epoch. Failures are logged and reported,
    /// never fatal: the replica stays absent. Does file work: call it on a blocking thread of
    /// the runtime (the partitions' flushers are spawned on it).
    pub fn apply_changes(
        &self,
        image: &MetadataImage,
        changes: &LocalReplicaChanges,
        ctx: &LogContext<'_>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let removed: Vec<_> = {
            let mut replicas = self.write();
            changes
                .deleted
                .iter()
                .filter_map(|(id, _)| replicas.remove(id))
                .collect()
        };
        partition_dirs::delete_partitions(&removed, "the replica was deleted");
        if !changes.deleted.is_empty() {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            for (id, _) in &changes.deleted {
                failures.remove(&id.topic_id);
            }
        }
        for p in &removed {
            // Wakes the fetches waiting on it, which find the log retired.
            p.become_follower();
            tracing::debug!(topic = %p.topic, partition = p.index, "deleted local replica");
            report.deleted.push(tp(p.topic_id, p.index));
        }
        let wanted = changes.leaders.iter().map(|c| (c, true));
        for ((id, registration), leader) in
            wanted.chain(changes.followers.iter().map(|c| (c, false)))
        {
            let settings = replica_settings(image, id.topic_id, ctx.config);
            if let Some(p) = self.get(*id) {
                p.set_leadership(leader, registration.leader_epoch);
                p.set_replicas(ctx.config.node_id, registration, settings, ctx.now_ms);
                continue;
            }
            match self.open_replica(image, *id, ctx) {
                Ok((p, created)) => {
                    if registration.replicas.len() > 1 {
                        // Opened from disk, the log's end is not known to be on the other
                        // replicas: what consumers may read is learnt again from them.
                        p.forget_high_watermark();
                    }
                    p.set_leadership(leader, registration.leader_epoch);
                    p.set_replicas(ctx.config.node_id, registration, settings, ctx.now_ms);
                    log_new_replica(&p, registration, leader, created);
                    self.write().insert(*id, p);
                    if created {
                        report.created.push(*id)
                    } else {
                        report.opened.push(*id)
                    }
                }
                Err(e) => {
                    tracing::error!(topic_id = %id.topic_id, partition = id.partition, error = %e, "could not open or make a local replica; it is offline on this broker");
                    self.failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.topic_id, e.to_string());
                    report.failed.push((*id, e));
                }
            }
        }
        report
    }

    /// Opens every replica `image` gives this broker (`config.node_id`), at start. Directories
    /// a crash left half-made or half-deleted are removed first. Strays are not set aside
    /// here: the image may be stale until the broker has caught up with the metadata log, so
    /// the caller does that later ([`ReplicaManager::set_aside_strays`]).
    pub fn load_from_image(&self, image: &MetadataImage, ctx: &LogContext<'_>) -> ApplyReport {
        partition_dirs::remove_leftover_dirs(
            &ctx.config.data_dir,
            &[
                partition_dirs::DELETED_SUFFIX,
                partition_dirs::UNFINISHED_SUFFIX,
            ],
        );
        let changes = image.local_replicas(ctx.config.node_id);
        self.apply_changes(image, &changes, ctx)
    }

    /// Sets aside as `-stray` the partition directories that `image` gives this broker
    /// (`config.node_id`) no replica of, or that carry another topic's id; returns how many.
    /// Only with an image the broker has caught up to: a stale one would exile live data. A
    /// directory whose replica is open here is never set aside.
    pub fn set_aside_strays(&self, image: &MetadataImage, config: &BrokerConfig) -> usize {
        let open: HashMap<(String, i32), Uuid> = self
            .all()
            .into_iter()
            .map(|p| ((p.topic.clone(), p.index), p.topic_id))
            .collect();
        partition_dirs::set_aside_strays(&config.data_dir, |topic, index| {
            if let Some(id) = open.get(&(topic.to_string(), index)) {
                return Some(*id);
            }
            image
                .topic_by_name(topic)
                .filter(|t| {
                    t.partition(index)
                        .is_some_and(|p| p.replicas.contains(&config.node_id))
                })
                .map(|t| t.id)
        })
    }

    /// Recomputes the log settings of every local replica of `topics` (`(topic id, name)`, as
    /// `MetadataImage::topic_config_changes_since` lists them) from `image`'s overrides and
    /// `config`'s defaults, and sets them on the open logs: a topic config altered after its
    /// logs were opened takes effect without a restart. Returns how many logs changed.
    pub fn apply_topic_configs(
        &self,
        image: &MetadataImage,
        topics: &[(Uuid, String)],
        config: &BrokerConfig,
    ) -> usize {
        let no_overrides = BTreeMap::new();
        let wanted: HashMap<Uuid, (caudal_storage::LogConfig, ReplicaSettings)> = topics
            .iter()
            .map(|(topic_id, name)| {
                // The image's name for the id, should the caller's be stale.
                let name = image.topic(*topic_id).map_or(name.as_str(), |t| &t.name);
                let overrides = image
                    .config(&ConfigResource::topic(name))
                    .unwrap_or(&no_overrides);
                let settings = (
                    config.log_config(overrides),
                    config.replica_settings(overrides),
                );
                (*topic_id, settings)
            })
            .collect();
        let affected: Vec<Arc<Partition>> = self
            .read()
            .values()
            .filter(|p| wanted.contains_key(&p.topic_id))
            .cloned()
            .collect();
        let mut changed = 0;
        for p in affected {
            let Some((log_config, replica_settings)) = wanted.get(&p.topic_id) else {
                continue;
            };
            p.set_replica_settings(*replica_settings);
            let mut log = p.log();
            if log.config() != log_config {
                tracing::info!(topic = %p.topic, partition = p.index, config = ?log_config, "topic config changed; applied to the open log");
                log.set_config(log_config.clone());
                changed += 1;
            }
        }
        changed
    }

    /// Opens the existing directory of a replica, or makes a new one; `true` if made.
    fn open_replica(
        &self,
        image: &MetadataImage,
        id: TopicIdPartition,
        ctx: &LogContext<'_>,
    ) -> Result<(Arc<Partition>, bool), ReplicaError> {
        let topic = image
            .topic(id.topic_id)
            .ok_or(ReplicaError::UnknownTopic(id.topic_id))?;
        let no_overrides = BTreeMap::new();
        let overrides = image
            .config(&ConfigResource::topic(&topic.name))
            .unwrap_or(&no_overrides);
        let log_config = ctx.config.log_config(overrides);
        let dir = partition_dir(&ctx.config.data_dir, &topic.name, id.partition);
        let open_err = |source| ReplicaError::Open {
            path: dir.clone(),
            source,
        };
        let existing = match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => true,
            Ok(_) => return Err(ReplicaError::NotADirectory(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(open_err(e)),
        };
        if existing {
            match read_partition_metadata(&dir) {
                Some(owner) if owner != id.topic_id => {
                    set_aside(
                        &dir,
                        "stray",
                        "it belongs to an earlier topic of the same name",
                    )
                    .map_err(|source| ReplicaError::SetAside {
                        path: dir.clone(),
                        source,
                    })?;
                }
                owner => {
                    if owner.is_none() {
                        // Made before directories carried their topic's id: adopt it.
                        write_partition_metadata(&dir, id.topic_id).map_err(open_err)?;
                    }
                    let log = open_existing_log(
                        &ctx.disk,
                        &dir,
                        log_config,
                        ctx.now_ms,
                        &topic.name,
                        id.partition,
                    )
                    .map_err(open_err)?;
                    let p = Partition::start(topic.name.clone(), id.topic_id, id.partition, log);
                    return Ok((p, false));
                }
            }
        }
        let create_err = |source| ReplicaError::Create {
            path: dir.clone(),
            source,
        };
        create_partition_dir(&dir, id.topic_id).map_err(create_err)?;
        match PartitionLog::open_on(ctx.disk.clone(), &dir, log_config, ctx.now_ms) {
            Ok((log, _)) => {
                let p = Partition::start(topic.name.clone(), id.topic_id, id.partition, log);
                Ok((p, true))
            }
            Err(e) => {
                // Nothing was written to it yet: leave no directory behind.
                let _ = fs::remove_dir_all(&dir);
                Err(create_err(e))
            }
        }
    }

    /// Syncs and checkpoints every replica (clean shutdown). Two syncs of the whole filesystem
    /// holding `data_dir` cover every log, instead of several fsyncs per partition: with
    /// thousands of partitions that is the difference between a stop in a second and one in a
    /// minute. True when every log was synced and checkpointed: the stop was clean.
    pub fn close_all(&self, data_dir: &Path) -> bool {
        let partitions = self.all();
        let mut prepared = Vec::with_capacity(partitions.len());
        for p in &partitions {
            match p.log().prepare_close() {
                Ok(up_to) => prepared.push((p, up_to)),
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing the log failed")
                }
            }
        }
        if let Err(e) = sync_filesystem(data_dir) {
            // Nothing is checkpointed: the next start recovers every log from its files.
            tracing::error!(dir = %data_dir.display(), error = %e, "syncing the data directory failed; logs are not checkpointed");
            return false;
        }
        let mut clean = prepared.len() == partitions.len();
        for (p, up_to) in prepared {
            if let Err(e) = p.log().checkpoint_synced(up_to) {
                clean = false;
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "checkpointing the log failed");
            }
        }
        if let Err(e) = sync_filesystem(data_dir) {
            tracing::error!(dir = %data_dir.display(), error = %e, "syncing the recovery checkpoints failed");
            return false;
        }
        clean
    }

    /// Compacts every replica of a compacted topic that needs it. Each pass is planned and
    /// swapped in under the log's lock, but built without it, so producers and consumers of
    /// the partition carry on while its segments are rewritten.
    pub fn compact(&self, now_ms: i64) {
        for p in self.all() {
            let plan = p.log().compaction_plan(now_ms);
            let Some(plan) = plan else { continue };
            let pass = plan
                .build()
                .and_then(|cleaned| p.log().finish_compaction(cleaned, now_ms));
            match pass {
                Ok(Some(r)) => tracing::info!(
                    topic = %p.topic,
                    partition = p.index,
                    records_removed = r.records_removed,
                    segments = format!("{} -> {}", r.segments_before, r.segments_after),
                    bytes = format!("{} -> {}", r.bytes_before, r.bytes_after),
                    "compacted"
                ),
                Ok(None) => {
                    tracing::debug!(topic = %p.topic, partition = p.index, "segments changed during compaction; compacting again at the next pass")
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed; retrying later")
                }
            }
        }
    }

    /// Applies retention to every replica of a topic that deletes old segments, and forgets
    /// idempotent producers silent for a day (Kafka's `producer.id.expiration.ms`).
    pub fn apply_retention(&self, now_ms: i64) {
        const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
        for p in self.all() {
            p.log().expire_producers(now_ms, PRODUCER_ID_EXPIRATION_MS);
            if p.log().config().compact {
                continue;
            }
            match p.log().apply_retention(now_ms) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted old segments")
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }
}

fn log_new_replica(
    p: &Partition,
    registration: &PartitionRegistration,
    leader: bool,
    created: bool,
) {
    tracing::debug!(
        topic = %p.topic,
        partition = p.index,
        leader_epoch = registration.leader_epoch,
        role = if leader { "leader" } else { "follower" },
        directory = if created { "made" } else { "opened" },
        "local replica"
    );
}

pub fn tp(topic_id: Uuid, partition: i32) -> TopicIdPartition {
    TopicIdPartition {
        topic_id,
        partition,
    }
}

/// Flushes everything written to the filesystem holding `dir` (Linux `syncfs`, which reports
/// write-back errors since 5.8).
fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = fs::File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use caudal_metadata::records::{LeaderChange, MetadataRecord};
    use caudal_metadata::{MetadataDelta, Provenance};
    use caudal_storage::{BatchHeader, LogConfig, LogFile, OsDisk, PartitionLog};

    use super::*;
    use crate::partition::tests::ready;

    fn replica(dir: &Path, topic_id: Uuid, index: i32) -> Arc<Partition> {
        let (log, _) =
            PartitionLog::open(&dir.join(format!("t-{index}")), LogConfig::default(), 0).unwrap();
        Partition::start("t".into(), topic_id, index, log)
    }

    #[tokio::test]
    async fn only_a_local_leading_replica_serves_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (id, other_topic) = (Uuid::new_v4(), Uuid::new_v4());
        let replicas = ReplicaManager::new();
        replicas.add([replica(dir.path(), id, 0), replica(dir.path(), id, 1)]);
        let not_leader = Err(E::NotLeaderOrFollower.code());

        let leading = replicas.leader(tp(id, 0)).unwrap();
        assert_eq!((leading.topic_id, leading.index), (id, 0));
        // Same index, another topic (a deleted one's id, say): not this replica.
        assert_eq!(
            replicas.leader(tp(other_topic, 0)).map(|p| p.index),
            not_leader
        );
        assert_eq!(replicas.leader(tp(id, 2)).map(|p| p.index), not_leader);

        replicas.get(tp(id, 1)).unwrap().become_follower();
        assert_eq!(
            replicas.leader(tp(id, 1)).map(|p| p.index),
            not_leader,
            "a follower replica served a client"
        );
        assert!(replicas.get(tp(id, 1)).is_some());
    }

    const ME: i32 = 1;

    /// A metadata log replayed into images, one delta per step, as the broker's loader does.
    struct Metadata {
        image: Arc<MetadataImage>,
        index: u64,
    }

    impl Metadata {
        fn new() -> Metadata {
            Metadata {
                image: Arc::new(MetadataImage::empty()),
                index: 0,
            }
        }

        /// Applies one entry; returns what it means for this broker's replicas.
        fn step(&mut self, records: &[MetadataRecord]) -> LocalReplicaChanges {
            let mut delta = MetadataDelta::new(self.image.clone());
            for record in records {
                self.index += 1;
                let at = Provenance {
                    index: self.index,
                    term: 1,
                };
                delta.replay(record, at).unwrap();
            }
            let changes = delta.local_changes(ME);
            self.image = Arc::new(delta.apply());
            changes
        }
    }

    /// A topic whose partitions all have `replicas`, led by the first of them at epoch 0.
    fn topic(name: &str, id: Uuid, partitions: i32, replicas: &[i32]) -> Vec<MetadataRecord> {
        let mut records = vec![MetadataRecord::Topic {
            v: 0,
            name: name.into(),
            topic_id: id,
        }];
        records.extend((0..partitions).map(|partition| MetadataRecord::Partition {
            v: 0,
            topic_id: id,
            partition,
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas[0],
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
        }));
        records
    }

    fn move_leader(id: Uuid, partition: i32, to: i32) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            v: 0,
            topic_id: id,
            partition,
            leader: LeaderChange::To(to),
            isr: None,
            replicas: None,
            elr: None,
        }
    }

    fn config(dir: &Path) -> BrokerConfig {
        BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf())
    }

    fn ctx(config: &BrokerConfig) -> LogContext<'_> {
        LogContext {
            config,
            disk: Arc::new(OsDisk),
            now_ms: 0,
        }
    }

    /// Appends one record; returns its offset.
    fn append(p: &Partition) -> i64 {
        let bytes =
            crate::coordinator_runtime::encode_batch(&[(Bytes::from_static(b"k"), None)], 0, None)
                .unwrap();
        let valid = p.log().validate(&bytes).unwrap();
        p.append(&bytes, valid, 0).unwrap().0.base_offset
    }

    /// The partition leader epoch stamped on the batch at `offset`.
    fn stamped_epoch(p: &Partition, offset: i64) -> i32 {
        let plan = p
            .log()
            .read(offset, 1 << 20, i64::MAX, true)
            .unwrap()
            .unwrap();
        let bytes = plan.read().unwrap();
        BatchHeader::parse(&bytes).unwrap().partition_leader_epoch()
    }

    /// The names in the data directory, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A data directory, its metadata log, and a replica manager that has applied nothing.
    fn setup() -> (tempfile::TempDir, BrokerConfig, Metadata, ReplicaManager) {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        (dir, config, Metadata::new(), ReplicaManager::new())
    }

    fn set_topic_config(topic: &str, name: &str, value: Option<&str>) -> MetadataRecord {
        MetadataRecord::topic_config(topic, name, value)
    }

    #[tokio::test]
    async fn altered_topic_configs_reach_the_open_logs_of_that_topic_only() {
        let (_dir, config, mut metadata, replicas) = setup();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut records = topic("orders", id, 2, &[ME, 2]);
        records.extend(topic("other", other, 1, &[2, ME]));
        let changes = metadata.step(&records);
        replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        let defaults = config.log_config(&BTreeMap::new());
        let log_config =
            |t: Uuid, index: i32| replicas.get(tp(t, index)).unwrap().log().config().clone();
        assert_eq!(log_config(id, 0), defaults);
        assert!(!defaults.compact && defaults.segment_bytes > 4096);

        let before = Arc::clone(&metadata.image);
        metadata.step(&[
            set_topic_config("orders", "cleanup.policy", Some("compact")),
            set_topic_config("orders", "segment.bytes", Some("4096")),
        ]);
        let topics = metadata.image.topic_config_changes_since(&before);
        assert_eq!(topics, [(id, "orders".to_string())]);
        assert_eq!(
            replicas.apply_topic_configs(&metadata.image, &topics, &config),
            2
        );
        for index in 0..2 {
            let got = log_config(id, index);
            assert!(got.compact, "partition {index}: {got:?}");
            assert_eq!(got.segment_bytes, 4096);
            assert_eq!(got.retention_ms, defaults.retention_ms, "not overridden");
        }
        assert_eq!(
            log_config(other, 0),
            defaults,
            "another topic's log changed"
        );
        // Applying the same image again changes nothing.
        assert_eq!(
            replicas.apply_topic_configs(&metadata.image, &topics, &config),
            0
        );

        // An override removed falls back to the broker's default.
        let before = Arc::clone(&metadata.image);
        metadata.step(&[set_topic_config("orders", "segment.bytes", None)]);
        let topics = metadata.image.topic_config_changes_since(&before);
        replicas.apply_topic_configs(&metadata.image, &topics, &config);
        let got = log_config(id, 1);
        assert_eq!(
            (got.compact, got.segment_bytes),
            (true, defaults.segment_bytes)
        );
    }

    #[tokio::test]
    async fn a_created_topic_is_made_and_led_at_epoch_0() {
        let (dir, config, mut metadata, replicas) = setup();
        let id = Uuid::new_v4();

        let changes = metadata.step(&topic("orders", id, 2, &[ME, 2]));
        let report = replicas.apply_changes(&metadata.image, &changes, &ctx(&config));

        assert_eq!(report.created, [tp(id, 0), tp(id, 1)]);
        assert!(report.failed.is_empty() && report.opened.is_empty());
        for index in 0..2 {
            let p = replicas.leader(tp(id, index)).unwrap();
            assert_eq!((p.topic.as_str(), p.leader_epoch()), ("orders", 0));
            let dir = dir.path().join(format!("orders-{index}"));
            assert_eq!(read_partition_metadata(&dir), Some(id));
        }
        assert_eq!(entries(dir.path()), ["orders-0", "orders-1"]);
    }

    #[tokio::test]
    async fn leadership_and_epoch_follow_the_image() {
        let (_dir, config, mut metadata, replicas) = setup();
        let id = Uuid::new_v4();
        let changes = metadata.step(&topic("orders", id, 1, &[ME, 2]));
        replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        let p = replicas.leader(tp(id, 0)).unwrap();
        assert_eq!(
            p.log().end_offset_for_epoch(0),
            (0, 0),
            "a fresh leader knows its epoch before it appends"
        );
        assert_eq!(append(&p), 0);

        // The leader moves to broker 2 (epoch 1): a waiting fetch wakes, clients are sent away.
        let waiting = p.next_append();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let changes = metadata.step(&[move_leader(id, 0, 2)]);
        assert_eq!(changes.followers.len(), 1);
        let report = replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        assert!(report.created.is_empty() && report.opened.is_empty());
        assert!(
            ready(&mut waiting),
            "a fetch waiting on a former leader slept on"
        );
        assert_eq!(
            replicas.leader(tp(id, 0)).map(|p| p.index),
            Err(E::NotLeaderOrFollower.code())
        );
        assert_eq!(replicas.get(tp(id, 0)).unwrap().leader_epoch(), 1);

        // Back to this broker, at epoch 2: it leads and stamps epoch 2.
        let changes = metadata.step(&[move_leader(id, 0, ME)]);
        assert_eq!(changes.leaders.len(), 1);
        replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        let p = replicas.leader(tp(id, 0)).unwrap();
        assert_eq!(p.leader_epoch(), 2);
        assert_eq!(
            p.log().end_offset_for_epoch(2),
            (2, 1),
            "epoch 2 began at the log end when leadership did"
        );
        assert_eq!(p.log().end_offset_for_epoch(1), (0, 1));
        assert_eq!(append(&p), 1);
        assert_eq!(stamped_epoch(&p, 0), 0);
        assert_eq!(stamped_epoch(&p, 1), 2);
        let log = p.log();
        assert_eq!(log.end_offset_for_epoch(0), (0, 1));
        assert_eq!(
            log.end_offset_for_epoch(1),
            (0, 1),
            "epoch 1 wrote nothing here"
        );
        assert_eq!(log.end_offset_for_epoch(2), (2, 2));
    }

    #[tokio::test]
    async fn a_deleted_topic_is_set_aside_and_forgotten() {
        let (dir, config, mut metadata, replicas) = setup();
        let (id, kept) = (Uuid::new_v4(), Uuid::new_v4());
        let mut records = topic("orders", id, 1, &[ME]);
        records.extend(topic("kept", kept, 1, &[ME]));
        let changes = metadata.step(&records);
        replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        let p = replicas.leader(tp(id, 0)).unwrap();
        append(&p);
        let waiting = p.next_append();
        tokio::pin!(waiting);
        waiting.as_mut().enable();

        let changes = metadata.step(&[MetadataRecord::RemoveTopic { v: 0, topic_id: id }]);
        let report = replicas.apply_changes(&metadata.image, &changes, &ctx(&config));

        assert_eq!(report.deleted, [tp(id, 0)]);
        assert!(replicas.get(tp(id, 0)).is_none());
        assert!(replicas.leader(tp(kept, 0)).is_ok());
        assert!(
            ready(&mut waiting),
            "a fetch waiting on a deleted replica slept on"
        );
        assert!(
            p.log().offline_reason().is_some(),
            "the deleted log still serves"
        );
        assert!(!dir.path().join("orders-0").exists());
        let aside = format!("orders-0.{}-delete", id.simple());
        // Removed in the background: set aside, or already gone.
        let names = entries(dir.path());
        assert!(
            names == ["kept-0", aside.as_str()] || names == ["kept-0"],
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn a_restart_opens_the_same_replicas_with_their_data() {
        let (dir, config, mut metadata, replicas) = setup();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut records = topic("orders", id, 2, &[ME, 2]);
        records.extend(topic("elsewhere", other, 1, &[2, 3]));
        records.push(move_leader(id, 1, 2));
        let changes = metadata.step(&records);
        replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        append(&replicas.leader(tp(id, 0)).unwrap());
        replicas.close_all(dir.path());
        drop(replicas);
        // What a crash leaves: a directory half-made, one half-deleted.
        fs::create_dir(
            dir.path()
                .join(format!("orders-7.{}-new", Uuid::new_v4().simple())),
        )
        .unwrap();
        fs::create_dir(
            dir.path()
                .join(format!("old-0.{}-delete", Uuid::new_v4().simple())),
        )
        .unwrap();

        let replicas = ReplicaManager::new();
        let report = replicas.load_from_image(&metadata.image, &ctx(&config));

        assert_eq!(report.opened, [tp(id, 0), tp(id, 1)]);
        assert!(report.created.is_empty() && report.failed.is_empty());
        assert_eq!(replicas.len(), 2, "opened a replica of another broker");
        let p = replicas.leader(tp(id, 0)).unwrap();
        assert_eq!((p.log().log_end_offset(), p.leader_epoch()), (1, 0));
        let follower = replicas.get(tp(id, 1)).unwrap();
        assert!(!follower.is_leader());
        assert_eq!(follower.leader_epoch(), 1);
        assert_eq!(entries(dir.path()), ["orders-0", "orders-1"]);
    }

    #[tokio::test]
    async fn strays_are_set_aside_only_when_asked() {
        let (dir, config, mut metadata, replicas) = setup();
        let (id, theirs) = (Uuid::new_v4(), Uuid::new_v4());
        let mut records = topic("orders", id, 1, &[ME]);
        records.extend(topic("theirs", theirs, 1, &[2]));
        metadata.step(&records);
        // No topic of that name; a partition the topic lacks; another broker's replica; an
        // earlier topic's partition of the same name.
        for stray in ["gone-0", "orders-5", "theirs-0", "orders-0"] {
            fs::create_dir(dir.path().join(stray)).unwrap();
            write_partition_metadata(&dir.path().join(stray), Uuid::new_v4()).unwrap();
        }
        fs::create_dir(dir.path().join("__cluster_metadata-0")).unwrap();

        let report = replicas.load_from_image(&metadata.image, &ctx(&config));
        // The earlier topic's directory makes way for the image's partition, kept aside.
        assert_eq!(report.created, [tp(id, 0)]);
        let strays = |names: &[String]| names.iter().filter(|n| n.ends_with("-stray")).count();
        let names = entries(dir.path());
        assert_eq!(strays(&names), 1, "{names:?}");
        for kept in ["gone-0", "orders-5", "theirs-0"] {
            assert!(
                names.iter().any(|n| n == kept),
                "{kept} was set aside before caught up"
            );
        }

        assert_eq!(replicas.set_aside_strays(&metadata.image, &config), 3);
        let names = entries(dir.path());
        assert_eq!(strays(&names), 4, "{names:?}");
        assert!(names.contains(&"orders-0".to_string()));
        assert!(names.contains(&"__cluster_metadata-0".to_string()));
        assert_eq!(
            read_partition_metadata(&dir.path().join("orders-0")),
            Some(id)
        );
        assert!(replicas.leader(tp(id, 0)).is_ok());
    }

    /// A disk that cannot open a file: a log cannot be made on it.
    #[derive(Debug)]
    struct Full;

    impl Disk for Full {
        fn open(&self, _: &Path, _: bool) -> io::Result<Arc<dyn LogFile>> {
            Err(io::Error::other("no space left on device"))
        }
    }

    #[tokio::test]
    async fn a_failed_creation_leaves_nothing_and_is_reported() {
        let (dir, config, mut metadata, replicas) = setup();
        let id = Uuid::new_v4();
        // Partition 0: a file is where its directory should go.
        fs::write(dir.path().join("orders-0"), b"not a directory").unwrap();
        let changes = metadata.step(&topic("orders", id, 1, &[ME]));
        let report = replicas.apply_changes(&metadata.image, &changes, &ctx(&config));
        assert!(
            matches!(
                report.failed.as_slice(),
                [(at, ReplicaError::NotADirectory(_))] if *at == tp(id, 0)
            ),
            "{report:?}"
        );
        assert_eq!(entries(dir.path()), ["orders-0"]);
        assert!(dir.path().join("orders-0").is_file());

        // Partition 1: its log cannot be made.
        fs::remove_file(dir.path().join("orders-0")).unwrap();
        let changes = metadata.step(&[MetadataRecord::Partition {
            v: 0,
            topic_id: id,
            partition: 1,
            replicas: vec![ME],
            isr: vec![ME],
            leader: ME,
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
        }]);
        let full = LogContext {
            disk: Arc::new(Full),
            ..ctx(&config)
        };
        let report = replicas.apply_changes(&metadata.image, &changes, &full);
        assert!(
            matches!(
                report.failed.as_slice(),
                [(at, ReplicaError::Create { .. })] if *at == tp(id, 1)
            ),
            "{report:?}"
        );
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        assert!(replicas.is_empty());
        assert_eq!(
            replicas.leader(tp(id, 1)).map(|p| p.index),
            Err(E::NotLeaderOrFollower.code())
        );
    }
}
