use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};

use caudal_metadata::{MetadataImage, PartitionRegistration};

use super::{listener_name, reachable_brokers, str_bytes};
use crate::replica_manager::tp;
use crate::topics::Topic;
use crate::Broker;

/// Kafka's "authorized operations not requested" marker.
pub(super) const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    version: i16,
    listener: usize,
) -> ResponseKind {
    // v0 asks for every topic with an empty list; v1+ with a null one.
    let wanted = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create =
        broker.config.auto_create_topics() && (version < 4 || request.allow_auto_topic_creation);
    let mut found: Vec<Result<Arc<Topic>, MetadataResponseTopic>> = Vec::new();
    match wanted {
        None => found.extend(broker.topics.all().into_iter().map(Ok)),
        Some(requested) => {
            for t in requested {
                let topic = match &t.name {
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
                found.push(topic.map_err(|code| {
                    MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_topic_authorized_operations(OPERATIONS_OMITTED)
                }));
            }
        }
    }
    // One image for the whole answer, taken after any auto-creation.
    let image = broker.topics.image();
    let listener_name = listener_name(broker, listener);
    let topics = found
        .into_iter()
        .map(|t| match t {
            Ok(topic) => describe(broker, &image, &topic, listener_name),
            Err(unknown) => unknown,
        })
        .collect();
    // Live brokers that clients of this listener can reach; the others are left out, as Kafka
    // leaves them out.
    let brokers = reachable_brokers(&image, listener_name)
        .map(|(b, endpoint)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(endpoint.host.clone()))
                .with_port(i32::from(endpoint.port))
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
    ResponseKind::Metadata(
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(str_bytes(broker.topics.cluster_id())))
            // Any live broker takes admin requests and forwards them, so Kafka 4 names a
            // random one. This one answered, so the client can reach it: after the active
            // controller dies, a client never chases the dead node.
            .with_controller_id(BrokerId(broker.config.node_id))
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

/// A partition's leader as a client of `listener_name` may use it: the leader's id and no
/// error, or -1 with the error Kafka answers (no leader, an offline local log, a leader without
/// such a listener), with the offline replicas this broker knows of. Metadata and
/// DescribeTopicPartitions answer the same.
pub(super) struct Leadership {
    pub error_code: i16,
    pub leader: i32,
    pub offline: Vec<BrokerId>,
}

pub(super) fn leadership(
    broker: &Broker,
    image: &MetadataImage,
    topic: &Topic,
    index: i32,
    reg: &PartitionRegistration,
    listener_name: &str,
) -> Leadership {
    let node = broker.config.node_id;
    let none = |code: i16, offline: Vec<BrokerId>| Leadership {
        error_code: code,
        leader: -1,
        offline,
    };
    if reg.leader < 0 {
        return none(E::LeaderNotAvailable.code(), Vec::new());
    }
    if reg.leader == node {
        let Some(p) = broker.replicas.get(tp(topic.id, index)) else {
            // The replica this broker leads could not be made: no leader.
            return none(E::LeaderNotAvailable.code(), vec![BrokerId(node)]);
        };
        if p.log().offline_reason().is_some() {
            // Its log is offline: no leader until a restart recovers it.
            return none(E::KafkaStorageError.code(), vec![BrokerId(node)]);
        }
    } else if image.endpoint(reg.leader, listener_name).is_none() {
        // The leader has no listener of this name: the client could not reach it.
        return none(E::ListenerNotFound.code(), Vec::new());
    }
    Leadership {
        error_code: 0,
        leader: reg.leader,
        offline: Vec::new(),
    }
}

pub(super) fn broker_ids(ids: &[i32]) -> Vec<BrokerId> {
    ids.iter().map(|&id| BrokerId(id)).collect()
}

fn describe(
    broker: &Broker,
    image: &MetadataImage,
    topic: &Topic,
    listener_name: &str,
) -> MetadataResponseTopic {
    let registrations = image.topic(topic.id);
    let partitions = (0..topic.partition_count)
        .map(|index| {
            let partition = MetadataResponsePartition::default().with_partition_index(index);
            let Some(reg) = registrations.and_then(|t| t.partition(index)) else {
                return partition
                    .with_error_code(E::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(-1);
            };
            let led = leadership(broker, image, topic, index, reg, listener_name);
            partition
                .with_replica_nodes(broker_ids(&reg.replicas))
                .with_isr_nodes(broker_ids(&reg.isr))
                .with_leader_epoch(reg.leader_epoch)
                .with_error_code(led.error_code)
                .with_leader_id(BrokerId(led.leader))
                .with_offline_replicas(led.offline)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name == crate::coordinator_runtime::OFFSETS_TOPIC)
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}
