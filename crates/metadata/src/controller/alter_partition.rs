//! AlterPartition (API 56, v2-3): a partition leader asks for its ISR to change, having seen a
//! follower catch up or fall behind. Checked as Kafka's controller checks it
//! (`ReplicationControlManager.alterPartition`), in the same order, and written as a
//! `PartitionChange` whose replay moves the partition epoch.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_partition_request::PartitionData;
use kafka_protocol::messages::alter_partition_response::{self, TopicData};
use kafka_protocol::messages::{
    AlterPartitionRequest, AlterPartitionResponse, BrokerId, ResponseKind,
};
use uuid::Uuid;

use super::partition_change::{min_isr_of, next_elr};
use super::Decision;
use crate::image::{MetadataImage, PartitionRegistration};
use crate::records::{LeaderChange, MetadataRecord, RECORD_VERSION};

/// AlterPartition v3 and later give each new ISR member's broker epoch (KIP-903).
const ISR_WITH_EPOCHS_SINCE: i16 = 3;

pub(crate) fn alter_partition(
    image: &MetadataImage,
    request: AlterPartitionRequest,
    version: i16,
    default_min_isr: usize,
) -> Decision {
    let sender = request.broker_id.0;
    // A sender whose registration was replaced (it restarted) speaks for an old incarnation.
    let sender_epoch_ok = match image.broker(sender) {
        Some(b) => request.broker_epoch == -1 || request.broker_epoch == b.epoch,
        None => false,
    };
    if !sender_epoch_ok {
        let response =
            AlterPartitionResponse::default().with_error_code(E::StaleBrokerEpoch.code());
        return Decision::now(Vec::new(), ResponseKind::AlterPartition(response));
    }
    let mut records = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let answer = decide(
                image,
                sender,
                (topic.topic_id, default_min_isr),
                &p,
                version,
                &mut records,
            );
            partitions.push(answer);
        }
        topics.push(
            TopicData::default()
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    let response = AlterPartitionResponse::default().with_topics(topics);
    Decision::now(records, ResponseKind::AlterPartition(response))
}

/// One partition's answer, with its record pushed to `records` if its ISR changes.
fn decide(
    image: &MetadataImage,
    sender: i32,
    (topic_id, default_min_isr): (Uuid, usize),
    p: &PartitionData,
    version: i16,
    records: &mut Vec<MetadataRecord>,
) -> alter_partition_response::PartitionData {
    let refused = |code: i16| {
        alter_partition_response::PartitionData::default()
            .with_partition_index(p.partition_index)
            .with_error_code(code)
    };
    let Some(topic) = image.topic(topic_id) else {
        return refused(E::UnknownTopicId.code());
    };
    let Some(current) = usize::try_from(p.partition_index)
        .ok()
        .and_then(|i| topic.partitions.get(i))
    else {
        return refused(E::UnknownTopicOrPartition.code());
    };
    let new_isr: Vec<(i32, i64)> = if version >= ISR_WITH_EPOCHS_SINCE {
        p.new_isr_with_epochs
            .iter()
            .map(|m| (m.broker_id.0, m.broker_epoch))
            .collect()
    } else {
        p.new_isr.iter().map(|b| (b.0, -1)).collect()
    };
    if let Err(code) = check(image, sender, current, p, &new_isr) {
        return refused(code);
    }
    let isr: Vec<i32> = new_isr.iter().map(|(id, _)| *id).collect();
    let mut partition_epoch = current.partition_epoch;
    if let Some(done) =
        super::reassignments::complete(image, topic_id, p.partition_index, current, &isr)
    {
        // The ISR now holds every target replica: the reassignment completes with this change.
        records.extend(done.records);
        if done.leader_moved {
            // Kafka's answer when the change took the leadership from the sender.
            return refused(E::NewLeaderElected.code());
        }
        return alter_partition_response::PartitionData::default()
            .with_partition_index(p.partition_index)
            .with_leader_id(BrokerId(current.leader))
            .with_leader_epoch(current.leader_epoch)
            .with_isr(done.isr.into_iter().map(BrokerId).collect())
            .with_leader_recovery_state(0)
            .with_partition_epoch(partition_epoch.wrapping_add(1));
    }
    let min_isr = min_isr_of(image, &topic.name, default_min_isr);
    let elr = next_elr(&current.replicas, &current.isr, &isr, &current.elr, min_isr);
    if isr != current.isr || elr != current.elr {
        records.push(MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: p.partition_index,
            leader: LeaderChange::Keep,
            isr: (isr != current.isr).then(|| isr.clone()),
            replicas: None,
            elr: (elr != current.elr).then_some(elr),
        });
        partition_epoch = partition_epoch.wrapping_add(1);
    }
    alter_partition_response::PartitionData::default()
        .with_partition_index(p.partition_index)
        .with_leader_id(BrokerId(current.leader))
        .with_leader_epoch(current.leader_epoch)
        .with_isr(isr.into_iter().map(BrokerId).collect())
        .with_leader_recovery_state(0)
        .with_partition_epoch(partition_epoch)
}

/// Kafka's checks, in Kafka's order.
fn check(
    image: &MetadataImage,
    sender: i32,
    current: &PartitionRegistration,
    p: &PartitionData,
    new_isr: &[(i32, i64)],
) -> Result<(), i16> {
    // Newer than what this controller knows: it is not the controller it thinks it is.
    if p.leader_epoch > current.leader_epoch || p.partition_epoch > current.partition_epoch {
        return Err(E::NotController.code());
    }
    if p.leader_epoch < current.leader_epoch {
        return Err(E::FencedLeaderEpoch.code());
    }
    if sender != current.leader {
        return Err(E::InvalidRequest.code());
    }
    if p.partition_epoch < current.partition_epoch {
        return Err(E::InvalidUpdateVersion.code());
    }
    let mut seen = Vec::with_capacity(new_isr.len());
    for (id, _) in new_isr {
        if !current.replicas.contains(id) || seen.contains(id) {
            return Err(E::InvalidRequest.code());
        }
        seen.push(*id);
    }
    if !seen.contains(&current.leader) {
        return Err(E::InvalidRequest.code());
    }
    // Caudal keeps no RECOVERING state (no unclean election yet): only RECOVERED (0).
    if p.leader_recovery_state != 0 {
        return Err(E::InvalidRequest.code());
    }
    for (id, epoch) in new_isr {
        let eligible = image.broker(*id).is_some_and(|b| {
            !b.fenced && !b.in_controlled_shutdown && (*epoch == -1 || *epoch == b.epoch)
        });
        // The leader is in the ISR whatever its own broker's state: it is the sender.
        if !eligible && *id != current.leader {
            return Err(E::IneligibleReplica.code());
        }
    }
    Ok(())
}
