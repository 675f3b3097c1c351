//! OffsetForLeaderEpoch: where a leader epoch ended in a partition's log (KIP-101, KIP-320).
//! Consumers ask it to check their position after a leader change; followers (from the next
//! release on) to find where their log diverged from the leader's.

use std::sync::Arc;

use caudal_storage::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseKind,
};

use crate::Broker;

pub fn handle(broker: &Arc<Broker>, request: OffsetForLeaderEpochRequest) -> ResponseKind {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(t.topic.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(UNDEFINED_EPOCH)
                        .with_end_offset(UNDEFINED_OFFSET);
                    let partition = match &topic {
                        Some(topic) => broker.leader_partition(topic, p.partition),
                        None => Err(E::UnknownTopicOrPartition.code()),
                    };
                    let partition = match partition {
                        Ok(partition) => partition,
                        Err(code) => return answer.with_error_code(code),
                    };
                    if let Err(code) = partition.check_leader_epoch(p.current_leader_epoch) {
                        return answer.with_error_code(code);
                    }
                    let log = partition.log();
                    if log.offline_reason().is_some() {
                        return answer.with_error_code(E::KafkaStorageError.code());
                    }
                    let (epoch, end_offset) = log.end_offset_for_epoch(p.leader_epoch);
                    answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default().with_topics(topics))
}
