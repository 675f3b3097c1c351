//! The topics as this broker sees them, and changes to them.
//!
//! Reads come from the metadata image this broker has applied: the image is published to
//! request handlers only once the replica manager has opened (or closed) the local replicas it
//! implies, so a request that finds a topic finds its partitions. Changes go to the active
//! controller through the controller channel; a change is answered once this broker has applied
//! the entry that holds it, so a produce right after a creation finds its partitions.
//!
//! A creation whose local replicas cannot be made (a full disk, no inodes left) is undone: the
//! topic is deleted again through the controller, and the caller gets KAFKA_STORAGE_ERROR.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::quorum::QuorumClient;
use caudal_metadata::{ConfigResource, ControllerRequest, MetadataImage, TopicImage};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, ElectLeadersRequest,
    ElectLeadersResponse, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::controller_channel::{ChannelError, ControllerChannel};
use crate::replica_manager::{tp, ReplicaManager};

/// API versions of the requests the broker sends its controller for admin changes.
const CREATE_TOPICS_VERSION: i16 = 7;
const DELETE_TOPICS_VERSION: i16 = 6;
const CREATE_PARTITIONS_VERSION: i16 = 3;

/// A topic as the cluster knows it: what produce and fetch need per request, and no more (its
/// config overrides are read with [`Topics::configs`]). Its partitions' logs are the replica
/// manager's.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partition_count: i32,
}

impl Topic {
    /// Whether the topic has a partition of this index.
    pub fn has_partition(&self, index: i32) -> bool {
        (0..self.partition_count).contains(&index)
    }

    fn of(topic: &TopicImage) -> Arc<Topic> {
        Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partition_count: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic name {0:?} is invalid: {1}")]
    InvalidName(String, caudal_metadata::controller::InvalidTopicName),
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    #[error("topic '{0}' does not exist")]
    Unknown(String),
    #[error("'{0}' is an internal topic: the broker manages it")]
    Internal(String),
    /// The controller refused the change, with Kafka's error code and its reason.
    #[error("{message}")]
    Refused { code: i16, message: String },
    /// The change committed, but this broker could not make its local replicas; it was undone.
    #[error("creating topic failed: {0}; nothing of it was kept")]
    Storage(String),
    /// The metadata log has no room for the change.
    #[error("{0}")]
    NoRoom(String),
    #[error(transparent)]
    Controller(#[from] ChannelError),
    /// The change committed, but this broker did not apply it in time.
    #[error("the change was made, but this broker did not apply it within {0:?}")]
    NotApplied(Duration),
}

impl TopicError {
    /// Kafka's error code for this error.
    pub fn code(&self) -> i16 {
        match self {
            TopicError::InvalidName(..) | TopicError::Internal(_) => {
                E::InvalidTopicException.code()
            }
            TopicError::AlreadyExists(_) => E::TopicAlreadyExists.code(),
            TopicError::Unknown(_) => E::UnknownTopicOrPartition.code(),
            TopicError::Refused { code, .. } => *code,
            TopicError::Storage(_) | TopicError::NoRoom(_) => E::KafkaStorageError.code(),
            TopicError::Controller(e) => e.kafka_error().code(),
            TopicError::NotApplied(_) => E::RequestTimedOut.code(),
        }
    }

    fn refused(name: &str, code: i16, message: Option<&StrBytes>) -> TopicError {
        let message = message.map(|m| m.as_str().to_string());
        if code == E::TopicAlreadyExists.code() {
            return TopicError::AlreadyExists(name.to_string());
        }
        let message = message.unwrap_or_else(|| {
            E::try_from_code(code).map_or_else(|| format!("error {code}"), |e| e.to_string())
        });
        TopicError::Refused { code, message }
    }
}

/// Kafka's topic name rules, as the controller applies them: one copy of the rules, in
/// `caudal-metadata`, so a name this broker accepts is one the cluster accepts.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    caudal_metadata::controller::validate_topic_name(name)
        .map_err(|why| TopicError::InvalidName(name.to_string(), why))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The broker's view of the topics, and its way to change them.
#[derive(Debug)]
pub struct Topics {
    cluster_id: String,
    node_id: i32,
    /// The image the replica manager has applied, as the follower publishes it.
    applied: watch::Receiver<Arc<MetadataImage>>,
    /// This node's quorum: after a change, the image to wait for.
    quorum: QuorumClient,
    channel: ControllerChannel,
    replicas: Arc<ReplicaManager>,
    /// The longest a change waits for the controller, and then to be applied here.
    timeout: Duration,
    /// Where the metadata log is, to check it has room for a change.
    data_dir: PathBuf,
}

impl Topics {
    /// Brokers registered and not fenced, in the image applied here.
    pub fn live_brokers(&self) -> usize {
        self.applied.borrow().live_brokers().count()
    }

    /// Topics read from `applied` and changed through `channel`, for the broker of `config`.
    pub fn new(
        config: &BrokerConfig,
        cluster_id: String,
        applied: watch::Receiver<Arc<MetadataImage>>,
        quorum: QuorumClient,
        channel: ControllerChannel,
        replicas: Arc<ReplicaManager>,
        timeout: Duration,
    ) -> Topics {
        Topics {
            cluster_id,
            node_id: config.node_id,
            applied,
            quorum,
            channel,
            replicas,
            timeout,
            data_dir: config.data_dir.clone(),
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The metadata image this broker has applied: one consistent view for a whole request.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.applied.borrow().clone()
    }

    /// The controller id Metadata and DescribeCluster report: the quorum leader, which is a
    /// broker too while every node is both; otherwise any live broker, as Kafka 4 answers
    /// (clients then send controller requests to a broker, which forwards them).
    pub fn controller_id(&self, image: &MetadataImage) -> i32 {
        let leader = self
            .quorum
            .status()
            .leader
            .and_then(|l| i32::try_from(l).ok())
            .filter(|l| image.broker(*l).is_some_and(|b| !b.fenced));
        leader
            .or_else(|| image.live_brokers().next().map(|b| b.id))
            .unwrap_or(self.node_id)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        let image = self.image();
        let topic = image.topic_by_name(name)?;
        Some(Topic::of(topic))
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        let image = self.image();
        let topic = image.topic(id)?;
        Some(Topic::of(topic))
    }

    /// The config overrides of topic `name` (none for a topic without any, or none at all).
    pub fn configs(&self, name: &str) -> BTreeMap<String, String> {
        self.image()
            .config(&ConfigResource::topic(name))
            .cloned()
            .unwrap_or_default()
    }

    /// All topics, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let image = self.image();
        let mut all: Vec<_> = image.topics().map(|t| Topic::of(t)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates a topic (unless `validate_only`) of `partitions` partitions placed by the
    /// controller, with config overrides already checked.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Option<Arc<Topic>>, TopicError> {
        self.create_placed(name, partitions, -1, Vec::new(), configs, validate_only)
            .await
    }

    /// As [`create`](Self::create), with `replication_factor` replicas of each partition (-1:
    /// `default.replication.factor`); with `assignments` (one per partition, numbered from 0)
    /// the partitions go to the brokers named there rather than where the controller would
    /// place them, and the factor is theirs.
    pub async fn create_placed(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Vec<CreatableReplicaAssignment>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Option<Arc<Topic>>, TopicError> {
        validate_topic_name(name)?;
        if !validate_only {
            self.check_room(usize::try_from(partitions).unwrap_or(0)).map_err(|why| {
                tracing::warn!(topic = name, partitions, error = %why, "creating topic failed; nothing of it was made");
                TopicError::Storage(why)
            })?;
        }
        let explicit = !assignments.is_empty();
        let topic = CreatableTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_num_partitions(if explicit { -1 } else { partitions })
            .with_replication_factor(if explicit { -1 } else { replication_factor })
            .with_assignments(assignments)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(self.timeout_ms())
            .with_validate_only(validate_only);
        let answer = self
            .channel
            .call(
                ControllerRequest::CreateTopics(request, CREATE_TOPICS_VERSION),
                self.timeout,
            )
            .await?;
        let ResponseKind::CreateTopics(response) = answer else {
            return Err(unexpected(&answer));
        };
        let Some(result) = response.topics.first() else {
            return Err(unexpected(&ResponseKind::CreateTopics(response)));
        };
        if result.error_code != 0 {
            return Err(TopicError::refused(
                name,
                result.error_code,
                result.error_message.as_ref(),
            ));
        }
        if validate_only {
            return Ok(None);
        }
        let topic_id = result.topic_id;
        let image = self.wait_applied(|i| i.topic(topic_id).is_some()).await?;
        let missing = self.missing_local_replicas(&image, topic_id, 0);
        if let Some(why) = missing {
            tracing::warn!(topic = name, partitions, error = %why, "creating topic failed; undoing it");
            self.undo_creation(name, topic_id).await;
            return Err(TopicError::Storage(why));
        }
        let topic = image
            .topic(topic_id)
            .map(|t| Topic::of(t))
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(Some(topic))
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if name == crate::coordinator_runtime::OFFSETS_TOPIC {
            return Err(TopicError::Internal(name.to_string()));
        }
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        self.check_room(1).map_err(|why| {
            tracing::warn!(topic = name, error = %why, "deleting topic failed; the topic and its data are kept");
            TopicError::NoRoom(why)
        })?;
        self.delete_by_id(name, topic.id).await?;
        self.wait_applied(|i| i.topic(topic.id).is_none()).await?;
        tracing::info!(topic = name, "deleted topic");
        Ok(topic)
    }

    async fn delete_by_id(&self, name: &str, id: Uuid) -> Result<(), TopicError> {
        let request = DeleteTopicsRequest::default()
            .with_topics(vec![DeleteTopicState::default().with_topic_id(id)])
            .with_timeout_ms(self.timeout_ms());
        let answer = self
            .channel
            .call(
                ControllerRequest::DeleteTopics(request, DELETE_TOPICS_VERSION),
                self.timeout,
            )
            .await?;
        let ResponseKind::DeleteTopics(response) = answer else {
            return Err(unexpected(&answer));
        };
        match response.responses.first() {
            Some(r) if r.error_code == E::UnknownTopicId.code() => {
                Err(TopicError::Unknown(name.to_string()))
            }
            Some(r) if r.error_code != 0 => Err(TopicError::refused(
                name,
                r.error_code,
                r.error_message.as_ref(),
            )),
            Some(_) => Ok(()),
            None => Err(unexpected(&ResponseKind::DeleteTopics(response))),
        }
    }

    /// Raises a topic's partition count to `count`.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let Some(before) = self.get(name) else {
            return Err(TopicError::Unknown(name.to_string()));
        };
        if !validate_only {
            let added = usize::try_from(count.saturating_sub(before.partition_count)).unwrap_or(0);
            self.check_room(added).map_err(|why| {
                tracing::warn!(topic = name, partitions = count, error = %why, "adding partitions failed; nothing of them was made");
                TopicError::NoRoom(why)
            })?;
        }
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_count(count)])
            .with_timeout_ms(self.timeout_ms())
            .with_validate_only(validate_only);
        let answer = self
            .channel
            .call(
                ControllerRequest::CreatePartitions(request, CREATE_PARTITIONS_VERSION),
                self.timeout,
            )
            .await?;
        let ResponseKind::CreatePartitions(response) = answer else {
            return Err(unexpected(&answer));
        };
        match response.results.first() {
            Some(r) if r.error_code != 0 => {
                return Err(TopicError::refused(
                    name,
                    r.error_code,
                    r.error_message.as_ref(),
                ))
            }
            Some(_) => {}
            None => return Err(unexpected(&ResponseKind::CreatePartitions(response))),
        }
        if validate_only {
            return Ok(());
        }
        let image = self
            .wait_applied(|i| {
                i.topic(before.id)
                    .is_some_and(|t| t.partitions.len() >= usize::try_from(count).unwrap_or(0))
            })
            .await?;
        if let Some(why) = self.missing_local_replicas(&image, before.id, before.partition_count) {
            // Partitions cannot be taken back: they stay, offline here, as Kafka's would.
            tracing::warn!(topic = name, partitions = count, error = %why, "adding partitions: some local replicas could not be made");
            return Err(TopicError::Refused {
                code: E::KafkaStorageError.code(),
                message: format!("the partitions were added, but {why}"),
            });
        }
        tracing::info!(topic = name, partitions = count, "added partitions");
        Ok(())
    }

    /// Has the controller decide a partition change an operator asks for (leader elections,
    /// reassignments) and returns its answer once this broker applied it, or after the change
    /// timeout if it has not yet: the change stands either way, and Kafka's brokers answer
    /// without waiting.
    async fn operate(&self, request: ControllerRequest) -> Result<ResponseKind, TopicError> {
        let answer = self.channel.call(request, self.timeout).await?;
        if let Err(e) = self.wait_applied(|_| true).await {
            tracing::info!(error = %e, "partition change made; this broker has not applied it yet");
        }
        Ok(answer)
    }

    /// The leader elections of `request` (ElectLeaders at `version`), as [`Topics::operate`].
    pub async fn elect_leaders(
        &self,
        request: ElectLeadersRequest,
        version: i16,
    ) -> Result<ElectLeadersResponse, TopicError> {
        match self
            .operate(ControllerRequest::ElectLeaders(request, version))
            .await?
        {
            ResponseKind::ElectLeaders(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The reassignments of `request` (AlterPartitionReassignments at `version`) started,
    /// changed or cancelled, as [`Topics::operate`].
    pub async fn alter_reassignments(
        &self,
        request: AlterPartitionReassignmentsRequest,
        version: i16,
    ) -> Result<AlterPartitionReassignmentsResponse, TopicError> {
        match self
            .operate(ControllerRequest::AlterPartitionReassignments(
                request, version,
            ))
            .await?
        {
            ResponseKind::AlterPartitionReassignments(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The reassignments under way, as the active controller knows them.
    pub async fn list_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> Result<ListPartitionReassignmentsResponse, TopicError> {
        // Version 0 is the only one.
        match self
            .channel
            .call(
                ControllerRequest::ListPartitionReassignments(request, 0),
                self.timeout,
            )
            .await?
        {
            ResponseKind::ListPartitionReassignments(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The timeout requests to the controller carry.
    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Whether the metadata log has room for a change of about `partitions` records.
    fn check_room(&self, records: usize) -> Result<(), String> {
        crate::disk_space::check_metadata_room(&self.data_dir, records)
    }

    /// Waits until this broker has applied everything its quorum node has applied now, and
    /// until `done` holds of the image: on the controller's node the first includes a change the
    /// controller just answered; elsewhere the change may reach this node a little later. Returns
    /// that image.
    async fn wait_applied(
        &self,
        done: impl Fn(&MetadataImage) -> bool,
    ) -> Result<Arc<MetadataImage>, TopicError> {
        let target = self.quorum.image().provenance();
        let mut applied = self.applied.clone();
        let waited = tokio::time::timeout(
            self.timeout,
            applied.wait_for(|image| image.provenance() >= target && done(image)),
        )
        .await;
        match waited {
            Ok(Ok(image)) => Ok(image.clone()),
            Ok(Err(_)) => Err(TopicError::Controller(ChannelError::Stopped)),
            Err(_) => Err(TopicError::NotApplied(self.timeout)),
        }
    }

    /// Why partitions `first..` of topic `id` that `image` places on this broker have no local
    /// replica, if any has none.
    fn missing_local_replicas(
        &self,
        image: &MetadataImage,
        id: Uuid,
        first: i32,
    ) -> Option<String> {
        let topic = image.topic(id)?;
        let missing: Vec<i32> = (first..)
            .zip(
                topic
                    .partitions
                    .iter()
                    .skip(usize::try_from(first).unwrap_or(0)),
            )
            .filter(|(_, p)| p.replicas.contains(&self.node_id))
            .filter(|(index, _)| self.replicas.get(tp(id, *index)).is_none())
            .map(|(index, _)| index)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let reason = self
            .replicas
            .failure(id)
            .unwrap_or_else(|| "the broker could not make them".to_string());
        Some(format!(
            "{} of its partitions have no local replica ({reason})",
            missing.len()
        ))
    }

    /// Deletes a topic whose creation could not be completed here, and waits until its
    /// directories are set aside.
    async fn undo_creation(&self, name: &str, id: Uuid) {
        match self.delete_by_id(name, id).await {
            Ok(()) => {
                if let Err(e) = self.wait_applied(|i| i.topic(id).is_none()).await {
                    tracing::warn!(topic = name, error = %e, "undoing a failed creation: the deletion is not applied yet");
                }
            }
            Err(e) => {
                tracing::error!(topic = name, error = %e, "undoing a failed creation failed: the topic stays, its partitions offline here; delete it")
            }
        }
    }
}

fn unexpected(answer: &ResponseKind) -> TopicError {
    tracing::error!(?answer, "the controller answered with another response");
    TopicError::Refused {
        code: E::UnknownServerError.code(),
        message: "the controller answered with another response".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "orders", "my.topic_v2-x", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "bad name",
            "emoji😀",
            "slash/x",
            "__cluster_metadata",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
