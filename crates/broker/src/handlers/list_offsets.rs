//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), or the first offset at or after a
//! timestamp.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, ResponseKind};

use crate::Broker;

const LATEST: i64 = -1;
const READ_COMMITTED: i8 = 1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-405's "earliest local" (-4) and KIP-1005's "earliest pending upload" (-5): without tiered
/// storage, both are the earliest offset.
const EARLIEST_LOCAL: i64 = -4;

/// ListOffsets v4 and later carry the leader epoch.
const LEADER_EPOCH_SINCE: i16 = 4;

pub fn handle(broker: &Arc<Broker>, request: ListOffsetsRequest, version: i16) -> ResponseKind {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(t.name.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index).with_leader_epoch(-1);
                    let partition = match &topic {
                        Some(t) => broker.leader_partition(t, p.partition_index),
                        None => Err(E::UnknownTopicOrPartition.code()),
                    };
                    let partition = match partition {
                        Ok(partition) => partition,
                        Err(code) => return answer.with_error_code(code).with_timestamp(-1).with_offset(-1),
                    };
                    if let Err(code) = partition.check_leader_epoch(p.current_leader_epoch) {
                        return answer.with_error_code(code).with_timestamp(-1).with_offset(-1);
                    }
                    let answer = if version >= LEADER_EPOCH_SINCE {
                        answer.with_leader_epoch(partition.leader_epoch())
                    } else {
                        answer
                    };
                    let high_watermark = partition.high_watermark();
                    let mut log = partition.log();
                    if log.offline_reason().is_some() {
                        return answer.with_error_code(E::KafkaStorageError.code()).with_timestamp(-1).with_offset(-1);
                    }
                    let (offset, timestamp) = match p.timestamp {
                        // A read_committed consumer starts at the last stable offset.
                        LATEST if request.isolation_level == READ_COMMITTED => {
                            (crate::partition::last_stable_offset(high_watermark, &log), -1)
                        }
                        LATEST => (high_watermark, -1),
                        EARLIEST | EARLIEST_LOCAL | -5 => (log.log_start_offset(), -1),
                        MAX_TIMESTAMP => log.max_timestamp().unwrap_or((-1, -1)),
                        ts if ts >= 0 => match log.offset_for_timestamp(ts) {
                            Ok(Some((o, found))) => (o, found),
                            Ok(None) => (-1, -1),
                            Err(e) => {
                                if !matches!(e, caudal_storage::ReadError::Offline(_)) {
                                    tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "timestamp lookup failed");
                                }
                                return answer.with_error_code(E::KafkaStorageError.code()).with_timestamp(-1).with_offset(-1);
                            }
                        },
                        _ => return answer.with_error_code(E::InvalidRequest.code()).with_timestamp(-1).with_offset(-1),
                    };
                    answer.with_offset(offset).with_timestamp(timestamp)
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
}
