//! AlterPartitionReassignments (API 45) and ListPartitionReassignments (API 46), both forwarded
//! to the active controller (`caudal_metadata::controller::reassignments`): the one decides, the
//! other answers from the controller's image.

use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
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

/// ListPartitionReassignments, answered by the active controller from its image, as Kafka's
/// brokers forward it: a broker's own image may not have the latest change yet.
pub async fn list(
    broker: &Arc<Broker>,
    request: ListPartitionReassignmentsRequest,
) -> ResponseKind {
    ResponseKind::ListPartitionReassignments(
        match broker.topics.list_reassignments(request).await {
            Ok(response) => response,
            Err(e) => ListPartitionReassignmentsResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(e.to_string()))),
        },
    )
}
