//! DescribeLogDirs (API 35): the broker's log directory (Caudal keeps one, the data directory)
//! with the size of each local replica, and from v4 the filesystem's total and usable bytes.
//! Kafka's offset lag of a replica that is not a future replica (Caudal has none: no moves
//! between directories) is how far its log end is below its high watermark, never negative.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{
    DescribeLogDirsRequest, DescribeLogDirsResponse, ResponseKind, TopicName,
};

use super::str_bytes;
use crate::Broker;

/// DescribeLogDirs v4 and later carry the filesystem's total and usable bytes.
const SPACE_SINCE: i16 = 4;

pub fn handle(broker: &Arc<Broker>, request: DescribeLogDirsRequest, version: i16) -> ResponseKind {
    // Sets, so that a request naming many partitions costs a lookup per local replica, not a
    // scan of the request per local replica.
    let wanted: Option<BTreeMap<String, BTreeSet<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.into_iter().collect()))
            .collect()
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for partition in broker.replicas.all() {
        if let Some(wanted) = &wanted {
            if !wanted
                .get(&partition.topic)
                .is_some_and(|ps| ps.contains(&partition.index))
            {
                continue;
            }
        }
        let (size, log_end) = {
            let log = partition.log();
            (log.size_bytes(), log.log_end_offset())
        };
        topics.entry(partition.topic.clone()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(partition.index)
                .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                .with_offset_lag((partition.high_watermark() - log_end).max(0))
                .with_is_future_key(false),
        );
    }
    let dir = &broker.config.data_dir;
    let log_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(log_dir.display().to_string()))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    if version >= SPACE_SINCE {
        result = match crate::disk_space::statvfs(dir) {
            Ok((free, total)) => result
                .with_total_bytes(i64::try_from(total).unwrap_or(i64::MAX))
                .with_usable_bytes(i64::try_from(free).unwrap_or(i64::MAX)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data directory's free space");
                result
                    .with_error_code(E::KafkaStorageError.code())
                    .with_total_bytes(-1)
                    .with_usable_bytes(-1)
            }
        };
    }
    ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_results(vec![result]))
}
