//! ConsumerGroupDescribe (KIP-848): epochs, assignor and members of consumer-protocol groups.

use std::sync::Arc;

use caudal_coordinator::consumer_group::DescribedConsumerGroup;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ResponseKind, TopicName,
};
use uuid::Uuid;

use super::str_bytes;
use crate::Broker;

/// Kafka's "authorized operations not requested" marker.
const OPERATIONS_OMITTED: i32 = i32::MIN;
/// v1's member type of a member speaking the consumer protocol.
const CONSUMER_MEMBER: i8 = 1;

fn assignment(partitions: Vec<(Uuid, String, Vec<i32>)>) -> Assignment {
    Assignment::default().with_topic_partitions(
        partitions
            .into_iter()
            .map(|(id, name, ps)| {
                TopicPartitions::default()
                    .with_topic_id(id)
                    .with_topic_name(TopicName(str_bytes(name)))
                    .with_partitions(ps)
            })
            .collect(),
    )
}

pub fn handle(broker: &Arc<Broker>, request: ConsumerGroupDescribeRequest) -> ResponseKind {
    let groups = request
        .group_ids
        .into_iter()
        .map(|id| {
            let found = broker
                .groups
                .read(id.0.as_str(), |c| c.consumer_group_describe(id.0.as_str()));
            let found = match found {
                Ok(found) => found,
                // Not the coordinator (or loading): this group alone answers the error.
                Err(e) => {
                    return DescribedGroup::default()
                        .with_group_id(id)
                        .with_error_code(e.code())
                        .with_authorized_operations(OPERATIONS_OMITTED)
                }
            };
            let d = match found {
                DescribedConsumerGroup::Found(d) => d,
                DescribedConsumerGroup::NotFound => {
                    let message = format!("Group {} not found.", id.0.as_str());
                    return DescribedGroup::default()
                        .with_group_id(id)
                        .with_group_state(str_bytes("Dead"))
                        .with_error_code(E::GroupIdNotFound.code())
                        .with_error_message(Some(str_bytes(message)))
                        .with_authorized_operations(OPERATIONS_OMITTED);
                }
                DescribedConsumerGroup::NotConsumerGroup => {
                    let message = format!("Group {} is not a consumer group.", id.0.as_str());
                    return DescribedGroup::default()
                        .with_group_id(id)
                        .with_group_state(str_bytes("Dead"))
                        .with_error_code(E::GroupIdNotFound.code())
                        .with_error_message(Some(str_bytes(message)))
                        .with_authorized_operations(OPERATIONS_OMITTED);
                }
            };
            let members = d
                .members
                .into_iter()
                .map(|m| {
                    Member::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_instance_id(m.instance_id.map(str_bytes))
                        .with_rack_id(m.rack_id.map(str_bytes))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_subscribed_topic_names(
                            m.subscribed_topic_names
                                .into_iter()
                                .map(|t| TopicName(str_bytes(t)))
                                .collect(),
                        )
                        .with_assignment(assignment(m.assignment))
                        .with_target_assignment(assignment(m.target_assignment))
                        .with_member_type(CONSUMER_MEMBER)
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(str_bytes(d.state.as_str()))
                .with_group_epoch(d.group_epoch)
                .with_assignment_epoch(d.assignment_epoch)
                .with_assignor_name(str_bytes(d.assignor_name))
                .with_members(members)
                .with_authorized_operations(OPERATIONS_OMITTED)
        })
        .collect();
    ResponseKind::ConsumerGroupDescribe(
        ConsumerGroupDescribeResponse::default().with_groups(groups),
    )
}
