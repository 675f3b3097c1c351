//! Caudal's broker: accepts Kafka clients, answers each API from one handler module, and keeps
//! the topics and their partition logs.

mod clean_shutdown;
pub mod config;
mod connection;
mod connection_quotas;
mod connection_warnings;
pub mod controller_channel;
mod controller_connection;
mod controller_listener;
#[cfg(test)]
mod controller_testing;
mod controller_wire;
pub mod coordinator_runtime;
pub mod disk_space;
pub mod handlers;
mod image_follower;
pub mod isr_sender;
pub mod lifecycle;
pub use caudal_metadata::meta_properties;
mod node;
pub mod partition;
mod partition_dirs;
mod peers;
pub mod producer_ids;
pub mod replica_fetcher;
pub mod replica_manager;
pub mod replica_state;
pub mod routes;
pub mod shards;
pub mod throttle;
pub mod topics;
pub mod txn_markers;
pub mod txn_runtime;
mod txn_verify;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

pub use config::{BrokerConfig, ConfigError, Setting, SETTINGS};
use partition::Partition;
use replica_manager::ReplicaManager;
pub use routes::ListenerKind;
use topics::{Topic, Topics};

/// The longest an admin change waits for the controller and then to be applied here, and an
/// InitProducerId for a block of ids (Kafka's default `request.timeout.ms` of admin clients).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Wall-clock milliseconds since the epoch, as Kafka timestamps are.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Shared broker state.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub topics: Topics,
    /// The partitions this broker keeps a replica of.
    pub replicas: Arc<ReplicaManager>,
    pub producer_ids: producer_ids::ProducerIds,
    /// Where partition leaders send their ISR changes for the controller.
    pub isr: isr_sender::IsrSender,
    /// The group coordinator's shards, one per `__consumer_offsets` partition this broker leads.
    pub groups: Arc<coordinator_runtime::CoordinatorRuntime>,
    /// The transaction coordinator's shards, one per `__transaction_state` partition led here.
    pub txns: Arc<txn_runtime::TxnRuntime>,
    /// Asks transaction coordinators on other brokers about transactional batches (KIP-890).
    txn_verifier: txn_verify::Verifier,
    /// Refuses produce while the data directory's filesystem is nearly full.
    pub free_space: disk_space::FreeSpaceGuard,
    /// `leader.replication.throttled.rate`, for the replicas reassignments add.
    pub replication_throttle: Arc<throttle::ReplicationThrottle>,
    /// Woken when shutdown starts, so long-polling fetches answer at once.
    pub shutting_down: Notify,
    /// Set when shutdown starts: long-polling fetches answer at once.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Set while a FindCoordinator's creation of a missing `__consumer_offsets` is under way.
    creating_offsets_topic: std::sync::atomic::AtomicBool,
    /// The same for `__transaction_state`.
    creating_txn_topic: std::sync::atomic::AtomicBool,
    /// What DescribeQuorum is answered from, or forwarded through.
    pub quorum: handlers::describe_quorum::QuorumDescriber,
}

impl Broker {
    /// The partition `index` of `topic` as this broker serves clients:
    /// UNKNOWN_TOPIC_OR_PARTITION for an index the topic does not have, NOT_LEADER_OR_FOLLOWER
    /// where this broker keeps no leading replica of it.
    pub fn leader_partition(&self, topic: &Topic, index: i32) -> Result<Arc<Partition>, i16> {
        if !topic.has_partition(index) {
            return Err(kafka_protocol::error::ResponseError::UnknownTopicOrPartition.code());
        }
        self.replicas.leader(replica_manager::tp(topic.id, index))
    }

    /// The partition `index` of `topic` as this broker keeps it, leading or following: what
    /// consumers that may fetch from followers (Fetch v11 and later, KIP-392) read.
    pub fn local_partition(&self, topic: &Topic, index: i32) -> Result<Arc<Partition>, i16> {
        if !topic.has_partition(index) {
            return Err(kafka_protocol::error::ResponseError::UnknownTopicOrPartition.code());
        }
        self.replicas.local(replica_manager::tp(topic.id, index))
    }

    /// Creates `__consumer_offsets` in the background, unless a creation is already under way:
    /// Kafka creates it on the first FindCoordinator that finds it missing, answering
    /// COORDINATOR_NOT_AVAILABLE meanwhile.
    pub(crate) fn create_offsets_topic_in_background(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.creating_offsets_topic.swap(true, Ordering::SeqCst) {
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) =
                coordinator_runtime::create_offsets_topic(&broker.config, &broker.topics).await
            {
                tracing::warn!(error = %e, "creating __consumer_offsets failed");
            }
            broker.creating_offsets_topic.store(false, Ordering::SeqCst);
        });
    }

    /// Creates `__transaction_state` in the background, as
    /// [`create_offsets_topic_in_background`](Self::create_offsets_topic_in_background) does
    /// `__consumer_offsets`: on the first FindCoordinator for a transactional id.
    pub(crate) fn create_txn_topic_in_background(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.creating_txn_topic.swap(true, Ordering::SeqCst) {
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = txn_runtime::create_txn_topic(&broker.config, &broker.topics).await {
                tracing::warn!(error = %e, "creating __transaction_state failed");
            }
            broker.creating_txn_topic.store(false, Ordering::SeqCst);
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {dir}: {source}")]
    DataDir { dir: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error(transparent)]
    Identity(#[from] meta_properties::MetaPropertiesError),
    #[error("node.id {0} is invalid: node ids are 0 or more")]
    NodeId(i32),
    #[error("metadata quorum: {0}")]
    Quorum(#[from] caudal_metadata::quorum::QuorumError),
    #[error(transparent)]
    Bootstrap(#[from] caudal_metadata::BootstrapError),
    #[error("the metadata log has no cluster id after its bootstrap")]
    NoClusterId,
    #[error(
        "the data directory belongs to cluster {found}, but cluster.id is set to {configured}; \
         unset cluster.id or use another data directory"
    )]
    OtherCluster { configured: String, found: String },
    #[error("{what} did not happen within {timeout:?}")]
    Stalled {
        what: &'static str,
        timeout: Duration,
    },
    #[error("{0}")]
    Internal(String),
}

/// Why a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its shutdown signal came.
    Asked,
    /// Its metadata quorum failed (the metadata log could not be written).
    MetadataFailed,
}

/// A broker bound to its port, ready to [`run`](Server::run).
pub struct Server {
    broker: Arc<Broker>,
    /// The client listeners, with their position in the configuration.
    listeners: Vec<(usize, TcpListener)>,
    /// Where every listener is bound, in configuration order.
    addrs: Vec<std::net::SocketAddr>,
    node: node::MetadataNode,
}

impl Server {
    /// Opens the data directory (recovering logs) and binds the listener.
    pub async fn bind(mut config: BrokerConfig) -> Result<Server, StartError> {
        let (listeners, addrs) = open_and_bind(&mut config).await?;
        let dir = config.data_dir.display().to_string();
        let data_err = |source| StartError::DataDir {
            dir: dir.clone(),
            source,
        };
        let mut client_listeners = Vec::new();
        let mut controller_listeners = Vec::new();
        for (index, (listener, l)) in listeners.into_iter().zip(&config.listeners).enumerate() {
            match l.kind {
                ListenerKind::Controller => controller_listeners.push(listener),
                ListenerKind::Client => client_listeners.push((index, listener)),
            }
        }
        let free_space = disk_space::FreeSpaceGuard::new(
            &config.data_dir,
            config.log_dir_min_free_bytes(),
            now_ms(),
        )
        .map_err(data_err)?;
        let open_files = open_file_budget();
        tracing::debug!(open_files, "log files kept open at most");
        let disk = Arc::new(caudal_storage::disk::BoundedDisk::new(open_files));
        let replicas = Arc::new(ReplicaManager::new());
        let groups = Arc::new(coordinator_runtime::CoordinatorRuntime::new(&config));
        let markers = Arc::new(txn_markers::BrokerMarkers::default());
        let txns = txn_runtime::TxnRuntime::new(
            config.txn_config(),
            config.offsets_commit_timeout(),
            config.txn_check_interval_ms(),
            Arc::new(markers.clone()),
        );
        let node = node::MetadataNode::start(
            &config,
            disk,
            replicas.clone(),
            groups.clone(),
            txns.clone(),
            controller_listeners,
        )
        .await?;
        let topics = Topics::new(
            &config,
            node.cluster_id.clone(),
            node.applied.clone(),
            node.quorum_client(),
            node.channel.clone(),
            replicas.clone(),
            ADMIN_TIMEOUT,
        );
        let producer_ids = producer_ids::ProducerIds::from_controller(
            node.channel.clone(),
            config.node_id,
            node.lifecycle_statuses(),
            ADMIN_TIMEOUT,
        );
        let isr = isr_sender::IsrSender::start(
            node.channel.clone(),
            config.node_id,
            node.lifecycle_statuses(),
            &replicas,
            config.replica_lag_time_max_ms(),
        );
        // A single node makes it at once, as it always has. A node of a cluster leaves it to
        // the first FindCoordinator, as Kafka does: at start the other brokers may not have
        // registered yet, and its partitions would all land on the first one up.
        if node.alone {
            coordinator_runtime::create_offsets_topic(&config, &topics)
                .await
                .map_err(data_err)?;
        }
        // Every shard this broker leads is loaded before clients are served.
        let loaded = groups
            .wait_loaded()
            .await
            .map_err(|e| data_err(io::Error::other(e)))?;
        let loaded_txns = txns
            .wait_loaded()
            .await
            .map_err(|e| data_err(io::Error::other(e)))?;
        if loaded_txns.records > 0 {
            tracing::info!(
                transactional_ids = loaded_txns.keys,
                records = loaded_txns.records,
                shards = loaded_txns.shards,
                "loaded transactions from __transaction_state"
            );
        }
        if loaded.records > 0 {
            tracing::info!(
                groups = loaded.keys,
                records = loaded.records,
                shards = loaded.shards,
                "loaded groups and committed offsets from __consumer_offsets"
            );
        }
        let replication_throttle = Arc::new(throttle::ReplicationThrottle::new(
            config.leader_replication_throttled_rate(),
        ));
        let quorum = handlers::describe_quorum::QuorumDescriber::new(node.quorum_client(), &config)
            .forwarding(node.channel.clone());
        let broker = Arc::new(Broker {
            quorum,
            config,
            topics,
            replicas,
            producer_ids,
            isr,
            groups,
            txns,
            txn_verifier: txn_verify::Verifier::default(),
            free_space,
            replication_throttle,
            shutting_down: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            creating_offsets_topic: std::sync::atomic::AtomicBool::new(false),
            creating_txn_topic: std::sync::atomic::AtomicBool::new(false),
        });
        markers.serve(&broker);
        Ok(Server {
            broker,
            listeners: client_listeners,
            addrs,
            node,
        })
    }

    /// Where the first listener is bound.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.local_addrs()?
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("no listener"))
    }

    /// Where every listener is bound, in configuration order.
    pub fn local_addrs(&self) -> io::Result<Vec<std::net::SocketAddr>> {
        Ok(self.addrs.clone())
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` resolves (or the metadata quorum fails), then stops accepting,
    /// answers requests already read, and syncs every log.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Stopped {
        let Server {
            broker,
            listeners,
            node,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let retention = tokio::spawn(retention_loop(broker.clone(), stop_rx.clone()));
        let group_clock = tokio::spawn(group_clock(broker.clone(), stop_rx.clone()));
        let txn_clock = tokio::spawn(txn_clock(broker.clone(), stop_rx.clone()));
        // Connections closed for bad input or refused by a limit are logged a few at a time,
        // with a summary of the rest every interval.
        let warnings = Arc::new(connection_warnings::ConnectionWarnings::new());
        let warnings_flush =
            tokio::spawn(connection_warnings::flush_every_interval(warnings.clone()));
        let quotas = Arc::new(connection_quotas::ConnectionQuotas::from_config(
            &broker.config,
        ));
        // One accept loop per listener, all feeding this one.
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(64);
        let mut acceptors = JoinSet::new();
        for (index, listener) in listeners {
            let tx = accepted_tx.clone();
            let quotas = quotas.clone();
            let warnings = warnings.clone();
            let max_connections = broker.config.max_connections();
            acceptors.spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // At max.connections the accepted connection waits for another to close,
                    // and this listener takes no more off its queue meanwhile: clients wait
                    // rather than being refused, as with Kafka's ConnectionQuotas (KIP-402).
                    // A slot is taken only for a connection in hand, so an idle listener never
                    // holds one another listener's client needs.
                    let slot = match quotas.try_broker_slot() {
                        Some(slot) => slot,
                        None => {
                            if warnings.admit(connection_warnings::Reason::MaxConnections) {
                                tracing::info!(
                                    max_connections,
                                    "max.connections reached: serving the next connection when one closes"
                                );
                            }
                            let Some(slot) = quotas.broker_slot().await else {
                                return;
                            };
                            slot
                        }
                    };
                    match quotas.admit(slot, peer.ip()) {
                        Ok(slot) => {
                            if tx.send((stream, peer, index, slot)).await.is_err() {
                                return;
                            }
                        }
                        Err(refused) => {
                            // Closed at once (dropped), as Kafka does.
                            if warnings.admit(connection_warnings::Reason::PerIpLimit) {
                                tracing::info!(
                                    %peer,
                                    "refused connection: {} already has the maximum of {} connections (max.connections.per.ip)",
                                    refused.ip,
                                    refused.max
                                );
                            }
                        }
                    }
                }
            });
        }
        drop(accepted_tx);
        tokio::pin!(shutdown);
        let quorum_failed = node.quorum_failed();
        tokio::pin!(quorum_failed);
        let mut stopped = Stopped::Asked;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = &mut quorum_failed => {
                    tracing::error!("the metadata quorum stopped (see the error above): this node can no longer learn or change metadata; shutting down");
                    stopped = Stopped::MetadataFailed;
                    break;
                }
                Some((stream, peer, listener, slot)) = accepted.recv() => {
                    let _ = stream.set_nodelay(true);
                    let (broker, warnings, stop) = (broker.clone(), warnings.clone(), stop_rx.clone());
                    connections.spawn(async move {
                        // Held until the connection ends, however it ends (even aborted).
                        let _slot = slot;
                        // Made here rather than moved in, so the task holds one copy of it.
                        connection::serve(broker, stream, peer, listener, warnings, stop).await
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Stop accepting before answering what is in flight.
        acceptors.abort_all();
        tracing::info!(
            connections = connections.len(),
            "shutting down: answering requests in flight"
        );
        let _ = stop_tx.send(true);
        broker
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        broker.shutting_down.notify_waiters();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still busy after 10 s; closing them");
            connections.abort_all();
        }
        retention.abort();
        group_clock.abort();
        txn_clock.abort();
        warnings_flush.abort();
        let broker_epoch = node.stop().await;
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if !b.replicas.close_all(&b.config.data_dir) {
                return;
            }
            if let Some(epoch) = broker_epoch {
                if let Err(e) = clean_shutdown::record(&b.config.data_dir, epoch) {
                    tracing::warn!(error = %e, "cannot record the clean stop; the next start registers as after a crash");
                }
            }
        })
        .await;
        tracing::info!("all logs synced; stopped");
        stopped
    }
}

/// Checks the data directory (writable, this node's) and binds every listener, in
/// configuration order; a listener on port 0 is advertised at the port it got.
async fn open_and_bind(
    config: &mut BrokerConfig,
) -> Result<(Vec<TcpListener>, Vec<std::net::SocketAddr>), StartError> {
    let dir = config.data_dir.display().to_string();
    let data_err = |source| StartError::DataDir {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
    // Fail early and clearly on a read-only or foreign directory.
    let probe = config.data_dir.join(".caudal-write-check");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(data_err)?;
    // Before anything in the directory is opened (recovery writes to it).
    meta_properties::check_node(&config.data_dir, config.node_id)?;
    if config.listeners.is_empty() {
        return Err(StartError::Listen {
            addr: "(none)".into(),
            source: io::Error::other("no listener configured"),
        });
    }
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &mut config.listeners {
        let bound = TcpListener::bind(l.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: l.listen.to_string(),
                source,
            })?;
        // Listening on port 0 picks a free port: advertise the one actually bound.
        if l.advertise.1 == 0 {
            if let Ok(addr) = bound.local_addr() {
                l.advertise.1 = addr.port();
            }
        }
        listeners.push(bound);
    }
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| StartError::Listen {
            addr: "(bound)".into(),
            source,
        })?;
    Ok((listeners, addrs))
}

/// A controller-only node (`process.roles=controller`): a voter of the metadata quorum that
/// runs the controller on its controller listener and nothing else. It serves no clients and
/// never registers as a broker, so Metadata and DescribeCluster never list it.
pub struct ControllerServer {
    addrs: Vec<std::net::SocketAddr>,
    node: node::ControllerNode,
}

impl ControllerServer {
    /// Opens the data directory, binds the controller listeners and starts the quorum and the
    /// controller; returns once the metadata log is bootstrapped.
    pub async fn bind(mut config: BrokerConfig) -> Result<ControllerServer, StartError> {
        let (listeners, addrs) = open_and_bind(&mut config).await?;
        let node = node::ControllerNode::start(&config, listeners).await?;
        Ok(ControllerServer { addrs, node })
    }

    /// Where every listener is bound, in configuration order.
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.addrs.clone()
    }

    /// Runs until `shutdown` resolves or the metadata quorum fails, then stops the controller
    /// and the quorum.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Stopped {
        let quorum_failed = self.node.quorum_failed();
        let stopped = tokio::select! {
            _ = shutdown => Stopped::Asked,
            _ = quorum_failed => {
                tracing::error!("the metadata quorum stopped (see the error above); shutting down");
                Stopped::MetadataFailed
            }
        };
        self.node.stop().await;
        tracing::info!("stopped");
        stopped
    }
}

/// How many log and index files the partitions may keep open at once: half the process's
/// open-file limit (the rest is for client connections and everything else), so that any number
/// of partitions fits: files beyond it are closed, least recently used first, and reopened when
/// needed.
fn open_file_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if known && limit.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1 << 20
    };
    (soft / 2).max(64)
}

/// Cleans compacted topics every `log.cleaner.backoff.ms` and applies retention every
/// `log.retention.check.interval.ms`.
async fn retention_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let retention_every = Duration::from_millis(broker.config.retention_check_interval_ms().max(1));
    let cleaner_every = Duration::from_millis(broker.config.cleaner_backoff_ms().max(1));
    let mut next_retention = tokio::time::Instant::now() + retention_every;
    let mut next_cleaning = tokio::time::Instant::now() + cleaner_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_retention.min(next_cleaning)) => {}
            _ = stop.changed() => return,
        }
        let now = tokio::time::Instant::now();
        let (retain, clean) = (now >= next_retention, now >= next_cleaning);
        if retain {
            next_retention = now + retention_every;
        }
        if clean {
            next_cleaning = now + cleaner_every;
        }
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if clean {
                b.replicas.compact(now_ms());
            }
            if retain {
                b.replicas.apply_retention(now_ms());
            }
        })
        .await;
    }
}

/// Ticks the clock of each group coordinator shard (session, join, sync and revocation
/// timeouts, lapsed member ids, the initial rebalance delay) when its earliest deadline comes,
/// and at least every `offsets.retention.check.interval.ms` so committed offsets expire with no
/// member deadline pending. Requests that set an earlier deadline (joins, syncs, leaves, KIP-848
/// joins and revocations) lower their shard's next tick and wake it, as does a shard that
/// finished loading; heartbeats and offset commits only push a deadline later, and an early
/// tick is harmless, so they never wake it.
/// Ticks the transaction coordinator's shards: resumes what a new leader found prepared (at
/// once after a load), aborts transactions past their timeout and expires idle transactional
/// ids (every `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
async fn txn_clock(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    const WAIT_MAX: Duration = Duration::from_secs(24 * 60 * 60);
    loop {
        let until = broker.txns.next_tick().saturating_sub(now_ms()).max(0);
        let wait = Duration::from_millis(u64::try_from(until).unwrap_or(0)).min(WAIT_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = broker.txns.clock_lowered() => continue,
            _ = stop.changed() => return,
        }
        broker.txns.tick_due(now_ms());
    }
}

async fn group_clock(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    use tokio::time::Instant;
    // Even if a deadline is always due (a rebalance timeout of 0 makes every join and sync
    // phase end at once), the clock does not spin: each tick scans every group of the shards
    // due. Kept on the monotonic clock, so a step of the wall clock cannot stall the ticks.
    const TICK_INTERVAL_MIN: Duration = Duration::from_millis(10);
    // With no shard, the clock sleeps until one loads and wakes it; bounded all the same.
    const WAIT_MAX: Duration = Duration::from_secs(24 * 60 * 60);
    let mut last_tick: Option<Instant> = None;
    loop {
        // Deadlines are wall-clock milliseconds, as the coordinator keeps them.
        let until_deadline = broker.groups.next_tick().saturating_sub(now_ms()).max(0);
        let wait = Duration::from_millis(u64::try_from(until_deadline).unwrap_or(0)).min(WAIT_MAX);
        let mut at = Instant::now() + wait;
        if let Some(last) = last_tick {
            at = at.max(last + TICK_INTERVAL_MIN);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            // A request set an earlier deadline: sleep again, until that one.
            _ = broker.groups.clock_lowered() => continue,
            _ = stop.changed() => return,
        }
        broker.groups.tick_due(now_ms());
        last_tick = Some(Instant::now());
    }
}
