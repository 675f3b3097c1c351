//! OffsetDelete: drop committed offsets, unless an active group consumes the topic.

use std::sync::Arc;

use caudal_coordinator::consumer_protocol::subscribed_topics;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, ResponseKind};

use crate::coordinator_runtime::wait_committed;
use crate::{now_ms, Broker};

pub async fn handle(broker: &Arc<Broker>, request: OffsetDeleteRequest) -> ResponseKind {
    let group_id = request.group_id.0.as_str().to_string();
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.as_str().to_string(), p.partition_index))
        })
        .collect();
    let now = now_ms();
    let ran = broker.groups.run(&group_id, now, |c| {
        let subscribed: Vec<String> = c
            .describe(&group_id)
            .map(|g| {
                g.members
                    .iter()
                    .flat_map(|m| subscribed_topics(&m.metadata))
                    .collect()
            })
            .unwrap_or_default();
        match c.delete_offsets(&group_id, &partitions, |t| {
            subscribed.iter().any(|s| s == t)
        }) {
            Ok((errors, effects)) => (Ok(errors), effects),
            Err(code) => (Err(code), Vec::new()),
        }
    });
    let (result, wait) = ran.unwrap_or_else(|e| (Err(e.code()), None));
    let committed = wait_committed(wait, broker.config.offsets_commit_timeout()).await;
    let result = match committed {
        Ok(()) => result,
        Err(e) => Err(e.code()),
    };
    let errors = match result {
        Ok(errors) => errors,
        Err(code) => {
            return ResponseKind::OffsetDelete(
                OffsetDeleteResponse::default().with_error_code(code),
            )
        }
    };
    let mut errors = errors.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(errors.next().unwrap_or(0))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_topics(topics))
}
