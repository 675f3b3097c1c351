//! What a delta means for one broker's replicas: which local partitions to delete, and which to
//! lead or follow with their new registration. The replica manager acts on this, not on the
//! records, as Kafka's brokers act on `LocalReplicaChanges`.

use uuid::Uuid;

use super::delta::MetadataDelta;
use super::{MetadataImage, PartitionRegistration};

/// A partition named the way the replica manager keys them: a name can be reused by a new topic,
/// an id cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicIdPartition {
    pub topic_id: Uuid,
    pub partition: i32,
}

/// The partitions of one broker whose registration a delta changed, each sorted by partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalReplicaChanges {
    /// Replicas this broker no longer hosts (topic deleted, or moved off this broker), with the
    /// registration they had.
    pub deleted: Vec<(TopicIdPartition, PartitionRegistration)>,
    /// Replicas this broker now leads, with their new registration.
    pub leaders: Vec<(TopicIdPartition, PartitionRegistration)>,
    /// Replicas this broker hosts and does not lead, with their new registration.
    pub followers: Vec<(TopicIdPartition, PartitionRegistration)>,
}

impl LocalReplicaChanges {
    fn sort(&mut self) {
        for list in [&mut self.deleted, &mut self.leaders, &mut self.followers] {
            list.sort_by_key(|(id, _)| *id);
        }
    }

    fn classify(
        &mut self,
        broker_id: i32,
        id: TopicIdPartition,
        old: Option<&PartitionRegistration>,
        new: Option<&PartitionRegistration>,
    ) {
        if old == new {
            return;
        }
        match (old, new) {
            (_, Some(new)) if new.replicas.contains(&broker_id) => {
                let list = if new.leader == broker_id {
                    &mut self.leaders
                } else {
                    &mut self.followers
                };
                list.push((id, new.clone()));
            }
            (Some(old), _) if old.replicas.contains(&broker_id) => {
                self.deleted.push((id, old.clone()))
            }
            _ => {}
        }
    }
}

impl MetadataDelta {
    /// The changes to `broker_id`'s replicas, for every partition whose registration differs
    /// between the base image and the image this delta will build.
    pub fn local_changes(&self, broker_id: i32) -> LocalReplicaChanges {
        let mut changes = LocalReplicaChanges::default();
        for (topic_id, removed) in &self.topics.removed {
            if self.topics.changed.contains_key(topic_id) {
                continue; // created again in this delta: compared below
            }
            for (index, old) in removed.partitions.iter().enumerate() {
                let id = tp(*topic_id, index);
                changes.classify(broker_id, id, Some(old), None);
            }
        }
        for (topic_id, topic) in &self.topics.changed {
            let old = self
                .base
                .topic(*topic_id)
                .map_or(&[][..], |t| t.partitions.as_slice());
            if topic.fresh {
                for index in 0..old.len().max(topic.partitions.len()) {
                    changes.classify(
                        broker_id,
                        tp(*topic_id, index),
                        old.get(index),
                        topic.partitions.get(index),
                    );
                }
            } else {
                for &index in &topic.touched {
                    changes.classify(
                        broker_id,
                        tp(*topic_id, index),
                        old.get(index),
                        topic.partitions.get(index),
                    );
                }
            }
        }
        changes.sort();
        changes
    }
}

impl MetadataImage {
    /// Every replica `broker_id` hosts in this image, as the changes from an empty image: what a
    /// broker opens at start.
    pub fn local_replicas(&self, broker_id: i32) -> LocalReplicaChanges {
        let mut changes = LocalReplicaChanges::default();
        for topic in self.topics() {
            for (index, registration) in topic.partitions.iter().enumerate() {
                changes.classify(broker_id, tp(topic.id, index), None, Some(registration));
            }
        }
        changes.sort();
        changes
    }
}

fn tp(topic_id: Uuid, index: usize) -> TopicIdPartition {
    // Partition lists are built one partition id at a time from i32 ids, so the index fits.
    TopicIdPartition {
        topic_id,
        partition: i32::try_from(index).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::image::{MetadataImage, Provenance};
    use crate::records::MetadataRecord;

    fn replay_all(
        base: Arc<MetadataImage>,
        records: &[MetadataRecord],
        first: u64,
    ) -> MetadataDelta {
        let mut delta = MetadataDelta::new(base);
        for (i, record) in records.iter().enumerate() {
            let _ = delta.replay(
                record,
                Provenance {
                    index: first + i as u64,
                    term: 1,
                },
            );
        }
        delta
    }

    /// The same answer computed the slow way: compare every partition of both images.
    fn brute_force(
        old: &MetadataImage,
        new: &MetadataImage,
        broker_id: i32,
    ) -> LocalReplicaChanges {
        let mut changes = LocalReplicaChanges::default();
        let ids: BTreeSet<Uuid> = old.topics().chain(new.topics()).map(|t| t.id).collect();
        for topic_id in ids {
            let count =
                |image: &MetadataImage| image.topic(topic_id).map_or(0, |t| t.partitions.len());
            for index in 0..count(old).max(count(new)) {
                let p = index as i32;
                changes.classify(
                    broker_id,
                    tp(topic_id, index),
                    old.partition(topic_id, p),
                    new.partition(topic_id, p),
                );
            }
        }
        changes
    }

    proptest! {
        #[test]
        fn local_changes_match_a_full_comparison(
            before in crate::testing::record_sequence(30),
            records in crate::testing::record_sequence(30),
        ) {
            let from_empty = replay_all(Arc::new(MetadataImage::empty()), &before, 1);
            let at_start: Vec<_> = (0..5).map(|b| from_empty.local_changes(b)).collect();
            let base = Arc::new(from_empty.apply());
            for (broker_id, changes) in at_start.into_iter().enumerate() {
                prop_assert_eq!(base.local_replicas(broker_id as i32), changes, "broker {} at start", broker_id);
            }
            let delta = replay_all(Arc::clone(&base), &records, 100);
            let per_broker: Vec<_> = (0..5).map(|b| delta.local_changes(b)).collect();
            let image = delta.apply();
            for (broker_id, changes) in per_broker.into_iter().enumerate() {
                prop_assert_eq!(changes, brute_force(&base, &image, broker_id as i32), "broker {}", broker_id);
            }
        }
    }
}
