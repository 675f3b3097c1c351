//! Transaction markers, both ways: the transaction coordinator's [`MarkerWriter`], which
//! appends markers to the partitions this broker leads and sends WriteTxnMarkers to the leaders
//! of the others; and the append of markers a WriteTxnMarkers asks of this broker.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use caudal_coordinator::txn::Markers;
use caudal_coordinator::txn_records::TxnPartition;
use caudal_storage::{AppendError, ControlMarker, SequenceError};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, RequestKind, ResponseKind, TopicName, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::coordinator_runtime::wait_committed;
use crate::partition::Partition;
use crate::peers::{self, Peers};
use crate::txn_runtime::{BoxFuture, MarkerError, MarkerWriter};
use crate::Broker;

/// WriteTxnMarkers v1 is the flexible version every Kafka broker since 2.8 takes.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// How long markers may take to reach every in-sync replica of their partition.
const MARKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a marker to a partition this broker leads ([`append_marker`]); one in a
/// `__consumer_offsets` partition also completes the transaction's offset commits there.
pub async fn write_marker(
    broker: &Broker,
    partition: Arc<Partition>,
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlMarker,
) -> Result<(), i16> {
    let offsets =
        (partition.topic == crate::coordinator_runtime::OFFSETS_TOPIC).then_some(partition.index);
    append_marker(partition, producer_id, producer_epoch, marker).await?;
    if let Some(index) = offsets {
        broker
            .groups
            .complete_txn(index, producer_id, producer_epoch, marker.commit);
    }
    Ok(())
}

/// Appends a marker to a partition this broker leads and waits until every in-sync replica has
/// it; Kafka's error code if it cannot.
pub async fn append_marker(
    partition: Arc<Partition>,
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlMarker,
) -> Result<(), i16> {
    let end = partition
        .append_marker(producer_id, producer_epoch, marker, crate::now_ms())
        .map_err(|e| match e {
            AppendError::Sequence(SequenceError::StaleEpoch { .. }) => {
                E::InvalidProducerEpoch.code()
            }
            AppendError::Sequence(SequenceError::CoordinatorFenced { .. }) => {
                E::TransactionCoordinatorFenced.code()
            }
            _ if !partition.is_leader() => E::NotLeaderOrFollower.code(),
            _ => E::KafkaStorageError.code(),
        })?;
    wait_committed(Some((partition, end)), MARKER_TIMEOUT)
        .await
        .map_err(|e| match e {
            crate::coordinator_runtime::CommitError::Replication(code) => code,
            crate::coordinator_runtime::CommitError::TimedOut => E::RequestTimedOut.code(),
            crate::coordinator_runtime::CommitError::Io(_) => E::KafkaStorageError.code(),
        })
}

/// The coordinator's marker writer on a broker. Made before the broker it serves, which it is
/// given once built.
pub struct BrokerMarkers {
    broker: OnceLock<Weak<Broker>>,
    /// A connection to each other broker markers were sent to.
    peers: Peers,
}

impl Default for BrokerMarkers {
    fn default() -> Self {
        BrokerMarkers {
            broker: OnceLock::new(),
            peers: Peers::new("txn-markers"),
        }
    }
}

impl std::fmt::Debug for BrokerMarkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMarkers").finish_non_exhaustive()
    }
}

impl BrokerMarkers {
    pub fn serve(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }
}

impl MarkerWriter for Arc<BrokerMarkers> {
    fn write(&self, markers: Markers) -> BoxFuture<Result<(), MarkerError>> {
        let writer = self.clone();
        Box::pin(async move { writer.write_all(markers).await })
    }
}

impl BrokerMarkers {
    async fn write_all(&self, m: Markers) -> Result<(), MarkerError> {
        let failed = |pending: Vec<TxnPartition>, reason: String| MarkerError { pending, reason };
        let Some(broker) = self.broker.get().and_then(Weak::upgrade) else {
            return Err(failed(m.partitions, "the broker is not serving".into()));
        };
        let marker = ControlMarker {
            commit: m.committed,
            coordinator_epoch: m.coordinator_epoch,
        };
        let image = broker.topics.image();
        let listener = broker.config.inter_broker_listener_name();
        let mut pending = Vec::new();
        let mut reasons = Vec::new();
        let mut local = Vec::new();
        let mut remote: BTreeMap<i32, Vec<TxnPartition>> = BTreeMap::new();
        for (topic, index) in &m.partitions {
            // A partition whose topic is gone needs no marker.
            let Some(t) = broker.topics.get(topic).filter(|t| t.has_partition(*index)) else {
                continue;
            };
            match broker.leader_partition(&t, *index) {
                Ok(p) => local.push(((topic.clone(), *index), p)),
                Err(_) => {
                    let leader = image
                        .topic(t.id)
                        .and_then(|r| {
                            usize::try_from(*index)
                                .ok()
                                .and_then(|i| r.partitions.get(i))
                        })
                        .map_or(-1, |r| r.leader);
                    if leader < 0 || leader == broker.config.node_id {
                        pending.push((topic.clone(), *index));
                        reasons.push(format!("{topic}-{index} has no leader"));
                    } else {
                        remote
                            .entry(leader)
                            .or_default()
                            .push((topic.clone(), *index));
                    }
                }
            }
        }
        for (tp, partition) in local {
            if let Err(code) =
                write_marker(&broker, partition, m.producer_id, m.producer_epoch, marker).await
            {
                reasons.push(format!("{}-{}: error {code}", tp.0, tp.1));
                pending.push(tp);
            }
        }
        for (leader, partitions) in remote {
            let Some(address) = peers::address(&image, leader, &listener) else {
                reasons.push(format!("broker {leader} has no {listener} endpoint"));
                pending.extend(partitions);
                continue;
            };
            match self
                .send(&address, broker.config.node_id, &m, &partitions)
                .await
            {
                Ok(left) => {
                    if !left.is_empty() {
                        reasons.push(format!("broker {leader} refused some markers"));
                    }
                    pending.extend(left);
                }
                Err(e) => {
                    reasons.push(format!("broker {leader}: {e}"));
                    pending.extend(partitions);
                }
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(failed(pending, reasons.join("; ")))
        }
    }

    /// Sends `partitions`' markers to the broker at `address`; the partitions it did not write.
    async fn send(
        &self,
        address: &str,
        node_id: i32,
        m: &Markers,
        partitions: &[TxnPartition],
    ) -> Result<Vec<TxnPartition>, String> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, index) in partitions {
            topics.entry(topic).or_default().push(*index);
        }
        let request =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(m.producer_id))
                .with_producer_epoch(m.producer_epoch)
                .with_transaction_result(m.committed)
                .with_coordinator_epoch(m.coordinator_epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(name, indexes)| {
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                                .with_partition_indexes(indexes)
                        })
                        .collect(),
                )]);
        let connection = self.peers.connection(address, node_id).await?;
        let answer = connection
            .call_direct(
                ApiKey::WriteTxnMarkers,
                WRITE_TXN_MARKERS_VERSION,
                &RequestKind::WriteTxnMarkers(request),
                0,
            )
            .await;
        let response = match answer {
            Ok(ResponseKind::WriteTxnMarkers(r)) => r,
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => {
                self.peers.forget(address);
                return Err(e.to_string());
            }
        };
        let mut left = Vec::new();
        for marker in response.markers {
            for topic in marker.topics {
                for p in topic.partitions {
                    // Anything but success is tried again (an unknown partition there may be
                    // metadata it has not applied yet: a marker dropped would leave the
                    // transaction open on that partition for ever).
                    if p.error_code != 0 {
                        left.push((topic.name.0.to_string(), p.partition_index));
                    }
                }
            }
        }
        Ok(left)
    }
}
