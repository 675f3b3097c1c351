//! Keeps the local replicas in line with the metadata image, and publishes each image to the
//! request handlers once its replicas are in place.
//!
//! The quorum publishes images on a watch, which may skip some when they come fast: the follower
//! compares each image it takes with the last one it applied, so a skipped image changes nothing
//! but how many changes arrive at once. File work (opening, making and deleting replica
//! directories) runs on a blocking thread. Leadership of `__consumer_offsets` and
//! `__transaction_state` partitions goes on to the coordinator runtimes, before the image is
//! published, so a client sent here by FindCoordinator finds the shard at least loading.

use std::sync::Arc;

use caudal_metadata::{LocalReplicaChanges, MetadataImage};
use caudal_storage::Disk;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::coordinator_runtime::{CoordinatorRuntime, ShardChanges, OFFSETS_TOPIC};
use crate::replica_fetcher::ReplicaFetchers;
use crate::replica_manager::{tp, LogContext, ReplicaManager};
use crate::txn_runtime::{TxnRuntime, TXN_TOPIC};

/// The coordinator shards one metadata change moves: of the group coordinator
/// (`__consumer_offsets`) and of the transaction coordinator (`__transaction_state`).
#[derive(Debug, Default)]
pub(crate) struct Coordinated {
    pub groups: ShardChanges,
    pub txns: ShardChanges,
}

impl Coordinated {
    pub(crate) fn apply(self, groups: &CoordinatorRuntime, txns: &TxnRuntime) {
        groups.apply(self.groups);
        txns.apply(self.txns);
    }
}

/// What the follower works with.
pub(crate) struct Follower {
    pub config: Arc<BrokerConfig>,
    pub disk: Arc<dyn Disk>,
    pub replicas: Arc<ReplicaManager>,
    pub coordinators: Arc<CoordinatorRuntime>,
    pub txns: Arc<TxnRuntime>,
    /// Fetch the partitions other brokers lead; told after each image is applied.
    pub fetchers: Arc<ReplicaFetchers>,
}

impl Follower {
    /// Opens every replica `image` gives this broker (at start, before any client is served);
    /// returns the `__consumer_offsets` and `__transaction_state` partitions it leads. Blocking.
    pub(crate) fn load(&self, image: &MetadataImage) -> Coordinated {
        let ctx = LogContext {
            config: &self.config,
            disk: self.disk.clone(),
            now_ms: crate::now_ms(),
        };
        let report = self.replicas.load_from_image(image, &ctx);
        tracing::info!(
            replicas = self.replicas.len(),
            made = report.created.len(),
            failed = report.failed.len(),
            metadata_offset = image.provenance().index,
            "local replicas opened"
        );
        Coordinated {
            groups: self.led(image, OFFSETS_TOPIC),
            txns: self.led(image, TXN_TOPIC),
        }
    }

    /// The partitions of internal topic `name` that this broker leads in `image`.
    fn led(&self, image: &MetadataImage, name: &str) -> ShardChanges {
        let mut shards = ShardChanges::default();
        if let Some(topic) = image.topic_by_name(name) {
            shards.partition_count = i32::try_from(topic.partitions.len()).ok();
            for (index, registration) in topic.partitions.iter().enumerate() {
                let Ok(index) = i32::try_from(index) else {
                    break;
                };
                if registration.leader != self.config.node_id {
                    continue;
                }
                if let Some(p) = self.replicas.get(tp(topic.id, index)) {
                    shards.gained.push((index, p));
                }
            }
        }
        shards
    }

    /// What `changes` (from `old` to `new`, applied to the replicas) mean for the coordinator
    /// shards of internal topic `name`: its partitions led, and those followed or deleted.
    fn shard_changes(
        &self,
        old: &MetadataImage,
        new: &MetadataImage,
        changes: &LocalReplicaChanges,
        name: &str,
    ) -> ShardChanges {
        let old_id = old.topic_by_name(name).map(|t| t.id);
        let new_topic = new.topic_by_name(name);
        let new_id = new_topic.map(|t| t.id);
        let mut shards = ShardChanges {
            partition_count: new_topic.and_then(|t| i32::try_from(t.partitions.len()).ok()),
            ..ShardChanges::default()
        };
        let is_offsets = |id: &caudal_metadata::TopicIdPartition| {
            Some(id.topic_id) == old_id || Some(id.topic_id) == new_id
        };
        for (id, _) in changes.deleted.iter().chain(&changes.followers) {
            if is_offsets(id) {
                shards.lost.push(id.partition);
            }
        }
        for (id, _) in &changes.leaders {
            if Some(id.topic_id) != new_id {
                continue;
            }
            match self.replicas.get(*id) {
                Some(p) => shards.gained.push((id.partition, p)),
                // Its replica could not be opened: nothing to coordinate from.
                None => shards.lost.push(id.partition),
            }
        }
        shards
    }

    /// Brings the replicas from `old` to `new`; returns what that means for the coordinator
    /// shards. Blocking.
    fn apply(&self, old: &MetadataImage, new: &MetadataImage) -> Coordinated {
        let changes = new.local_changes_since(old, self.config.node_id);
        let ctx = LogContext {
            config: &self.config,
            disk: self.disk.clone(),
            now_ms: crate::now_ms(),
        };
        if !(changes.deleted.is_empty()
            && changes.leaders.is_empty()
            && changes.followers.is_empty())
        {
            let report = self.replicas.apply_changes(new, &changes, &ctx);
            let (made, opened) = (report.created.len(), report.opened.len());
            if made + opened + report.deleted.len() + report.failed.len() > 0 {
                tracing::info!(
                    made,
                    opened,
                    deleted = report.deleted.len(),
                    failed = report.failed.len(),
                    metadata_offset = new.provenance().index,
                    "local replicas changed"
                );
            }
        }
        let configs = new.topic_config_changes_since(old);
        if !configs.is_empty() {
            self.replicas
                .apply_topic_configs(new, &configs, &self.config);
        }
        Coordinated {
            groups: self.shard_changes(old, new, &changes, OFFSETS_TOPIC),
            txns: self.shard_changes(old, new, &changes, TXN_TOPIC),
        }
    }

    /// Follows `images` from the image `published` holds (the one already loaded), publishing
    /// each image there once applied. Ends when `stop` fires or the quorum stops, never in the
    /// middle of applying a change.
    pub(crate) fn start(
        self,
        mut images: watch::Receiver<Arc<MetadataImage>>,
        published: watch::Sender<Arc<MetadataImage>>,
        mut stop: oneshot::Receiver<()>,
    ) -> JoinHandle<()> {
        let follower = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let new = {
                    let latest = images.borrow_and_update().clone();
                    let current = published.borrow().clone();
                    if latest.provenance() > current.provenance() {
                        Some((current, latest))
                    } else {
                        None
                    }
                };
                if let Some((old, new)) = new {
                    let f = follower.clone();
                    let applied = new.clone();
                    let done = tokio::task::spawn_blocking(move || f.apply(&old, &applied)).await;
                    match done {
                        Ok(shards) => shards.apply(&follower.coordinators, &follower.txns),
                        Err(e) => {
                            tracing::error!(error = %e, "applying a metadata change to the local replicas failed")
                        }
                    }
                    follower.fetchers.update(&new, &follower.replicas.all());
                    published.send_replace(new);
                    continue;
                }
                tokio::select! {
                    changed = images.changed() => if changed.is_err() { return },
                    _ = &mut stop => return,
                }
            }
        })
    }
}
