//! The receiving side of the quorum's RPCs: [`RaftRpcServer`] answers frames with the private
//! API keys by calling this node's Raft. The broker's connection layer reads the frames, peeks
//! the API key ([`RaftRpcServer::is_raft_key`]) and writes the response header; this module owns
//! only the bodies.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, RaftMetrics, ServerState};
use tokio::sync::watch;

use super::wire::{
    from_json, to_json, FrameReadError, WireAddLearnerRequest, WireAddLearnerResponse,
    WireAppendEntriesRequest, WireAppendEntriesResponse, WireInstallSnapshotRequest,
    WireInstallSnapshotResponse, WireOrigin, WireVoteRequest, WireVoteResponse,
    DEFAULT_MAX_FRAME_BYTES, MAX_LEARNER_ADDRESS_BYTES, RAFT_ADD_LEARNER, RAFT_APPEND_ENTRIES,
    RAFT_INSTALL_SNAPSHOT, RAFT_RPC_VERSION, RAFT_VOTE,
};
use super::{QuorumNode, QuorumTypes, WireError};
use crate::MetadataImage;

/// The most learners a membership may hold. Broker-only nodes are added on request and never
/// removed yet, so a bound keeps a stream of requests with made-up ids from growing every
/// node's membership and the leader's replication streams without end.
pub const MAX_LEARNERS: usize = 1024;

/// Why a quorum RPC was refused. The caller closes the connection and logs the error: the
/// sender's client sees the peer as unreachable and backs off.
#[derive(Debug, thiserror::Error)]
pub enum RaftRpcError {
    #[error("api key {0} is not a quorum RPC")]
    UnknownApiKey(i16),
    #[error("quorum RPC {api_key} has no version {api_version}")]
    UnsupportedVersion { api_key: i16, api_version: i16 },
    #[error("a quorum RPC body of {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },
    #[error("a quorum RPC: {0}")]
    Wire(#[from] WireError),
    #[error("node {node_id} is neither a voter nor a learner of this node's quorum")]
    UnknownSender { node_id: u64 },
    #[error("node {node_id} belongs to cluster {theirs}, this node to cluster {ours}")]
    OtherCluster {
        node_id: u64,
        ours: String,
        theirs: String,
    },
    #[error("the quorum has stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Read(#[from] FrameReadError),
    #[error("writing a quorum RPC response: {0}")]
    Write(#[source] std::io::Error),
}

/// Answers quorum RPCs for one node. Cloneable; it does not keep the quorum running, and once
/// the quorum has shut down every RPC fails with [`RaftRpcError::Stopped`].
#[derive(Clone)]
pub struct RaftRpcServer {
    raft: Raft<QuorumTypes>,
    metrics: watch::Receiver<RaftMetrics<u64, QuorumNode>>,
    images: watch::Receiver<Arc<MetadataImage>>,
    cluster_id: Option<String>,
    pub(crate) max_frame_bytes: usize,
}

impl std::fmt::Debug for RaftRpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftRpcServer")
            .field("cluster_id", &self.cluster_id)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .finish_non_exhaustive()
    }
}

impl RaftRpcServer {
    pub(crate) fn new(
        raft: Raft<QuorumTypes>,
        images: watch::Receiver<Arc<MetadataImage>>,
        cluster_id: Option<String>,
    ) -> RaftRpcServer {
        RaftRpcServer {
            metrics: raft.metrics(),
            raft,
            images,
            cluster_id,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Bounds the bodies (and, in [`serve_connection`], the frames) this server reads:
    /// `socket.request.max.bytes`.
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> RaftRpcServer {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    /// Whether `api_key` is one of the quorum's private keys, which no Kafka client sends.
    pub fn is_raft_key(api_key: i16) -> bool {
        matches!(
            api_key,
            RAFT_VOTE | RAFT_APPEND_ENTRIES | RAFT_INSTALL_SNAPSHOT | RAFT_ADD_LEARNER
        )
    }

    /// Answers one request body with the response body; the caller frames it under the
    /// request's correlation id. An error means the request was refused or could not be read:
    /// close the connection.
    pub async fn handle(
        &self,
        api_key: i16,
        api_version: i16,
        body: Bytes,
    ) -> Result<Bytes, RaftRpcError> {
        if !Self::is_raft_key(api_key) {
            return Err(RaftRpcError::UnknownApiKey(api_key));
        }
        if api_version != RAFT_RPC_VERSION {
            return Err(RaftRpcError::UnsupportedVersion {
                api_key,
                api_version,
            });
        }
        if body.len() > self.max_frame_bytes {
            return Err(RaftRpcError::BodyTooLarge {
                size: body.len(),
                max: self.max_frame_bytes,
            });
        }
        let answer = match api_key {
            RAFT_VOTE => {
                let request: WireVoteRequest = from_json("a vote request", &body)?;
                self.admit(&request.origin)?;
                let response = self.raft.vote(request.to_raft()).await.map_err(stopped)?;
                to_json("a vote response", &WireVoteResponse::from(&response))?
            }
            RAFT_APPEND_ENTRIES => {
                let request: WireAppendEntriesRequest =
                    from_json("an append entries request", &body)?;
                self.admit(&request.origin)?;
                let rpc = request.to_raft()?;
                let response = self.raft.append_entries(rpc).await.map_err(stopped)?;
                to_json(
                    "an append entries response",
                    &WireAppendEntriesResponse::from(&response),
                )?
            }
            RAFT_ADD_LEARNER => {
                let request: WireAddLearnerRequest = from_json("an add learner request", &body)?;
                // The sender is not a member yet: that is what it asks to become.
                self.same_cluster(&request.origin)?;
                let answer = self.add_learner(request).await?;
                to_json("an add learner response", &answer)?
            }
            _ => {
                let request: WireInstallSnapshotRequest =
                    from_json("an install snapshot request", &body)?;
                self.admit(&request.origin)?;
                let rpc = request.to_raft()?;
                let result = match self.raft.install_snapshot(rpc).await {
                    Ok(response) => Ok(response),
                    Err(RaftError::APIError(e)) => Err(e),
                    Err(RaftError::Fatal(e)) => return Err(RaftRpcError::Stopped(e.to_string())),
                };
                to_json(
                    "an install snapshot response",
                    &WireInstallSnapshotResponse::from(&result),
                )?
            }
        };
        Ok(Bytes::from(answer))
    }

    /// Refuses a sender outside this node's membership (voters and learners of every config),
    /// or from another cluster once both sides know theirs. A node with no membership yet (a
    /// fresh directory waiting for the lowest-id voter) takes any sender of its cluster: that
    /// is how it joins.
    fn admit(&self, origin: &WireOrigin) -> Result<(), RaftRpcError> {
        self.same_cluster(origin)?;
        let metrics = self.metrics.borrow();
        let membership = metrics.membership_config.membership();
        let pristine = membership.nodes().next().is_none();
        if pristine || membership.nodes().any(|(id, _)| *id == origin.node_id) {
            Ok(())
        } else {
            Err(RaftRpcError::UnknownSender {
                node_id: origin.node_id,
            })
        }
    }

    /// Refuses a sender of another cluster once both sides know theirs.
    fn same_cluster(&self, origin: &WireOrigin) -> Result<(), RaftRpcError> {
        let ours = self
            .cluster_id
            .clone()
            .or_else(|| self.images.borrow().cluster_id().map(str::to_string));
        if let (Some(ours), Some(theirs)) = (ours, origin.cluster_id.as_ref()) {
            if ours != *theirs {
                return Err(RaftRpcError::OtherCluster {
                    node_id: origin.node_id,
                    ours,
                    theirs: theirs.clone(),
                });
            }
        }
        Ok(())
    }

    /// On the leader, makes the sender a learner reached at the address it gives; anywhere
    /// else, names the leader. A learner already known at that address is answered at once
    /// with nothing written (a broker-only node asks at every start); one at another address
    /// has its address replaced.
    async fn add_learner(
        &self,
        request: WireAddLearnerRequest,
    ) -> Result<WireAddLearnerResponse, RaftRpcError> {
        let id = request.origin.node_id;
        let address = request.address.trim().to_string();
        if address.is_empty()
            || address.len() > MAX_LEARNER_ADDRESS_BYTES
            || !address.contains(':')
            || address.chars().any(char::is_whitespace)
        {
            return Ok(WireAddLearnerResponse::Refused {
                reason: format!(
                    "`{}` is not a HOST:PORT address",
                    address
                        .chars()
                        .take(MAX_LEARNER_ADDRESS_BYTES)
                        .collect::<String>()
                ),
            });
        }
        let node = QuorumNode {
            address: Some(address.clone()),
        };
        let (is_leader, leader, known, is_voter, learners) = {
            let metrics = self.metrics.borrow();
            let membership = metrics.membership_config.membership();
            (
                metrics.state == ServerState::Leader,
                metrics.current_leader,
                membership.get_node(&id).cloned(),
                membership.voter_ids().any(|v| v == id),
                membership.learner_ids().count(),
            )
        };
        if !is_leader {
            return Ok(WireAddLearnerResponse::NotLeader { leader });
        }
        if is_voter {
            return Ok(WireAddLearnerResponse::Refused {
                reason: format!(
                    "node {id} is a voter of the metadata quorum, so it cannot join as a \
                     broker-only node: remove it from controller.quorum.voters on it, or give \
                     it process.roles=broker,controller"
                ),
            });
        }
        if known.as_ref() == Some(&node) {
            return Ok(WireAddLearnerResponse::Added);
        }
        if known.is_none() && learners >= MAX_LEARNERS {
            return Ok(WireAddLearnerResponse::Refused {
                reason: format!("the metadata quorum already has {MAX_LEARNERS} learners"),
            });
        }
        let changed = if known.is_some() {
            let nodes = std::collections::BTreeMap::from([(id, node)]);
            self.raft
                .change_membership(ChangeMembers::SetNodes(nodes), true)
                .await
        } else {
            self.raft.add_learner(id, node, false).await
        };
        match changed {
            Ok(_) => {
                tracing::info!(node_id = id, %address, "broker-only node added to the metadata quorum as a learner");
                Ok(WireAddLearnerResponse::Added)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Ok(WireAddLearnerResponse::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Ok(WireAddLearnerResponse::Retry {
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(e)) => Err(RaftRpcError::Stopped(e.to_string())),
        }
    }
}

fn stopped(e: RaftError<u64>) -> RaftRpcError {
    RaftRpcError::Stopped(e.to_string())
}
