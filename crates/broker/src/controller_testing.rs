//! A real one-voter metadata quorum and controller service on a temporary directory, for the
//! tests of the broker's side of the controller (channel, lifecycle, producer ids).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::controller::{
    ControllerClock, ControllerHandle, ControllerService, ControllerServiceConfig, ControllerState,
};
use caudal_metadata::quorum::{NoPeers, Quorum, QuorumClient, QuorumConfig};
use caudal_metadata::{
    Controller, ControllerConfig, EntryRecords, IdSource, MetadataImage, MetadataRecord,
    METADATA_VERSION_FEATURE, METADATA_VERSION_LEVEL, RECORD_VERSION,
};

/// Every wait in these tests is bounded by this.
pub(crate) const WAIT: Duration = Duration::from_secs(15);
pub(crate) const CLUSTER_ID: &str = "broker-side-test-cluster";

/// Panics if `future` does not finish within [`WAIT`].
pub(crate) async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not happen within {WAIT:?}"),
    }
}

/// Elections and heartbeats fast enough for tests; no checkpoints.
fn quorum_config() -> QuorumConfig {
    let mut config = QuorumConfig::new(1);
    (config.election_timeout_ms, config.heartbeat_interval_ms) = (400, 100);
    config.snapshot_after_entries = None;
    config
}

/// Node 1: a lone voter and its controller service.
pub(crate) struct TestController {
    pub quorum: Quorum,
    pub service: ControllerService,
}

impl TestController {
    /// Starts the quorum in `dir` and the service on it. A fresh directory is initialised and
    /// bootstrapped only if `initialize`; otherwise it waits with no leader.
    pub async fn start(dir: &Path, initialize: bool) -> TestController {
        let quorum = Quorum::start(&quorum_config(), dir, NoPeers).await.unwrap();
        // Sessions on a clock that never moves: no broker is fenced for a slow test machine.
        let clock = ControllerClock::manual(0);
        // Replicated topics, so a test can watch leaderships move between brokers.
        let config = ControllerConfig {
            max_replication_factor: 3,
            ..ControllerConfig::new(1)
        };
        let controller = Controller::new(config, IdSource::seeded(0x5EED_0802));
        let service = ControllerService::start(
            controller,
            quorum.client(),
            clock,
            ControllerServiceConfig::default(),
        );
        let node = TestController { quorum, service };
        if initialize {
            node.initialize().await;
        }
        node
    }

    /// Makes a pristine node the lone voter, writes the cluster id and feature level, and waits
    /// for the controller to become active. Does nothing to the log of a node that has one.
    pub async fn initialize(&self) {
        if self.quorum.initialize(&BTreeSet::from([1])).await.unwrap() {
            let mut statuses = self.client().statuses();
            bounded("the lone voter leading", async {
                while !statuses.current().is_leader {
                    statuses.changed().await.unwrap();
                }
            })
            .await;
            self.quorum
                .propose(EntryRecords(vec![
                    MetadataRecord::ClusterId {
                        v: RECORD_VERSION,
                        cluster_id: CLUSTER_ID.into(),
                    },
                    MetadataRecord::FeatureLevel {
                        v: RECORD_VERSION,
                        name: METADATA_VERSION_FEATURE.into(),
                        level: METADATA_VERSION_LEVEL,
                    },
                ]))
                .await
                .unwrap();
        }
        let mut states = self.handle().states();
        bounded(
            "the controller becoming active",
            states.wait_for(|s| matches!(s, ControllerState::Active { .. })),
        )
        .await
        .unwrap();
    }

    pub fn handle(&self) -> ControllerHandle {
        self.service.handle()
    }

    pub fn client(&self) -> QuorumClient {
        self.quorum.client()
    }

    /// The image once it satisfies `check`.
    pub async fn image_where(
        &self,
        what: &str,
        check: impl Fn(&MetadataImage) -> bool,
    ) -> Arc<MetadataImage> {
        let mut images = self.client().images();
        let image = bounded(what, images.wait_for(|image| check(image)))
            .await
            .unwrap()
            .clone();
        image
    }

    /// Stops the service, then the quorum.
    pub async fn stop(self) {
        self.service.shutdown().await;
        self.quorum.shutdown().await.unwrap();
    }
}
