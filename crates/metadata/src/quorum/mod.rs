//! The metadata quorum: the metadata log replicated by Raft (openraft 0.9) and applied into
//! [`MetadataImage`]s.
//!
//! Every openraft type stays inside this module, and every byte it writes is ours: entries,
//! votes, log ids and memberships are mirrored in Caudal types and converted at the adapters, so
//! an openraft upgrade never changes a file (see `docs/design/cluster.md`, sections 2, 3 and 9).
//!
//! - [`LogStore`]: the Raft log as a `PartitionLog` in `__cluster_metadata-0/` (one record batch
//!   per entry, base offset = index, partition leader epoch = term) plus the `quorum-state` file.
//! - [`StateMachine`]: the loader; replays entries into a delta, publishes each new image, and
//!   writes and loads snapshots as checkpoint files of records.
//! - [`TcpPeers`] and [`RaftRpcServer`]: the RPCs between nodes, Kafka frames with private API
//!   keys and JSON bodies of Caudal's mirrored types (`wire.rs`). A node outside the voters (a
//!   broker-only node) asks the leader to add it as a learner ([`Quorum::join_as_learner`]),
//!   and the leader then pushes the log to it like to any follower.

mod entry;
mod files;
mod handle;
mod log_store;
mod network;
mod no_peers;
mod server;
mod snapshot;
mod state_machine;
mod wire;

#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::records::{CodecError, EntryRecords};

pub use handle::{
    Quorum, QuorumClient, QuorumConfig, QuorumDescription, QuorumError, QuorumStatus,
    ReplicaDescription, StatusWatch,
};
pub use log_store::{LogReader, LogStore, MetadataLogConfig};
pub use network::{PeerContact, PeerProgress, TcpPeerClient, TcpPeers};
pub use no_peers::{NoPeerClient, NoPeers};
pub use server::{RaftRpcError, RaftRpcServer, MAX_LEARNERS};
pub use state_machine::{CheckpointBuilder, StateMachine};
pub use wire::{
    FrameReadError, WireError, DEFAULT_MAX_FRAME_BYTES, RAFT_ADD_LEARNER, RAFT_APPEND_ENTRIES,
    RAFT_INSTALL_SNAPSHOT, RAFT_RPC_VERSION, RAFT_VOTE,
};

/// The name of the metadata log's directory under a node's data directory.
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";

/// Where the metadata log, its `quorum-state` and its checkpoints live under `data_dir`.
pub fn metadata_log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(METADATA_LOG_DIR)
}

openraft::declare_raft_types!(
    /// Caudal's Raft type configuration: an entry's data is one controller decision.
    pub QuorumTypes:
        D = EntryRecords,
        R = Applied,
        NodeId = u64,
        Node = QuorumNode,
        Entry = openraft::Entry<QuorumTypes>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one entry answers to its proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The entry's Raft index: a registration's broker epoch, and the offset a broker must
    /// have applied to see the change.
    pub index: u64,
}

/// A member of the quorum as the membership records it. Voters carry no address: theirs come
/// from `controller.quorum.voters`, so two nodes spelling a host differently cannot split the
/// membership. A learner (a broker-only node) carries the address the leader reaches it at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A membership configuration, as Caudal stores it: the voter sets (two while a change is in
/// joint consensus) and every node, voters and learners, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumMembership {
    pub configs: Vec<BTreeSet<u64>>,
    #[serde(default)]
    pub nodes: BTreeMap<u64, QuorumNode>,
}

impl QuorumMembership {
    /// Every voter of every config.
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.configs.iter().flatten().copied().collect()
    }

    /// Nodes that replicate the log without voting.
    pub fn learner_ids(&self) -> BTreeSet<u64> {
        let voters = self.voter_ids();
        self.nodes
            .keys()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect()
    }
}

/// Why the metadata log, its state file or a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuorumStoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("appending to the metadata log: {0}")]
    Append(#[from] caudal_storage::AppendError),
    #[error("reading the metadata log: {0}")]
    Read(#[from] caudal_storage::ReadError),
    #[error("entry {index} does not follow the log, which ends at {log_end}")]
    NotContiguous { index: u64, log_end: u64 },
    #[error("entry {index} was purged; the log starts at {log_start}")]
    Purged { index: u64, log_start: u64 },
    #[error("term {0} does not fit a partition leader epoch (i32)")]
    TermTooLarge(u64),
    #[error("index {0} does not fit an offset (i64)")]
    IndexTooLarge(u64),
    #[error("{0}")]
    Records(#[from] CodecError),
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("a blocking storage task failed: {0}")]
    Task(String),
}

impl QuorumStoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> QuorumStoreError {
        let context = context.into();
        move |source| QuorumStoreError::Io { context, source }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> QuorumStoreError {
        QuorumStoreError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Runs blocking file work off the async workers, so an fsync never stalls Raft's timers.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, QuorumStoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, QuorumStoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QuorumStoreError::Task(e.to_string()))?
}

/// Milliseconds since the epoch, for the log's segment clock and batch timestamps.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
