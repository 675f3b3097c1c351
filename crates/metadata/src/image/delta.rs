//! Replaying records: a [`MetadataDelta`] collects the effect of any number of records on a base
//! image, then builds the next image once.
//!
//! A record's effect is a pure function of the image and the log id of its entry, so every node
//! that applies the same log builds the same images. That includes invalid records (a change to a
//! topic that does not exist is a bug of the controller that wrote it): each is skipped, with a
//! warning, identically everywhere. Epochs are derived here, never trusted from the controller:
//! a `PartitionChange` always bumps the partition epoch and bumps the leader epoch when the
//! leader moves; a registration's broker epoch is its entry's index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use super::{
    BrokerRegistration, ConfigResource, MetadataImage, PartitionRegistration, Provenance,
    TopicImage, TopicsImage,
};
use crate::records::{LeaderChange, MetadataRecord};

/// Why a record was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("cluster id {record:?} differs from the cluster's {current:?}; it never changes")]
    ClusterIdChange { current: String, record: String },
    #[error("broker {0} is not registered")]
    UnknownBroker(i32),
    #[error("broker {broker_id} is at epoch {current}, the record is for epoch {record}")]
    StaleBrokerEpoch {
        broker_id: i32,
        current: i64,
        record: i64,
    },
    #[error("topic id {0} is already in use")]
    DuplicateTopicId(Uuid),
    #[error("topic name {0:?} is already in use")]
    DuplicateTopicName(String),
    #[error("topic id {0} does not exist")]
    UnknownTopic(Uuid),
    #[error("partition {partition} of topic {topic_id} does not exist")]
    UnknownPartition { topic_id: Uuid, partition: i32 },
    #[error("partition {partition} of topic {topic_id} is not next after its {count} partitions")]
    PartitionGap {
        topic_id: Uuid,
        partition: i32,
        count: usize,
    },
    #[error("next producer id {record} is not past the current {current}; ids never go back")]
    ProducerIdsBackwards { current: i64, record: i64 },
}

/// The records replayed since `base`, kept as what changed.
#[derive(Debug)]
pub struct MetadataDelta {
    pub(crate) base: Arc<MetadataImage>,
    last: Option<Provenance>,
    cluster_id: Option<String>,
    features: BTreeMap<String, i16>,
    /// `None` is an unregistered broker.
    brokers: BTreeMap<i32, Option<BrokerRegistration>>,
    pub(crate) topics: TopicsDelta,
    /// `None` removes an override.
    configs: HashMap<ConfigResource, BTreeMap<String, Option<String>>>,
    next_producer_id: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct TopicsDelta {
    /// Topics created or changed, with their whole new partition list.
    pub(crate) changed: HashMap<Uuid, TopicDelta>,
    /// Topics of the base image that were removed (and possibly created again: then they are
    /// in `changed` too).
    pub(crate) removed: HashMap<Uuid, Arc<TopicImage>>,
    /// Name index changes; `None` frees a name.
    names: HashMap<String, Option<Uuid>>,
}

#[derive(Debug)]
pub(crate) struct TopicDelta {
    pub(crate) name: String,
    /// The partitions as they are now. For a topic of the base image this is its one copy in
    /// this delta, made at its first change.
    pub(crate) partitions: Vec<PartitionRegistration>,
    /// The partitions replayed, when the topic continues the base's topic of that id.
    pub(crate) touched: BTreeSet<usize>,
    /// Created in this delta: compare all its partitions with the base's, not just `touched`.
    pub(crate) fresh: bool,
}

impl MetadataDelta {
    pub fn new(base: Arc<MetadataImage>) -> MetadataDelta {
        MetadataDelta {
            base,
            last: None,
            cluster_id: None,
            features: BTreeMap::new(),
            brokers: BTreeMap::new(),
            topics: TopicsDelta::default(),
            configs: HashMap::new(),
            next_producer_id: None,
        }
    }

    /// The image this delta applies to.
    pub fn base(&self) -> &Arc<MetadataImage> {
        &self.base
    }

    /// Records that the entry at `at` was applied. Entries without metadata records (Raft's
    /// blank and membership entries, a snapshot with nothing in it) still move the image's
    /// provenance.
    pub fn advance(&mut self, at: Provenance) {
        self.last = Some(at);
    }

    /// Replays one record of the entry at `at`. An invalid record is skipped, logged and
    /// returned as an error; the delta is then as if the record had not been there, so the
    /// caller may go on.
    pub fn replay(&mut self, record: &MetadataRecord, at: Provenance) -> Result<(), ReplayError> {
        self.advance(at);
        let result = self.replay_valid(record, at);
        if let Err(error) = &result {
            tracing::warn!(
                index = at.index,
                term = at.term,
                kind = record.kind(),
                %error,
                "metadata record skipped"
            );
        }
        result
    }

    fn replay_valid(&mut self, record: &MetadataRecord, at: Provenance) -> Result<(), ReplayError> {
        match record {
            MetadataRecord::ClusterId { cluster_id, .. } => {
                match self.cluster_id.as_deref().or(self.base.cluster_id()) {
                    Some(current) if current != cluster_id => {
                        return Err(ReplayError::ClusterIdChange {
                            current: current.to_string(),
                            record: cluster_id.clone(),
                        })
                    }
                    _ => self.cluster_id = Some(cluster_id.clone()),
                }
            }
            MetadataRecord::FeatureLevel { name, level, .. } => {
                self.features.insert(name.clone(), *level);
            }
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                endpoints,
                rack,
                features,
                broker_epoch,
                ..
            } => {
                // An index beyond i64 cannot happen (Raft indexes count entries); saturate
                // rather than wrap if it ever did.
                let epoch = broker_epoch.unwrap_or(i64::try_from(at.index).unwrap_or(i64::MAX));
                let registration = BrokerRegistration {
                    id: *broker_id,
                    epoch,
                    incarnation_id: *incarnation_id,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                    fenced: true,
                    in_controlled_shutdown: false,
                    features: features.clone(),
                };
                self.brokers.insert(*broker_id, Some(registration));
            }
            MetadataRecord::BrokerRegistrationChange {
                broker_id,
                broker_epoch,
                fenced,
                in_controlled_shutdown,
                ..
            } => {
                let mut registration = self.current_broker(*broker_id, *broker_epoch)?.clone();
                if let Some(fenced) = fenced {
                    registration.fenced = *fenced;
                }
                if let Some(in_controlled_shutdown) = in_controlled_shutdown {
                    registration.in_controlled_shutdown = *in_controlled_shutdown;
                }
                self.brokers.insert(*broker_id, Some(registration));
            }
            MetadataRecord::UnregisterBroker {
                broker_id,
                broker_epoch,
                ..
            } => {
                self.current_broker(*broker_id, *broker_epoch)?;
                self.brokers.insert(*broker_id, None);
            }
            MetadataRecord::Topic { name, topic_id, .. } => self.create_topic(name, *topic_id)?,
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
                elr,
                ..
            } => {
                let count = self.partition_count(*topic_id)?;
                let index = usize::try_from(*partition)
                    .ok()
                    .filter(|i| *i <= count)
                    .ok_or(ReplayError::PartitionGap {
                        topic_id: *topic_id,
                        partition: *partition,
                        count,
                    })?;
                let registration = PartitionRegistration {
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: *partition_epoch,
                    adding: Vec::new(),
                    removing: Vec::new(),
                    elr: elr.clone(),
                };
                let topic = self.topic_mut(*topic_id)?;
                match topic.partitions.get_mut(index) {
                    Some(existing) => *existing = registration,
                    None => topic.partitions.push(registration),
                }
                topic.touched.insert(index);
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader,
                isr,
                replicas,
                elr,
                ..
            } => self.change_partition(*topic_id, *partition, |current| {
                let new_leader = match leader {
                    LeaderChange::Keep => current.leader,
                    LeaderChange::NoLeader => -1,
                    LeaderChange::To(broker_id) => *broker_id,
                };
                if new_leader != current.leader {
                    current.leader = new_leader;
                    current.leader_epoch = current.leader_epoch.wrapping_add(1);
                }
                if let Some(isr) = isr {
                    current.isr = isr.clone();
                }
                if let Some(replicas) = replicas {
                    current.replicas = replicas.clone();
                }
                if let Some(elr) = elr {
                    current.elr = elr.clone();
                }
                current.partition_epoch = current.partition_epoch.wrapping_add(1);
            })?,
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                adding,
                removing,
                ..
            } => self.change_partition(*topic_id, *partition, |current| {
                current.adding = adding.clone();
                current.removing = removing.clone();
            })?,
            MetadataRecord::RemoveTopic { topic_id, .. } => self.remove_topic(*topic_id)?,
            MetadataRecord::Config {
                resource_type,
                resource_name,
                name,
                value,
                ..
            } => {
                let resource = ConfigResource {
                    resource_type: *resource_type,
                    name: resource_name.clone(),
                };
                self.configs
                    .entry(resource)
                    .or_default()
                    .insert(name.clone(), value.clone());
            }
            MetadataRecord::ProducerIds {
                next_producer_id, ..
            } => {
                let current = self
                    .next_producer_id
                    .unwrap_or(self.base.next_producer_id());
                if *next_producer_id <= current {
                    return Err(ReplayError::ProducerIdsBackwards {
                        current,
                        record: *next_producer_id,
                    });
                }
                self.next_producer_id = Some(*next_producer_id);
            }
        }
        Ok(())
    }

    /// The broker's registration as of this delta, if `epoch` is its current epoch.
    fn current_broker(
        &self,
        broker_id: i32,
        epoch: i64,
    ) -> Result<&BrokerRegistration, ReplayError> {
        let registration = match self.brokers.get(&broker_id) {
            Some(changed) => changed.as_ref(),
            None => self.base.broker(broker_id),
        }
        .ok_or(ReplayError::UnknownBroker(broker_id))?;
        if registration.epoch != epoch {
            return Err(ReplayError::StaleBrokerEpoch {
                broker_id,
                current: registration.epoch,
                record: epoch,
            });
        }
        Ok(registration)
    }

    /// The id a name belongs to as of this delta.
    fn topic_id_by_name(&self, name: &str) -> Option<Uuid> {
        match self.topics.names.get(name) {
            Some(changed) => *changed,
            None => self.base.topics.by_name.get(name).copied(),
        }
    }

    /// The base's topic of this id, unless this delta removed it.
    fn base_topic(&self, topic_id: Uuid) -> Option<&Arc<TopicImage>> {
        if self.topics.removed.contains_key(&topic_id) {
            return None;
        }
        self.base.topic(topic_id)
    }

    fn partition_count(&self, topic_id: Uuid) -> Result<usize, ReplayError> {
        match self.topics.changed.get(&topic_id) {
            Some(topic) => Ok(topic.partitions.len()),
            None => self
                .base_topic(topic_id)
                .map(|t| t.partitions.len())
                .ok_or(ReplayError::UnknownTopic(topic_id)),
        }
    }

    /// The topic to change, copying the base's partitions at its first change in this delta:
    /// the only copy of them the delta makes, however many partitions change.
    /// Applies `change` to an existing partition's registration and marks it touched.
    fn change_partition(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        change: impl FnOnce(&mut PartitionRegistration),
    ) -> Result<(), ReplayError> {
        let unknown = ReplayError::UnknownPartition {
            topic_id,
            partition,
        };
        let count = self.partition_count(topic_id)?;
        let index = usize::try_from(partition)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| unknown.clone())?;
        let topic = self.topic_mut(topic_id)?;
        change(topic.partitions.get_mut(index).ok_or(unknown)?);
        topic.touched.insert(index);
        Ok(())
    }

    fn topic_mut(&mut self, topic_id: Uuid) -> Result<&mut TopicDelta, ReplayError> {
        if !self.topics.changed.contains_key(&topic_id) {
            let base = self
                .base_topic(topic_id)
                .ok_or(ReplayError::UnknownTopic(topic_id))?;
            let copy = TopicDelta {
                name: base.name.clone(),
                partitions: base.partitions.clone(),
                touched: BTreeSet::new(),
                fresh: false,
            };
            self.topics.changed.insert(topic_id, copy);
        }
        self.topics
            .changed
            .get_mut(&topic_id)
            .ok_or(ReplayError::UnknownTopic(topic_id))
    }

    fn create_topic(&mut self, name: &str, topic_id: Uuid) -> Result<(), ReplayError> {
        if self.topics.changed.contains_key(&topic_id) || self.base_topic(topic_id).is_some() {
            return Err(ReplayError::DuplicateTopicId(topic_id));
        }
        if self.topic_id_by_name(name).is_some() {
            return Err(ReplayError::DuplicateTopicName(name.to_string()));
        }
        self.topics.names.insert(name.to_string(), Some(topic_id));
        let topic = TopicDelta {
            name: name.to_string(),
            partitions: Vec::new(),
            touched: BTreeSet::new(),
            fresh: true,
        };
        self.topics.changed.insert(topic_id, topic);
        Ok(())
    }

    fn remove_topic(&mut self, topic_id: Uuid) -> Result<(), ReplayError> {
        let name = match self.topics.changed.remove(&topic_id) {
            Some(topic) => topic.name,
            None => self
                .base_topic(topic_id)
                .ok_or(ReplayError::UnknownTopic(topic_id))?
                .name
                .clone(),
        };
        if let Some(base) = self.base_topic(topic_id) {
            let base = Arc::clone(base);
            self.topics.removed.insert(topic_id, base);
        }
        self.topics.names.insert(name.clone(), None);
        // A topic's overrides go with it, so a topic created later under the same name starts
        // from the defaults.
        let resource = ConfigResource::topic(&name);
        let mut keys: BTreeSet<String> = self
            .base
            .config(&resource)
            .into_iter()
            .flat_map(|c| c.keys().cloned())
            .collect();
        keys.extend(
            self.configs
                .get(&resource)
                .into_iter()
                .flat_map(|c| c.keys().cloned()),
        );
        if !keys.is_empty() {
            self.configs
                .insert(resource, keys.into_iter().map(|k| (k, None)).collect());
        }
        Ok(())
    }

    /// Builds the next image, copying only what changed: each outer map at most once, through
    /// `Arc::make_mut` (no copy at all when nothing else holds it), and each changed topic's
    /// partitions not again (they were copied once at replay and move into the image).
    pub fn apply(self) -> MetadataImage {
        let MetadataDelta {
            base,
            last,
            cluster_id,
            features,
            brokers,
            topics,
            configs,
            next_producer_id,
        } = self;
        let mut image = Arc::try_unwrap(base).unwrap_or_else(|shared| (*shared).clone());
        if let Some(at) = last {
            image.provenance = at;
        }
        if cluster_id.is_some() {
            image.cluster_id = cluster_id;
        }
        image.features.extend(features);
        if !brokers.is_empty() {
            let image_brokers = Arc::make_mut(&mut image.brokers);
            for (broker_id, registration) in brokers {
                match registration {
                    Some(registration) => image_brokers.insert(broker_id, registration),
                    None => image_brokers.remove(&broker_id),
                };
            }
        }
        topics.apply_to(&mut image.topics);
        if !configs.is_empty() {
            let image_configs = Arc::make_mut(&mut image.configs);
            for (resource, changes) in configs {
                let mut config = image_configs
                    .get(&resource)
                    .map(|c| (**c).clone())
                    .unwrap_or_default();
                for (name, value) in changes {
                    match value {
                        Some(value) => config.insert(name, value),
                        None => config.remove(&name),
                    };
                }
                if config.is_empty() {
                    image_configs.remove(&resource);
                } else {
                    image_configs.insert(resource, Arc::new(config));
                }
            }
        }
        if let Some(next_producer_id) = next_producer_id {
            image.producer_ids.next_producer_id = next_producer_id;
        }
        image
    }
}

impl TopicsDelta {
    fn apply_to(self, image: &mut TopicsImage) {
        if !self.names.is_empty() {
            let by_name = Arc::make_mut(&mut image.by_name);
            for (name, topic_id) in self.names {
                match topic_id {
                    Some(topic_id) => by_name.insert(name, topic_id),
                    None => by_name.remove(&name),
                };
            }
        }
        if !self.removed.is_empty() || !self.changed.is_empty() {
            let by_id = Arc::make_mut(&mut image.by_id);
            for topic_id in self.removed.keys() {
                by_id.remove(topic_id);
            }
            for (id, topic) in self.changed {
                by_id.insert(
                    id,
                    Arc::new(TopicImage {
                        name: topic.name,
                        id,
                        partitions: topic.partitions,
                    }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::clone_count;
    use crate::records::RECORD_VERSION as V;
    use proptest::prelude::*;

    fn at(index: u64) -> Provenance {
        Provenance { index, term: 1 }
    }

    fn topic_id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn register(broker_id: i32) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            v: V,
            broker_id,
            incarnation_id: Uuid::from_u128(broker_id as u128),
            endpoints: vec![],
            rack: None,
            features: vec![],
            broker_epoch: None,
        }
    }

    fn partition(topic: Uuid, partition: i32, replicas: Vec<i32>, leader: i32) -> MetadataRecord {
        MetadataRecord::Partition {
            v: V,
            topic_id: topic,
            partition,
            isr: replicas.clone(),
            replicas,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
        }
    }

    fn topic(name: &str, topic_id: Uuid) -> MetadataRecord {
        MetadataRecord::Topic {
            v: V,
            name: name.into(),
            topic_id,
        }
    }

    fn unfence(broker_id: i32, broker_epoch: i64) -> MetadataRecord {
        MetadataRecord::BrokerRegistrationChange {
            v: V,
            broker_id,
            broker_epoch,
            fenced: Some(false),
            in_controlled_shutdown: None,
        }
    }

    fn unregister(broker_id: i32, broker_epoch: i64) -> MetadataRecord {
        MetadataRecord::UnregisterBroker {
            v: V,
            broker_id,
            broker_epoch,
        }
    }

    fn change(topic: Uuid, partition: i32, leader: LeaderChange) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            v: V,
            topic_id: topic,
            partition,
            leader,
            isr: None,
            replicas: None,
            elr: None,
        }
    }

    /// Replays `records` one per entry, the first at index `first`, and applies.
    fn build(
        base: MetadataImage,
        first: u64,
        records: &[MetadataRecord],
    ) -> (MetadataImage, Vec<ReplayError>) {
        let mut delta = MetadataDelta::new(Arc::new(base));
        let errors = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| delta.replay(r, at(first + i as u64)).err())
            .collect();
        (delta.apply(), errors)
    }

    #[test]
    fn epochs_move_at_replay() {
        let t = topic_id(1);
        let records = [
            register(1),
            topic("orders", t),
            partition(t, 0, vec![1, 2], 1),
            change(t, 0, LeaderChange::Keep),
            change(t, 0, LeaderChange::To(2)),
            change(t, 0, LeaderChange::To(2)),
            change(t, 0, LeaderChange::NoLeader),
        ];
        let (image, errors) = build(MetadataImage::empty(), 10, &records);
        assert!(errors.is_empty(), "{errors:?}");
        let broker = image.broker(1).expect("registered");
        assert_eq!(
            (broker.epoch, broker.fenced),
            (10, true),
            "epoch is the entry's index; registered fenced"
        );
        let p = image.partition(t, 0).expect("partition 0");
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (-1, 2, 4));
        assert_eq!(image.provenance(), at(16));
        assert_eq!(image.topic_by_name("orders").map(|t| t.id), Some(t));
        assert_eq!(image.live_brokers().count(), 0);
    }

    #[test]
    fn stale_broker_epochs_and_unknown_targets_are_skipped() {
        let t = topic_id(1);
        let (image, _) = build(MetadataImage::empty(), 5, &[register(1)]);
        let records = [
            unfence(1, 4),
            unregister(1, 6),
            unregister(9, 5),
            change(t, 0, LeaderChange::NoLeader),
            MetadataRecord::RemoveTopic { v: V, topic_id: t },
            topic("a", t),
            partition(t, 1, vec![1], 1),
            topic("a", topic_id(2)),
            MetadataRecord::ProducerIds {
                v: V,
                broker_id: 1,
                broker_epoch: 5,
                next_producer_id: 0,
            },
            unfence(1, 5),
        ];
        let (image, errors) = build(image, 6, &records);
        assert_eq!(
            errors,
            vec![
                ReplayError::StaleBrokerEpoch {
                    broker_id: 1,
                    current: 5,
                    record: 4
                },
                ReplayError::StaleBrokerEpoch {
                    broker_id: 1,
                    current: 5,
                    record: 6
                },
                ReplayError::UnknownBroker(9),
                ReplayError::UnknownTopic(t),
                ReplayError::UnknownTopic(t),
                ReplayError::PartitionGap {
                    topic_id: t,
                    partition: 1,
                    count: 0
                },
                ReplayError::DuplicateTopicName("a".into()),
                ReplayError::ProducerIdsBackwards {
                    current: 0,
                    record: 0
                },
            ]
        );
        assert_eq!(
            image.live_brokers().map(|b| b.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(image.topic_count(), 1);
    }

    #[test]
    fn removing_a_topic_drops_its_configs_and_frees_its_name() {
        let (t1, t2) = (topic_id(1), topic_id(2));
        let set = |value: &str| MetadataRecord::Config {
            v: V,
            resource_type: ConfigResource::TOPIC,
            resource_name: "orders".into(),
            name: "retention.ms".into(),
            value: Some(value.into()),
        };
        let (image, _) = build(MetadataImage::empty(), 1, &[topic("orders", t1), set("1")]);
        assert_eq!(
            image
                .config(&ConfigResource::topic("orders"))
                .and_then(|c| c.get("retention.ms"))
                .map(String::as_str),
            Some("1")
        );
        let (image, errors) = build(
            image,
            3,
            &[
                MetadataRecord::RemoveTopic { v: V, topic_id: t1 },
                topic("orders", t2),
            ],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(image.config(&ConfigResource::topic("orders")), None);
        assert_eq!(image.topic_by_name("orders").map(|t| t.id), Some(t2));
        assert!(image.topic(t1).is_none());
    }

    /// Fencing a broker that leads 10,000 partitions of one topic is one entry of 10,001
    /// records. Applying it must copy the topic's partition list once, not once per change.
    #[test]
    fn a_mass_fence_copies_the_topic_once() {
        const PARTITIONS: i32 = 10_000;
        let (t, other) = (topic_id(1), topic_id(2));
        let mut records = vec![
            register(1),
            register(2),
            topic("big", t),
            topic("other", other),
            partition(other, 0, vec![2], 2),
        ];
        records.extend((0..PARTITIONS).map(|p| partition(t, p, vec![1, 2], 1)));
        let (base, errors) = build(MetadataImage::empty(), 1, &records);
        assert!(errors.is_empty(), "{errors:?}");
        let base = Arc::new(base);

        let before = clone_count::get();
        let mut delta = MetadataDelta::new(Arc::clone(&base));
        let fence = MetadataRecord::BrokerRegistrationChange {
            v: V,
            broker_id: 1,
            broker_epoch: 1,
            fenced: Some(true),
            in_controlled_shutdown: None,
        };
        delta.replay(&fence, at(100)).expect("fence");
        for p in 0..PARTITIONS {
            let moved = MetadataRecord::PartitionChange {
                v: V,
                topic_id: t,
                partition: p,
                leader: LeaderChange::To(2),
                isr: Some(vec![2]),
                replicas: None,
                elr: None,
            };
            delta.replay(&moved, at(100)).expect("leader move");
        }
        let image = delta.apply();
        let copies = clone_count::get() - before;
        assert_eq!(
            copies, PARTITIONS as usize,
            "partition registrations copied: want one copy of the topic"
        );

        assert!(image
            .topic(t)
            .expect("big")
            .partitions
            .iter()
            .all(|p| p.leader == 2 && p.leader_epoch == 1));
        let (old, new) = (
            base.topic(other).expect("other"),
            image.topic(other).expect("other"),
        );
        assert!(
            Arc::ptr_eq(old, new),
            "an untouched topic is shared with the base, not copied"
        );
        assert!(
            Arc::ptr_eq(&base.configs, &image.configs),
            "untouched maps are shared"
        );
    }

    proptest! {
        /// One delta for many records builds the same image as one delta per record: a loader
        /// may batch entries however it likes. The batch starts from an image that already has
        /// topics and brokers, so that it changes existing things as well as new ones.
        #[test]
        fn one_delta_equals_one_delta_per_record(
            records in crate::testing::record_sequence(60),
            split in 0..60usize,
        ) {
            let (before, after) = records.split_at(split.min(records.len()));
            let (base, _) = build(MetadataImage::empty(), 1, before);
            let first = 1 + before.len() as u64;
            let (batched, batched_errors) = build(base.clone(), first, after);
            let mut image = base;
            let mut errors = Vec::new();
            for (i, record) in after.iter().enumerate() {
                let (next, e) = build(image, first + i as u64, std::slice::from_ref(record));
                image = next;
                errors.extend(e);
            }
            prop_assert_eq!(batched_errors, errors);
            prop_assert_eq!(batched, image);
        }
    }
}
