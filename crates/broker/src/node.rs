//! The cluster side of a node: its metadata quorum, the controller on it, the broker's
//! registration, and the follower that keeps the local replicas in line with the metadata image.
//!
//! A single node is a cluster of one: the same code path, a quorum of one voter on
//! [`NoPeers`]. The first start bootstraps the metadata log (a fresh cluster id, or the takeover
//! of a previous release's directory), every start completes the bootstrap's file steps, and
//! the broker serves clients only once the controller has unfenced it.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::bootstrap::{self, Bootstrap, BootstrapSettings};
use caudal_metadata::controller::{
    ControllerClock, ControllerService, ControllerServiceConfig, TopicConfigCheck,
};
use caudal_metadata::quorum::{
    NoPeers, Quorum, QuorumConfig, QuorumError, RaftRpcServer, StatusWatch, TcpPeers,
};
use caudal_metadata::{Controller, ControllerConfig, IdSource, MetadataImage};
use caudal_storage::Disk;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::clean_shutdown;
use crate::config::BrokerConfig;
use crate::controller_channel::{ControllerAddresses, ControllerChannel};
use crate::controller_listener::{self, ControllerEndpoint, RaftRpc};
use crate::coordinator_runtime::CoordinatorRuntime;
use crate::handlers::describe_quorum::QuorumDescriber;
use crate::image_follower::Follower;
use crate::lifecycle::{BrokerLifecycle, BrokerState, LifecycleConfig, ShutdownOutcome};
use crate::replica_manager::ReplicaManager;
use crate::StartError;

/// The longest each step of a start may take before the start fails with a message naming it.
const START_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a clean stop waits for the controller to confirm the controlled shutdown. A
/// broker silent for `broker.session.timeout.ms` is fenced anyway, so a stop never waits
/// longer than that either: a node that has lost its quorum must still stop.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a stop waits for the follower to finish the change it is applying.
const FOLLOWER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker's topic config rules, handed to the controller so they live in one place. The
/// controller also takes `cleanup.policy=compact`, which the broker's own `__consumer_offsets`
/// uses; CreateTopics from clients is checked by the broker first, which refuses it until
/// compaction is offered for every topic.
const TOPIC_CONFIG_CHECK: TopicConfigCheck = |key, value| {
    if key == "cleanup.policy" && value == "compact" {
        return Ok(value.to_string());
    }
    crate::config::check_topic_config(key, value).map_err(|e| e.to_string())
};

/// A running node's quorum, controller, registration and image follower.
pub(crate) struct MetadataNode {
    quorum: Quorum,
    controller: ControllerService,
    /// The controller listener's accept loop, and what stops it.
    listener: JoinHandle<()>,
    listener_stop: watch::Sender<bool>,
    pub channel: ControllerChannel,
    lifecycle: BrokerLifecycle,
    follower: JoinHandle<()>,
    stop_follower: oneshot::Sender<()>,
    /// The image the local replicas match, published by the follower.
    pub applied: watch::Receiver<Arc<MetadataImage>>,
    pub cluster_id: String,
    /// `broker.session.timeout.ms`: the longest a stop waits for its controlled shutdown.
    session_timeout: Duration,
    /// How long the quorum may be without a leader before a stop gives up its controlled
    /// shutdown: twice `controller.quorum.election.timeout.ms`.
    leaderless_limit: Duration,
}

async fn step<T>(what: &'static str, future: impl Future<Output = T>) -> Result<T, StartError> {
    tokio::time::timeout(START_STEP_TIMEOUT, future)
        .await
        .map_err(|_| StartError::Stalled {
            what,
            timeout: START_STEP_TIMEOUT,
        })
}

impl MetadataNode {
    /// Starts the quorum (bootstrapping a new or previous release's directory), opens the
    /// local replicas the image gives this broker, starts the controller, and registers. Returns
    /// once the controller has unfenced the broker and the image saying so is applied here (its
    /// partitions led, their coordinator shards made), its stray directories set aside.
    pub(crate) async fn start(
        config: &BrokerConfig,
        disk: Arc<dyn Disk>,
        replicas: Arc<ReplicaManager>,
        coordinators: Arc<CoordinatorRuntime>,
        controller_listeners: Vec<TcpListener>,
    ) -> Result<MetadataNode, StartError> {
        let node_id =
            u64::try_from(config.node_id).map_err(|_| StartError::NodeId(config.node_id))?;
        let voters = config.quorum_voters();
        let alone = voters.len() <= 1;
        let quorum_config = quorum_timers(QuorumConfig::new(node_id), config.election_timeout_ms());
        let quorum = if alone {
            Quorum::start(&quorum_config, &config.data_dir, NoPeers).await?
        } else {
            let peers = TcpPeers::new(node_id, voters.clone(), None)
                .with_max_frame_bytes(config.socket_request_max_bytes());
            Quorum::start_over_tcp(&quorum_config, &config.data_dir, peers).await?
        };
        // Voters must answer each other before anything else: the leader is elected by them.
        let (controller_tx, controller_rx) = watch::channel(None);
        let (listener_stop, listener_stopped) = watch::channel(false);
        let listener = controller_listener::spawn(
            controller_listeners,
            ControllerEndpoint {
                raft: Arc::new(QuorumRpc(
                    quorum
                        .rpc_server(None)
                        .with_max_frame_bytes(config.socket_request_max_bytes()),
                )),
                controller: controller_rx,
                max_frame: config.socket_request_max_bytes(),
                queued: config.queued_max_requests(),
                quorum: QuorumDescriber::new(quorum.client(), config),
            },
            listener_stopped,
        );
        let voter_ids: BTreeSet<u64> = if alone {
            BTreeSet::from([node_id])
        } else {
            voters.keys().copied().collect()
        };
        // One voter creates the quorum, the one of the lowest id, so two nodes started with
        // different voter lists cannot each make their own.
        if quorum.initialize_if_lowest(&voter_ids).await? {
            if alone {
                tracing::info!(
                    node_id,
                    "metadata quorum created, with this node its only voter"
                );
            } else {
                tracing::info!(node_id, voters = ?voter_ids, "metadata quorum created");
            }
        } else if !alone {
            tracing::info!(node_id, voters = ?voter_ids, "waiting for the metadata quorum to elect a leader");
        }
        let settings = BootstrapSettings {
            node_id: config.node_id,
            cluster_id: Some(config.cluster_id.clone()).filter(|id| !id.is_empty()),
            voters: if alone {
                BTreeSet::new()
            } else {
                voter_ids.clone()
            },
        };
        let data_dir = config.data_dir.clone();
        // The image is current once this node leads with its log applied, or, on a follower,
        // once the leader's bootstrap entry has reached it (the controller then unfences this
        // broker only when it has caught up).
        let mut statuses = quorum.client().statuses();
        let mut images = quorum.images();
        step("the metadata quorum electing a leader and bootstrapping", async {
            loop {
                let s = statuses.current();
                let image = images.borrow_and_update().clone();
                let leading = s.is_leader && s.last_applied_index >= s.last_log_index;
                if image.cluster_id().is_some() && (leading || (!alone && !s.is_leader)) {
                    return Ok::<(), StartError>(());
                }
                if leading {
                    let plan = {
                        let (dir, settings) = (data_dir.clone(), settings.clone());
                        blocking(move || Bootstrap::plan(&dir, &settings, &image)).await??
                    };
                    if let Some(bootstrap) = plan {
                        match quorum.propose(bootstrap.entry()).await {
                            Ok(_) => tracing::info!(
                                cluster_id = bootstrap.cluster_id(),
                                takeover = bootstrap.is_takeover(),
                                "metadata log bootstrapped"
                            ),
                            // Leadership moved on: the next leader bootstraps.
                            Err(QuorumError::NotLeader { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                        continue;
                    }
                }
                tokio::select! {
                    changed = statuses.changed() => changed?,
                    changed = images.changed() => changed.map_err(|_| QuorumError::Stopped("the quorum has shut down".into()))?,
                }
            }
        })
        .await??;
        let image = quorum.image();
        let cluster_id = image
            .cluster_id()
            .ok_or(StartError::NoClusterId)?
            .to_string();
        if let Some(configured) = settings.cluster_id.filter(|c| *c != cluster_id) {
            return Err(StartError::OtherCluster {
                configured,
                found: cluster_id,
            });
        }
        {
            let (dir, image) = (data_dir.clone(), image.clone());
            let node = config.node_id;
            blocking(move || bootstrap::complete(&dir, &image, node)).await??;
        }

        let follower = Follower {
            config: Arc::new(config.clone()),
            disk,
            replicas: replicas.clone(),
            coordinators: coordinators.clone(),
        };
        let images = quorum.images();
        let image = quorum.image();
        let (follower, image, shards) = blocking(move || {
            let shards = follower.load(&image);
            (follower, image, shards)
        })
        .await?;
        coordinators.apply(shards);
        let (published, applied) = watch::channel(image);
        let (stop_follower, follower_stop) = oneshot::channel();
        let follower = follower.start(images, published, follower_stop);

        let controller_config = ControllerConfig {
            broker_session_timeout_ms: config.broker_session_timeout_ms(),
            default_num_partitions: config.num_partitions(),
            default_replication_factor: config.default_replication_factor(),
            topic_config_check: Some(TOPIC_CONFIG_CHECK),
            ..ControllerConfig::new(config.node_id)
        };
        let controller = ControllerService::start(
            Controller::new(controller_config, IdSource::random()),
            quorum.client(),
            ControllerClock::monotonic(),
            ControllerServiceConfig::default(),
        );
        controller_tx.send_replace(Some(controller.handle()));
        let channel = if alone {
            ControllerChannel::in_process(controller.handle())
        } else {
            let client = quorum.client();
            ControllerChannel::network(
                Some(controller.handle()),
                ControllerAddresses {
                    node_id,
                    leader: Box::new(move || client.status().leader),
                    voters,
                    max_frame: config.socket_request_max_bytes(),
                },
            )
        };
        let data_dir = config.data_dir.clone();
        let previous_broker_epoch = blocking(move || clean_shutdown::take(&data_dir)).await?;
        let offset = applied.clone();
        let lifecycle = BrokerLifecycle::start(
            LifecycleConfig {
                cluster_id: cluster_id.clone(),
                previous_broker_epoch,
                ..LifecycleConfig::from_broker(config)
            },
            channel.clone(),
            Arc::new(move || i64::try_from(offset.borrow().provenance().index).unwrap_or(i64::MAX)),
        );
        let mut lifecycle_statuses = lifecycle.statuses();
        step(
            "the controller unfencing this broker",
            lifecycle_statuses.wait_for(|s| s.state == BrokerState::Running),
        )
        .await?
        .map_err(|_| {
            StartError::Internal("the broker lifecycle stopped before it was unfenced".into())
        })?;
        // The unfencing and the leaderships it brings are one metadata change: once it is
        // applied here, this broker's partitions are led and their coordinator shards made.
        let node_id = config.node_id;
        step(
            "the image unfencing this broker being applied",
            applied
                .clone()
                .wait_for(|i| i.broker(node_id).is_some_and(|b| !b.fenced)),
        )
        .await?
        .map_err(|_| {
            StartError::Internal(
                "the metadata follower stopped before the broker was unfenced".into(),
            )
        })?;
        // Only now is the image one this broker has caught up to: a stale one would exile live
        // data.
        let image = applied.borrow().clone();
        let (r, c) = (replicas.clone(), config.clone());
        blocking(move || r.set_aside_strays(&image, &c)).await?;
        Ok(MetadataNode {
            quorum,
            controller,
            listener,
            listener_stop,
            channel,
            lifecycle,
            follower,
            stop_follower,
            applied,
            cluster_id,
            session_timeout: Duration::from_millis(
                u64::try_from(config.broker_session_timeout_ms()).unwrap_or(0),
            ),
            leaderless_limit: Duration::from_millis(config.election_timeout_ms().saturating_mul(2)),
        })
    }

    /// The broker's registration status, for the producer-id source.
    pub(crate) fn lifecycle_statuses(&self) -> watch::Receiver<crate::lifecycle::LifecycleStatus> {
        self.lifecycle.statuses()
    }

    pub(crate) fn quorum_client(&self) -> caudal_metadata::quorum::QuorumClient {
        self.quorum.client()
    }

    /// Resolves if the metadata quorum stops on its own: its log could not be written or read.
    /// The node cannot change or learn metadata any more, so it must stop, as Kafka's does.
    pub(crate) fn quorum_failed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut statuses = self.quorum.client().statuses();
        async move { while statuses.changed().await.is_ok() {} }
    }

    /// Controlled shutdown, then the controller and the quorum stop; returns once the follower
    /// has finished, so the replicas can be closed. Returns the broker epoch this incarnation
    /// was registered with, if it was.
    pub(crate) async fn stop(self) -> Option<i64> {
        let MetadataNode {
            quorum,
            controller,
            listener,
            listener_stop,
            lifecycle,
            mut follower,
            stop_follower,
            session_timeout,
            leaderless_limit,
            ..
        } = self;
        let broker_epoch = Some(lifecycle.status().broker_epoch).filter(|e| *e >= 0);
        // When every node stops at once, the last voters are left without a majority: no
        // controller will answer them, and waiting out the whole timeout helps nobody.
        tokio::select! {
            outcome = lifecycle.shutdown(CONTROLLED_SHUTDOWN_TIMEOUT.min(session_timeout)) => {
                match outcome {
                    ShutdownOutcome::Completed => tracing::info!("controlled shutdown complete"),
                    ShutdownOutcome::TimedOut | ShutdownOutcome::ControllerStopped => {
                        tracing::warn!("stopping without a controlled shutdown")
                    }
                }
            }
            () = leaderless_for(quorum.client().statuses(), leaderless_limit) => {
                tracing::warn!(
                    ?leaderless_limit,
                    "the metadata quorum has had no leader for this long; stopping without a controlled shutdown"
                );
            }
        }
        let _ = stop_follower.send(());
        controller.shutdown().await;
        if let Err(e) = quorum.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata quorum failed");
        }
        let _ = listener_stop.send(true);
        let _ = listener.await;
        if tokio::time::timeout(FOLLOWER_STOP_TIMEOUT, &mut follower)
            .await
            .is_err()
        {
            tracing::warn!("the metadata follower did not stop in time");
            follower.abort();
        }
        broker_epoch
    }
}

/// Runs file work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StartError::Internal(e.to_string()))
}

/// The quorum's RPC server, as the controller listener calls it.
struct QuorumRpc(RaftRpcServer);

impl RaftRpc for QuorumRpc {
    fn is_raft_key(&self, api_key: i16) -> bool {
        RaftRpcServer::is_raft_key(api_key)
    }

    fn handle(
        &self,
        api_key: i16,
        version: i16,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<bytes::Bytes, String>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .handle(api_key, version, body)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Returns once the quorum has been without a leader for `limit` on end, or has stopped. A
/// voter is without a leader from the moment it stands for election until one is elected,
/// which takes a few round trips when a majority answers.
async fn leaderless_for(mut statuses: StatusWatch, limit: Duration) {
    loop {
        while statuses.current().leader.is_some() {
            if statuses.changed().await.is_err() {
                return;
            }
        }
        let elected = tokio::time::timeout(limit, async {
            loop {
                if statuses.changed().await.is_err() {
                    return false;
                }
                if statuses.current().leader.is_some() {
                    return true;
                }
            }
        })
        .await;
        if elected != Ok(true) {
            return;
        }
    }
}

/// The quorum's timers from Kafka's `controller.quorum.election.timeout.ms`, `election_ms`.
///
/// A follower that last heard from its leader waits out the leader's lease (openraft's largest
/// election timeout) and then a random election timeout before it stands for election. With the
/// lease at `election_ms` and the random part between half of it and all of it, a follower stands
/// 1.5 to 2 times `election_ms` after its leader falls silent (1.5 to 2 s by default), about when
/// a Kafka voter does (after its fetch timeout, twice the election timeout by default). The
/// leader's heartbeats come at least four times within the shortest election timeout.
fn quorum_timers(config: QuorumConfig, election_ms: u64) -> QuorumConfig {
    let election_ms = election_ms.max(10);
    let shortest = election_ms / 2;
    QuorumConfig {
        election_timeout_ms: shortest,
        election_timeout_max_ms: Some(election_ms),
        heartbeat_interval_ms: config.heartbeat_interval_ms.min(shortest / 4).max(1),
        ..config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_stands_between_one_and_a_half_and_two_election_timeouts_after_silence() {
        let timers = quorum_timers(QuorumConfig::new(1), 1000);
        assert_eq!(timers.election_timeout_ms, 500);
        assert_eq!(timers.election_timeout_max_ms, Some(1000));
        assert_eq!(timers.heartbeat_interval_ms, 100);
        // The smallest setting still leaves heartbeats shorter than any election timeout.
        let smallest = quorum_timers(QuorumConfig::new(1), 0);
        assert!(smallest.heartbeat_interval_ms < smallest.election_timeout_ms);
        assert!(smallest.election_timeout_max_ms > Some(smallest.election_timeout_ms));
    }
}
