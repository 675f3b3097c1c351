//! The transaction APIs a transactional producer sends its coordinator (AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn; InitProducerId with a transactional id is in `init_producer_id`),
//! TxnOffsetCommit, which it sends its group's coordinator, WriteTxnMarkers, which
//! coordinators send partition leaders, and the admin clients' ListTransactions,
//! DescribeTransactions and DescribeProducers.

use std::sync::Arc;

use caudal_coordinator::partition_for;
use caudal_coordinator::txn_records::TxnPartition;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    describe_producers_response, describe_transactions_response, list_transactions_response,
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse,
    TransactionalId,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, ProducerId, ResponseKind, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};

use kafka_protocol::protocol::StrBytes;

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

/// AddPartitionsToTxn v4 and later: what brokers send a transaction coordinator.
const BETWEEN_BROKERS_SINCE: i16 = 4;
/// Before v5 a partition outside the transaction is INVALID_TXN_STATE (KIP-890).
const ABORTABLE_SINCE: i16 = 5;

pub async fn add_partitions(
    broker: &Arc<Broker>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> ResponseKind {
    if version >= BETWEEN_BROKERS_SINCE {
        return ResponseKind::AddPartitionsToTxn(verify_partitions(broker, request, version));
    }
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

/// The batched form partition leaders send (KIP-890 part 1): for each transaction, whether
/// each partition is in it, every partition carrying the transaction's error if there is one,
/// as Kafka's coordinator answers. Adding partitions this way (`verify_only` false) is how
/// brokers add them for producers of transactions version 2, which Caudal does not serve yet.
fn verify_partitions(
    broker: &Broker,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let for_version = |code: i16| {
        if code == E::TransactionAbortable.code() && version < ABORTABLE_SINCE {
            E::InvalidTxnState.code()
        } else {
            code
        }
    };
    let results = request
        .transactions
        .into_iter()
        .map(|txn| {
            let partitions: Vec<TxnPartition> = txn
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|&p| (t.name.0.to_string(), p)))
                .collect();
            let codes: Vec<i16> = if !txn.verify_only {
                vec![E::InvalidRequest.code(); partitions.len()]
            } else {
                match broker.txns.verify_partitions(
                    txn.transactional_id.0.as_str(),
                    (txn.producer_id.0, txn.producer_epoch),
                    &partitions,
                ) {
                    Ok(each) => each
                        .into_iter()
                        .map(|r| r.err().map_or(0, for_version))
                        .collect(),
                    Err(code) => vec![for_version(code); partitions.len()],
                }
            };
            let mut codes = codes.into_iter();
            let topic_results = txn
                .topics
                .into_iter()
                .map(|t| {
                    let results = t
                        .partitions
                        .iter()
                        .map(|&p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(
                                    codes.next().unwrap_or(E::UnknownServerError.code()),
                                )
                        })
                        .collect();
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(t.name)
                        .with_results_by_partition(results)
                })
                .collect();
            AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id)
                .with_topic_results(topic_results)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
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
                    Ok(p) => crate::txn_markers::write_marker(
                        broker,
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

/// KIP-588: TxnOffsetCommit before v3 knows PRODUCER_FENCED as INVALID_PRODUCER_EPOCH.
const FENCED_SINCE_TXN_COMMIT: i16 = 3;

/// TxnOffsetCommit: offsets a consume-transform-produce application commits in its
/// transaction. Checked against the group (KIP-447's member and generation, from v3) and
/// against the transaction, by its coordinator here or on another broker (the group's
/// `__consumer_offsets` partition must have been added with AddOffsetsToTxn); written as a
/// transactional batch of the producer, they count once the transaction's commit marker lands.
pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> super::Reply {
    let group_id = request.group_id.0.to_string();
    let producer = (request.producer_id.0, request.producer_epoch);
    let mut commits = Vec::new();
    let mut shape: Vec<(usize, usize, Option<i16>)> = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let name = topic.name.0.as_str();
        let known = broker.topics.get(name).filter(|_| name != OFFSETS_TOPIC);
        for (p, partition) in topic.partitions.iter().enumerate() {
            if known
                .as_ref()
                .is_some_and(|k| k.has_partition(partition.partition_index))
            {
                shape.push((t, p, None));
                commits.push(caudal_coordinator::OffsetCommit {
                    topic: name.to_string(),
                    partition: partition.partition_index,
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata: partition
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                });
            } else {
                shape.push((t, p, Some(E::UnknownTopicOrPartition.code())));
            }
        }
    }
    // The transaction must hold the group's offsets partition.
    let offsets_partition = broker
        .topics
        .get(OFFSETS_TOPIC)
        .map(|t| partition_for(&group_id, t.partition_count));
    let verified = match offsets_partition {
        Some(p) => match crate::txn_verify::verify(
            broker,
            request.transactional_id.0.as_str(),
            producer,
            &[(OFFSETS_TOPIC.to_string(), p)],
        )
        .await
        {
            Ok(each) if each.iter().all(|&c| c == 0) => Ok(()),
            Ok(_) => Err(E::InvalidTxnState.code()),
            Err(code) if code == E::ProducerFenced.code() => {
                Err(for_version(code, version, FENCED_SINCE_TXN_COMMIT))
            }
            Err(code) if code == E::InvalidProducerIdMapping.code() => Err(code),
            Err(_) => Err(E::CoordinatorLoadInProgress.code()),
        },
        None => Err(E::CoordinatorNotAvailable.code()),
    };
    let now = crate::now_ms();
    let instance = request.group_instance_id.as_ref().map(|i| i.to_string());
    let ran = verified.and_then(|()| {
        broker
            .groups
            .run(&group_id, now, |c| {
                c.txn_commit_offsets(
                    &group_id,
                    request.generation_id,
                    request.member_id.as_str(),
                    instance.as_deref(),
                    commits,
                    producer,
                    now,
                )
            })
            .map_err(|e| e.code())
    });
    let (errors, wait, group_error) = match ran {
        Ok((errors, wait)) => (errors, wait, None),
        Err(code) => (Vec::new(), None, Some(code)),
    };
    let mut errors = errors.into_iter();
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = request
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(TopicName(super::str_bytes(t.name.0.as_str())))
        })
        .collect();
    for (t, p, refused) in shape {
        let error = refused
            .or(group_error)
            .unwrap_or_else(|| errors.next().unwrap_or(0));
        let error = if error == E::InvalidProducerEpoch.code() && version >= 3 {
            E::ProducerFenced.code()
        } else {
            error
        };
        topics[t].partitions.push(
            TxnOffsetCommitResponsePartition::default()
                .with_partition_index(request.topics[t].partitions[p].partition_index)
                .with_error_code(error),
        );
    }
    let timeout = broker.config.offsets_commit_timeout();
    Box::pin(async move {
        if let Err(e) = crate::coordinator_runtime::wait_committed(wait, timeout).await {
            for t in &mut topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = e.code();
                    }
                }
            }
        }
        Some(ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(topics),
        ))
    })
}

/// Kafka's TRANSACTIONAL_ID_NOT_FOUND.
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

/// ListTransactions: the transactions this broker coordinates, filtered by state, producer id,
/// (v1) how long they have been running and (v2) a regular expression of their ids. Unknown
/// state names are listed back.
pub fn list(broker: &Arc<Broker>, request: ListTransactionsRequest) -> ResponseKind {
    use caudal_coordinator::txn_records::TxnState;
    const STATES: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];
    let unknown: Vec<_> = request
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let response = ListTransactionsResponse::default().with_unknown_state_filters(unknown);
    let pattern = match id_pattern(request.transactional_id_pattern.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "ListTransactions with an invalid pattern");
            return ResponseKind::ListTransactions(
                response.with_error_code(E::InvalidRegularExpression.code()),
            );
        }
    };
    let txns = match broker.txns.list() {
        Ok(txns) => txns,
        Err(code) => return ResponseKind::ListTransactions(response.with_error_code(code)),
    };
    let now = crate::now_ms();
    let states = txns
        .into_iter()
        .filter(|(_, m)| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|f| f.as_str() == m.record.state.name())
        })
        .filter(|(_, m)| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|p| p.0 == m.record.producer_id)
        })
        .filter(|(id, _)| pattern.as_ref().is_none_or(|p| p.is_match(id)))
        .filter(|(_, m)| {
            request.duration_filter < 0
                || (m.record.start_ms >= 0
                    && now.saturating_sub(m.record.start_ms) > request.duration_filter)
        })
        .map(|(id, m)| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(super::str_bytes(id)))
                .with_producer_id(ProducerId(m.record.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.record.state.name()))
        })
        .collect();
    ResponseKind::ListTransactions(response.with_transaction_states(states))
}

/// ListTransactions v2's filter (KIP-1152): a transactional id is listed when the whole of it
/// matches the pattern, as Java's `Matcher.matches` decides; none (or an empty one) lists all.
/// Patterns are RE2 syntax, as Kafka's regular-expression subscriptions: no look-around or
/// back-references.
fn id_pattern(pattern: Option<&str>) -> Result<Option<regex::Regex>, regex::Error> {
    let Some(p) = pattern.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    // Checked alone first: a pattern that compiles has balanced groups, so anchoring it cannot
    // change what it means.
    regex::Regex::new(p)?;
    regex::Regex::new(&format!(r"\A(?:{p})\z")).map(Some)
}

/// DescribeTransactions: each transactional id's state, from its coordinator.
pub fn describe(broker: &Arc<Broker>, request: DescribeTransactionsRequest) -> ResponseKind {
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let d = describe_transactions_response::TransactionState::default()
                .with_transaction_state(StrBytes::from_static_str(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            match broker.txns.describe(id.0.as_str()) {
                Err(code) => d.with_transactional_id(id).with_error_code(code),
                Ok(None) => d
                    .with_transactional_id(id)
                    .with_error_code(TRANSACTIONAL_ID_NOT_FOUND),
                Ok(Some(m)) => {
                    let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
                    for (topic, p) in &m.record.partitions {
                        match topics.last_mut() {
                            Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*p),
                            _ => topics.push(
                                describe_transactions_response::TopicData::default()
                                    .with_topic(TopicName(super::str_bytes(topic.as_str())))
                                    .with_partitions(vec![*p]),
                            ),
                        }
                    }
                    d.with_transactional_id(id)
                        .with_transaction_state(StrBytes::from_static_str(m.record.state.name()))
                        .with_transaction_timeout_ms(m.record.timeout_ms)
                        .with_transaction_start_time_ms(m.record.start_ms)
                        .with_producer_id(ProducerId(m.record.producer_id))
                        .with_producer_epoch(m.record.producer_epoch)
                        .with_topics(topics)
                }
            }
        })
        .collect();
    ResponseKind::DescribeTransactions(
        DescribeTransactionsResponse::default().with_transaction_states(states),
    )
}

/// DescribeProducers: the active producers of partitions this broker leads, with their open
/// transactions.
pub fn describe_producers(broker: &Arc<Broker>, request: DescribeProducersRequest) -> ResponseKind {
    use describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(t.name.0.as_str());
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&index| {
                    let r = PartitionResponse::default().with_partition_index(index);
                    let partition = match &topic {
                        Some(topic) => broker.leader_partition(topic, index),
                        None => Err(E::UnknownTopicOrPartition.code()),
                    };
                    match partition {
                        Err(code) => r.with_error_code(code),
                        Ok(p) => r.with_active_producers(
                            p.log()
                                .producer_summaries()
                                .into_iter()
                                .map(|s| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(s.producer_id))
                                        .with_producer_epoch(i32::from(s.epoch))
                                        .with_last_sequence(s.last_sequence)
                                        .with_last_timestamp(s.last_append_ms)
                                        .with_coordinator_epoch(s.coordinator_epoch)
                                        .with_current_txn_start_offset(s.txn_first_offset)
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ResponseKind::DescribeProducers(DescribeProducersResponse::default().with_topics(topics))
}

#[cfg(test)]
mod tests {
    use super::id_pattern;

    #[test]
    fn a_transactional_id_is_listed_when_the_whole_of_it_matches() {
        assert!(id_pattern(None).unwrap().is_none());
        assert!(id_pattern(Some("")).unwrap().is_none(), "empty: everything");
        let p = id_pattern(Some("orders-[0-9]+")).unwrap().unwrap();
        assert!(p.is_match("orders-12"));
        assert!(!p.is_match("orders-12-old"), "a match must reach the end");
        assert!(!p.is_match("old-orders-12"), "and start at the beginning");
        let either = id_pattern(Some("a|b")).unwrap().unwrap();
        assert!(either.is_match("a") && either.is_match("b") && !either.is_match("ab"));
        // Unbalanced groups stay invalid rather than being balanced by the anchoring.
        assert!(id_pattern(Some("a)|(b")).is_err());
        assert!(id_pattern(Some("(")).is_err());
        // Java's look-around has no RE2 equivalent.
        assert!(id_pattern(Some("(?=a)a")).is_err());
    }
}
