//! What a delta means for one broker's replicas: which local partitions to delete, and which to
//! lead or follow with their new registration. The replica manager acts on this, not on the
//! records, as Kafka's brokers act on `LocalReplicaChanges`.

use std::collections::BTreeSet;
use std::sync::Arc;

use uuid::Uuid;

use super::delta::MetadataDelta;
use super::{ConfigResource, MetadataImage, PartitionRegistration};

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

    /// Classifies every partition of one topic, from its `old` to its `new` partition list.
    fn compare(
        &mut self,
        broker_id: i32,
        topic_id: Uuid,
        old: &[PartitionRegistration],
        new: &[PartitionRegistration],
    ) {
        for index in 0..old.len().max(new.len()) {
            self.classify(
                broker_id,
                tp(topic_id, index),
                old.get(index),
                new.get(index),
            );
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
                changes.compare(broker_id, *topic_id, old, &topic.partitions);
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

    /// The changes to `broker_id`'s replicas from `old` to this image, as one delta from `old`
    /// that built this image would give them: a broker following images (which may skip some)
    /// acts on the net effect. Topics both images share (the same `Arc`, as images built from
    /// one another share every topic no delta touched) are not looked into.
    pub fn local_changes_since(&self, old: &MetadataImage, broker_id: i32) -> LocalReplicaChanges {
        let mut changes = LocalReplicaChanges::default();
        let (old_topics, new_topics) = (&old.topics.by_id, &self.topics.by_id);
        if Arc::ptr_eq(old_topics, new_topics) {
            return changes;
        }
        for (topic_id, old_topic) in old_topics.iter() {
            let new_partitions = match new_topics.get(topic_id) {
                Some(new_topic) if Arc::ptr_eq(old_topic, new_topic) => continue,
                Some(new_topic) => new_topic.partitions.as_slice(),
                None => &[],
            };
            changes.compare(broker_id, *topic_id, &old_topic.partitions, new_partitions);
        }
        for (topic_id, new_topic) in new_topics.iter() {
            if !old_topics.contains_key(topic_id) {
                changes.compare(broker_id, *topic_id, &[], &new_topic.partitions);
            }
        }
        changes.sort();
        changes
    }

    /// The topics of both `old` and this image (the same id) whose config overrides differ,
    /// as `(topic id, name)` sorted by id: the open logs whose settings must be recomputed.
    /// A topic created or deleted in between is not listed; its logs are opened or removed
    /// with the overrides of their own image.
    pub fn topic_config_changes_since(&self, old: &MetadataImage) -> Vec<(Uuid, String)> {
        if Arc::ptr_eq(&old.configs, &self.configs) {
            return Vec::new();
        }
        // Resources with overrides in `old` that differ or are gone, then those new in `self`.
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for (resource, config) in old.configs.iter() {
            let differs = self
                .configs
                .get(resource)
                .is_none_or(|new| !Arc::ptr_eq(config, new) && config != new);
            if resource.resource_type == ConfigResource::TOPIC && differs {
                names.insert(&resource.name);
            }
        }
        for resource in self.configs.keys() {
            if resource.resource_type == ConfigResource::TOPIC
                && !old.configs.contains_key(resource)
            {
                names.insert(&resource.name);
            }
        }
        let mut changed: Vec<(Uuid, String)> = names
            .into_iter()
            .filter_map(|name| {
                let topic = self.topic_by_name(name)?;
                old.topic(topic.id).map(|_| (topic.id, topic.name.clone()))
            })
            .collect();
        changed.sort();
        changed
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

    /// Topics of both images whose overrides differ, the slow way: every topic of `new`.
    fn config_changes_brute_force(old: &MetadataImage, new: &MetadataImage) -> Vec<(Uuid, String)> {
        let mut out: Vec<(Uuid, String)> = new
            .topics()
            .filter(|t| old.topic(t.id).is_some())
            .filter(|t| {
                let resource = ConfigResource::topic(&t.name);
                old.config(&resource) != new.config(&resource)
            })
            .map(|t| (t.id, t.name.clone()))
            .collect();
        out.sort();
        out
    }

    const ME: i32 = 1;

    fn topic(name: &str, topic_id: Uuid) -> MetadataRecord {
        MetadataRecord::Topic {
            v: 0,
            name: name.into(),
            topic_id,
        }
    }

    fn partition(topic_id: Uuid, partition: i32, replicas: &[i32], leader: i32) -> MetadataRecord {
        MetadataRecord::Partition {
            v: 0,
            topic_id,
            partition,
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
        }
    }

    fn move_leader(topic_id: Uuid, partition: i32, to: i32) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            v: 0,
            topic_id,
            partition,
            leader: crate::records::LeaderChange::To(to),
            isr: None,
            replicas: None,
            elr: None,
        }
    }

    fn remove(topic_id: Uuid) -> MetadataRecord {
        MetadataRecord::RemoveTopic { v: 0, topic_id }
    }

    fn set_config(topic: &str, name: &str, value: Option<&str>) -> MetadataRecord {
        MetadataRecord::topic_config(topic, name, value)
    }

    /// The images after each step, starting from the empty image, with the delta of each step's
    /// local changes for [`ME`]; steps replay at consecutive indexes.
    fn images(steps: &[&[MetadataRecord]]) -> (Vec<Arc<MetadataImage>>, Vec<LocalReplicaChanges>) {
        let mut images = vec![Arc::new(MetadataImage::empty())];
        let mut changes = Vec::new();
        let mut index = 1;
        for step in steps {
            let base = Arc::clone(images.last().expect("the empty image"));
            let delta = replay_all(base, step, index);
            index += step.len() as u64;
            changes.push(delta.local_changes(ME));
            images.push(Arc::new(delta.apply()));
        }
        (images, changes)
    }

    fn ids(list: &[(TopicIdPartition, PartitionRegistration)]) -> Vec<(Uuid, i32)> {
        list.iter()
            .map(|(id, _)| (id.topic_id, id.partition))
            .collect()
    }

    #[test]
    fn changes_between_images_are_those_of_one_delta_between_them() {
        let (orders, renamed, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let steps: [&[MetadataRecord]; 4] = [
            // Creation: this broker leads p0, follows p2, has no replica of p1.
            &[
                topic("orders", orders),
                partition(orders, 0, &[ME, 2], ME),
                partition(orders, 1, &[2], 2),
                partition(orders, 2, &[2, ME], 2),
                topic("other", other),
                partition(other, 0, &[2], 2),
            ],
            // Leadership moves both ways.
            &[move_leader(orders, 0, 2), move_leader(orders, 2, ME)],
            // The name is reused by a new topic id.
            &[
                remove(orders),
                topic("orders", renamed),
                partition(renamed, 0, &[ME], ME),
            ],
            // A deletion.
            &[remove(renamed)],
        ];
        let (images, deltas) = images(&steps);
        for (i, delta) in deltas.iter().enumerate() {
            assert_eq!(
                &images[i + 1].local_changes_since(&images[i], ME),
                delta,
                "step {i}"
            );
        }
        assert_eq!(ids(&deltas[0].leaders), [(orders, 0)]);
        assert_eq!(ids(&deltas[0].followers), [(orders, 2)]);
        assert_eq!(ids(&deltas[1].leaders), [(orders, 2)]);
        assert_eq!(ids(&deltas[1].followers), [(orders, 0)]);
        assert_eq!(ids(&deltas[2].deleted), [(orders, 0), (orders, 2)]);
        assert_eq!(ids(&deltas[2].leaders), [(renamed, 0)]);
        assert_eq!(ids(&deltas[3].deleted), [(renamed, 0)]);

        // Images skipped: the net effect, as one delta over all the records would give it.
        let all: Vec<MetadataRecord> = steps[1..].iter().flat_map(|s| s.iter().cloned()).collect();
        let net = replay_all(Arc::clone(&images[1]), &all, 1 + steps[0].len() as u64);
        let since = images[4].local_changes_since(&images[1], ME);
        assert_eq!(since, net.local_changes(ME));
        assert_eq!(ids(&since.deleted), [(orders, 0), (orders, 2)]);
        assert!(
            since.leaders.is_empty() && since.followers.is_empty(),
            "{since:?}"
        );
        // From the first image to the third: created, moved and replaced, seen as created.
        let since = images[3].local_changes_since(&images[0], ME);
        assert!(since.deleted.is_empty(), "{since:?}");
        assert_eq!(ids(&since.leaders), [(renamed, 0)]);
        // Nothing between an image and itself, or one built from it by records of no topic.
        assert_eq!(
            images[2].local_changes_since(&images[2], ME),
            LocalReplicaChanges::default()
        );
        let later = replay_all(
            Arc::clone(&images[2]),
            &[set_config("orders", "retention.ms", Some("1"))],
            100,
        )
        .apply();
        assert!(Arc::ptr_eq(
            images[2].topic(orders).expect("orders"),
            later.topic(orders).expect("orders")
        ));
        assert_eq!(
            later.local_changes_since(&images[2], ME),
            LocalReplicaChanges::default()
        );
    }

    #[test]
    fn config_changes_name_the_topics_of_both_images_whose_overrides_differ() {
        let (orders, other, gone, again) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let steps: [&[MetadataRecord]; 3] = [
            &[
                topic("orders", orders),
                topic("other", other),
                topic("gone", gone),
                set_config("other", "retention.ms", Some("5")),
                set_config("gone", "retention.ms", Some("5")),
            ],
            &[
                set_config("orders", "cleanup.policy", Some("compact")),
                // The same value again changes nothing.
                set_config("other", "retention.ms", Some("5")),
                // A topic replaced under its name is not an open log with new settings.
                remove(gone),
                topic("gone", again),
                set_config("gone", "retention.ms", Some("7")),
                // Overrides of a topic that does not exist, or of a broker, name no topic.
                set_config("missing", "retention.ms", Some("1")),
                MetadataRecord::Config {
                    v: 0,
                    resource_type: ConfigResource::BROKER,
                    resource_name: "orders".into(),
                    name: "retention.ms".into(),
                    value: Some("1".into()),
                },
            ],
            &[set_config("other", "retention.ms", None)],
        ];
        let (images, _) = images(&steps);
        assert_eq!(
            images[2].topic_config_changes_since(&images[1]),
            [(orders, "orders".to_string())]
        );
        assert_eq!(
            images[3].topic_config_changes_since(&images[2]),
            [(other, "other".to_string())],
            "an override removed is a change"
        );
        assert_eq!(
            images[3].topic_config_changes_since(&images[1]),
            [(orders, "orders".to_string()), (other, "other".to_string())]
        );
        assert!(images[3].topic_config_changes_since(&images[3]).is_empty());
        for (old, new) in [(1, 2), (2, 3), (1, 3), (0, 3), (3, 1)] {
            assert_eq!(
                images[new].topic_config_changes_since(&images[old]),
                config_changes_brute_force(&images[old], &images[new]),
                "{old} -> {new}"
            );
        }
    }

    proptest! {
        /// Following images that skip some: the changes from any image to a later one are those
        /// of one delta replaying every record in between, and what a full comparison finds.
        #[test]
        fn changes_across_skipped_images_are_the_net_effect(
            before in crate::testing::record_sequence(30),
            records in crate::testing::record_sequence(60),
            cuts in (0..60usize, 0..60usize),
        ) {
            let base = Arc::new(replay_all(Arc::new(MetadataImage::empty()), &before, 1).apply());
            let (a, b) = (cuts.0.min(cuts.1).min(records.len()), cuts.0.max(cuts.1).min(records.len()));
            let steps = [&records[..a], &records[a..b], &records[b..]];
            let mut images = vec![Arc::clone(&base)];
            let mut index = 100;
            for step in steps {
                let delta = replay_all(Arc::clone(images.last().expect("base")), step, index);
                index += step.len() as u64;
                let per_broker: Vec<_> = (0..5).map(|b| delta.local_changes(b)).collect();
                let image = Arc::new(delta.apply());
                let old = images.last().expect("base");
                for (broker_id, changes) in per_broker.into_iter().enumerate() {
                    prop_assert_eq!(image.local_changes_since(old, broker_id as i32), changes, "broker {}", broker_id);
                }
                images.push(image);
            }
            let whole = replay_all(Arc::clone(&base), &records, 100);
            let per_broker: Vec<_> = (0..5).map(|b| whole.local_changes(b)).collect();
            let last = &images[3];
            for (broker_id, changes) in per_broker.into_iter().enumerate() {
                let since = last.local_changes_since(&base, broker_id as i32);
                prop_assert_eq!(&since, &changes, "broker {} from the base", broker_id);
                prop_assert_eq!(since, brute_force(&base, last, broker_id as i32), "broker {}", broker_id);
            }
            for (old, new) in [(0, 3), (0, 1), (1, 3), (3, 0)] {
                prop_assert_eq!(
                    images[new].topic_config_changes_since(&images[old]),
                    config_changes_brute_force(&images[old], &images[new]),
                    "{} -> {}", old, new
                );
            }
        }
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
