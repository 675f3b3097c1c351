//! One module per Kafka API. Which API goes to which module, on which listener, is the route
//! table's business (`crate::routes`).

pub(crate) mod api_versions;
pub(crate) mod consumer_group_describe;
pub(crate) mod consumer_group_heartbeat;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod describe_groups;
pub(crate) mod describe_log_dirs;
pub(crate) mod describe_quorum;
pub(crate) mod describe_topic_partitions;
pub(crate) mod elect_leaders;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod heartbeat;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leader_hints;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_delete;
pub(crate) mod offset_fetch;
pub(crate) mod offset_for_leader_epoch;
pub(crate) mod produce;
pub(crate) mod reassignments;
pub(crate) mod sync_group;
pub(crate) mod transactions;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use kafka_protocol::messages::ResponseKind;
use kafka_protocol::protocol::StrBytes;

use crate::routes::ListenerKind;

/// The answer to a request, possibly still waiting for something (an fsync, new data). `None`
/// means no response is sent (produce with acks=0).
pub type Reply = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

pub(crate) fn ready(body: ResponseKind) -> Reply {
    Box::pin(std::future::ready(Some(body)))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The name of listener `index` (the one a request came in on), which picks the endpoint a
/// client is given for every broker.
pub(crate) fn listener_name(broker: &crate::Broker, index: usize) -> &str {
    broker
        .config
        .listeners
        .get(index)
        .map_or("PLAINTEXT", |l| l.name.as_str())
}

/// Every live broker that has an endpoint of `listener_name`, with that endpoint: what Metadata
/// and DescribeCluster list (Kafka leaves the others out).
pub(crate) fn reachable_brokers<'a>(
    image: &'a caudal_metadata::MetadataImage,
    listener_name: &'a str,
) -> impl Iterator<
    Item = (
        &'a caudal_metadata::BrokerRegistration,
        &'a caudal_metadata::Endpoint,
    ),
> + 'a {
    image
        .live_brokers()
        .filter_map(move |b| Some((b, image.endpoint(b.id, listener_name)?)))
}

/// Where a request came from: the client's address, the listener it connected to (an index into
/// the configured listeners) and that listener's kind.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub listener: usize,
    pub kind: ListenerKind,
}

/// Kafka's error code for a topic operation failure.
pub(crate) fn topic_error_code(e: &crate::topics::TopicError) -> i16 {
    e.code()
}
