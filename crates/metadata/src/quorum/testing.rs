//! An in-process network for quorum tests: RPCs are calls on the target's `Raft` handle, routed
//! through a table that tests edit to cut nodes off and bring them back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;

use super::{QuorumNode, QuorumTypes};

#[derive(Debug, thiserror::Error)]
#[error("node {0} is cut off")]
struct CutOff(u64);

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not running")]
struct NotRunning(u64);

#[derive(Default)]
struct Table {
    nodes: BTreeMap<u64, Raft<QuorumTypes>>,
    /// Nodes that neither send nor receive.
    isolated: BTreeSet<u64>,
}

/// The routing table every node's network shares.
#[derive(Clone, Default)]
pub(crate) struct Router {
    table: Arc<Mutex<Table>>,
}

impl Router {
    pub fn add(&self, id: u64, raft: Raft<QuorumTypes>) {
        self.lock().nodes.insert(id, raft);
    }

    pub fn remove(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        self.lock().isolated.insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.lock().isolated.remove(&id);
    }

    /// The network of node `id`.
    pub fn network(&self, id: u64) -> RouterNetwork {
        RouterNetwork {
            from: id,
            router: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target's handle, if a message from `from` reaches it now.
    fn route(&self, from: u64, to: u64) -> Result<Raft<QuorumTypes>, Unreachable> {
        let table = self.lock();
        for id in [from, to] {
            if table.isolated.contains(&id) {
                return Err(Unreachable::new(&CutOff(id)));
            }
        }
        table
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable::new(&NotRunning(to)))
    }

    /// Whether an answer from `to` still gets back to `from`.
    fn answer_reaches(&self, from: u64, to: u64) -> Result<(), NetworkError> {
        let table = self.lock();
        for id in [from, to] {
            if table.isolated.contains(&id) {
                return Err(NetworkError::new(&CutOff(id)));
            }
        }
        Ok(())
    }
}

/// Node `from`'s factory of clients.
pub(crate) struct RouterNetwork {
    from: u64,
    router: Router,
}

impl RaftNetworkFactory<QuorumTypes> for RouterNetwork {
    type Network = RouterClient;

    async fn new_client(&mut self, target: u64, _node: &QuorumNode) -> RouterClient {
        RouterClient {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

pub(crate) struct RouterClient {
    from: u64,
    to: u64,
    router: Router,
}

impl RaftNetwork<QuorumTypes> for RouterClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QuorumTypes>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        let raft = self.router.route(self.from, self.to)?;
        let answer = raft.append_entries(rpc).await;
        self.router.answer_reaches(self.from, self.to)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QuorumTypes>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, QuorumNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let raft = self.router.route(self.from, self.to)?;
        let answer = raft.install_snapshot(rpc).await;
        self.router.answer_reaches(self.from, self.to)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, QuorumNode, RaftError<u64>>> {
        let raft = self.router.route(self.from, self.to)?;
        let answer = raft.vote(rpc).await;
        self.router.answer_reaches(self.from, self.to)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}
