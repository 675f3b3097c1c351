//! The cluster side of a node: its metadata quorum, the controller on it, the broker's
//! registration, and the follower that keeps the local replicas in line with the metadata image.
//!
//! A single node is a cluster of one: the same code path, a quorum of one voter on
//! [`NoPeers`]. The first start bootstraps the metadata log (a fresh cluster id, or the takeover
//! of a previous release's directory), every start completes the bootstrap's file steps, and
//! the broker serves clients only once the controller has unfenced it.
//!
//! `process.roles` picks the parts: a voter runs the quorum as a voter and the controller; a
//! broker-only node asks the leader to make it a learner (it receives the log on its
//! controller listener) and runs no controller; a controller-only node ([`ControllerNode`])
//! runs no broker and never registers.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::bootstrap::{self, Bootstrap, BootstrapSettings};
use caudal_metadata::controller::{
    ControllerClock, ControllerHandle, ControllerService, ControllerServiceConfig, TopicConfigCheck,
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
use crate::config::{BrokerConfig, ProcessRoles};
use crate::controller_channel::{ControllerAddresses, ControllerChannel};
use crate::controller_listener::{self, ControllerEndpoint, RaftRpc};
use crate::coordinator_runtime::CoordinatorRuntime;
use crate::handlers::describe_quorum::QuorumDescriber;
use crate::image_follower::Follower;
use crate::lifecycle::{
    BrokerLifecycle, BrokerState, LifecycleConfig, LifecycleStatus, ShutdownOutcome,
};
use crate::replica_fetcher::ReplicaFetchers;
use crate::replica_manager::ReplicaManager;
use crate::routes::ListenerKind;
use crate::txn_runtime::TxnRuntime;
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
    /// The controller service, on a voter.
    controller: Option<ControllerService>,
    /// Whether this node is a cluster of one, with no quorum on the network.
    pub alone: bool,
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
        txns: Arc<TxnRuntime>,
        controller_listeners: Vec<TcpListener>,
    ) -> Result<MetadataNode, StartError> {
        let QuorumSide {
            quorum,
            listener,
            listener_stop,
            controller_tx,
            cluster_id,
            alone,
            voters,
            node_id,
        } = QuorumSide::start(config, controller_listeners).await?;
        let roles = config.process_roles();

        // Followers report this broker's epoch, known once the lifecycle has registered.
        let registration: Arc<std::sync::OnceLock<watch::Receiver<LifecycleStatus>>> =
            Arc::default();
        let epoch_source = registration.clone();
        let fetchers = Arc::new(ReplicaFetchers::new(
            config.node_id,
            config.inter_broker_listener_name(),
            config.replica_fetch(),
            move || epoch_source.get().map_or(-1, |s| s.borrow().broker_epoch),
        ));
        let follower = Follower {
            config: Arc::new(config.clone()),
            disk,
            replicas: replicas.clone(),
            coordinators: coordinators.clone(),
            txns: txns.clone(),
            fetchers: fetchers.clone(),
        };
        let images = quorum.images();
        let image = quorum.image();
        let (follower, image, shards) = blocking(move || {
            let shards = follower.load(&image);
            (follower, image, shards)
        })
        .await?;
        shards.apply(&coordinators, &txns);
        fetchers.update(&image, &replicas.all());
        let (published, applied) = watch::channel(image);
        let (stop_follower, follower_stop) = oneshot::channel();
        let follower = follower.start(images, published, follower_stop);

        let controller = roles.is_voter().then(|| start_controller(config, &quorum));
        if let Some(controller) = &controller {
            controller_tx.send_replace(Some(controller.handle()));
        }
        let channel = match (&controller, alone) {
            (Some(controller), true) => ControllerChannel::in_process(controller.handle()),
            (local, _) => {
                let client = quorum.client();
                ControllerChannel::network(
                    local.as_ref().map(ControllerService::handle),
                    ControllerAddresses {
                        node_id,
                        leader: Box::new(move || client.status().leader),
                        voters,
                        max_frame: config.socket_request_max_bytes(),
                    },
                )
            }
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
        let _ = registration.set(lifecycle.statuses());
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
            alone,
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
        stop_quorum(controller, quorum, listener_stop, listener).await;
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

/// The part of a node every role runs: the quorum, the controller listener, the bootstrap.
struct QuorumSide {
    quorum: Quorum,
    listener: JoinHandle<()>,
    listener_stop: watch::Sender<bool>,
    /// Where the controller service is handed to the listener once it runs.
    controller_tx: watch::Sender<Option<ControllerHandle>>,
    cluster_id: String,
    alone: bool,
    /// `controller.quorum.voters`.
    voters: BTreeMap<u64, String>,
    node_id: u64,
}

impl QuorumSide {
    /// Starts the quorum and serves the controller listener; a voter creates the quorum if it
    /// is the lowest-id one, a broker-only node asks to join it as a learner. Returns once the
    /// log is bootstrapped and its file steps done here.
    async fn start(
        config: &BrokerConfig,
        controller_listeners: Vec<TcpListener>,
    ) -> Result<QuorumSide, StartError> {
        let node_id =
            u64::try_from(config.node_id).map_err(|_| StartError::NodeId(config.node_id))?;
        let voters = config.quorum_voters();
        let roles = config.process_roles();
        // A node is a cluster of one with no network when it has no voters but itself and no
        // controller listener: `caudal serve` with nothing set. Broker-only and
        // controller-only nodes always have a controller listener.
        let alone = voters.is_empty() || (voters.len() == 1 && controller_listeners.is_empty());
        // The address a broker-only node asks the leader to send it the log at.
        let learner_address = config
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Controller)
            .map(|l| format!("{}:{}", l.advertise.0, l.advertise.1));
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
        if !roles.is_voter() {
            let address = learner_address.ok_or_else(|| {
                StartError::Internal("a broker-only node needs a controller listener".into())
            })?;
            tracing::info!(node_id, %address, voters = ?voters.keys().collect::<Vec<_>>(), "joining the metadata quorum as a learner (broker-only node)");
            quorum.join_as_learner(&address, START_STEP_TIMEOUT).await?;
        }
        let voter_ids: BTreeSet<u64> = if alone {
            BTreeSet::from([node_id])
        } else {
            voters.keys().copied().collect()
        };
        // One voter creates the quorum, the one of the lowest id, so two nodes started with
        // different voter lists cannot each make their own. A learner has joined already.
        let initialised = roles.is_voter() && quorum.initialize_if_lowest(&voter_ids).await?;
        if initialised && alone {
            tracing::info!(
                node_id,
                "metadata quorum created, with this node its only voter"
            );
        } else if initialised {
            tracing::info!(node_id, voters = ?voter_ids, "metadata quorum created");
        } else if !alone && roles.is_voter() {
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
        Ok(QuorumSide {
            quorum,
            listener,
            listener_stop,
            controller_tx,
            cluster_id,
            alone,
            voters,
            node_id,
        })
    }
}

/// The controller service of a voter: active while this node leads the quorum.
fn start_controller(config: &BrokerConfig, quorum: &Quorum) -> ControllerService {
    let controller_only = config.process_roles() == ProcessRoles::Controller;
    let controller_config = ControllerConfig {
        broker_session_timeout_ms: config.broker_session_timeout_ms(),
        default_num_partitions: config.num_partitions(),
        default_replication_factor: config.default_replication_factor(),
        topic_config_check: Some(TOPIC_CONFIG_CHECK),
        auto_leader_rebalance: config.auto_leader_rebalance(),
        leader_imbalance_check_interval_ms: config.leader_imbalance_check_interval_ms(),
        default_min_insync_replicas: config
            .replica_settings(&Default::default())
            .min_insync_replicas,
        // No broker may take this node's id: the two would share it on the wire.
        controller_only_node_ids: if controller_only {
            BTreeSet::from([config.node_id])
        } else {
            BTreeSet::new()
        },
        ..ControllerConfig::new(config.node_id)
    };
    ControllerService::start(
        Controller::new(controller_config, IdSource::random()),
        quorum.client(),
        ControllerClock::monotonic(),
        ControllerServiceConfig::default(),
    )
}

/// Stops the controller, then the quorum, then the controller listener.
async fn stop_quorum(
    controller: Option<ControllerService>,
    quorum: Quorum,
    listener_stop: watch::Sender<bool>,
    listener: JoinHandle<()>,
) {
    if let Some(controller) = controller {
        controller.shutdown().await;
    }
    if let Err(e) = quorum.shutdown().await {
        tracing::warn!(error = %e, "stopping the metadata quorum failed");
    }
    let _ = listener_stop.send(true);
    let _ = listener.await;
}

/// A controller-only node (`process.roles=controller`): a voter of the quorum running the
/// controller, serving only its controller listener. It has no broker: it never registers,
/// leads no partition and holds no replica.
pub(crate) struct ControllerNode {
    quorum: Quorum,
    controller: ControllerService,
    listener: JoinHandle<()>,
    listener_stop: watch::Sender<bool>,
}

impl ControllerNode {
    /// Starts the quorum, the controller listener and the controller; returns once the log is
    /// bootstrapped.
    pub(crate) async fn start(
        config: &BrokerConfig,
        controller_listeners: Vec<TcpListener>,
    ) -> Result<ControllerNode, StartError> {
        let side = QuorumSide::start(config, controller_listeners).await?;
        let controller = start_controller(config, &side.quorum);
        side.controller_tx.send_replace(Some(controller.handle()));
        tracing::info!(
            node_id = side.node_id,
            cluster_id = %side.cluster_id,
            "controller-only node running"
        );
        Ok(ControllerNode {
            quorum: side.quorum,
            controller,
            listener: side.listener,
            listener_stop: side.listener_stop,
        })
    }

    /// Resolves if the metadata quorum stops on its own (see [`MetadataNode::quorum_failed`]).
    pub(crate) fn quorum_failed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut statuses = self.quorum.client().statuses();
        async move { while statuses.changed().await.is_ok() {} }
    }

    pub(crate) async fn stop(self) {
        stop_quorum(
            Some(self.controller),
            self.quorum,
            self.listener_stop,
            self.listener,
        )
        .await;
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
