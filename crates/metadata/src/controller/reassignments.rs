//! Moving replicas: AlterPartitionReassignments (API 45), with Kafka's rules
//! (`ReplicationControlManager.alterPartitionReassignments` and `PartitionReassignmentReplicas`).
//!
//! A reassignment to `target` makes the partition's replicas `target` followed by the current
//! replicas not in it, records which of them are being added and removed, and leaves the ISR
//! and the leader alone: the new replicas fetch from the leader like any follower, and the
//! leader takes each into the ISR once it has caught up (AlterPartition). When the ISR holds
//! every target replica the reassignment completes in the same decision that grew the ISR: the
//! replicas become `target`, the removed ones leave the ISR, and a leader that is being removed
//! hands over to the first target replica in the ISR. A removed replica's broker deletes its
//! copy when it sees the change. Cancelling (replicas `null`) reverts to the replicas before the
//! reassignment, refused when that would leave no ISR member (an unclean election, which Kafka
//! refuses too while `unclean.leader.election.enable` is off).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ResponseKind, TopicName,
};
use uuid::Uuid;

use super::topics::{alive, check_assignment, refuse, Refusal};
use super::{str_bytes, Decision};
use crate::image::{MetadataImage, PartitionRegistration};
use crate::records::{LeaderChange, MetadataRecord, RECORD_VERSION};

pub(crate) fn alter_partition_reassignments(
    image: &MetadataImage,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
    max_records: usize,
) -> Decision {
    // v0 has no such field and allows any change, as Kafka's controller does.
    let allow_factor_change = version == 0 || request.allow_replication_factor_change;
    let mut records = Vec::new();
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let found = image.topic_by_name(topic.name.as_str());
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let outcome =
                    match found.and_then(|t| t.partition(p.partition_index).map(|r| (t.id, r))) {
                        None => Err(refuse(
                            E::UnknownTopicOrPartition,
                            "no such topic or partition",
                        )),
                        Some(_) if records.len() + 2 > max_records => Err(refuse(
                            E::RequestTimedOut,
                            "too many partitions in one request; send the rest again",
                        )),
                        Some((id, current)) => reassign(image, id, current, p, allow_factor_change)
                            .map(|mut change| {
                                records.append(&mut change);
                            }),
                    };
                let response = ReassignablePartitionResponse::default()
                    .with_partition_index(p.partition_index);
                match outcome {
                    Ok(()) => response,
                    Err(Refusal { code, message }) => response
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(message))),
                }
            })
            .collect();
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    if !records.is_empty() {
        tracing::info!(records = records.len(), "partition reassignments changed");
    }
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_factor_change)
        .with_responses(responses);
    Decision::now(records, ResponseKind::AlterPartitionReassignments(response))
}

/// The records that start, change or cancel one partition's reassignment.
fn reassign(
    image: &MetadataImage,
    topic_id: Uuid,
    current: &PartitionRegistration,
    asked: &ReassignablePartition,
    allow_factor_change: bool,
) -> Result<Vec<MetadataRecord>, Refusal> {
    let index = asked.partition_index;
    let Some(replicas) = &asked.replicas else {
        return cancel(image, topic_id, index, current);
    };
    let target = check_assignment(image, index, replicas, None)?;
    if !allow_factor_change && target.len() != current.original_replicas().len() {
        return Err(refuse(
            E::InvalidReplicationFactor,
            format!(
                "the reassignment of partition {index} changes its replication factor from {} to {}, which the request does not allow",
                current.original_replicas().len(),
                target.len()
            ),
        ));
    }
    let removing: Vec<i32> = current
        .replicas
        .iter()
        .copied()
        .filter(|b| !target.contains(b))
        .collect();
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|b| !current.replicas.contains(b))
        .collect();
    let mut merged = target.clone();
    merged.extend(&removing);
    let moving = PartitionRegistration {
        replicas: merged,
        adding,
        removing,
        ..current.clone()
    };
    if let Some(done) = complete(image, topic_id, index, &moving, &current.isr) {
        return Ok(done.records);
    }
    if moving == *current {
        return Ok(Vec::new());
    }
    tracing::info!(%topic_id, partition = index, target = ?target, adding = ?moving.adding, removing = ?moving.removing, "reassigning partition");
    Ok(vec![
        MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            leader: LeaderChange::Keep,
            isr: None,
            replicas: Some(moving.replicas.clone()),
            elr: None,
        },
        MetadataRecord::PartitionReassignment {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            adding: moving.adding,
            removing: moving.removing,
        },
    ])
}

/// Reverts an ongoing reassignment to the replicas the partition had before it.
fn cancel(
    image: &MetadataImage,
    topic_id: Uuid,
    index: i32,
    current: &PartitionRegistration,
) -> Result<Vec<MetadataRecord>, Refusal> {
    if !current.is_reassigning() {
        return Err(refuse(
            E::NoReassignmentInProgress,
            format!("partition {index} is not being reassigned"),
        ));
    }
    let replicas = current.original_replicas();
    let isr: Vec<i32> = current
        .isr
        .iter()
        .copied()
        .filter(|b| replicas.contains(b))
        .collect();
    if isr.is_empty() {
        return Err(refuse(
            E::InvalidReplicaAssignment,
            format!("cancelling the reassignment of partition {index} would leave it no in-sync replica: it would need an unclean leader election"),
        ));
    }
    tracing::info!(%topic_id, partition = index, replicas = ?replicas, "reassignment cancelled");
    Ok(finish(image, topic_id, index, current, replicas, isr).records)
}

/// How a reassignment ended: its records, and whether the leadership moved and the ISR it
/// leaves, for an AlterPartition answer.
pub(crate) struct Completion {
    pub(crate) records: Vec<MetadataRecord>,
    pub(crate) leader_moved: bool,
    pub(crate) isr: Vec<i32>,
}

/// The completion of `p`'s reassignment once `isr` holds every target replica; `None` while it
/// does not, or when `p` is not being reassigned.
pub(crate) fn complete(
    image: &MetadataImage,
    topic_id: Uuid,
    index: i32,
    p: &PartitionRegistration,
    isr: &[i32],
) -> Option<Completion> {
    if !p.is_reassigning() {
        return None;
    }
    let target = p.target_replicas();
    if !target.iter().all(|b| isr.contains(b)) {
        return None;
    }
    let new_isr: Vec<i32> = isr.iter().copied().filter(|b| target.contains(b)).collect();
    tracing::info!(%topic_id, partition = index, replicas = ?target, "reassignment complete");
    Some(finish(image, topic_id, index, p, target, new_isr))
}

/// The records that end a reassignment with `replicas` and `isr`: the leader stays if it is
/// among them, else the first of `replicas` in `isr` that may lead takes over.
fn finish(
    image: &MetadataImage,
    topic_id: Uuid,
    index: i32,
    p: &PartitionRegistration,
    replicas: Vec<i32>,
    isr: Vec<i32>,
) -> Completion {
    let leader = if p.leader >= 0 && isr.contains(&p.leader) {
        LeaderChange::Keep
    } else {
        match replicas
            .iter()
            .find(|b| isr.contains(b) && alive(image, **b))
        {
            Some(b) => LeaderChange::To(*b),
            None if p.leader == -1 => LeaderChange::Keep,
            None => LeaderChange::NoLeader,
        }
    };
    // Eligible leader replicas that are no longer replicas, or are in the ISR, are not.
    let elr: Vec<i32> = p
        .elr
        .iter()
        .copied()
        .filter(|b| replicas.contains(b) && !isr.contains(b))
        .collect();
    let records = vec![
        MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            leader,
            isr: (isr != p.isr).then(|| isr.clone()),
            elr: (elr != p.elr).then_some(elr),
            replicas: Some(replicas),
        },
        MetadataRecord::PartitionReassignment {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            adding: Vec::new(),
            removing: Vec::new(),
        },
    ];
    Completion {
        records,
        leader_moved: leader != LeaderChange::Keep,
        isr,
    }
}

/// ListPartitionReassignments (API 46): the partitions of `request` (every topic when it names
/// none) whose reassignment is under way, with their replicas and those being added and
/// removed; UNKNOWN_TOPIC_OR_PARTITION for the whole request when it names a topic that does
/// not exist, as Kafka's controller answers.
pub(crate) fn list_partition_reassignments(
    image: &MetadataImage,
    request: ListPartitionReassignmentsRequest,
) -> Decision {
    let ongoing = |name: &str, index: i32| -> Option<OngoingPartitionReassignment> {
        let p = image.topic_by_name(name)?.partition(index)?;
        let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect();
        p.is_reassigning().then(|| {
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(ids(&p.replicas))
                .with_adding_replicas(ids(&p.adding))
                .with_removing_replicas(ids(&p.removing))
        })
    };
    let mut topics = Vec::new();
    match request.topics {
        None => {
            let mut all: Vec<_> = image.topics().collect();
            all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            for t in all {
                let partitions: Vec<_> = (0..i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                    .filter_map(|i| ongoing(&t.name, i))
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(TopicName(str_bytes(t.name.clone())))
                            .with_partitions(partitions),
                    );
                }
            }
        }
        Some(asked) => {
            for t in asked {
                if image.topic_by_name(t.name.as_str()).is_none() {
                    // Kafka's controller answers the whole request with this.
                    return Decision::now(
                        Vec::new(),
                        ResponseKind::ListPartitionReassignments(
                            ListPartitionReassignmentsResponse::default()
                                .with_error_code(E::UnknownTopicOrPartition.code())
                                .with_error_message(Some(str_bytes(format!(
                                    "topic {} does not exist",
                                    t.name.as_str()
                                )))),
                        ),
                    );
                }
                let partitions: Vec<_> = t
                    .partition_indexes
                    .iter()
                    .filter_map(|&i| ongoing(t.name.as_str(), i))
                    .collect();
                if !partitions.is_empty() {
                    topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(t.name)
                            .with_partitions(partitions),
                    );
                }
            }
        }
    }
    Decision::now(
        Vec::new(),
        ResponseKind::ListPartitionReassignments(
            ListPartitionReassignmentsResponse::default().with_topics(topics),
        ),
    )
}
