//! DescribeTopicPartitions (API 75, KIP-966): what Metadata says of topics' partitions, plus
//! each partition's eligible leader replicas, in pages. Topics come in name order (every topic
//! when none is named); at most `response_partition_limit` partitions (capped as Kafka caps it,
//! at 2,000) are answered, and `next_cursor` names the first partition left out, for the client
//! to ask again from. Kafka's admin clients (`describeTopics`) and `kafka-topics --describe` use
//! it; `caudal topic describe` does too.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, ResponseKind,
    TopicName,
};

use super::metadata::{broker_ids, leadership, OPERATIONS_OMITTED};
use super::{listener_name, str_bytes};
use crate::Broker;

/// Kafka's `max.request.partition.size.limit`: the most partitions one response carries.
const MAX_PARTITIONS: usize = 2000;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeTopicPartitionsRequest,
    listener: usize,
) -> ResponseKind {
    let image = broker.topics.image();
    let listener_name = listener_name(broker, listener);
    let mut names: Vec<String> = if request.topics.is_empty() {
        broker.topics.all().iter().map(|t| t.name.clone()).collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .collect()
    };
    names.sort_unstable();
    names.dedup();
    let mut room = usize::try_from(request.response_partition_limit)
        .unwrap_or(0)
        .clamp(1, MAX_PARTITIONS);
    let start = request
        .cursor
        .as_ref()
        .map(|c| (c.topic_name.0.to_string(), c.partition_index.max(0)));
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names {
        let first = match &start {
            Some((topic, _)) if name < *topic => continue,
            Some((topic, partition)) if name == *topic => *partition,
            _ => 0,
        };
        let Some(topic) = broker.topics.get(&name) else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(E::UnknownTopicOrPartition.code())
                    .with_name(Some(TopicName(str_bytes(name))))
                    .with_topic_authorized_operations(OPERATIONS_OMITTED),
            );
            continue;
        };
        if room == 0 {
            next_cursor = Some(cursor(&name, first));
            break;
        }
        let registrations = image.topic(topic.id);
        let mut partitions = Vec::new();
        for index in first..topic.partition_count {
            if room == 0 {
                next_cursor = Some(cursor(&name, index));
                break;
            }
            room -= 1;
            let partition =
                DescribeTopicPartitionsResponsePartition::default().with_partition_index(index);
            let Some(reg) = registrations.and_then(|t| t.partition(index)) else {
                partitions.push(
                    partition
                        .with_error_code(E::LeaderNotAvailable.code())
                        .with_leader_id(BrokerId(-1))
                        .with_leader_epoch(-1),
                );
                continue;
            };
            let led = leadership(broker, &image, &topic, index, reg, listener_name);
            partitions.push(
                partition
                    .with_error_code(led.error_code)
                    .with_leader_id(BrokerId(led.leader))
                    .with_leader_epoch(reg.leader_epoch)
                    .with_replica_nodes(broker_ids(&reg.replicas))
                    .with_isr_nodes(broker_ids(&reg.isr))
                    .with_eligible_leader_replicas(Some(broker_ids(&reg.elr)))
                    // Caudal keeps no last known ELR (KIP-966's unclean recovery).
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(led.offline),
            );
        }
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(TopicName(str_bytes(name))))
                .with_topic_id(topic.id)
                .with_is_internal(topic.name == crate::coordinator_runtime::OFFSETS_TOPIC)
                .with_partitions(partitions)
                .with_topic_authorized_operations(OPERATIONS_OMITTED),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    ResponseKind::DescribeTopicPartitions(
        DescribeTopicPartitionsResponse::default()
            .with_topics(topics)
            .with_next_cursor(next_cursor),
    )
}

fn cursor(topic: &str, partition: i32) -> Cursor {
    Cursor::default()
        .with_topic_name(TopicName(str_bytes(topic.to_string())))
        .with_partition_index(partition)
}
