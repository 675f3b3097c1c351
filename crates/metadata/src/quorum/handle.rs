//! [`Quorum`]: one node's Raft instance over its metadata log, with the image it applies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use super::wire::WireAddLearnerResponse;
use super::{
    blocking, metadata_log_dir, Applied, LogStore, MetadataLogConfig, PeerContact, PeerProgress,
    QuorumNode, QuorumStoreError, QuorumTypes, RaftRpcServer, StateMachine, TcpPeers,
};
use crate::records::EntryRecords;
use crate::MetadataImage;

/// Settings of one node's quorum, named after Kafka's where Kafka has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// `node.id`.
    pub node_id: u64,
    /// The shortest election timeout. A follower that heard from a leader waits the longest
    /// election timeout (the leader's lease) and then a random one between the two before it
    /// stands for election.
    pub election_timeout_ms: u64,
    /// The longest election timeout; `None` is twice the shortest.
    pub election_timeout_max_ms: Option<u64>,
    /// How often the leader heartbeats its followers.
    pub heartbeat_interval_ms: u64,
    /// Entries applied since the last checkpoint that trigger the next; `None` checkpoints only
    /// when asked.
    pub snapshot_after_entries: Option<u64>,
    /// Entries kept in the log below a checkpoint, so a follower slightly behind catches up from
    /// the log rather than by a whole checkpoint.
    pub entries_kept_below_snapshot: u64,
    pub log: MetadataLogConfig,
}

impl QuorumConfig {
    pub fn new(node_id: u64) -> QuorumConfig {
        QuorumConfig {
            node_id,
            election_timeout_ms: 1000,
            election_timeout_max_ms: None,
            heartbeat_interval_ms: 100,
            snapshot_after_entries: Some(10_000),
            entries_kept_below_snapshot: 1000,
            log: MetadataLogConfig::default(),
        }
    }

    fn raft_config(&self) -> Result<Config, QuorumError> {
        Config {
            cluster_name: "caudal-metadata".to_string(),
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self
                .election_timeout_max_ms
                .unwrap_or(self.election_timeout_ms.saturating_mul(2)),
            heartbeat_interval: self.heartbeat_interval_ms,
            snapshot_policy: match self.snapshot_after_entries {
                Some(n) => SnapshotPolicy::LogsSinceLast(n),
                None => SnapshotPolicy::Never,
            },
            max_in_snapshot_log_to_keep: self.entries_kept_below_snapshot,
            ..Config::default()
        }
        .validate()
        .map_err(|e| QuorumError::Config(e.to_string()))
    }
}

/// Why a quorum operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error(transparent)]
    Store(#[from] QuorumStoreError),
    #[error("invalid quorum settings: {0}")]
    Config(String),
    /// Only the leader takes proposals; `leader` is the one this node knows of, if any.
    #[error("node is not the quorum leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the quorum has stopped: {0}")]
    Stopped(String),
    #[error("{0}")]
    Stalled(String),
    #[error("{0}")]
    Raft(String),
}

/// Between requests to join the quorum as a learner: from this, doubling...
const JOIN_RETRY_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(1);
/// The longest one request to join waits for its answer (the leader writes a membership
/// entry before it answers).
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this node stands in the quorum, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: u64,
    /// The leader epoch.
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    /// The index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// The index of the last entry applied to the image.
    pub last_applied_index: Option<u64>,
    pub voters: BTreeSet<u64>,
}

impl QuorumStatus {
    fn of(node_id: u64, m: &RaftMetrics<u64, QuorumNode>) -> QuorumStatus {
        QuorumStatus {
            node_id,
            term: m.current_term,
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|id| id.index),
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }
}

/// One member of the quorum as the leader sees it (a `ReplicaState` of DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDescription {
    pub node_id: u64,
    /// The offset after the last entry the leader knows the member has: Kafka's log end
    /// offset, the member's matched index plus one. `None` while the leader has not heard.
    pub log_end_offset: Option<u64>,
    /// Milliseconds since the epoch of the member's last answer to the leader (now, for the
    /// leader itself).
    pub last_fetch_timestamp_ms: Option<i64>,
    /// Milliseconds since the epoch of the last answer at which the member had every entry the
    /// leader had when it asked (now, for the leader itself).
    pub last_caught_up_timestamp_ms: Option<i64>,
}

/// The quorum as its leader describes it, for DescribeQuorum (KIP-595, KIP-836): only the
/// leader knows its followers' progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumDescription {
    pub leader_id: u64,
    /// The Raft term, Kafka's leader epoch of `__cluster_metadata`.
    pub leader_epoch: u64,
    /// The offset after the last committed entry.
    pub high_watermark: u64,
    /// Every voter, by id.
    pub voters: Vec<ReplicaDescription>,
    /// The members that replicate without voting (learners: broker-only nodes).
    pub observers: Vec<ReplicaDescription>,
}

impl QuorumDescription {
    /// The description of a quorum led by `node_id` with metrics `m`, the committed index
    /// `committed` and what the leader heard from each peer; `None` unless `node_id` leads.
    fn of(
        node_id: u64,
        m: &RaftMetrics<u64, QuorumNode>,
        committed: Option<u64>,
        contacts: &BTreeMap<u64, PeerContact>,
        now_ms: i64,
    ) -> Option<QuorumDescription> {
        if m.state != ServerState::Leader {
            return None;
        }
        let replication = m.replication.as_ref();
        let describe = |id: u64| {
            if id == node_id {
                // Kafka reports the leader as fetching and caught up now.
                return ReplicaDescription {
                    node_id: id,
                    log_end_offset: Some(m.last_log_index.map_or(0, |i| i.saturating_add(1))),
                    last_fetch_timestamp_ms: Some(now_ms),
                    last_caught_up_timestamp_ms: Some(now_ms),
                };
            }
            // openraft's matched log ids start afresh with each leadership. The contact times
            // are kept across leaderships, so they count only once this one has heard from
            // the member: before that they may be from an earlier term of this node's.
            let matched = replication.and_then(|r| r.get(&id).copied().flatten());
            let contact = contacts.get(&id).filter(|_| matched.is_some());
            ReplicaDescription {
                node_id: id,
                log_end_offset: matched.map(|log_id| log_id.index.saturating_add(1)),
                last_fetch_timestamp_ms: contact.map(|c| c.last_fetch_timestamp_ms),
                last_caught_up_timestamp_ms: contact.and_then(|c| c.last_caught_up_timestamp_ms),
            }
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let observers: BTreeSet<u64> = membership.learner_ids().collect();
        Some(QuorumDescription {
            leader_id: node_id,
            leader_epoch: m.current_term,
            high_watermark: committed.map_or(0, |i| i.saturating_add(1)),
            voters: voters.into_iter().map(describe).collect(),
            observers: observers.into_iter().map(describe).collect(),
        })
    }
}

/// One node of the metadata quorum.
pub struct Quorum {
    raft: Raft<QuorumTypes>,
    client: QuorumClient,
    store: LogStore,
    /// The TCP network, when the quorum runs over one; a learner asks to join through it.
    peers: Option<TcpPeers>,
    tie_breaker: tokio::task::JoinHandle<()>,
}

/// What the tasks around a running quorum use (the controller runtime, later the broker):
/// proposals, images and status. Cloneable; it does not keep the quorum running, and once the
/// quorum has shut down its proposals fail with [`QuorumError::Stopped`].
#[derive(Clone)]
pub struct QuorumClient {
    node_id: u64,
    raft: Raft<QuorumTypes>,
    images: watch::Receiver<Arc<MetadataImage>>,
    /// What this node heard from its peers while leading; none on a lone voter.
    progress: PeerProgress,
}

impl std::fmt::Debug for QuorumClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumClient")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Follows this node's [`QuorumStatus`] as it changes (leadership, term, applied index).
pub struct StatusWatch {
    node_id: u64,
    metrics: watch::Receiver<RaftMetrics<u64, QuorumNode>>,
}

impl StatusWatch {
    /// The status now; later [`changed`](Self::changed) calls wait for a newer one.
    pub fn current(&mut self) -> QuorumStatus {
        QuorumStatus::of(self.node_id, &self.metrics.borrow_and_update())
    }

    /// Waits until the status may have changed since [`current`](Self::current) was last read.
    /// Fails once the quorum has stopped.
    pub async fn changed(&mut self) -> Result<(), QuorumError> {
        self.metrics
            .changed()
            .await
            .map_err(|_| QuorumError::Stopped("the quorum has shut down".to_string()))?;
        match &self.metrics.borrow().running_state {
            Ok(()) => Ok(()),
            Err(fatal) => Err(QuorumError::Stopped(fatal.to_string())),
        }
    }
}

impl QuorumClient {
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Proposes one entry; returns once it is committed and applied here (the leader).
    pub async fn propose(&self, records: EntryRecords) -> Result<Applied, QuorumError> {
        match self.raft.client_write(records).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(QuorumError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Err(QuorumError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(QuorumError::Stopped(e.to_string())),
        }
    }

    /// The images applied on this node, newest first seen.
    pub fn images(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.images.clone()
    }

    /// The latest image applied on this node.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.images.borrow().clone()
    }

    pub fn status(&self) -> QuorumStatus {
        QuorumStatus::of(self.node_id, &self.raft.metrics().borrow())
    }

    /// The quorum as this node describes it while it leads, at `now_ms` (milliseconds since
    /// the epoch); `None` when it does not lead (Kafka answers NOT_LEADER_OR_FOLLOWER).
    pub async fn describe(&self, now_ms: i64) -> Result<Option<QuorumDescription>, QuorumError> {
        let committed = self
            .raft
            .with_raft_state(|state| state.committed.map(|log_id| log_id.index))
            .await
            .map_err(|e| QuorumError::Stopped(e.to_string()))?;
        let metrics = self.raft.metrics().borrow().clone();
        Ok(QuorumDescription::of(
            self.node_id,
            &metrics,
            committed,
            &self.progress.all(),
            now_ms,
        ))
    }

    /// A watch of this node's status, for tasks that act on leadership.
    pub fn statuses(&self) -> StatusWatch {
        StatusWatch {
            node_id: self.node_id,
            metrics: self.raft.metrics(),
        }
    }
}

/// Failed election rounds in a row after which [`break_election_ties`] steps in.
const TIED_ROUNDS: u64 = 2;

/// Starts an election at a random moment when elections keep failing.
///
/// openraft 0.9 draws a node's election timeout once, when the node starts, and checks it on a
/// tick of 1.5 heartbeat intervals. Two candidates whose timeouts round up to the same tick and
/// whose elections began within a message's latency of each other (two followers that lost
/// the same leader) each vote for themselves, time out on the same tick, and do it again, every
/// round, for ever. A random delay before an extra election breaks the symmetry: the first
/// candidate of the next term asks a node still in the old one, which grants its vote.
async fn break_election_ties(raft: Raft<QuorumTypes>, election_timeout_ms: u64) {
    let mut metrics = raft.metrics();
    let mut first_failed_term: Option<u64> = None;
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        let (term, state, leader, running) = {
            let m = metrics.borrow();
            (
                m.current_term,
                m.state,
                m.current_leader,
                m.running_state.is_ok(),
            )
        };
        if !running {
            return;
        }
        if state != ServerState::Candidate || leader.is_some() {
            first_failed_term = None;
            continue;
        }
        let first = *first_failed_term.get_or_insert(term);
        if term < first + TIED_ROUNDS {
            continue;
        }
        first_failed_term = None;
        let jitter_ms =
            (uuid::Uuid::new_v4().as_u128() % u128::from(election_timeout_ms.max(1))) as u64;
        tokio::time::sleep(std::time::Duration::from_millis(jitter_ms)).await;
        let still_tied = {
            let m = metrics.borrow_and_update();
            m.state == ServerState::Candidate && m.current_leader.is_none()
        };
        if still_tied {
            tracing::info!(
                term,
                "metadata quorum elections keep tying; starting one at a random moment"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

impl Quorum {
    /// Opens the metadata log and checkpoints under `data_dir` and starts Raft on them. The
    /// node rejoins its quorum if it had one; a fresh directory waits for
    /// [`initialize`](Self::initialize) here or for a leader to reach it.
    pub async fn start<N>(
        config: &QuorumConfig,
        data_dir: &Path,
        network: N,
    ) -> Result<Quorum, QuorumError>
    where
        N: RaftNetworkFactory<QuorumTypes>,
    {
        let raft_config = Arc::new(config.raft_config()?);
        let dir = metadata_log_dir(data_dir);
        let log_config = config.log.clone();
        let (store, machine, images) = blocking(move || {
            let store = LogStore::open(&dir, &log_config)?;
            let (machine, images) = StateMachine::open(&dir)?;
            Ok((store, machine, images))
        })
        .await?;
        let raft = Raft::new(config.node_id, raft_config, network, store.clone(), machine)
            .await
            .map_err(|e| QuorumError::Stopped(e.to_string()))?;
        // A lone voter need not wait out an election timeout to lead again: a single node
        // restarts as fast as it did before it had a quorum.
        let lone_voter = {
            let m = raft.metrics().borrow().clone();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            voters == [config.node_id]
        };
        if lone_voter {
            raft.trigger()
                .elect()
                .await
                .map_err(|e| QuorumError::Stopped(e.to_string()))?;
        }
        let tie_breaker = tokio::spawn(break_election_ties(
            raft.clone(),
            config.election_timeout_ms,
        ));
        Ok(Quorum {
            client: QuorumClient {
                node_id: config.node_id,
                raft: raft.clone(),
                images,
                progress: PeerProgress::default(),
            },
            raft,
            store,
            peers: None,
            tie_breaker,
        })
    }

    /// [`start`](Self::start) over TCP: `peers` also follows this node's log end, which
    /// [`PeerProgress`](super::PeerProgress)'s caught-up times compare against, and stamps the
    /// cluster id once the image has one.
    pub async fn start_over_tcp(
        config: &QuorumConfig,
        data_dir: &Path,
        peers: TcpPeers,
    ) -> Result<Quorum, QuorumError> {
        let mut quorum = Quorum::start(config, data_dir, peers.clone()).await?;
        peers.follow(quorum.raft.metrics(), quorum.images());
        quorum.client.progress = peers.progress();
        quorum.peers = Some(peers);
        Ok(quorum)
    }

    /// What answers the quorum RPCs other nodes send this one. `cluster_id` is this node's if
    /// it knows it; otherwise the one its image learns from the log is used once applied.
    pub fn rpc_server(&self, cluster_id: Option<String>) -> RaftRpcServer {
        RaftRpcServer::new(self.raft.clone(), self.client.images(), cluster_id)
    }

    /// Starts a quorum of `voters` if this node is the lowest-id voter and pristine; other
    /// voters wait for it to reach them (`docs/design/cluster.md`, section 9: every node
    /// given the same voters agrees on who initialises, so two nodes never initialise two
    /// different quorums). Returns whether this node initialised.
    pub async fn initialize_if_lowest(&self, voters: &BTreeSet<u64>) -> Result<bool, QuorumError> {
        match voters.first() {
            Some(&lowest) if lowest == self.node_id() => self.initialize(voters).await,
            Some(_) => Ok(false),
            None => Err(QuorumError::Config("no voters".to_string())),
        }
    }

    /// Makes a pristine node the first member of a quorum of `voters` (which must include it).
    /// Returns false, doing nothing, when this node already has a log or a vote.
    pub async fn initialize(&self, voters: &BTreeSet<u64>) -> Result<bool, QuorumError> {
        // A node that has voted is not pristine: answered here, since openraft logs an error
        // for every refused initialisation and a node tries at each start.
        let voted = openraft::storage::RaftLogStorage::read_vote(&mut self.store.clone())
            .await
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
        if voted.is_some() {
            return Ok(false);
        }
        let members: BTreeMap<u64, QuorumNode> = voters
            .iter()
            .map(|&id| (id, QuorumNode::default()))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(RaftError::APIError(e)) => Err(QuorumError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(QuorumError::Stopped(e.to_string())),
        }
    }

    /// Makes this node, which is not a voter, a learner of the quorum reached at `address`
    /// (where it answers the quorum RPCs): asks the voters in turn, the leader first once one
    /// is known, until this node's own membership names it a learner at that address, so the
    /// leader replicates the log to it. Returns at once when it already is one (a restart: it
    /// just catches up). Nothing is needed when the leader changes later: the membership is in
    /// the log, and every leader replicates to every learner it lists.
    ///
    /// Gives up with [`QuorumError::Stalled`] after `timeout`, and with
    /// [`QuorumError::Config`] when the leader refuses for good (this node is a voter).
    pub async fn join_as_learner(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<(), QuorumError> {
        let Some(peers) = self.peers.clone() else {
            return Err(QuorumError::Config(
                "a learner needs the quorum over TCP".to_string(),
            ));
        };
        let voters: Vec<u64> = peers.voters().keys().copied().collect();
        if voters.is_empty() {
            return Err(QuorumError::Config("no voters to join".to_string()));
        }
        let node_id = self.node_id();
        let wanted = QuorumNode {
            address: Some(address.to_string()),
        };
        let mut metrics = self.raft.metrics();
        let joined = |m: &RaftMetrics<u64, QuorumNode>| {
            let membership = m.membership_config.membership();
            membership.get_node(&node_id) == Some(&wanted)
                && !membership.voter_ids().any(|v| v == node_id)
        };
        let attempts = async {
            let mut hinted: Option<u64> = None;
            let mut next_voter = 0usize;
            let mut delays = std::iter::successors(Some(JOIN_RETRY_MIN), |d| {
                Some(d.saturating_mul(2).min(JOIN_RETRY_MAX))
            });
            let mut logged = false;
            loop {
                if joined(&metrics.borrow_and_update()) {
                    return Ok(());
                }
                let known = metrics.borrow().current_leader;
                let target = match hinted.take().or(known).filter(|l| voters.contains(l)) {
                    Some(leader) => leader,
                    None => {
                        next_voter = (next_voter + 1) % voters.len();
                        voters[next_voter]
                    }
                };
                let mut wait = delays.next().unwrap_or(JOIN_RETRY_MAX);
                match peers.ask_to_join(target, address, JOIN_CALL_TIMEOUT).await {
                    Ok(WireAddLearnerResponse::Added) => {
                        // The membership entry reaches this node with the next AppendEntries.
                        wait = JOIN_RETRY_MAX;
                    }
                    Ok(WireAddLearnerResponse::NotLeader { leader }) => {
                        hinted = leader.filter(|l| *l != target);
                        if hinted.is_some() {
                            wait = Duration::ZERO;
                        }
                    }
                    Ok(WireAddLearnerResponse::Retry { reason }) => {
                        tracing::debug!(target, %reason, "joining the metadata quorum: asked to retry");
                    }
                    Ok(WireAddLearnerResponse::Refused { reason }) => {
                        return Err(QuorumError::Config(reason));
                    }
                    Err(reason) => {
                        if !logged {
                            tracing::info!(voter = target, %reason, "joining the metadata quorum as a learner: voter not reachable yet; trying the others");
                            logged = true;
                        }
                    }
                }
                // A membership arriving meanwhile ends the wait early.
                let _ = tokio::time::timeout(wait, metrics.changed()).await;
            }
        };
        match tokio::time::timeout(timeout, attempts).await {
            Ok(joined) => joined,
            Err(_) => Err(QuorumError::Stalled(format!(
                "no voter of {voters:?} made node {node_id} a learner within {timeout:?}"
            ))),
        }
    }

    /// Proposes one entry; returns once it is committed and applied here (the leader).
    pub async fn propose(&self, records: EntryRecords) -> Result<Applied, QuorumError> {
        self.client.propose(records).await
    }

    /// The images applied on this node, newest first seen.
    pub fn images(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.client.images()
    }

    /// The latest image applied on this node.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.client.image()
    }

    pub fn node_id(&self) -> u64 {
        self.client.node_id()
    }

    pub fn status(&self) -> QuorumStatus {
        self.client.status()
    }

    /// See [`QuorumClient::describe`].
    pub async fn describe(&self, now_ms: i64) -> Result<Option<QuorumDescription>, QuorumError> {
        self.client.describe(now_ms).await
    }

    /// A cloneable handle for the tasks that propose and watch while this node runs.
    pub fn client(&self) -> QuorumClient {
        self.client.clone()
    }

    /// Asks for a checkpoint of the current image now.
    pub async fn snapshot(&self) -> Result<(), QuorumError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| QuorumError::Stopped(e.to_string()))
    }

    /// Stops Raft and checkpoints the log so the next start need not scan it.
    pub async fn shutdown(self) -> Result<(), QuorumError> {
        self.tie_breaker.abort();
        self.raft
            .shutdown()
            .await
            .map_err(|e| QuorumError::Stopped(e.to_string()))?;
        let store = self.store;
        blocking(move || store.close()).await?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn raft(&self) -> &Raft<QuorumTypes> {
        &self.raft
    }
}
