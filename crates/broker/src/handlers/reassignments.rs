//! AlterPartitionReassignments (API 45), decided by the active controller
//! (`caudal_metadata::controller::reassignments`), and ListPartitionReassignments (API 46),
//! answered from this broker's metadata image: the partitions whose reassignment is under way,
//! with their replicas and those being added and removed.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ResponseKind, TopicName,
};

use super::str_bytes;
use crate::Broker;

pub async fn alter(
    broker: &Arc<Broker>,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
) -> ResponseKind {
    let asked: Vec<(TopicName, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let allow = request.allow_replication_factor_change;
    let response = match broker.topics.alter_reassignments(request, version).await {
        Ok(response) => response,
        Err(e) => {
            let code = e.code();
            let message = Some(str_bytes(e.to_string()));
            AlterPartitionReassignmentsResponse::default()
                .with_allow_replication_factor_change(allow)
                .with_error_code(code)
                .with_error_message(message.clone())
                .with_responses(
                    asked
                        .into_iter()
                        .map(|(name, partitions)| {
                            ReassignableTopicResponse::default()
                                .with_name(name)
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|p| {
                                            ReassignablePartitionResponse::default()
                                                .with_partition_index(p)
                                                .with_error_code(code)
                                                .with_error_message(message.clone())
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
        }
    };
    ResponseKind::AlterPartitionReassignments(response)
}

pub fn list(broker: &Arc<Broker>, request: ListPartitionReassignmentsRequest) -> ResponseKind {
    let image = broker.topics.image();
    let ongoing = |name: &str, index: i32| -> Option<OngoingPartitionReassignment> {
        let p = image.topic_by_name(name)?.partition(index)?;
        let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect();
        p.is_reassigning().then(|| {
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(ids(&p.replicas))
                .with_adding_replicas(ids(&p.adding))
                .with_removing_replicas(ids(&p.removing))
        })
    };
    let mut topics = Vec::new();
    match request.topics {
        None => {
            let mut all: Vec<_> = image.topics().collect();
            all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            for t in all {
                let partitions: Vec<_> = (0..i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                    .filter_map(|i| ongoing(&t.name, i))
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(TopicName(str_bytes(t.name.clone())))
                            .with_partitions(partitions),
                    );
                }
            }
        }
        Some(asked) => {
            for t in asked {
                if image.topic_by_name(t.name.as_str()).is_none() {
                    // Kafka's controller answers the whole request with this.
                    return ResponseKind::ListPartitionReassignments(
                        ListPartitionReassignmentsResponse::default()
                            .with_error_code(E::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!(
                                "topic {} does not exist",
                                t.name.as_str()
                            )))),
                    );
                }
                let partitions: Vec<_> = t
                    .partition_indexes
                    .iter()
                    .filter_map(|&i| ongoing(t.name.as_str(), i))
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(t.name)
                            .with_partitions(partitions),
                    );
                }
            }
        }
    }
    ResponseKind::ListPartitionReassignments(
        ListPartitionReassignmentsResponse::default().with_topics(topics),
    )
}
