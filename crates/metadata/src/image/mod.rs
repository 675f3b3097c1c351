//! The metadata image: the cluster's state after some prefix of the metadata log, immutable and
//! shared. Handlers take one `Arc<MetadataImage>` per request and read a consistent view from
//! it; the next image is built by a [`MetadataDelta`] without disturbing readers of this one.
//!
//! The large parts sit behind `Arc`s so that the next image shares everything a batch of records
//! did not touch: one topic's change copies that topic and the outer topic map's entries (which
//! are pointers), not every other topic.

pub mod delta;
pub mod local;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::records::{Endpoint, FeatureRange};

pub use delta::{MetadataDelta, ReplayError};
pub use local::{LocalReplicaChanges, TopicIdPartition};

/// The log id of the last entry applied: Raft's (index, term), Kafka's (offset, epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Provenance {
    pub index: u64,
    pub term: u64,
}

/// What a config override applies to, in Kafka's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigResource {
    pub resource_type: i8,
    pub name: String,
}

impl ConfigResource {
    /// Kafka's `ConfigResource.Type.TOPIC`.
    pub const TOPIC: i8 = 2;
    /// Kafka's `ConfigResource.Type.BROKER`.
    pub const BROKER: i8 = 4;

    pub fn topic(name: &str) -> ConfigResource {
        ConfigResource {
            resource_type: Self::TOPIC,
            name: name.to_string(),
        }
    }

    pub fn broker(broker_id: i32) -> ConfigResource {
        ConfigResource {
            resource_type: Self::BROKER,
            name: broker_id.to_string(),
        }
    }
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub id: i32,
    /// The index of the entry that registered this incarnation.
    pub epoch: i64,
    pub incarnation_id: Uuid,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
    pub features: Vec<FeatureRange>,
}

/// One partition's replicas and leadership.
#[derive(Debug, PartialEq, Eq)]
pub struct PartitionRegistration {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1 when the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// While a reassignment moves the partition: replicas being added (not yet in sync) and
    /// replicas to remove once the target replicas are all in the ISR; both empty otherwise.
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
    /// Eligible leader replicas (KIP-966): replicas out of the ISR that still hold everything
    /// committed, because they left it while it was below `min.insync.replicas` (the high
    /// watermark does not move then). One may lead when no ISR member is alive.
    pub elr: Vec<i32>,
}

impl PartitionRegistration {
    /// Whether a reassignment is moving this partition.
    pub fn is_reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas the partition will have: all of them but those being removed.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|b| !self.removing.contains(b))
            .collect()
    }

    /// The replicas it had before its reassignment: all of them but those being added.
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|b| !self.adding.contains(b))
            .collect()
    }
}

// Written by hand only so that tests can count copies: the promise that a delta copies a
// topic's partitions once, however many of them change, must be able to fail.
impl Clone for PartitionRegistration {
    fn clone(&self) -> Self {
        #[cfg(test)]
        clone_count::bump();
        PartitionRegistration {
            replicas: self.replicas.clone(),
            isr: self.isr.clone(),
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            adding: self.adding.clone(),
            removing: self.removing.clone(),
            elr: self.elr.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod clone_count {
    use std::cell::Cell;

    thread_local! {
        static CLONES: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn bump() {
        CLONES.with(|c| c.set(c.get() + 1));
    }

    /// Clones of `PartitionRegistration` made on this thread so far.
    pub(crate) fn get() -> usize {
        CLONES.with(Cell::get)
    }
}

/// A topic and its partitions; the index in `partitions` is the partition id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionRegistration>,
}

impl TopicImage {
    pub fn partition(&self, partition: i32) -> Option<&PartitionRegistration> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// Topics by id, with the name index beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicsImage {
    pub(crate) by_id: Arc<HashMap<Uuid, Arc<TopicImage>>>,
    pub(crate) by_name: Arc<HashMap<String, Uuid>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerIdsImage {
    /// The first producer id not yet handed out to any broker.
    pub next_producer_id: i64,
}

/// The cluster's metadata after the entry at `provenance`. Built only by [`MetadataDelta`], so
/// its parts are always consistent (every name in the name index names a topic, and so on).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataImage {
    pub(crate) provenance: Provenance,
    pub(crate) cluster_id: Option<String>,
    pub(crate) features: BTreeMap<String, i16>,
    pub(crate) brokers: Arc<BTreeMap<i32, BrokerRegistration>>,
    pub(crate) topics: TopicsImage,
    pub(crate) configs: Arc<HashMap<ConfigResource, Arc<BTreeMap<String, String>>>>,
    pub(crate) producer_ids: ProducerIdsImage,
}

impl MetadataImage {
    /// The image before any record: no cluster id, no brokers, no topics.
    pub fn empty() -> MetadataImage {
        MetadataImage::default()
    }

    pub fn provenance(&self) -> Provenance {
        self.provenance
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn features(&self) -> &BTreeMap<String, i16> {
        &self.features
    }

    /// A feature's level; a feature never written is at level 0, as in Kafka.
    pub fn feature_level(&self, name: &str) -> i16 {
        self.features.get(name).copied().unwrap_or(0)
    }

    /// Every registered broker, fenced or not, by id.
    pub fn brokers(&self) -> &BTreeMap<i32, BrokerRegistration> {
        &self.brokers
    }

    pub fn broker(&self, broker_id: i32) -> Option<&BrokerRegistration> {
        self.brokers.get(&broker_id)
    }

    /// Brokers that may serve clients and lead partitions: registered and unfenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Where a client of `listener_name` reaches `broker_id`; `None` if the broker is unknown or
    /// lacks that listener (Kafka answers `LISTENER_NOT_FOUND` for the latter).
    pub fn endpoint(&self, broker_id: i32, listener_name: &str) -> Option<&Endpoint> {
        self.broker(broker_id)?
            .endpoints
            .iter()
            .find(|e| e.name == listener_name)
    }

    /// Every topic, in no particular order.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicImage>> {
        self.topics.by_id.values()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.by_id.len()
    }

    pub fn topic(&self, topic_id: Uuid) -> Option<&Arc<TopicImage>> {
        self.topics.by_id.get(&topic_id)
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topics.by_name.get(name).and_then(|id| self.topic(*id))
    }

    pub fn partition(&self, topic_id: Uuid, partition: i32) -> Option<&PartitionRegistration> {
        self.topic(topic_id)?.partition(partition)
    }

    /// The overrides of one resource; `None` when it has none.
    pub fn config(&self, resource: &ConfigResource) -> Option<&BTreeMap<String, String>> {
        self.configs.get(resource).map(|c| &**c)
    }

    /// Every resource with overrides, in no particular order.
    pub fn configs(&self) -> impl Iterator<Item = (&ConfigResource, &BTreeMap<String, String>)> {
        self.configs.iter().map(|(r, c)| (r, &**c))
    }

    pub fn next_producer_id(&self) -> i64 {
        self.producer_ids.next_producer_id
    }
}
