//! Strategies shared by the property tests. Ids come from small pools so that random records
//! often refer to each other (a change to a topic that exists, a name already taken), which is
//! where replay has its rules.

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
        "[A-Za-z0-9_-]{1,22}".prop_map(|cluster_id| MetadataRecord::ClusterId { v: 0, cluster_id }),
        (
            prop::sample::select(vec!["caudal.metadata.version", "group.version"]),
            any::<i16>()
        )
            .prop_map(|(name, level)| MetadataRecord::FeatureLevel {
                v: 0,
                name: name.into(),
                level
            }),
        (
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
        (
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
        (broker_id(), 0..40i64).prop_map(|(broker_id, broker_epoch)| {
            MetadataRecord::UnregisterBroker {
                v: 0,
                broker_id,
                broker_epoch,
            }
        }),
        (name(), topic_id()).prop_map(|(name, topic_id)| MetadataRecord::Topic {
            v: 0,
            name,
            topic_id
        }),
        (
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
                    }
                }
            ),
        (
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
                }
            }),
        topic_id().prop_map(|topic_id| MetadataRecord::RemoveTopic { v: 0, topic_id }),
        (
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
        (broker_id(), 0..40i64, -5..5000i64).prop_map(
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
