//! OffsetCommit: checked against the group's generation and members, written to
//! `__consumer_offsets`, answered once the write is on disk.

use std::sync::Arc;

use caudal_coordinator::OffsetCommit;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, ResponseKind, TopicName,
};

use super::Reply;
use crate::coordinator_runtime::{wait_committed, OFFSETS_TOPIC};
use crate::{now_ms, Broker};

pub fn handle(broker: &Arc<Broker>, request: OffsetCommitRequest) -> Reply {
    let group_id = request.group_id.0.as_str().to_string();
    // Unknown topics and partitions are refused before the coordinator sees the commit.
    let mut commits = Vec::new();
    let mut shape: Vec<(usize, usize, Option<i16>)> = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let name = topic.name.0.as_str();
        let known = broker.topics.get(name).filter(|_| name != OFFSETS_TOPIC);
        for (p, partition) in topic.partitions.iter().enumerate() {
            let exists = known
                .as_ref()
                .is_some_and(|k| k.has_partition(partition.partition_index));
            if exists {
                shape.push((t, p, None));
                commits.push(OffsetCommit {
                    topic: name.to_string(),
                    partition: partition.partition_index,
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata: partition
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default(),
                });
            } else {
                shape.push((t, p, Some(E::UnknownTopicOrPartition.code())));
            }
        }
    }
    let now = now_ms();
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|i| i.as_str().to_string());
    let ran = broker.groups.run(&group_id, now, |c| {
        c.commit_offsets(
            &group_id,
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            instance.as_deref(),
            commits,
            now,
        )
    });
    // Not the coordinator (or loading): every partition of a known topic gets the error, as
    // Kafka answers.
    let (errors, wait, group_error) = match ran {
        Ok((errors, wait)) => (errors, wait, None),
        Err(e) => (Vec::new(), None, Some(e.code())),
    };
    let mut errors = errors.into_iter();
    let mut topics: Vec<OffsetCommitResponseTopic> = request
        .topics
        .iter()
        .map(|t| {
            // A copy, not a slice of the request frame: this response waits for an fsync.
            OffsetCommitResponseTopic::default()
                .with_name(TopicName(super::str_bytes(t.name.0.as_str())))
                .with_topic_id(t.topic_id)
        })
        .collect();
    for (t, p, refused) in shape {
        let error = refused
            .or(group_error)
            .unwrap_or_else(|| errors.next().unwrap_or(0));
        topics[t].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(request.topics[t].partitions[p].partition_index)
                .with_error_code(error),
        );
    }
    let timeout = broker.config.offsets_commit_timeout();
    Box::pin(async move {
        if let Err(e) = wait_committed(wait, timeout).await {
            tracing::warn!(error = %e, "committed offsets were not written to every in-sync replica; the commit is answered with an error and retried");
            for t in &mut topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = e.code();
                    }
                }
            }
        }
        Some(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(topics),
        ))
    })
}
