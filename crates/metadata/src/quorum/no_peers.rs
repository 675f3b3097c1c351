//! The network of a lone voter: a quorum of one never sends an RPC, and if openraft asked for
//! one anyway (a membership change to more voters before the network exists) the peer is
//! unreachable, which Raft handles as any other unreachable node.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{QuorumNode, QuorumTypes};

#[derive(Debug, thiserror::Error)]
#[error("node {0} cannot be reached: this node has no network to its peers")]
struct NoNetwork(u64);

/// The network factory of a node that has no peers: the single node, until nodes talk.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

/// The client [`NoPeers`] makes for a peer: every call fails as unreachable.
#[derive(Debug)]
pub struct NoPeerClient {
    target: u64,
}

impl RaftNetworkFactory<QuorumTypes> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: u64, _node: &QuorumNode) -> NoPeerClient {
        NoPeerClient { target }
    }
}

impl NoPeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, QuorumNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoNetwork(self.target)))
    }
}

impl RaftNetwork<QuorumTypes> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<QuorumTypes>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<QuorumTypes>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, QuorumNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
