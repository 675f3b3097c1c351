//! The sending side of the quorum's RPCs: [`TcpPeers`], openraft's network factory over TCP
//! with Kafka frames (`docs/design/cluster.md`, section 6), and [`PeerProgress`], what the
//! leader last heard from each peer, for DescribeQuorum.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RaftMetrics;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::wire::{
    decode_response, encode_request_frame, from_json, read_frame, to_json, RequestHeader,
    WireAddLearnerRequest, WireAddLearnerResponse, WireAppendEntriesRequest,
    WireAppendEntriesResponse, WireInstallSnapshotRequest, WireInstallSnapshotResponse, WireOrigin,
    WireVoteRequest, WireVoteResponse, DEFAULT_MAX_FRAME_BYTES, RAFT_ADD_LEARNER,
    RAFT_APPEND_ENTRIES, RAFT_INSTALL_SNAPSHOT, RAFT_RPC_VERSION, RAFT_VOTE,
};
use super::{now_ms, QuorumNode, QuorumTypes};
use crate::MetadataImage;

/// How long openraft waits before it tries an unreachable peer again.
const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(1);

/// What the leader last heard from one peer, from its AppendEntries answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerContact {
    /// The index of the last entry the peer's log is known to share with the leader's.
    pub matched_index: Option<u64>,
    /// Milliseconds since the epoch of the last successful AppendEntries answer
    /// (DescribeQuorum's `last_fetch_timestamp`).
    pub last_fetch_timestamp_ms: i64,
    /// Milliseconds since the epoch of the last answer at which the peer had every entry the
    /// leader had when it sent the request (`last_caught_up_timestamp`).
    pub last_caught_up_timestamp_ms: Option<i64>,
}

/// Per peer node id, what this node heard from it while leading. Cloneable; every clone sees
/// the same map. One entry per peer ever replicated to.
#[derive(Debug, Clone, Default)]
pub struct PeerProgress {
    peers: Arc<Mutex<BTreeMap<u64, PeerContact>>>,
}

impl PeerProgress {
    pub fn get(&self, node_id: u64) -> Option<PeerContact> {
        self.lock().get(&node_id).copied()
    }

    pub fn all(&self) -> BTreeMap<u64, PeerContact> {
        self.lock().clone()
    }

    /// Records a successful answer at `now_ms`: the peer matches up to `matched_index`, and
    /// the leader's log ended at `leader_log_end` when it sent the request.
    fn record(
        &self,
        node_id: u64,
        matched_index: Option<u64>,
        leader_log_end: Option<u64>,
        now_ms: i64,
    ) {
        let mut peers = self.lock();
        let contact = peers.entry(node_id).or_insert(PeerContact {
            matched_index: None,
            last_fetch_timestamp_ms: now_ms,
            last_caught_up_timestamp_ms: None,
        });
        contact.matched_index = matched_index;
        contact.last_fetch_timestamp_ms = now_ms;
        if leader_log_end.is_some() && matched_index >= leader_log_end {
            contact.last_caught_up_timestamp_ms = Some(now_ms);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PeerContact>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watches of the node a [`TcpPeers`] serves.
struct FollowedNode {
    /// For the leader's log end when it sends.
    metrics: watch::Receiver<RaftMetrics<u64, QuorumNode>>,
    /// For the cluster id once the log has it.
    images: watch::Receiver<Arc<MetadataImage>>,
}

/// openraft's network factory over TCP: one lazily connected connection per peer client.
/// Voters are reached at their `controller.quorum.voters` address, learners at the address
/// their membership entry carries. Cloneable; clones share the cluster id, the progress and
/// the leader's log end.
#[derive(Clone)]
pub struct TcpPeers {
    node_id: u64,
    voters: Arc<BTreeMap<u64, String>>,
    /// The cluster id given at construction; otherwise the one the node's image learns.
    cluster_id: Option<String>,
    progress: PeerProgress,
    max_frame_bytes: usize,
    /// What this node runs, once it runs ([`TcpPeers::follow`]).
    node: Arc<OnceLock<FollowedNode>>,
    /// Peers whose last call failed, so a peer that stays down is logged once, not per retry.
    unreachable: Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
}

impl std::fmt::Debug for TcpPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPeers")
            .field("node_id", &self.node_id)
            .field("voters", &self.voters)
            .finish_non_exhaustive()
    }
}

impl TcpPeers {
    /// The network of node `node_id`, with the voters' addresses (`controller.quorum.voters`,
    /// by node id) and the cluster id if this node knows it.
    pub fn new(node_id: u64, voters: BTreeMap<u64, String>, cluster_id: Option<String>) -> Self {
        TcpPeers {
            node_id,
            voters: Arc::new(voters),
            cluster_id,
            progress: PeerProgress::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            node: Arc::new(OnceLock::new()),
            unreachable: Arc::default(),
        }
    }

    /// Logs a peer going unreachable or coming back, once per change.
    fn note_reachable(&self, target: u64, reachable: bool, why: Option<&PeerError>) {
        let mut down = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if reachable {
            down.remove(&target)
        } else {
            down.insert(target)
        };
        if !changed {
            return;
        }
        match why {
            Some(e) => {
                tracing::warn!(peer = target, error = %e, "metadata quorum peer unreachable; retrying every second")
            }
            None => tracing::info!(peer = target, "metadata quorum peer reachable again"),
        }
    }

    /// Bounds the frames sent and read: `socket.request.max.bytes`.
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    /// What this node heard from each peer while it led.
    pub fn progress(&self) -> PeerProgress {
        self.progress.clone()
    }

    /// Follows the node's Raft metrics, for the log end `last_caught_up_timestamp` compares
    /// against, and its images, for the cluster id. Called by
    /// [`Quorum::start_over_tcp`](super::Quorum::start_over_tcp).
    pub(crate) fn follow(
        &self,
        metrics: watch::Receiver<RaftMetrics<u64, QuorumNode>>,
        images: watch::Receiver<Arc<MetadataImage>>,
    ) {
        let _ = self.node.set(FollowedNode { metrics, images });
    }

    fn origin(&self) -> WireOrigin {
        let set = self.cluster_id.clone();
        let learned = || {
            self.node
                .get()
                .and_then(|n| n.images.borrow().cluster_id().map(str::to_string))
        };
        WireOrigin {
            node_id: self.node_id,
            cluster_id: set.or_else(learned),
        }
    }

    /// The voters' addresses, by node id (`controller.quorum.voters`).
    pub(crate) fn voters(&self) -> &BTreeMap<u64, String> {
        &self.voters
    }

    /// Asks voter `target` to make this node a learner reached at `address`, within `ttl`.
    pub(crate) async fn ask_to_join(
        &self,
        target: u64,
        address: &str,
        ttl: Duration,
    ) -> Result<WireAddLearnerResponse, String> {
        let mut client = TcpPeerClient {
            peers: self.clone(),
            target,
            address: self.voters.get(&target).cloned(),
            connection: None,
            next_correlation_id: 0,
        };
        let request = WireAddLearnerRequest {
            origin: self.origin(),
            address: address.to_string(),
        };
        let body = client
            .encode("an add learner request", &request)
            .map_err(|e| e.to_string())?;
        match client.call(RAFT_ADD_LEARNER, body, ttl).await {
            Ok(answer) => Ok(answer),
            Err(CallError::Unreachable(e)) => Err(e.to_string()),
            Err(CallError::Timeout) => Err(format!("node {target} did not answer within {ttl:?}")),
        }
    }

    /// The index of the last entry in this node's log now. It may trail the log by the
    /// latest append (metrics are published after it), so a peer may be counted caught up
    /// one append early.
    fn leader_log_end(&self) -> Option<u64> {
        self.node
            .get()
            .and_then(|n| n.metrics.borrow().last_log_index)
    }
}

impl RaftNetworkFactory<QuorumTypes> for TcpPeers {
    type Network = TcpPeerClient;

    async fn new_client(&mut self, target: u64, node: &QuorumNode) -> TcpPeerClient {
        let address = self
            .voters
            .get(&target)
            .cloned()
            .or_else(|| node.address.clone());
        TcpPeerClient {
            peers: self.clone(),
            target,
            address,
            connection: None,
            next_correlation_id: 0,
        }
    }
}

/// Why a peer could not be reached or answered nonsense.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("node {0} has no known address")]
    NoAddress(u64),
    #[error("connecting to node {target} at {address}: {reason}")]
    Connect {
        target: u64,
        address: String,
        reason: String,
    },
    #[error("the connection to node {target} broke: {reason}")]
    Broken { target: u64, reason: String },
    #[error("node {target} answered nonsense: {reason}")]
    Protocol { target: u64, reason: String },
    #[error("a request to node {target} cannot be encoded: {reason}")]
    Encode { target: u64, reason: String },
}

/// How one exchange failed, before it becomes openraft's error.
enum CallError {
    Unreachable(PeerError),
    Timeout,
}

/// The client of one peer. It connects on its first call, and after any failure drops the
/// connection so the next call connects afresh (and no late answer is read as the next one's).
pub struct TcpPeerClient {
    peers: TcpPeers,
    target: u64,
    address: Option<String>,
    connection: Option<TcpStream>,
    next_correlation_id: i32,
}

impl TcpPeerClient {
    /// Sends one request and reads its answer, within `ttl`.
    async fn call<T: DeserializeOwned>(
        &mut self,
        api_key: i16,
        body: Vec<u8>,
        ttl: Duration,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + ttl;
        let target = self.target;
        let mut stream = match self.connection.take() {
            Some(stream) => stream,
            None => self.connect(deadline).await?,
        };
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request_frame(
            &RequestHeader {
                api_key,
                api_version: RAFT_RPC_VERSION,
                correlation_id,
                client_id: Some(format!("caudal-quorum-{}", self.peers.node_id)),
            },
            &body,
        );
        let max_frame_bytes = self.peers.max_frame_bytes;
        let exchange = async {
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            match read_frame(&mut stream, max_frame_bytes).await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err("closed by the peer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let frame = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => return Err(CallError::Timeout),
            Ok(Err(reason)) => {
                return Err(CallError::Unreachable(PeerError::Broken { target, reason }))
            }
            Ok(Ok(frame)) => frame,
        };
        let protocol =
            |reason: String| CallError::Unreachable(PeerError::Protocol { target, reason });
        let (answered_id, body) = decode_response(&frame).map_err(|e| protocol(e.to_string()))?;
        if answered_id != correlation_id {
            return Err(protocol(format!(
                "correlation id {answered_id} answers request {correlation_id}"
            )));
        }
        let answer =
            from_json("a quorum RPC response", body).map_err(|e| protocol(e.to_string()))?;
        self.connection = Some(stream);
        self.peers.note_reachable(target, true, None);
        Ok(answer)
    }

    async fn connect(&self, deadline: Instant) -> Result<TcpStream, CallError> {
        let target = self.target;
        let Some(address) = self.address.clone() else {
            return Err(CallError::Unreachable(PeerError::NoAddress(target)));
        };
        let failed = |reason: String| {
            CallError::Unreachable(PeerError::Connect {
                target,
                address: address.clone(),
                reason,
            })
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(&address)).await {
            Err(_) => return Err(failed("timed out".to_string())),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        // Heartbeats are small and latency is what elections measure.
        stream
            .set_nodelay(true)
            .map_err(|e| failed(e.to_string()))?;
        Ok(stream)
    }

    /// The request's encoded body.
    fn encode<T: serde::Serialize>(
        &self,
        what: &'static str,
        body: &T,
    ) -> Result<Vec<u8>, PeerError> {
        to_json(what, body).map_err(|e| PeerError::Encode {
            target: self.target,
            reason: e.to_string(),
        })
    }

    /// Room left for a body in a frame: the header is at most a few dozen bytes.
    fn fits(&self, body: &[u8]) -> bool {
        body.len().saturating_add(128) <= self.peers.max_frame_bytes
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<u64, QuorumNode, E> {
        match e {
            CallError::Unreachable(e) => {
                self.peers.note_reachable(self.target, false, Some(&e));
                unreachable(e)
            }
            CallError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.peers.node_id,
                target: self.target,
                timeout: ttl,
            }),
        }
    }
}

fn unreachable<E: std::error::Error>(e: PeerError) -> RPCError<u64, QuorumNode, E> {
    tracing::debug!(error = %e, "metadata quorum peer unreachable");
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetwork<QuorumTypes> for TcpPeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QuorumTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        let leader_log_end = self.peers.leader_log_end();
        let sent_end = rpc
            .entries
            .last()
            .map(|e| e.log_id.index)
            .or(rpc.prev_log_id.map(|id| id.index));
        let wire = WireAppendEntriesRequest::from_raft(self.peers.origin(), &rpc).map_err(|e| {
            unreachable(PeerError::Encode {
                target: self.target,
                reason: e.to_string(),
            })
        })?;
        let body = self
            .encode("an append entries request", &wire)
            .map_err(unreachable)?;
        if !self.fits(&body) {
            if rpc.entries.len() > 1 {
                let half = (rpc.entries.len() / 2) as u64;
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(half),
                ));
            }
            return Err(unreachable(PeerError::Encode {
                target: self.target,
                reason: format!(
                    "one entry of {} bytes exceeds the frame limit of {} bytes",
                    body.len(),
                    self.peers.max_frame_bytes
                ),
            }));
        }
        let ttl = option.hard_ttl();
        let answer: WireAppendEntriesResponse = self
            .call(RAFT_APPEND_ENTRIES, body, ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::AppendEntries, ttl))?;
        let answer = answer.to_raft();
        let matched = match &answer {
            AppendEntriesResponse::Success => Some(sent_end),
            AppendEntriesResponse::PartialSuccess(m) => Some(m.map(|id| id.index)),
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        };
        if let Some(matched) = matched {
            self.peers
                .progress
                .record(self.target, matched, leader_log_end, now_ms());
        }
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QuorumTypes>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, QuorumNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let wire = WireInstallSnapshotRequest::from_raft(self.peers.origin(), &rpc);
        let body = self
            .encode("an install snapshot request", &wire)
            .map_err(unreachable)?;
        if !self.fits(&body) {
            // openraft sends chunks of `snapshot_max_chunk_size` (3 MiB, 4 MiB in base64), and
            // does not let a network ask for smaller ones in 0.9.
            return Err(unreachable(PeerError::Encode {
                target: self.target,
                reason: format!(
                    "a checkpoint chunk of {} bytes exceeds the frame limit of {} bytes",
                    body.len(),
                    self.peers.max_frame_bytes
                ),
            }));
        }
        let ttl = option.hard_ttl();
        let answer: WireInstallSnapshotResponse = self
            .call(RAFT_INSTALL_SNAPSHOT, body, ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::InstallSnapshot, ttl))?;
        answer.to_raft().map_err(|e| {
            RPCError::RemoteError(RemoteError::new(self.target, RaftError::APIError(e)))
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        let wire = WireVoteRequest::from_raft(self.peers.origin(), &rpc);
        let body = self.encode("a vote request", &wire).map_err(unreachable)?;
        let ttl = option.hard_ttl();
        let answer: WireVoteResponse = self
            .call(RAFT_VOTE, body, ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::Vote, ttl))?;
        Ok(answer.to_raft())
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_caught_up_only_when_it_has_the_leaders_whole_log() {
        let progress = PeerProgress::default();
        progress.record(2, Some(5), Some(9), 1_000);
        assert_eq!(
            progress.get(2),
            Some(PeerContact {
                matched_index: Some(5),
                last_fetch_timestamp_ms: 1_000,
                last_caught_up_timestamp_ms: None,
            })
        );
        progress.record(2, Some(9), Some(9), 2_000);
        progress.record(2, Some(9), Some(12), 3_000);
        assert_eq!(
            progress.get(2),
            Some(PeerContact {
                matched_index: Some(9),
                last_fetch_timestamp_ms: 3_000,
                last_caught_up_timestamp_ms: Some(2_000),
            })
        );
        // Without the leader's log end nothing is claimed.
        progress.record(3, Some(9), None, 4_000);
        assert_eq!(progress.get(3).unwrap().last_caught_up_timestamp_ms, None);
        assert_eq!(progress.all().len(), 2);
    }
}
