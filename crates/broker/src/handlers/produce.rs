//! Produce: validate each partition's batch, append it, and answer per `acks` (0: never, 1: after
//! the append, all: after the batch is fsync'd, sharing fsyncs with concurrent producers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use caudal_coordinator::txn_records::TxnPartition;
use caudal_storage::{validate_for_append, AppendError, BatchHeader, SequenceError};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};

use super::leader_hints::LeaderHints;
use super::{metadata::auto_create_topic, str_bytes, Reply};
use crate::partition::Partition;
use crate::{now_ms, Broker};

fn failed(index: i32, code: i16, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(str_bytes))
}

/// Produce v7 and later may carry zstd batches (KIP-110).
const ZSTD_SINCE: i16 = 7;
const ZSTD: i16 = 4;
/// Produce v10 and later carry the leader of a partition this broker does not lead (KIP-951).
const LEADER_HINTS_SINCE: i16 = 10;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    version: i16,
    listener: usize,
) -> Reply {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
    // Made on the first NOT_LEADER_OR_FOLLOWER only: the common produce needs no image.
    let mut hints: Option<LeaderHints> = None;
    let now = now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    // (topic slot, partition slot, partition, end offset) for acks=all
    let mut durable_waits: Vec<(usize, usize, Arc<Partition>, i64)> = Vec::new();
    let verdicts = verify_transactional(broker, transactional_id.as_deref(), &request).await;
    for (t, topic_data) in request.topic_data.into_iter().enumerate() {
        let name = topic_data.name.0.as_str().to_string();
        let topic = match broker.topics.get(&name) {
            // Kafka: clients cannot append to internal topics.
            Some(_)
                if name == crate::coordinator_runtime::OFFSETS_TOPIC
                    || name == crate::txn_runtime::TXN_TOPIC =>
            {
                Err(E::InvalidTopicException.code())
            }
            Some(t) => Ok(t),
            None if broker.config.auto_create_topics() => auto_create_topic(broker, &name).await,
            None => Err(E::UnknownTopicOrPartition.code()),
        };
        let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
        for (p, data) in topic_data.partition_data.into_iter().enumerate() {
            let index = data.index;
            if !matches!(acks, -1..=1) {
                partition_responses.push(failed(index, E::InvalidRequiredAcks.code(), None));
                continue;
            }
            let partition = match &topic {
                Ok(t) => broker.leader_partition(t, index),
                Err(code) => Err(*code),
            };
            let partition = match partition {
                Ok(p) => p,
                Err(code) => {
                    let mut response = failed(index, code, None);
                    if code == E::NotLeaderOrFollower.code() && version >= LEADER_HINTS_SINCE {
                        if let Ok(t) = &topic {
                            let hints =
                                hints.get_or_insert_with(|| LeaderHints::new(broker, listener));
                            if let Some(leader) = hints.leader(t.id, index) {
                                response = response.with_current_leader(
                                    LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(leader.id))
                                        .with_leader_epoch(leader.epoch),
                                );
                            }
                        }
                    }
                    partition_responses.push(response);
                    continue;
                }
            };
            let records = data.records.unwrap_or_default();
            if version < ZSTD_SINCE
                && BatchHeader::parse(&records).is_ok_and(|h| h.compression() == ZSTD)
            {
                partition_responses.push(failed(
                    index,
                    E::UnsupportedCompressionType.code(),
                    Some(format!("Produce v{version} may not carry zstd batches; v{ZSTD_SINCE} and later may")),
                ));
                continue;
            }
            if acks == -1 && !partition.enough_replicas() {
                partition_responses.push(failed(index, E::NotEnoughReplicas.code(), None));
                continue;
            }
            if let Err(full) = broker.free_space.admit(records.len() as u64, now) {
                partition_responses.push(failed(
                    index,
                    E::KafkaStorageError.code(),
                    Some(full.to_string()),
                ));
                continue;
            }
            let limits = partition.log().append_limits();
            let result = match validate_for_append(&records, limits) {
                // Kafka: a produce request carries exactly one batch per partition (v3+).
                Ok(valid) if valid.total_len != records.len() => Err((
                    E::InvalidRecord.code(),
                    "a produce request must carry exactly one record batch per partition"
                        .to_string(),
                )),
                // A transactional batch belongs to a transaction its coordinator knows of: one
                // that was not added would hold back what read_committed consumers see for ever.
                Ok(valid) if BatchHeader::parse(&records).is_ok_and(|h| h.is_transactional()) => {
                    match (&transactional_id, verdicts.get(&(t, p))) {
                        (None, _) => Err((
                            E::TransactionalIdAuthorizationFailed.code(),
                            "a transactional batch in a produce request without a transactional id"
                                .to_string(),
                        )),
                        (Some(_), Some(Verdict::Verified(at))) => partition
                            .append_verified(&records, valid, *at, now)
                            .map_err(|e| refused(&name, index, e)),
                        (Some(_), Some(Verdict::Refused(code, message))) => {
                            Err((*code, message.clone()))
                        }
                        // Not asked about: its topic was created by this request, or this
                        // broker became its leader since. Retriable: the retry is asked about.
                        (Some(_), None) => Err(not_verified()),
                    }
                }
                Ok(valid) => partition
                    .append(&records, valid, now)
                    .map_err(|e| refused(&name, index, e)),
                Err(e) => Err(refused(&name, index, e)),
            };
            match result {
                Ok((info, log_start_offset)) => {
                    if acks == -1 {
                        durable_waits.push((
                            responses.len(),
                            partition_responses.len(),
                            partition.clone(),
                            info.last_offset + 1,
                        ));
                    }
                    partition_responses.push(
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_base_offset(info.base_offset)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(log_start_offset),
                    );
                }
                Err((code, message)) => {
                    partition_responses.push(failed(index, code, Some(message)))
                }
            }
        }
        responses.push(
            TopicProduceResponse::default()
                // A copy: the request's name is a slice of the request frame, and this response
                // may wait for an fsync, which would keep the whole (megabyte) frame alive.
                .with_name(TopicName(str_bytes(name.clone())))
                .with_partition_responses(partition_responses),
        );
    }
    if acks == 0 {
        return Box::pin(std::future::ready(None));
    }
    let node_endpoints: Vec<NodeEndpoint> = hints
        .map(|h| {
            h.endpoints()
                .into_iter()
                .map(|n| {
                    NodeEndpoint::default()
                        .with_node_id(BrokerId(n.id))
                        .with_host(str_bytes(n.host))
                        .with_port(i32::from(n.port))
                        .with_rack(n.rack.map(str_bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1));
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        for (t, p, partition, end) in durable_waits {
            // On disk here, then on every in-sync replica.
            let code = match tokio::time::timeout_at(deadline, partition.wait_durable(end)).await {
                Ok(Ok(())) => {
                    match tokio::time::timeout_at(deadline, partition.wait_replicated(end)).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(code)) => code,
                        Err(_) => E::RequestTimedOut.code(),
                    }
                }
                Ok(Err(_)) => E::KafkaStorageError.code(),
                Err(_) => E::RequestTimedOut.code(),
            };
            let slot = &mut responses[t].partition_responses[p];
            *slot = failed(slot.index, code, None);
        }
        Some(ResponseKind::Produce(
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(node_endpoints),
        ))
    })
}

/// What verification decided for one transactional batch (KIP-890).
enum Verdict {
    /// The batch belongs to its producer's transaction, open on the partition or verified with
    /// the coordinator when the partition's log ended at this offset: a marker of the producer
    /// after it means the transaction ended meanwhile, and the batch is refused at append.
    Verified(i64),
    Refused(i16, String),
}

/// The producer id and epoch of the batch at `slot` of the request.
fn producer_at(request: &ProduceRequest, (t, p): (usize, usize)) -> Option<(i64, i16)> {
    let records = request
        .topic_data
        .get(t)?
        .partition_data
        .get(p)?
        .records
        .as_deref()?;
    BatchHeader::parse(records)
        .ok()
        .map(|h| (h.producer_id(), h.producer_epoch()))
}

/// A transactional batch to ask its coordinator about.
struct Ask {
    /// (topic slot, partition slot) in the request.
    slot: (usize, usize),
    partition: TxnPartition,
    /// Its producer id and epoch.
    producer: (i64, i16),
    /// The partition's log end offset when it was asked about.
    log_end: i64,
}

/// Verifies the request's transactional batches with their transaction coordinator, on this
/// broker or another ([`crate::txn_verify`]); a verdict for each, by
/// (topic slot, partition slot). Only the first batch of a transaction on a partition is
/// asked about: later ones find it open. Batches that fail other checks get no verdict.
async fn verify_transactional(
    broker: &Arc<Broker>,
    transactional_id: Option<&str>,
    request: &ProduceRequest,
) -> HashMap<(usize, usize), Verdict> {
    let mut verdicts = HashMap::new();
    let Some(txn_id) = transactional_id else {
        return verdicts;
    };
    let mut asks: Vec<Ask> = Vec::new();
    for (t, topic_data) in request.topic_data.iter().enumerate() {
        let name = topic_data.name.0.as_str();
        let Some(topic) = broker.topics.get(name) else {
            continue;
        };
        for (p, data) in topic_data.partition_data.iter().enumerate() {
            let Some(h) = data
                .records
                .as_deref()
                .and_then(|r| BatchHeader::parse(r).ok())
            else {
                continue;
            };
            if !h.is_transactional() {
                continue;
            }
            let Ok(partition) = broker.leader_partition(&topic, data.index) else {
                continue;
            };
            let producer = (h.producer_id(), h.producer_epoch());
            let (open, log_end) = {
                let log = partition.log();
                (
                    log.has_open_txn(producer.0, producer.1),
                    log.log_end_offset(),
                )
            };
            if open {
                verdicts.insert((t, p), Verdict::Verified(log_end));
            } else {
                asks.push(Ask {
                    slot: (t, p),
                    partition: (name.to_string(), data.index),
                    producer,
                    log_end,
                });
            }
        }
    }
    // One request carries one transactional id, so one producer; Kafka refuses more.
    let mut producers = asks.iter().map(|a| a.producer).chain(
        verdicts
            .keys()
            .filter_map(|slot| producer_at(request, *slot)),
    );
    let first = producers.next();
    if producers.any(|producer| Some(producer) != first) {
        let slots: Vec<(usize, usize)> = verdicts
            .keys()
            .copied()
            .chain(asks.iter().map(|a| a.slot))
            .collect();
        return slots
            .into_iter()
            .map(|slot| {
                let refused = Verdict::Refused(
                    E::InvalidProducerIdMapping.code(),
                    "transactional batches of more than one producer in one request".to_string(),
                );
                (slot, refused)
            })
            .collect();
    }
    let Some(producer) = asks.first().map(|a| a.producer) else {
        return verdicts;
    };
    let partitions: Vec<TxnPartition> = asks.iter().map(|a| a.partition.clone()).collect();
    let codes = crate::txn_verify::verify(broker, txn_id, producer, &partitions).await;
    for (i, ask) in asks.into_iter().enumerate() {
        let (topic, index) = ask.partition;
        let code = match &codes {
            Ok(each) => each.get(i).copied().unwrap_or(E::InvalidTxnState.code()),
            Err(code) => *code,
        };
        let verdict = match refusal(code, txn_id, &topic, index) {
            None => Verdict::Verified(ask.log_end),
            Some((code, message)) => Verdict::Refused(code, message),
        };
        verdicts.insert(ask.slot, verdict);
    }
    verdicts
}

fn not_added(txn_id: &str, topic: &str, index: i32) -> (i16, String) {
    (
        E::InvalidTxnState.code(),
        format!("{topic}-{index} was not added to the transaction of {txn_id}"),
    )
}

/// The produce error for a transaction coordinator's verdict on a partition (None: in the
/// transaction), as Kafka maps them for clients.
fn refusal(code: i16, txn_id: &str, topic: &str, index: i32) -> Option<(i16, String)> {
    if code == 0 {
        None
    } else if code == E::TransactionAbortable.code() || code == E::InvalidTxnState.code() {
        Some(not_added(txn_id, topic, index))
    } else if code == E::ProducerFenced.code() || code == E::InvalidProducerEpoch.code() {
        Some((
            E::InvalidProducerEpoch.code(),
            "a newer producer of this transactional id fenced this one".to_string(),
        ))
    } else if code == E::InvalidProducerIdMapping.code() {
        Some((
            code,
            format!("no open transaction of {txn_id} for this producer"),
        ))
    } else {
        // The coordinator is loading, moving or busy: retriable, as Kafka answers.
        Some(not_verified())
    }
}

fn not_verified() -> (i16, String) {
    (
        E::NotEnoughReplicas.code(),
        "the transaction coordinator could not verify the batch yet".to_string(),
    )
}

/// Kafka's error code for a refused append, logged.
fn refused(topic: &str, partition: i32, e: AppendError) -> (i16, String) {
    let code = match &e {
        AppendError::Corrupt(b) if b.is_invalid_record() => E::InvalidRecord.code(),
        AppendError::Corrupt(_) => E::CorruptMessage.code(),
        AppendError::TooLarge { .. } => E::MessageTooLarge.code(),
        AppendError::Sequence(SequenceError::StaleEpoch { .. }) => E::InvalidProducerEpoch.code(),
        AppendError::Sequence(SequenceError::OutOfOrder { .. }) => {
            E::OutOfOrderSequenceNumber.code()
        }
        AppendError::Sequence(
            SequenceError::NotTransactional { .. } | SequenceError::EndedWhileVerifying { .. },
        ) => E::InvalidTxnState.code(),
        AppendError::Sequence(SequenceError::CoordinatorFenced { .. }) => {
            E::TransactionCoordinatorFenced.code()
        }
        AppendError::Io(_) | AppendError::Offline(_) => E::KafkaStorageError.code(),
        // Only a follower's append of a leader's batches can meet this.
        AppendError::BelowLogEnd { .. } => E::UnknownServerError.code(),
    };
    match &e {
        AppendError::Io(io) => tracing::error!(topic, partition, error = %io, "append failed"),
        AppendError::Offline(_) => {
            tracing::debug!(topic, partition, error = %e, "produce to an offline partition")
        }
        other => tracing::info!(topic, partition, error = %other, "produce refused"),
    }
    (code, e.to_string())
}
