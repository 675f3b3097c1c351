//! Caudal's coordinators: the group coordinator for Kafka's classic group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), the consumer group protocol of KIP-848
//! (ConsumerGroupHeartbeat, ConsumerGroupDescribe; see [`consumer_group`]) and committed offsets;
//! and the transaction coordinator ([`txn`]).
//!
//! Each is a plain state machine: requests and the current time go in, effects come out
//! (answers to send, records to write to `__consumer_offsets`). It does no I/O and reads no
//! clock, so every transition is tested with a fake clock. Requests that must wait (a join
//! until the rebalance completes, a follower's sync until the leader's) are held as opaque
//! responders `R` and handed back inside the effect that answers them.

pub mod consumer_group;
pub mod consumer_protocol;
pub mod errors;
pub mod group;
pub mod records;
pub mod txn;
pub mod txn_records;
#[cfg(test)]
mod txn_tests;

pub use group::{
    CommittedOffset, Coordinator, Effect, GroupConfig, GroupState, GroupSummary, JoinMember,
    JoinRequest, JoinResponse, MemberSummary, Ms, OffsetCommit, Stabilized, SyncRequest,
    SyncResponse,
};
pub use records::{partition_for, OffsetsRecord};
