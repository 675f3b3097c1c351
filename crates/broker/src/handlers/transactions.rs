//! The transaction APIs a transactional producer sends its coordinator (AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn; InitProducerId with a transactional id is in `init_producer_id`),
//! and WriteTxnMarkers, which coordinators send partition leaders.

use std::sync::Arc;

use caudal_coordinator::partition_for;
use caudal_coordinator::txn_records::TxnPartition;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, ProducerId, ResponseKind,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};

use crate::coordinator_runtime::OFFSETS_TOPIC;
use crate::Broker;

/// KIP-588: clients before these versions know PRODUCER_FENCED as INVALID_PRODUCER_EPOCH.
const FENCED_SINCE_ADD: i16 = 2;
const FENCED_SINCE_END: i16 = 2;

/// Kafka's code for `code` as a client of `version` knows it (PRODUCER_FENCED only from
/// `since`).
pub(crate) fn for_version(code: i16, version: i16, since: i16) -> i16 {
    if code == E::ProducerFenced.code() && version < since {
        E::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// A fresh producer id from the controller's blocks, as Kafka's error code if there is none.
pub(crate) fn fresh_id(
    broker: &Arc<Broker>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, i16>> + Send>> + '_
{
    move || {
        let broker = broker.clone();
        Box::pin(async move {
            broker.producer_ids.next_id().await.map_err(|e| {
                tracing::warn!(error = %e, "no producer id to give");
                e.kafka_error().code()
            })
        })
    }
}

pub async fn add_partitions(
    broker: &Arc<Broker>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> ResponseKind {
    let txn_id = request.v3_and_below_transactional_id.0.to_string();
    let producer = (
        request.v3_and_below_producer_id.0,
        request.v3_and_below_producer_epoch,
    );
    // Partitions that do not exist are refused, and then nothing is added (Kafka's
    // OPERATION_NOT_ATTEMPTED for the others).
    let mut partitions: Vec<TxnPartition> = Vec::new();
    let mut unknown = false;
    for topic in &request.v3_and_below_topics {
        let t = broker.topics.get(topic.name.0.as_str());
        for &p in &topic.partitions {
            unknown |= !t.as_ref().is_some_and(|t| t.has_partition(p));
            partitions.push((topic.name.0.to_string(), p));
        }
    }
    let code = if unknown {
        None
    } else {
        Some(
            match broker
                .txns
                .add_partitions(&txn_id, producer, &partitions, 0)
                .await
            {
                Ok(()) => 0,
                Err(code) => for_version(code, version, FENCED_SINCE_ADD),
            },
        )
    };
    let results = request
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            let t = broker.topics.get(topic.name.0.as_str());
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(
                    topic
                        .partitions
                        .iter()
                        .map(|&p| {
                            let code = code.unwrap_or_else(|| {
                                if t.as_ref().is_some_and(|t| t.has_partition(p)) {
                                    E::OperationNotAttempted.code()
                                } else {
                                    E::UnknownTopicOrPartition.code()
                                }
                            });
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
    )
}

pub async fn add_offsets(
    broker: &Arc<Broker>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> ResponseKind {
    let response = AddOffsetsToTxnResponse::default();
    // The group's offsets go to its __consumer_offsets partition, which joins the transaction.
    let Some(offsets) = broker.topics.get(OFFSETS_TOPIC) else {
        return ResponseKind::AddOffsetsToTxn(
            response.with_error_code(E::CoordinatorNotAvailable.code()),
        );
    };
    let partition = partition_for(request.group_id.0.as_str(), offsets.partition_count);
    let added = broker
        .txns
        .add_partitions(
            request.transactional_id.0.as_str(),
            (request.producer_id.0, request.producer_epoch),
            &[(OFFSETS_TOPIC.to_string(), partition)],
            0,
        )
        .await;
    let code = added
        .err()
        .map_or(0, |c| for_version(c, version, FENCED_SINCE_ADD));
    ResponseKind::AddOffsetsToTxn(response.with_error_code(code))
}

pub async fn end(broker: &Arc<Broker>, request: EndTxnRequest, version: i16) -> ResponseKind {
    // EndTxn v5 is transactions version 2 (KIP-890): an epoch bump at every end.
    let client_version = if version >= 5 { 2 } else { 0 };
    let ended = broker
        .txns
        .end_txn(
            request.transactional_id.0.as_str(),
            (request.producer_id.0, request.producer_epoch),
            request.committed,
            client_version,
            fresh_id(broker),
        )
        .await;
    let response = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    ResponseKind::EndTxn(match ended {
        Ok((id, epoch)) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(code) => response.with_error_code(for_version(code, version, FENCED_SINCE_END)),
    })
}

/// Appends each marker to its partitions (this broker must lead them) and answers once every
/// in-sync replica has them.
pub async fn write_markers(broker: &Arc<Broker>, request: WriteTxnMarkersRequest) -> ResponseKind {
    let mut markers = Vec::with_capacity(request.markers.len());
    for m in request.markers {
        let marker = caudal_storage::ControlMarker {
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(m.topics.len());
        for topic in m.topics {
            let t = broker.topics.get(topic.name.0.as_str());
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for index in topic.partition_indexes {
                let partition = match &t {
                    Some(t) => broker.leader_partition(t, index),
                    None => Err(E::UnknownTopicOrPartition.code()),
                };
                let code = match partition {
                    Ok(p) => crate::txn_markers::append_marker(
                        p,
                        m.producer_id.0,
                        m.producer_epoch,
                        marker,
                    )
                    .await
                    .err()
                    .unwrap_or(0),
                    Err(code) => code,
                };
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    ResponseKind::WriteTxnMarkers(WriteTxnMarkersResponse::default().with_markers(markers))
}
