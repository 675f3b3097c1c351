//! FindCoordinator: a group's coordinator is the leader of the `__consumer_offsets` partition
//! the group maps to, a transactional id's the leader of its `__transaction_state` partition,
//! reached at the listener the client came in on (Kafka's `partitionFor` and metadata cache).
//! The first request for a key type whose topic is missing creates the topic.

use std::sync::Arc;

use caudal_coordinator::partition_for;
use caudal_metadata::{Endpoint, MetadataImage, TopicImage};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::coordinator_runtime::OFFSETS_TOPIC;
use crate::txn_runtime::TXN_TOPIC;
use crate::Broker;

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;
/// v4 and later look up a batch of keys.
const BATCHED_SINCE: i16 = 4;

/// Where the coordinator of `key` is, or why it cannot be named. `internal` is the key type's
/// topic, if it exists.
fn coordinator<'i>(
    image: &'i MetadataImage,
    internal: Option<&TopicImage>,
    key_type: i8,
    key: &str,
    listener_name: &str,
) -> Result<(i32, &'i Endpoint), (i16, &'static str)> {
    let not_available = E::CoordinatorNotAvailable.code();
    let (empty, creating, leaderless) = match key_type {
        GROUP => (
            "the group id is empty",
            "the __consumer_offsets topic is being created",
            "the group's __consumer_offsets partition has no leader",
        ),
        TRANSACTION => (
            "the transactional id is empty",
            "the __transaction_state topic is being created",
            "the transactional id's __transaction_state partition has no leader",
        ),
        _ => return Err((E::InvalidRequest.code(), "unknown coordinator key type")),
    };
    if key.is_empty() {
        return Err((E::InvalidRequest.code(), empty));
    }
    let internal = internal.ok_or((not_available, creating))?;
    let n = i32::try_from(internal.partitions.len()).unwrap_or(i32::MAX);
    let leader = internal
        .partition(partition_for(key, n))
        .map(|p| p.leader)
        .filter(|leader| *leader >= 0)
        .ok_or((not_available, leaderless))?;
    let endpoint = image.endpoint(leader, listener_name).ok_or((
        not_available,
        "the coordinator has no listener of the name this request came in on",
    ))?;
    Ok((leader, endpoint))
}

pub fn handle(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
    listener: usize,
) -> ResponseKind {
    let image = broker.topics.image();
    let name = if request.key_type == TRANSACTION {
        TXN_TOPIC
    } else {
        OFFSETS_TOPIC
    };
    let internal = image.topic_by_name(name).map(|t| &**t);
    // Kafka creates the topic on the first FindCoordinator that needs it.
    match (internal, request.key_type) {
        (None, GROUP) => broker.create_offsets_topic_in_background(),
        (None, TRANSACTION) => broker.create_txn_topic_in_background(),
        _ => {}
    }
    let listener_name = super::listener_name(broker, listener);
    let answer = |key: &str| coordinator(&image, internal, request.key_type, key, listener_name);
    let response = if version >= BATCHED_SINCE {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                match answer(key.as_str()) {
                    Ok((node, endpoint)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(endpoint.host.as_str()))
                        .with_port(i32::from(endpoint.port)),
                    Err((error, message)) => c
                        .with_error_code(error)
                        .with_error_message(Some(StrBytes::from_static_str(message)))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let r = FindCoordinatorResponse::default();
        match answer(request.key.as_str()) {
            Ok((node, endpoint)) => r
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(endpoint.host.as_str()))
                .with_port(i32::from(endpoint.port)),
            Err((error, message)) => {
                let r = r
                    .with_error_code(error)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1);
                if version >= 1 {
                    r.with_error_message(Some(StrBytes::from_static_str(message)))
                } else {
                    r
                }
            }
        }
    };
    ResponseKind::FindCoordinator(response)
}
