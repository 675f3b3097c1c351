use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};

use super::str_bytes;
use crate::replica_manager::tp;
use crate::topics::Topic;
use crate::Broker;

/// Kafka's "authorized operations not requested" marker.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    version: i16,
    listener: usize,
) -> ResponseKind {
    let node = broker.config.node_id;
    // v0 asks for every topic with an empty list; v1+ with a null one.
    let wanted = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create =
        broker.config.auto_create_topics() && (version < 4 || request.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match wanted {
        None => {
            for topic in broker.topics.all() {
                topics.push(describe(broker, &topic, node));
            }
        }
        Some(requested) => {
            for t in requested {
                let found = match &t.name {
                    Some(name) => {
                        let name = name.0.as_str();
                        match broker.topics.get(name) {
                            Some(topic) => Ok(topic),
                            None if auto_create => auto_create_topic(broker, name).await,
                            None => Err(E::UnknownTopicOrPartition.code()),
                        }
                    }
                    None => broker
                        .topics
                        .get_by_id(t.topic_id)
                        .ok_or(E::UnknownTopicId.code()),
                };
                topics.push(match found {
                    Ok(topic) => describe(broker, &topic, node),
                    Err(code) => MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_topic_authorized_operations(OPERATIONS_OMITTED),
                });
            }
        }
    }
    let (host, port) = &broker.config.advertise(listener);
    ResponseKind::Metadata(
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(host.clone()))
                .with_port(i32::from(*port))])
            .with_cluster_id(Some(str_bytes(broker.topics.cluster_id())))
            .with_controller_id(BrokerId(node))
            .with_topics(topics)
            .with_cluster_authorized_operations(OPERATIONS_OMITTED),
    )
}

/// Creates a topic on first use, as Kafka does with `auto.create.topics.enable`.
pub(crate) async fn auto_create_topic(broker: &Broker, name: &str) -> Result<Arc<Topic>, i16> {
    let created = broker
        .topics
        .create(name, broker.config.num_partitions(), BTreeMap::new(), false)
        .await;
    match created {
        Ok(Some(topic)) => Ok(topic),
        Ok(None) => Err(E::UnknownServerError.code()),
        // Another request created it first.
        Err(crate::topics::TopicError::AlreadyExists(_)) => broker
            .topics
            .get(name)
            .ok_or(E::UnknownTopicOrPartition.code()),
        Err(e) => {
            if !matches!(e, crate::topics::TopicError::InvalidName(..)) {
                tracing::debug!(topic = name, error = %e, "auto-creating topic failed");
            }
            Err(super::topic_error_code(&e))
        }
    }
}

fn describe(broker: &Broker, topic: &Topic, node: i32) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count)
        .map(|index| {
            let partition = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_replica_nodes(vec![BrokerId(node)]);
            let Some(p) = broker.replicas.get(tp(topic.id, index)) else {
                // Its only replica is not here: no leader.
                return partition
                    .with_error_code(E::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(-1)
                    .with_offline_replicas(vec![BrokerId(node)]);
            };
            let partition = partition.with_leader_epoch(p.leader_epoch());
            if p.log().offline_reason().is_some() {
                // Its only replica's log is offline: no leader until a restart recovers it.
                partition
                    .with_error_code(E::KafkaStorageError.code())
                    .with_leader_id(BrokerId(-1))
                    .with_offline_replicas(vec![BrokerId(node)])
            } else {
                partition
                    .with_leader_id(BrokerId(node))
                    .with_isr_nodes(vec![BrokerId(node)])
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name == crate::coordinator_runtime::OFFSETS_TOPIC)
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}
