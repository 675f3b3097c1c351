//! CreateTopics, DeleteTopics and CreatePartitions: Kafka's rules and error codes, decided
//! against the committed image. Each topic of a request is judged on its own (one bad topic does
//! not fail the others), and the records of every accepted topic form one entry.

use std::collections::{BTreeMap, HashMap, HashSet};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};
use uuid::Uuid;

use super::{str_bytes, Controller, Decision};
use crate::image::{ConfigResource, MetadataImage};
use crate::placement::{continuation, place, PlacementBroker, PlacementError};
use crate::records::{MetadataRecord, RECORD_VERSION};

/// Kafka's limit on a topic name's length, which keeps partition directory names within
/// common file-name limits.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// The metadata log's own name in Kafka; no user topic may take it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Topics the brokers own; an admin request may not delete them.
const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// CreateTopics v5 and later echo the created topic's configs.
const CONFIGS_IN_RESPONSE_SINCE: i16 = 5;

/// DeleteTopics v6 and later name topics by name or id.
const DELETE_BY_ID_SINCE: i16 = 6;

/// Kafka's `ConfigSource` for an override set on the topic (DescribeConfigs' `TOPIC_CONFIG`).
const TOPIC_CONFIG_SOURCE: i8 = 1;

/// Why a topic name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTopicName {
    #[error("the name is empty")]
    Empty,
    #[error("'.' and '..' are not allowed")]
    DotOrDotDot,
    #[error("{0} characters is longer than {MAX_TOPIC_NAME_LEN}")]
    TooLong(usize),
    #[error("only ASCII letters, digits, '.', '_' and '-' are allowed")]
    IllegalCharacter,
    #[error("'{METADATA_TOPIC}' is reserved for the metadata log")]
    Reserved,
}

/// Kafka's topic name rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`, and not
/// the metadata log's name. Names become directory names, hence the strictness.
pub fn validate_topic_name(name: &str) -> Result<(), InvalidTopicName> {
    if name.is_empty() {
        return Err(InvalidTopicName::Empty);
    }
    if name == "." || name == ".." {
        return Err(InvalidTopicName::DotOrDotDot);
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(InvalidTopicName::TooLong(name.len()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(InvalidTopicName::IllegalCharacter);
    }
    if name == METADATA_TOPIC {
        return Err(InvalidTopicName::Reserved);
    }
    Ok(())
}

/// Metric names replace '.' with '_', so two topics differing only there would share metrics;
/// Kafka refuses the second. Names without either character cannot collide.
fn collision_key(name: &str) -> Option<String> {
    (name.contains('.') || name.contains('_')).then(|| name.replace('.', "_"))
}

/// A topic's (or partition's) refusal: Kafka's error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) code: i16,
    pub(super) message: String,
}

pub(super) fn refuse(error: E, message: impl Into<String>) -> Refusal {
    Refusal {
        code: error.code(),
        message: message.into(),
    }
}

/// The brokers as placement sees them. One in controlled shutdown may hold a new replica but
/// must not lead: it is about to go.
fn placement_brokers(image: &MetadataImage) -> Vec<PlacementBroker> {
    image
        .brokers()
        .values()
        .map(|b| PlacementBroker {
            id: b.id,
            rack: b.rack.clone(),
            fenced: b.fenced || b.in_controlled_shutdown,
        })
        .collect()
}

pub(super) fn alive(image: &MetadataImage, broker_id: i32) -> bool {
    image
        .broker(broker_id)
        .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
}

fn placement_refusal(error: PlacementError) -> Refusal {
    refuse(E::InvalidReplicationFactor, error.to_string())
}

/// A new partition's record: the ISR is its live replicas (a new partition is empty, so every
/// live replica is in sync) and the first of them leads.
fn partition_record(
    image: &MetadataImage,
    topic_id: Uuid,
    partition: i32,
    replicas: Vec<i32>,
) -> MetadataRecord {
    let isr: Vec<i32> = replicas
        .iter()
        .copied()
        .filter(|b| alive(image, *b))
        .collect();
    MetadataRecord::Partition {
        v: RECORD_VERSION,
        topic_id,
        partition,
        leader: isr.first().copied().unwrap_or(-1),
        isr,
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
        elr: Vec::new(),
    }
}

/// Checks one partition's hand-made replica list.
pub(super) fn check_assignment(
    image: &MetadataImage,
    partition: i32,
    replicas: &[BrokerId],
    replication_factor: Option<usize>,
) -> Result<Vec<i32>, Refusal> {
    let replicas: Vec<i32> = replicas.iter().map(|b| b.0).collect();
    if replicas.is_empty() {
        return Err(refuse(
            E::InvalidReplicaAssignment,
            format!("partition {partition} is assigned no replicas"),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = replicas.iter().find(|b| !seen.insert(**b)) {
        return Err(refuse(
            E::InvalidReplicaAssignment,
            format!("broker {twice} appears twice in the replicas of partition {partition}"),
        ));
    }
    if let Some(unknown) = replicas.iter().find(|b| image.broker(**b).is_none()) {
        return Err(refuse(
            E::InvalidReplicaAssignment,
            format!(
                "partition {partition} is assigned to broker {unknown}, which is not registered"
            ),
        ));
    }
    if let Some(expected) = replication_factor {
        if replicas.len() != expected {
            return Err(refuse(
                E::InvalidReplicaAssignment,
                format!(
                    "partition {partition} is assigned {} replicas, its topic's other partitions have {expected}",
                    replicas.len()
                ),
            ));
        }
    }
    if !replicas.iter().any(|b| alive(image, *b)) {
        return Err(refuse(
            E::InvalidReplicaAssignment,
            format!("every broker assigned to partition {partition} is fenced or shutting down, so it could not have a leader"),
        ));
    }
    Ok(replicas)
}

/// What one decision may still write: records and their encoded bytes, so that one Raft entry
/// stays small enough to replicate and apply in one go. The count is checked before anything is
/// placed (a request for two billion partitions allocates nothing), the bytes once the records
/// exist.
struct Budget {
    records: usize,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Budget {
    fn new(config: &super::ControllerConfig) -> Budget {
        Budget {
            records: 0,
            bytes: 0,
            max_records: config.max_records_per_decision,
            max_bytes: config.max_bytes_per_decision,
        }
    }

    fn check_count(&self, records: usize) -> Result<(), Refusal> {
        if records > self.max_records.saturating_sub(self.records) {
            return Err(refuse(
                E::InvalidPartitions,
                format!(
                    "this request would write more than {} metadata records at once; create fewer partitions per request",
                    self.max_records
                ),
            ));
        }
        Ok(())
    }

    /// Takes `records` from the budget, or refuses them whole.
    fn take(&mut self, records: &[MetadataRecord]) -> Result<(), Refusal> {
        self.check_count(records.len())?;
        let bytes: usize = records
            .iter()
            .map(|r| serde_json::to_vec(r).map_or(usize::MAX, |b| b.len()))
            .fold(0, usize::saturating_add);
        if bytes > self.max_bytes.saturating_sub(self.bytes) {
            return Err(refuse(
                E::InvalidRequest,
                format!(
                    "this request would write more than {} bytes of metadata at once; create fewer partitions or smaller configs per request",
                    self.max_bytes
                ),
            ));
        }
        self.records += records.len();
        self.bytes = self.bytes.saturating_add(bytes);
        Ok(())
    }
}

/// What an accepted CreateTopics topic becomes.
struct TopicPlan {
    topic_id: Uuid,
    replication_factor: i16,
    partitions: i32,
    configs: BTreeMap<String, String>,
    records: Vec<MetadataRecord>,
}

pub(super) fn create_topics(
    controller: &mut Controller,
    image: &MetadataImage,
    request: CreateTopicsRequest,
    version: i16,
) -> Decision {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for topic in &request.topics {
        *counts.entry(topic.name.0.as_str()).or_default() += 1;
    }
    // Collision keys of the topics that exist, and of those this request creates.
    let mut collision_keys: HashMap<String, String> = image
        .topics()
        .filter_map(|t| collision_key(&t.name).map(|k| (k, t.name.clone())))
        .collect();
    let mut new_topic_ids = HashSet::new();
    let mut records = Vec::new();
    let mut budget = Budget::new(&controller.config);
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let planned = if counts.get(name).copied().unwrap_or(0) > 1 {
            Err(refuse(
                E::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            ))
        } else {
            plan_topic(
                controller,
                image,
                topic,
                &collision_keys,
                &new_topic_ids,
                &mut budget,
            )
        };
        match planned {
            Err(refusal) => results.push(
                result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(str_bytes(refusal.message))),
            ),
            Ok(plan) => {
                if let Some(key) = collision_key(name) {
                    collision_keys.insert(key, name.to_string());
                }
                new_topic_ids.insert(plan.topic_id);
                let partitions = plan.partitions;
                let mut ok = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(plan.replication_factor);
                if version >= CONFIGS_IN_RESPONSE_SINCE {
                    ok = ok.with_configs(Some(
                        plan.configs
                            .iter()
                            .map(|(key, value)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(key.as_str()))
                                    .with_value(Some(str_bytes(value.as_str())))
                                    .with_config_source(TOPIC_CONFIG_SOURCE)
                            })
                            .collect(),
                    ));
                }
                if !request.validate_only {
                    ok = ok.with_topic_id(plan.topic_id);
                    records.extend(plan.records);
                    tracing::info!(topic = name, partitions, "creating topic");
                }
                results.push(ok);
            }
        }
    }
    Decision::now(
        records,
        ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(results)),
    )
}

/// Judges one topic of a CreateTopics request and builds its records; `budget` holds what the
/// request's accepted topics took so far (validate-only requests count too, so they answer as
/// the real request would).
fn plan_topic(
    controller: &mut Controller,
    image: &MetadataImage,
    topic: &CreatableTopic,
    collision_keys: &HashMap<String, String>,
    new_topic_ids: &HashSet<Uuid>,
    budget: &mut Budget,
) -> Result<TopicPlan, Refusal> {
    let config = &controller.config;
    let name = topic.name.0.as_str();
    validate_topic_name(name).map_err(|e| {
        refuse(
            E::InvalidTopicException,
            format!("topic name '{name}' is invalid: {e}"),
        )
    })?;
    if image.topic_by_name(name).is_some() {
        return Err(refuse(
            E::TopicAlreadyExists,
            format!("topic '{name}' already exists"),
        ));
    }
    if let Some(other) = collision_key(name).and_then(|k| collision_keys.get(&k)) {
        return Err(refuse(
            E::InvalidTopicException,
            format!("topic '{name}' collides with topic '{other}': '.' and '_' are the same in metric names"),
        ));
    }
    let configs = check_configs(config.topic_config_check, topic)?;

    let explicit = !topic.assignments.is_empty();
    let partitions: usize = if explicit {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(refuse(
                E::InvalidRequest,
                "give either a partition count and replication factor, or a replica assignment, not both",
            ));
        }
        topic.assignments.len()
    } else {
        let count = match topic.num_partitions {
            -1 => config.default_num_partitions,
            n => n,
        };
        usize::try_from(count)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                refuse(
                    E::InvalidPartitions,
                    format!("the number of partitions must be at least 1, not {count}"),
                )
            })?
    };
    budget.check_count(partitions.saturating_add(1 + configs.len()))?;

    let assignments: Vec<Vec<i32>> = if explicit {
        let mut by_index = BTreeMap::new();
        for assignment in &topic.assignments {
            if by_index
                .insert(assignment.partition_index, &assignment.broker_ids)
                .is_some()
            {
                return Err(refuse(
                    E::InvalidReplicaAssignment,
                    format!(
                        "partition {} is assigned more than once",
                        assignment.partition_index
                    ),
                ));
            }
        }
        let numbered_from_zero = by_index
            .keys()
            .enumerate()
            .all(|(i, p)| usize::try_from(*p).ok() == Some(i));
        if !numbered_from_zero {
            return Err(refuse(
                E::InvalidReplicaAssignment,
                "partitions must be numbered 0, 1, 2, ... without gaps",
            ));
        }
        let replication_factor = topic.assignments[0].broker_ids.len();
        by_index
            .into_iter()
            .map(|(p, brokers)| check_assignment(image, p, brokers, Some(replication_factor)))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };

    let replication_factor: i16 = if explicit {
        i16::try_from(assignments[0].len()).unwrap_or(i16::MAX)
    } else {
        match topic.replication_factor {
            -1 => config.default_replication_factor,
            rf => rf,
        }
    };
    if replication_factor < 1 {
        return Err(refuse(
            E::InvalidReplicationFactor,
            format!("the replication factor must be at least 1, not {replication_factor}"),
        ));
    }
    if replication_factor > config.max_replication_factor {
        return Err(refuse(
            E::InvalidReplicationFactor,
            format!(
                "replication factor {replication_factor} is above the largest served, {}",
                config.max_replication_factor
            ),
        ));
    }

    let assignments = if explicit {
        assignments
    } else {
        let start = controller.ids.placement_start();
        place(
            &placement_brokers(image),
            partitions,
            usize::try_from(replication_factor).unwrap_or(0),
            start,
        )
        .map_err(placement_refusal)?
    };

    let mut topic_id = controller.ids.topic_id();
    // A collision of 122 random bits will not happen; this only keeps a bad seed honest.
    while image.topic(topic_id).is_some() || new_topic_ids.contains(&topic_id) {
        topic_id = controller.ids.topic_id();
    }
    let mut records = Vec::with_capacity(1 + assignments.len() + configs.len());
    records.push(MetadataRecord::Topic {
        v: RECORD_VERSION,
        name: name.to_string(),
        topic_id,
    });
    let partitions = i32::try_from(assignments.len()).unwrap_or(i32::MAX);
    for (index, replicas) in (0..).zip(assignments) {
        records.push(partition_record(image, topic_id, index, replicas));
    }
    for (key, value) in &configs {
        records.push(MetadataRecord::Config {
            v: RECORD_VERSION,
            resource_type: ConfigResource::TOPIC,
            resource_name: name.to_string(),
            name: key.clone(),
            value: Some(value.clone()),
        });
    }
    budget.take(&records)?;
    Ok(TopicPlan {
        topic_id,
        replication_factor,
        partitions,
        configs,
        records,
    })
}

/// The topic's overrides, checked. Kafka refuses a null value and we refuse a key given twice,
/// as either would leave the stored config ambiguous.
fn check_configs(
    check: Option<super::TopicConfigCheck>,
    topic: &CreatableTopic,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut configs = BTreeMap::new();
    for entry in &topic.configs {
        let key = entry.name.as_str();
        if key.is_empty() {
            return Err(refuse(E::InvalidConfig, "a config has an empty name"));
        }
        let Some(value) = entry.value.as_ref() else {
            return Err(refuse(
                E::InvalidConfig,
                format!("config '{key}' has no value"),
            ));
        };
        let value = match check {
            Some(check) => {
                check(key, value.as_str()).map_err(|message| refuse(E::InvalidConfig, message))?
            }
            None => value.to_string(),
        };
        if configs.insert(key.to_string(), value).is_some() {
            return Err(refuse(
                E::InvalidConfig,
                format!("config '{key}' is given more than once"),
            ));
        }
    }
    Ok(configs)
}

pub(super) fn delete_topics(
    controller: &mut Controller,
    image: &MetadataImage,
    request: DeleteTopicsRequest,
    version: i16,
) -> Decision {
    let targets: Vec<(Option<TopicName>, Uuid)> = if version >= DELETE_BY_ID_SINCE {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let max = controller.config.max_records_per_decision;
    let mut deleted = HashSet::new();
    let mut records = Vec::new();
    let mut responses = Vec::with_capacity(targets.len());
    for (name, topic_id) in targets {
        let result = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(topic_id);
        let resolved = match &name {
            Some(_) if !topic_id.is_nil() => Err(refuse(
                E::InvalidRequest,
                "name a topic by its name or by its id, not both",
            )),
            Some(name) => image.topic_by_name(name.0.as_str()).ok_or_else(|| {
                refuse(
                    E::UnknownTopicOrPartition,
                    format!("topic '{}' does not exist", name.0.as_str()),
                )
            }),
            None => image
                .topic(topic_id)
                .ok_or_else(|| refuse(E::UnknownTopicId, format!("no topic has id {topic_id}"))),
        }
        .and_then(|topic| {
            if INTERNAL_TOPICS.contains(&topic.name.as_str()) {
                Err(refuse(
                    E::InvalidTopicException,
                    format!(
                        "'{}' is an internal topic: the brokers manage it",
                        topic.name
                    ),
                ))
            } else if !deleted.insert(topic.id) {
                Err(refuse(
                    E::InvalidRequest,
                    format!(
                        "topic '{}' appears more than once in the request",
                        topic.name
                    ),
                ))
            } else if records.len() >= max {
                Err(refuse(
                    E::InvalidRequest,
                    format!("at most {max} topics can be deleted in one request"),
                ))
            } else {
                Ok(topic)
            }
        });
        responses.push(match resolved {
            Ok(topic) => {
                records.push(MetadataRecord::RemoveTopic {
                    v: RECORD_VERSION,
                    topic_id: topic.id,
                });
                tracing::info!(topic = %topic.name, "deleting topic");
                result
                    .with_name(Some(TopicName(str_bytes(topic.name.as_str()))))
                    .with_topic_id(topic.id)
            }
            Err(refusal) => result
                .with_error_code(refusal.code)
                .with_error_message(Some(str_bytes(refusal.message))),
        });
    }
    Decision::now(
        records,
        ResponseKind::DeleteTopics(DeleteTopicsResponse::default().with_responses(responses)),
    )
}

pub(super) fn create_partitions(
    controller: &mut Controller,
    image: &MetadataImage,
    request: CreatePartitionsRequest,
) -> Decision {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for topic in &request.topics {
        *counts.entry(topic.name.0.as_str()).or_default() += 1;
    }
    let brokers = placement_brokers(image);
    let mut records = Vec::new();
    let mut budget = Budget::new(&controller.config);
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let planned = if counts.get(name).copied().unwrap_or(0) > 1 {
            Err(refuse(
                E::InvalidRequest,
                format!("topic '{name}' appears more than once in the request"),
            ))
        } else {
            plan_partitions(controller, image, &brokers, topic, &mut budget)
        };
        match planned {
            Err(refusal) => results.push(
                result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(str_bytes(refusal.message))),
            ),
            Ok(added) => {
                if !request.validate_only {
                    tracing::info!(topic = name, added = added.len(), "adding partitions");
                    records.extend(added);
                }
                results.push(result);
            }
        }
    }
    Decision::now(
        records,
        ResponseKind::CreatePartitions(CreatePartitionsResponse::default().with_results(results)),
    )
}

/// Judges one topic of CreatePartitions and builds the new partitions' records.
fn plan_partitions(
    controller: &mut Controller,
    image: &MetadataImage,
    brokers: &[PlacementBroker],
    topic: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
    budget: &mut Budget,
) -> Result<Vec<MetadataRecord>, Refusal> {
    let name = topic.name.0.as_str();
    let existing = image.topic_by_name(name).ok_or_else(|| {
        refuse(
            E::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        )
    })?;
    let current = existing.partitions.len();
    let current_i32 = i32::try_from(current).unwrap_or(i32::MAX);
    if topic.count < current_i32 {
        return Err(refuse(
            E::InvalidPartitions,
            format!(
                "topic '{name}' has {current} partitions; partitions cannot be removed, so {} is not possible",
                topic.count
            ),
        ));
    }
    if topic.count == current_i32 {
        return Err(refuse(
            E::InvalidPartitions,
            format!("topic '{name}' already has {current} partitions"),
        ));
    }
    let added = usize::try_from(topic.count - current_i32).unwrap_or(usize::MAX);
    budget.check_count(added)?;
    let replication_factor = existing
        .partitions
        .first()
        .map_or(1, |p| p.replicas.len().max(1));
    // An empty list is what a request without assignments decodes to in some clients (and is
    // kafka-protocol's default): treat it as none rather than as a mismatch.
    let assignments = match topic.assignments.as_ref().filter(|a| !a.is_empty()) {
        Some(assignments) => {
            if assignments.len() != added {
                return Err(refuse(
                    E::InvalidReplicaAssignment,
                    format!(
                        "{added} partitions are added but {} assignments are given",
                        assignments.len()
                    ),
                ));
            }
            assignments
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let partition =
                        current_i32.saturating_add(i32::try_from(i).unwrap_or(i32::MAX));
                    check_assignment(image, partition, &a.broker_ids, Some(replication_factor))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            let existing_replicas: Vec<Vec<i32>> = existing
                .partitions
                .iter()
                .map(|p| p.replicas.clone())
                .collect();
            let start = continuation(brokers, &existing_replicas)
                .unwrap_or_else(|| controller.ids.placement_start());
            place(brokers, added, replication_factor, start).map_err(placement_refusal)?
        }
    };
    let records: Vec<MetadataRecord> = (current_i32..)
        .zip(assignments)
        .map(|(index, replicas)| partition_record(image, existing.id, index, replicas))
        .collect();
    budget.take(&records)?;
    Ok(records)
}
