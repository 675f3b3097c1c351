//! ConsumerGroupHeartbeat (KIP-848): a member of a consumer-protocol group joins, heartbeats,
//! acknowledges revocations and leaves; the answer carries its epoch and, when it changed, its
//! assignment. Answered at once: nothing waits and nothing is written.

use std::net::SocketAddr;
use std::sync::Arc;

use caudal_coordinator::consumer_group::{HeartbeatRequest, TopicMetadata, TopicsImage};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ResponseKind,
};

use super::str_bytes;
use crate::coordinator_runtime::OFFSETS_TOPIC;
use crate::{now_ms, Broker};

/// v1 and later: the client generates its own member id (KIP-1082).
const CLIENT_MEMBER_ID_SINCE: i16 = 1;

/// The broker's topics as the coordinator sees them: name -> (id, partition count).
pub(crate) fn topics_image(broker: &Broker) -> TopicsImage {
    broker
        .topics
        .all()
        .into_iter()
        .filter(|t| t.name != OFFSETS_TOPIC)
        .map(|t| {
            (
                t.name.clone(),
                TopicMetadata {
                    id: t.id,
                    partitions: t.partition_count,
                },
            )
        })
        .collect()
}

pub fn handle(
    broker: &Arc<Broker>,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
    peer: SocketAddr,
    client_id: String,
) -> ResponseKind {
    let req = HeartbeatRequest {
        group_id: request.group_id.0.as_str().to_string(),
        member_id: request.member_id.as_str().to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|i| i.as_str().to_string()),
        rack_id: request.rack_id.map(|r| r.as_str().to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|ts| ts.into_iter().map(|t| t.0.as_str().to_string()).collect()),
        subscribed_topic_regex: request
            .subscribed_topic_regex
            .map(|r| r.as_str().to_string()),
        server_assignor: request.server_assignor.map(|a| a.as_str().to_string()),
        owned_partitions: request
            .topic_partitions
            .map(|ts| ts.into_iter().map(|t| (t.topic_id, t.partitions)).collect()),
        client_id,
        client_host: format!("/{}", peer.ip()),
        client_generates_member_id: version >= CLIENT_MEMBER_ID_SINCE,
    };
    let image = topics_image(broker);
    let now = now_ms();
    let group_id = request.group_id.0.as_str();
    let answer = match broker.groups.run(group_id, now, |c| {
        c.consumer_group_heartbeat(req, &image, now)
    }) {
        Ok((answer, _)) => answer,
        Err(e) => {
            return ResponseKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(e.to_string()))),
            )
        }
    };
    let assignment = answer.assignment.map(|a| {
        Assignment::default().with_topic_partitions(
            a.into_iter()
                .map(|(topic_id, partitions)| {
                    TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(partitions.into_iter().collect())
                })
                .collect(),
        )
    });
    ResponseKind::ConsumerGroupHeartbeat(
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(answer.error)
            .with_error_message(answer.error_message.map(str_bytes))
            .with_member_id(answer.member_id.map(str_bytes))
            .with_member_epoch(answer.member_epoch)
            .with_heartbeat_interval_ms(answer.heartbeat_interval_ms)
            .with_assignment(assignment),
    )
}
