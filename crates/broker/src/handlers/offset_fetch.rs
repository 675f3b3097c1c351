//! OffsetFetch: one group (v1-v7) or a batch of groups (v8+); all of a group's offsets when no
//! topics are named.

use std::sync::Arc;

use caudal_coordinator::CommittedOffset;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, ResponseKind, TopicName};

use super::str_bytes;
use crate::coordinator_runtime::CoordinatorError;
use crate::Broker;

const BATCHED_SINCE: i16 = 8;
/// v2 and later carry a top-level error; v1 sets it on every partition.
const TOP_LEVEL_ERROR_SINCE: i16 = 2;
/// v5 and later carry the leader epoch.
const LEADER_EPOCH_SINCE: i16 = 5;
/// Kafka's UNSTABLE_OFFSET_COMMIT: with `require_stable` (v7+), a partition whose offset an
/// open transaction is changing.
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

/// The committed offsets of `group_id`, by topic: of the `(topic, partitions)` named, or all.
fn lookup<'a>(
    broker: &Broker,
    group_id: &str,
    topics: Option<impl Iterator<Item = (&'a str, &'a [i32])>>,
) -> Result<Vec<(String, Vec<CommittedOffset>)>, CoordinatorError> {
    let wanted: Option<Vec<(String, i32)>> = topics.map(|ts| {
        ts.flat_map(|(t, ps)| ps.iter().map(move |p| (t.to_string(), *p)))
            .collect()
    });
    let offsets = broker
        .groups
        .read(group_id, |c| c.fetch_offsets(group_id, wanted.as_deref()))?;
    let mut by_topic: Vec<(String, Vec<CommittedOffset>)> = Vec::new();
    for o in offsets {
        match by_topic.iter_mut().find(|(t, _)| *t == o.topic) {
            Some((_, v)) => v.push(o),
            None => by_topic.push((o.topic.clone(), vec![o])),
        }
    }
    Ok(by_topic)
}

pub fn handle(broker: &Arc<Broker>, request: OffsetFetchRequest, version: i16) -> ResponseKind {
    let epoch = |e: i32| if version >= LEADER_EPOCH_SINCE { e } else { -1 };
    let unstable = |o: &CommittedOffset| request.require_stable && o.pending;
    if version >= BATCHED_SINCE {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                // v9: a consumer-protocol member fetches with its id and epoch (KIP-848).
                let member_id = g.member_id.as_ref().map(|m| m.as_str().to_string());
                let error = broker
                    .groups
                    .read(g.group_id.0.as_str(), |c| {
                        c.consumer_group_fetch_check(
                            g.group_id.0.as_str(),
                            member_id.as_deref(),
                            g.member_epoch,
                        )
                    })
                    .unwrap_or_else(|e| e.code());
                if error != 0 {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(error);
                }
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.as_str(), t.partition_indexes.as_slice()))
                });
                let found = match lookup(broker, g.group_id.0.as_str(), topics) {
                    Ok(found) => found,
                    // The shard went between the check and the lookup.
                    Err(e) => {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(e.code())
                    }
                };
                let topics = found
                    .into_iter()
                    .map(|(t, offsets)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(t)))
                            .with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|o| {
                                        let p = OffsetFetchResponsePartitions::default()
                                            .with_partition_index(o.partition);
                                        if unstable(&o) {
                                            return p
                                                .with_committed_offset(-1)
                                                .with_committed_leader_epoch(-1)
                                                .with_error_code(UNSTABLE_OFFSET_COMMIT);
                                        }
                                        p.with_committed_offset(o.offset)
                                            .with_committed_leader_epoch(o.leader_epoch)
                                            .with_metadata(Some(str_bytes(o.metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups));
    }
    let wanted = request.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.as_str(), t.partition_indexes.as_slice()))
    });
    let found = match lookup(broker, request.group_id.0.as_str(), wanted) {
        Ok(found) => found,
        Err(e) if version >= TOP_LEVEL_ERROR_SINCE => {
            return ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_error_code(e.code()),
            )
        }
        // v1 has no top-level error: every partition asked for carries it.
        Err(e) => {
            let topics = request
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partition_indexes
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_committed_leader_epoch(-1)
                                        .with_metadata(Some(str_bytes("")))
                                        .with_error_code(e.code())
                                })
                                .collect(),
                        )
                })
                .collect();
            return ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_topics(topics));
        }
    };
    let topics = found
        .into_iter()
        .map(|(t, offsets)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(t)))
                .with_partitions(
                    offsets
                        .into_iter()
                        .map(|o| {
                            let p = OffsetFetchResponsePartition::default()
                                .with_partition_index(o.partition);
                            if unstable(&o) {
                                return p
                                    .with_committed_offset(-1)
                                    .with_committed_leader_epoch(-1)
                                    .with_error_code(UNSTABLE_OFFSET_COMMIT);
                            }
                            p.with_committed_offset(o.offset)
                                .with_committed_leader_epoch(epoch(o.leader_epoch))
                                .with_metadata(Some(str_bytes(o.metadata)))
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_topics(topics))
}
