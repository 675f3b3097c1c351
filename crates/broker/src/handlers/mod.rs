//! One module per Kafka API. [`handle`] is the dispatch table; it matches
//! `caudal_protocol::SUPPORTED_APIS`, which a test checks.

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod produce;

use std::future::Future;
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

/// Starts handling a request. Whatever must happen in request order (appends, topic changes)
/// happens before this returns; the returned future only waits.
pub async fn handle(broker: &Arc<Broker>, request: Request) -> Reply {
    let version = request.version();
    match request.body {
        RequestKind::ApiVersions(r) => ready(api_versions::handle(r, version)),
        RequestKind::Metadata(r) => ready(metadata::handle(broker, r, version).await),
        RequestKind::Produce(r) => produce::handle(broker, r, version).await,
        RequestKind::Fetch(r) => fetch::handle(broker.clone(), r, version),
        RequestKind::ListOffsets(r) => ready(list_offsets::handle(broker, r, version)),
        RequestKind::CreateTopics(r) => ready(create_topics::handle(broker, r, version).await),
        RequestKind::DeleteTopics(r) => ready(delete_topics::handle(broker, r, version).await),
        RequestKind::CreatePartitions(r) => ready(create_partitions::handle(broker, r).await),
        RequestKind::DescribeCluster(r) => ready(describe_cluster::handle(broker, r)),
        RequestKind::InitProducerId(r) => ready(init_producer_id::handle(broker, r)),
        RequestKind::DescribeConfigs(r) => ready(describe_configs::handle(broker, r, version)),
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
        Io(_) => E::KafkaStorageError.code(),
    }
}
