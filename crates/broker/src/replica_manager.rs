//! The partitions this broker keeps a replica of, keyed by topic id and partition, as Kafka's
//! replica manager keeps them. Handlers reach a log only through here, and only a replica that
//! leads serves clients: a partition this broker holds no leading replica of is
//! NOT_LEADER_OR_FOLLOWER, which tells a client to refresh its metadata and go to the leader.
//!
//! The topic list of this node feeds it today (every partition local, every replica a leader);
//! the cluster's metadata image feeds it once brokers run on the controller quorum. The
//! background work on local logs (retention, compaction, the clean stop) lives here too, since it
//! concerns the replicas this broker keeps, whatever topics the cluster has.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub use caudal_metadata::TopicIdPartition;
use kafka_protocol::error::ResponseError as E;
use uuid::Uuid;

use crate::partition::Partition;

#[derive(Debug, Default)]
pub struct ReplicaManager {
    replicas: RwLock<HashMap<TopicIdPartition, Arc<Partition>>>,
}

impl ReplicaManager {
    pub fn new() -> ReplicaManager {
        ReplicaManager::default()
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

    /// Takes over opened replicas.
    pub fn add(&self, partitions: impl IntoIterator<Item = Arc<Partition>>) {
        let mut replicas = self.write();
        for p in partitions {
            replicas.insert(tp(p.topic_id, p.index), p);
        }
    }

    /// Gives up the replicas of a topic's partitions `0..count` (the topic was deleted),
    /// returning them so their files can be set aside.
    pub fn remove_topic(&self, topic_id: Uuid, count: i32) -> Vec<Arc<Partition>> {
        let mut replicas = self.write();
        (0..count)
            .filter_map(|i| replicas.remove(&tp(topic_id, i)))
            .collect()
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

    /// Syncs and checkpoints every replica (clean shutdown). Two syncs of the whole filesystem
    /// holding `data_dir` cover every log, instead of several fsyncs per partition: with
    /// thousands of partitions that is the difference between a stop in a second and one in a
    /// minute.
    pub fn close_all(&self, data_dir: &Path) {
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
            return;
        }
        for (p, up_to) in prepared {
            if let Err(e) = p.log().checkpoint_synced(up_to) {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "checkpointing the log failed");
            }
        }
        if let Err(e) = sync_filesystem(data_dir) {
            tracing::error!(dir = %data_dir.display(), error = %e, "syncing the recovery checkpoints failed");
        }
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
    use caudal_storage::{LogConfig, PartitionLog};

    use super::*;

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

        let removed = replicas.remove_topic(id, 2);
        assert_eq!(removed.len(), 2);
        assert!(replicas.is_empty());
    }
}
