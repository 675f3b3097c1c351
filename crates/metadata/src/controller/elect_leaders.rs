//! Leader elections an operator asks for (ElectLeaders, API 43) and the controller's own
//! preferred-leader balancing (`auto.leader.rebalance.enable`), with Kafka's rules
//! (`ReplicationControlManager.electLeader` and `maybeBalancePartitionLeaders`):
//!
//! - a **preferred** election moves leadership to the partition's first replica when that
//!   replica is alive and in the ISR; it is ELECTION_NOT_NEEDED when it already leads, and
//!   PREFERRED_LEADER_NOT_AVAILABLE otherwise;
//! - an **unclean** election is for a partition without a leader: the first alive ISR member
//!   leads if there is one, else the first alive replica, which becomes the whole ISR (what it
//!   lacks of the old ISR's log is lost; that is the operator's choice). It is
//!   ELECTION_NOT_NEEDED while the partition has a leader and ELIGIBLE_LEADERS_NOT_AVAILABLE
//!   when no replica is alive;
//! - with no partitions named, every partition is tried and those that need nothing are left
//!   out of the answer, as Kafka answers.
//!
//! Balancing runs every `leader.imbalance.check.interval.seconds`: each partition not led by
//! its preferred replica gets a preferred election where one can succeed, at most
//! [`MAX_ELECTIONS_PER_BALANCE`] per pass (the rest at the next pass, at once).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, ResponseKind};
use uuid::Uuid;

use super::{str_bytes, Decision};
use crate::image::{MetadataImage, PartitionRegistration};
use crate::records::{LeaderChange, MetadataRecord, RECORD_VERSION};

/// Preferred-leader elections in one balancing pass, as Kafka's `maxElectionsPerImbalance`.
pub const MAX_ELECTIONS_PER_BALANCE: usize = 1_000;

/// Which election: ElectLeaders' `election_type` (v1 and later; v0 is always preferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionType {
    Preferred,
    Unclean,
}

impl ElectionType {
    pub fn from_code(code: i8) -> Option<ElectionType> {
        match code {
            0 => Some(ElectionType::Preferred),
            1 => Some(ElectionType::Unclean),
            _ => None,
        }
    }

    pub fn code(self) -> i8 {
        match self {
            ElectionType::Preferred => 0,
            ElectionType::Unclean => 1,
        }
    }
}

/// Whether `broker_id` may lead: registered, unfenced and not shutting down.
fn acceptable(image: &MetadataImage, broker_id: i32) -> bool {
    image
        .broker(broker_id)
        .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
}

/// The record electing a new leader of one partition, or the error saying why there is none.
fn elect(
    image: &MetadataImage,
    topic_id: Uuid,
    index: i32,
    partition: &PartitionRegistration,
    election: ElectionType,
) -> Result<MetadataRecord, E> {
    let change = |leader: i32, isr: Option<Vec<i32>>, elr: Option<Vec<i32>>| {
        MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            leader: LeaderChange::To(leader),
            isr,
            replicas: None,
            elr,
        }
    };
    match election {
        ElectionType::Preferred => {
            let preferred = partition.replicas.first().copied().unwrap_or(-1);
            if partition.leader == preferred {
                return Err(E::ElectionNotNeeded);
            }
            if partition.isr.contains(&preferred) && acceptable(image, preferred) {
                Ok(change(preferred, None, None))
            } else {
                Err(E::PreferredLeaderNotAvailable)
            }
        }
        ElectionType::Unclean => {
            if partition.leader >= 0 {
                return Err(E::ElectionNotNeeded);
            }
            let alive = |b: &&i32| acceptable(image, **b);
            if let Some(clean) = partition
                .replicas
                .iter()
                .filter(|b| partition.isr.contains(b))
                .find(alive)
            {
                return Ok(change(*clean, None, None));
            }
            if let Some(eligible) = partition
                .replicas
                .iter()
                .filter(|b| partition.elr.contains(b))
                .find(alive)
            {
                // It holds everything committed, as an ISR member would: the ISR's members
                // (all away) become eligible in its place.
                let elr = partition
                    .replicas
                    .iter()
                    .copied()
                    .filter(|b| {
                        (partition.elr.contains(b) || partition.isr.contains(b)) && b != eligible
                    })
                    .collect();
                return Ok(change(*eligible, Some(vec![*eligible]), Some(elr)));
            }
            match partition.replicas.iter().find(alive) {
                Some(b) => {
                    tracing::warn!(
                        %topic_id,
                        partition = index,
                        leader = b,
                        isr = ?partition.isr,
                        "unclean leader election: a replica outside the ISR leads, and what it lacks of the ISR's log is lost"
                    );
                    let elr = (!partition.elr.is_empty()).then(Vec::new);
                    Ok(change(*b, Some(vec![*b]), elr))
                }
                None => Err(E::EligibleLeadersNotAvailable),
            }
        }
    }
}

fn result(partition: i32, outcome: Result<(), E>) -> PartitionResult {
    match outcome {
        Ok(()) => PartitionResult::default().with_partition_id(partition),
        Err(e) => PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(message(e)))),
    }
}

fn message(e: E) -> &'static str {
    match e {
        E::ElectionNotNeeded => "the partition already has the leader this election would give it",
        E::PreferredLeaderNotAvailable => "the preferred replica is not alive or not in the ISR",
        E::EligibleLeadersNotAvailable => "no replica of the partition is alive",
        E::UnknownTopicOrPartition => "no such topic or partition",
        _ => "the election failed",
    }
}

pub(crate) fn elect_leaders(
    image: &MetadataImage,
    request: ElectLeadersRequest,
    version: i16,
    max_records: usize,
) -> Decision {
    let election = if version == 0 {
        Some(ElectionType::Preferred)
    } else {
        ElectionType::from_code(request.election_type)
    };
    let Some(election) = election else {
        let response = ElectLeadersResponse::default().with_error_code(E::InvalidRequest.code());
        return Decision::now(Vec::new(), ResponseKind::ElectLeaders(response));
    };
    let mut records = Vec::new();
    let mut results = Vec::new();
    match request.topic_partitions {
        None => {
            let mut topics: Vec<_> = image.topics().collect();
            topics.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            for topic in topics {
                let mut partitions = Vec::new();
                for (index, partition) in topic.partitions.iter().enumerate() {
                    let Ok(index) = i32::try_from(index) else {
                        break;
                    };
                    let outcome = if records.len() >= max_records {
                        // Past one decision's bound: a second run elects the rest.
                        Err(E::RequestTimedOut)
                    } else {
                        elect(image, topic.id, index, partition, election)
                            .map(|record| records.push(record))
                    };
                    if outcome != Err(E::ElectionNotNeeded) {
                        partitions.push(result(index, outcome));
                    }
                }
                if !partitions.is_empty() {
                    results.push(
                        ReplicaElectionResult::default()
                            .with_topic(kafka_protocol::messages::TopicName(str_bytes(
                                topic.name.clone(),
                            )))
                            .with_partition_result(partitions),
                    );
                }
            }
        }
        Some(topics) => {
            for requested in topics {
                let topic = image.topic_by_name(requested.topic.as_str());
                let partitions = requested
                    .partitions
                    .iter()
                    .map(|&index| {
                        let found = topic.and_then(|t| t.partition(index).map(|p| (t.id, p)));
                        let outcome = match found {
                            None => Err(E::UnknownTopicOrPartition),
                            Some(_) if records.len() >= max_records => Err(E::RequestTimedOut),
                            Some((id, partition)) => elect(image, id, index, partition, election)
                                .map(|record| records.push(record)),
                        };
                        result(index, outcome)
                    })
                    .collect();
                results.push(
                    ReplicaElectionResult::default()
                        .with_topic(requested.topic)
                        .with_partition_result(partitions),
                );
            }
        }
    }
    if !records.is_empty() {
        tracing::info!(
            election = ?election,
            partitions = records.len(),
            "electing leaders as asked"
        );
    }
    let response = ElectLeadersResponse::default().with_replica_election_results(results);
    Decision::now(records, ResponseKind::ElectLeaders(response))
}

/// Preferred-leader elections for partitions led by another replica than their first, where the
/// first is alive and in the ISR; at most `max` of them.
pub(crate) fn balance(image: &MetadataImage, max: usize) -> Vec<MetadataRecord> {
    let mut topics: Vec<_> = image.topics().collect();
    topics.sort_unstable_by_key(|t| t.id);
    let mut records = Vec::new();
    for topic in topics {
        for (index, partition) in topic.partitions.iter().enumerate() {
            if records.len() >= max {
                return records;
            }
            let Ok(index) = i32::try_from(index) else {
                break;
            };
            if let Ok(record) = elect(image, topic.id, index, partition, ElectionType::Preferred) {
                records.push(record);
            }
        }
    }
    if !records.is_empty() {
        tracing::info!(
            partitions = records.len(),
            "moving leadership back to preferred replicas"
        );
    }
    records
}
