//! Transaction verification between brokers (KIP-890 part 1): before the first transactional
//! batch of a producer's transaction lands on a partition, its leader asks the transaction
//! coordinator whether the partition is in that transaction. A batch whose producer never added
//! the partition (a bug, or a late retry of a transaction already ended) would otherwise open
//! a transaction nobody ends, holding back read_committed consumers for ever.
//!
//! A coordinator on this broker is asked directly; one on another broker with the batched,
//! verify-only AddPartitionsToTxn (v4) brokers send each other.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use caudal_coordinator::partition_for;
use caudal_coordinator::txn_records::TxnPartition;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, ProducerId, RequestKind, ResponseKind, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::peers::{self, Peers};
use crate::txn_runtime::TXN_TOPIC;
use crate::Broker;

/// The version brokers verify with; Kafka's brokers send v4 for producers before Produce v11.
const VERIFY_VERSION: i16 = 4;
/// How long a coordinator may take to answer before the batch is refused as retriable.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator's code for each of `partitions` (0: in the producer's transaction of
/// `transactional_id`), or one code for all. The coordinator on this broker is asked directly,
/// one on another broker through `broker`'s [`Verifier`]; without `__transaction_state` no
/// transaction exists (INVALID_PRODUCER_ID_MAPPING).
pub async fn verify(
    broker: &Broker,
    transactional_id: &str,
    producer: (i64, i16),
    partitions: &[TxnPartition],
) -> Result<Vec<i16>, i16> {
    match broker
        .txns
        .verify_partitions(transactional_id, producer, partitions)
    {
        Ok(each) => Ok(each.into_iter().map(|r| r.err().unwrap_or(0)).collect()),
        Err(code) if code == E::NotCoordinator.code() => {
            broker
                .txn_verifier
                .ask(broker, transactional_id, producer, partitions)
                .await
        }
        Err(code) => Err(code),
    }
}

/// Asks transaction coordinators on other brokers.
pub struct Verifier {
    peers: Peers,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            peers: Peers::new("txn-verify"),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// As [`verify`], of the coordinator on another broker: NOT_COORDINATOR when it cannot be
    /// reached (retriable for the producer).
    async fn ask(
        &self,
        broker: &Broker,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        partitions: &[TxnPartition],
    ) -> Result<Vec<i16>, i16> {
        let Some(state) = broker.topics.get(TXN_TOPIC) else {
            return Err(E::InvalidProducerIdMapping.code());
        };
        let index = partition_for(transactional_id, state.partition_count);
        let image = broker.topics.image();
        let leader = image
            .topic(state.id)
            .and_then(|t| {
                usize::try_from(index)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
            })
            .map_or(-1, |p| p.leader);
        if leader < 0 {
            return Err(E::NotCoordinator.code());
        }
        if leader == broker.config.node_id {
            // This broker leads it but its shard is not ready yet: retriable.
            return Err(E::NotCoordinator.code());
        }
        let listener = broker.config.inter_broker_listener_name();
        let Some(address) = peers::address(&image, leader, &listener) else {
            tracing::warn!(broker = leader, %listener, "transaction coordinator has no endpoint");
            return Err(E::NotCoordinator.code());
        };
        let request = request(transactional_id, (producer_id, producer_epoch), partitions);
        let answer = async {
            let connection = self
                .peers
                .connection(&address, broker.config.node_id)
                .await?;
            connection
                .call_direct(ApiKey::AddPartitionsToTxn, VERIFY_VERSION, &request, 0)
                .await
                .map_err(|e| e.to_string())
        };
        let response = match tokio::time::timeout(VERIFY_TIMEOUT, answer).await {
            Ok(Ok(ResponseKind::AddPartitionsToTxn(r))) => r,
            Ok(Ok(_)) => return Err(E::UnknownServerError.code()),
            Ok(Err(e)) => {
                self.peers.forget(&address);
                tracing::info!(coordinator = leader, error = %e, "transaction verification failed");
                return Err(E::NotCoordinator.code());
            }
            Err(_) => {
                self.peers.forget(&address);
                tracing::info!(coordinator = leader, "transaction verification timed out");
                return Err(E::NotCoordinator.code());
            }
        };
        if response.error_code != 0 {
            return Err(response.error_code);
        }
        let answered: HashMap<(&str, i32), i16> = response
            .results_by_transaction
            .iter()
            .filter(|t| t.transactional_id.0.as_str() == transactional_id)
            .flat_map(|t| &t.topic_results)
            .flat_map(|t| {
                t.results_by_partition.iter().map(|p| {
                    (
                        (t.name.0.as_str(), p.partition_index),
                        p.partition_error_code,
                    )
                })
            })
            .collect();
        // A partition the answer leaves out is not known to be in the transaction.
        Ok(partitions
            .iter()
            .map(|(topic, index)| {
                answered
                    .get(&(topic.as_str(), *index))
                    .copied()
                    .unwrap_or(E::InvalidTxnState.code())
            })
            .collect())
    }
}

fn request(
    transactional_id: &str,
    (producer_id, producer_epoch): (i64, i16),
    partitions: &[TxnPartition],
) -> RequestKind {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, index) in partitions {
        by_topic.entry(topic).or_default().push(*index);
    }
    let topics: Vec<AddPartitionsToTxnTopic> = by_topic
        .into_iter()
        .map(|(name, indexes)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_partitions(indexes)
        })
        .collect();
    RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(
        vec![AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(true)
            .with_topics(topics)],
    ))
}
