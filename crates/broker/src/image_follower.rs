//! Keeps the local replicas in line with the metadata image, and publishes each image to the
//! request handlers once its replicas are in place.
//!
//! The quorum publishes images on a watch, which may skip some when they come fast: the follower
//! compares each image it takes with the last one it applied, so a skipped image changes nothing
//! but how many changes arrive at once. File work (opening, making and deleting replica
//! directories) runs on a blocking thread.

use std::sync::Arc;

use caudal_metadata::MetadataImage;
use caudal_storage::Disk;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::replica_manager::{LogContext, ReplicaManager};

/// What the follower works with.
pub(crate) struct Follower {
    pub config: Arc<BrokerConfig>,
    pub disk: Arc<dyn Disk>,
    pub replicas: Arc<ReplicaManager>,
}

impl Follower {
    /// Opens every replica `image` gives this broker (at start, before any client is served).
    pub(crate) fn load(&self, image: &MetadataImage) {
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
    }

    /// Brings the replicas from `old` to `new`. Blocking.
    fn apply(&self, old: &MetadataImage, new: &MetadataImage) {
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
                    if let Err(e) = done {
                        tracing::error!(error = %e, "applying a metadata change to the local replicas failed");
                    }
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
