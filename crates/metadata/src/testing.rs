//! Strategies shared by the property tests. Ids come from small pools so that random records
//! often refer to each other (a change to a topic that exists, a name already taken), which is
//! where replay has its rules.

use std::collections::HashMap;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use uuid::Uuid;

use crate::records::{Endpoint, FeatureRange, LeaderChange, MetadataRecord};

fn broker_id() -> impl Strategy<Value = i32> {
    0..5i32
}

fn topic_id() -> impl Strategy<Value = Uuid> {
    (1u128..=4).prop_map(Uuid::from_u128)
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["orders", "payments", "audit", "a.b-c_d"]).prop_map(String::from)
}

fn broker_list() -> impl Strategy<Value = Vec<i32>> {
    vec(broker_id(), 0..4)
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        prop::sample::select(vec!["PLAINTEXT", "INTERNAL"]),
        "\\PC{0,8}",
        any::<u16>(),
        0..4i16,
    )
        .prop_map(|(name, host, port, security_protocol)| Endpoint {
            name: name.into(),
            host,
            port,
            security_protocol,
        })
}

fn leader_change() -> impl Strategy<Value = LeaderChange> {
    prop_oneof![
        Just(LeaderChange::Keep),
        Just(LeaderChange::NoLeader),
        broker_id().prop_map(LeaderChange::To),
    ]
}

/// Any record, with fields drawn from small pools and free text where JSON escaping matters.
pub(crate) fn record() -> impl Strategy<Value = MetadataRecord> {
    prop_oneof![
        1 => "[A-Za-z0-9_-]{1,22}".prop_map(|cluster_id| MetadataRecord::ClusterId { v: 0, cluster_id }),
        1 => (
            prop::sample::select(vec!["caudal.metadata.version", "group.version"]),
            any::<i16>()
        )
            .prop_map(|(name, level)| MetadataRecord::FeatureLevel {
                v: 0,
                name: name.into(),
                level
            }),
        2 => (
            broker_id(),
            0u128..3,
            vec(endpoint(), 0..3),
            option::of("\\PC{0,4}"),
            vec(
                (0..2i16, 0..3i16).prop_map(|(min, max)| FeatureRange {
                    name: "caudal.metadata.version".into(),
                    min,
                    max
                }),
                0..2
            ),
            option::weighted(0.2, 0..40i64),
        )
            .prop_map(
                |(broker_id, incarnation, endpoints, rack, features, broker_epoch)| {
                    MetadataRecord::RegisterBroker {
                        v: 0,
                        broker_id,
                        incarnation_id: Uuid::from_u128(incarnation),
                        endpoints,
                        rack,
                        features,
                        broker_epoch,
                    }
                }
            ),
        4 => (
            broker_id(),
            0..40i64,
            option::of(any::<bool>()),
            option::of(any::<bool>())
        )
            .prop_map(
                |(broker_id, broker_epoch, fenced, in_controlled_shutdown)| {
                    MetadataRecord::BrokerRegistrationChange {
                        v: 0,
                        broker_id,
                        broker_epoch,
                        fenced,
                        in_controlled_shutdown,
                    }
                }
            ),
        1 => (broker_id(), 0..40i64).prop_map(|(broker_id, broker_epoch)| {
            MetadataRecord::UnregisterBroker {
                v: 0,
                broker_id,
                broker_epoch,
            }
        }),
        2 => (name(), topic_id()).prop_map(|(name, topic_id)| MetadataRecord::Topic {
            v: 0,
            name,
            topic_id
        }),
        5 => (
            topic_id(),
            -1..4i32,
            broker_list(),
            broker_list(),
            -1..5i32,
            0..5i32,
            0..5i32
        )
            .prop_map(
                |(topic_id, partition, replicas, isr, leader, leader_epoch, partition_epoch)| {
                    MetadataRecord::Partition {
                        v: 0,
                        topic_id,
                        partition,
                        replicas,
                        isr,
                        leader,
                        leader_epoch,
                        partition_epoch,
                        elr: Vec::new(),
                    }
                }
            ),
        5 => (
            topic_id(),
            -1..4i32,
            leader_change(),
            option::of(broker_list()),
            option::of(broker_list())
        )
            .prop_map(|(topic_id, partition, leader, isr, replicas)| {
                MetadataRecord::PartitionChange {
                    v: 0,
                    topic_id,
                    partition,
                    leader,
                    isr,
                    replicas,
                    elr: None,
                }
            }),
        1 => topic_id().prop_map(|topic_id| MetadataRecord::RemoveTopic { v: 0, topic_id }),
        2 => (
            prop::sample::select(vec![2i8, 4]),
            name(),
            prop::sample::select(vec!["retention.ms", "cleanup.policy"]),
            option::of("\\PC{0,6}"),
        )
            .prop_map(|(resource_type, resource_name, name, value)| {
                MetadataRecord::Config {
                    v: 0,
                    resource_type,
                    resource_name,
                    name: name.into(),
                    value,
                }
            }),
        1 => (broker_id(), 0..40i64, -5..5000i64).prop_map(
            |(broker_id, broker_epoch, next_producer_id)| {
                MetadataRecord::ProducerIds {
                    v: 0,
                    broker_id,
                    broker_epoch,
                    next_producer_id,
                }
            }
        ),
    ]
}

/// A record sequence meant to be replayed with the record at position `i` in the entry of index
/// `i + 1`. Records the strategy flags are aimed at what exists by then: broker changes name the
/// epoch of the broker's latest registration, partitions are added next in line and changes
/// name an existing partition, so that enough of them are valid to build real images.
pub(crate) fn record_sequence(max: usize) -> impl Strategy<Value = Vec<MetadataRecord>> {
    vec((record(), any::<bool>()), 0..max).prop_map(|records| {
        let mut epochs = HashMap::new();
        let mut names = HashMap::new();
        let mut partitions: HashMap<Uuid, i32> = HashMap::new();
        let mut out = Vec::with_capacity(records.len());
        for (i, (mut record, aimed)) in records.into_iter().enumerate() {
            match &mut record {
                MetadataRecord::RegisterBroker {
                    broker_id,
                    broker_epoch,
                    ..
                } => {
                    epochs.insert(*broker_id, broker_epoch.unwrap_or(i as i64 + 1));
                }
                MetadataRecord::BrokerRegistrationChange {
                    broker_id,
                    broker_epoch,
                    ..
                }
                | MetadataRecord::UnregisterBroker {
                    broker_id,
                    broker_epoch,
                    ..
                } => {
                    if let (true, Some(epoch)) = (aimed, epochs.get(broker_id)) {
                        *broker_epoch = *epoch;
                    }
                }
                MetadataRecord::Topic { name, topic_id, .. }
                    if !partitions.contains_key(topic_id) && !names.contains_key(name) =>
                {
                    names.insert(name.clone(), *topic_id);
                    partitions.insert(*topic_id, 0);
                }
                MetadataRecord::RemoveTopic { topic_id, .. }
                    if partitions.remove(topic_id).is_some() =>
                {
                    names.retain(|_, id| id != topic_id);
                }
                MetadataRecord::Partition {
                    topic_id,
                    partition,
                    ..
                } => {
                    if let (true, Some(count)) = (aimed, partitions.get_mut(topic_id)) {
                        *partition = *count;
                        *count += 1;
                    }
                }
                MetadataRecord::PartitionChange {
                    topic_id,
                    partition,
                    ..
                } => {
                    if let (true, Some(count)) = (aimed, partitions.get(topic_id)) {
                        *partition = partition.rem_euclid((*count).max(1));
                    }
                }
                _ => {}
            }
            out.push(record);
        }
        out
    })
}
