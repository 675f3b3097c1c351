//! One module per Kafka API. [`handle`] is the dispatch table; it matches
//! `caudal_protocol::SUPPORTED_APIS`, which a test checks.

mod api_versions;
mod consumer_group_describe;
mod consumer_group_heartbeat;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use caudal_protocol::Request;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::Broker;

/// The answer to a request, possibly still waiting for something (an fsync, new data). `None`
/// means no response is sent (produce with acks=0).
pub type Reply = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

fn ready(body: ResponseKind) -> Reply {
    Box::pin(std::future::ready(Some(body)))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Where a request came from: the client's address and the listener it connected to.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub listener: usize,
}

/// Starts handling a request. Whatever must happen in request order (appends, topic changes)
/// happens before this returns; the returned future only waits.
pub async fn handle(broker: &Arc<Broker>, request: Request, conn: Connection) -> Reply {
    let version = request.version();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    match request.body {
        RequestKind::ApiVersions(r) => ready(api_versions::handle(r, version)),
        RequestKind::Metadata(r) => {
            ready(metadata::handle(broker, r, version, conn.listener).await)
        }
        RequestKind::Produce(r) => produce::handle(broker, r, version).await,
        RequestKind::Fetch(r) => fetch::handle(broker.clone(), r, version),
        RequestKind::ListOffsets(r) => ready(list_offsets::handle(broker, r, version)),
        RequestKind::CreateTopics(r) => ready(create_topics::handle(broker, r, version).await),
        RequestKind::DeleteTopics(r) => ready(delete_topics::handle(broker, r, version).await),
        RequestKind::CreatePartitions(r) => ready(create_partitions::handle(broker, r).await),
        RequestKind::DescribeCluster(r) => {
            ready(describe_cluster::handle(broker, r, conn.listener))
        }
        RequestKind::InitProducerId(r) => ready(init_producer_id::handle(broker, r)),
        RequestKind::FindCoordinator(r) => {
            ready(find_coordinator::handle(broker, r, version, conn.listener))
        }
        RequestKind::JoinGroup(r) => join_group::handle(broker, r, version, conn.peer, client_id),
        RequestKind::SyncGroup(r) => sync_group::handle(broker, r, version),
        RequestKind::Heartbeat(r) => ready(heartbeat::handle(broker, r)),
        RequestKind::LeaveGroup(r) => ready(leave_group::handle(broker, r, version)),
        RequestKind::OffsetCommit(r) => offset_commit::handle(broker, r),
        RequestKind::OffsetFetch(r) => ready(offset_fetch::handle(broker, r, version)),
        RequestKind::OffsetForLeaderEpoch(r) => ready(offset_for_leader_epoch::handle(broker, r)),
        RequestKind::OffsetDelete(r) => ready(offset_delete::handle(broker, r).await),
        RequestKind::ListGroups(r) => ready(list_groups::handle(broker, r)),
        RequestKind::DescribeGroups(r) => ready(describe_groups::handle(broker, r, version)),
        RequestKind::DeleteGroups(r) => ready(delete_groups::handle(broker, r).await),
        RequestKind::DescribeConfigs(r) => ready(describe_configs::handle(broker, r, version)),
        RequestKind::ConsumerGroupHeartbeat(r) => ready(consumer_group_heartbeat::handle(
            broker, r, version, conn.peer, client_id,
        )),
        RequestKind::ConsumerGroupDescribe(r) => ready(consumer_group_describe::handle(broker, r)),
        // decode_request refuses every API not in SUPPORTED_APIS, so this is unreachable for
        // requests off the wire; answer nothing rather than panic.
        other => {
            tracing::error!(api = ?other, "request for an API the dispatch table does not route");
            Box::pin(std::future::ready(None))
        }
    }
}

/// Kafka's error code for a topic operation failure.
pub(crate) fn topic_error_code(e: &crate::topics::TopicError) -> i16 {
    use crate::topics::TopicError::*;
    use kafka_protocol::error::ResponseError as E;
    match e {
        InvalidName(..) => E::InvalidTopicException.code(),
        AlreadyExists(_) => E::TopicAlreadyExists.code(),
        Unknown(_) => E::UnknownTopicOrPartition.code(),
        InvalidPartitions(_) => E::InvalidPartitions.code(),
        Internal(_) => E::InvalidTopicException.code(),
        Io(_) => E::KafkaStorageError.code(),
    }
}
