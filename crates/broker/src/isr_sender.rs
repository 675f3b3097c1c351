//! Sends the ISR changes that partition leaders propose to the active controller (AlterPartition
//! v3, Kafka's `AlterPartitionManager`), and hands each answer back to the partition: committed,
//! refused (back to the committed ISR), stale (wait for the image) or unanswered (sent again after
//! a pause). A partition has at most one proposal in flight (its leader state keeps it so), so
//! the queue holds at most one entry per led partition.
//!
//! Also the leader's periodic check for followers that fell behind: every half of
//! `replica.lag.time.max.ms`, as Kafka's `isr-expiration` task.

use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::ControllerRequest;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_partition_request::{BrokerState, PartitionData, TopicData};
use kafka_protocol::messages::{AlterPartitionRequest, BrokerId, ResponseKind};
use tokio::sync::{mpsc, watch};

use crate::controller_channel::ControllerChannel;
use crate::lifecycle::LifecycleStatus;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;
use crate::replica_state::{AlterOutcome, Proposal};

const ALTER_PARTITION_VERSION: i16 = 3;
/// How long one AlterPartition may wait for the controller before it is sent again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before a proposal the controller did not answer is sent again (Kafka: 50 ms).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Where leaders hand their proposals. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IsrSender {
    queue: mpsc::UnboundedSender<(Arc<Partition>, Proposal)>,
}

impl IsrSender {
    /// Queues `proposal` of `partition` for the controller.
    pub fn send(&self, partition: Arc<Partition>, proposal: Proposal) {
        tracing::debug!(topic = %partition.topic, partition = partition.index, ?proposal, "ISR change proposed");
        // The task ends only with the broker: a proposal then has no one to tell.
        let _ = self.queue.send((partition, proposal));
    }

    /// Starts the sender and the lag check on the current runtime, as broker `node_id` at the
    /// epoch `registration` shows. Both end once every clone of the returned sender is dropped.
    pub fn start(
        channel: ControllerChannel,
        node_id: i32,
        registration: watch::Receiver<LifecycleStatus>,
        replicas: &Arc<ReplicaManager>,
        max_lag_ms: i64,
    ) -> IsrSender {
        let (queue, mut proposals) = mpsc::unbounded_channel::<(Arc<Partition>, Proposal)>();
        let weak_queue = queue.downgrade();
        tokio::spawn(async move {
            while let Some((partition, proposal)) = proposals.recv().await {
                send_until_answered(&channel, node_id, &registration, &partition, proposal).await;
            }
        });
        let replicas = Arc::downgrade(replicas);
        let every = Duration::from_millis(u64::try_from(max_lag_ms / 2).unwrap_or(1).max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(queue), Some(replicas)) = (weak_queue.upgrade(), replicas.upgrade())
                else {
                    return;
                };
                let lag_check = IsrSender { queue };
                let now = crate::now_ms();
                for p in replicas.all() {
                    if let Some(proposal) = p.maybe_shrink_isr(now) {
                        lag_check.send(p, proposal);
                    }
                }
            }
        });
        IsrSender { queue }
    }
}

/// Sends `proposal` until the controller answers it with something other than "try again".
async fn send_until_answered(
    channel: &ControllerChannel,
    node_id: i32,
    registration: &watch::Receiver<LifecycleStatus>,
    partition: &Arc<Partition>,
    mut proposal: Proposal,
) {
    loop {
        let broker_epoch = registration.borrow().broker_epoch;
        let outcome = match channel
            .call(
                ControllerRequest::AlterPartition(
                    request(node_id, broker_epoch, partition, &proposal),
                    ALTER_PARTITION_VERSION,
                ),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(answer) => outcome(partition, answer),
            Err(e) => {
                tracing::debug!(topic = %partition.topic, partition = partition.index, error = %e, "AlterPartition not answered; sending it again");
                AlterOutcome::Retry
            }
        };
        tracing::debug!(topic = %partition.topic, partition = partition.index, ?outcome, "AlterPartition answered");
        match partition.alter_partition_done(outcome, crate::now_ms()) {
            Some(again) => {
                proposal = again;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            None => return,
        }
    }
}

fn request(
    node_id: i32,
    broker_epoch: i64,
    partition: &Partition,
    proposal: &Proposal,
) -> AlterPartitionRequest {
    let isr = proposal
        .new_isr
        .iter()
        .map(|(id, epoch)| {
            BrokerState::default()
                .with_broker_id(BrokerId(*id))
                .with_broker_epoch(*epoch)
        })
        .collect();
    AlterPartitionRequest::default()
        .with_broker_id(BrokerId(node_id))
        .with_broker_epoch(broker_epoch)
        .with_topics(vec![TopicData::default()
            .with_topic_id(partition.topic_id)
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(partition.index)
                .with_leader_epoch(proposal.leader_epoch)
                .with_new_isr_with_epochs(isr)
                .with_leader_recovery_state(0)
                .with_partition_epoch(proposal.partition_epoch)])])
}

/// What the controller's answer means for the proposal, as Kafka's leader reads it.
fn outcome(partition: &Partition, answer: ResponseKind) -> AlterOutcome {
    let ResponseKind::AlterPartition(response) = answer else {
        return AlterOutcome::Retry;
    };
    if response.error_code != 0 {
        // STALE_BROKER_EPOCH (re-registering), NOT_CONTROLLER: later, the same proposal.
        return AlterOutcome::Retry;
    }
    let answered = response
        .topics
        .iter()
        .filter(|t| t.topic_id == partition.topic_id)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition.index);
    let Some(p) = answered else {
        return AlterOutcome::Retry;
    };
    let code = p.error_code;
    if code == 0 {
        AlterOutcome::Committed {
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: p.isr.iter().map(|b| b.0).collect(),
        }
    } else if code == E::IneligibleReplica.code() || code == E::OperationNotAttempted.code() {
        AlterOutcome::Refused
    } else if [
        E::UnknownTopicOrPartition,
        E::UnknownTopicId,
        E::FencedLeaderEpoch,
        E::InvalidUpdateVersion,
        E::InvalidRequest,
        E::NewLeaderElected,
    ]
    .iter()
    .any(|e| e.code() == code)
    {
        AlterOutcome::Stale
    } else {
        AlterOutcome::Retry
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::alter_partition_response::{self, TopicData};
    use kafka_protocol::messages::AlterPartitionResponse;
    use uuid::Uuid;

    use super::*;

    fn answer(topic_id: Uuid, code: i16) -> ResponseKind {
        ResponseKind::AlterPartition(AlterPartitionResponse::default().with_topics(vec![
            TopicData::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![alter_partition_response::PartitionData::default()
                    .with_partition_index(0)
                    .with_error_code(code)
                    .with_leader_epoch(4)
                    .with_partition_epoch(9)
                    .with_isr(vec![BrokerId(1), BrokerId(2)])]),
        ]))
    }

    #[tokio::test]
    async fn each_answer_means_what_it_means_to_kafkas_leader() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = caudal_storage::PartitionLog::open(
            &dir.path().join("t-0"),
            caudal_storage::LogConfig::default(),
            0,
        )
        .unwrap();
        let id = Uuid::new_v4();
        let p = Partition::start("t".into(), id, 0, log);
        assert_eq!(
            outcome(&p, answer(id, 0)),
            AlterOutcome::Committed {
                leader_epoch: 4,
                partition_epoch: 9,
                isr: vec![1, 2]
            }
        );
        for e in [E::IneligibleReplica, E::OperationNotAttempted] {
            assert_eq!(
                outcome(&p, answer(id, e.code())),
                AlterOutcome::Refused,
                "{e:?}"
            );
        }
        for e in [
            E::FencedLeaderEpoch,
            E::InvalidUpdateVersion,
            E::NewLeaderElected,
            E::UnknownTopicId,
        ] {
            assert_eq!(
                outcome(&p, answer(id, e.code())),
                AlterOutcome::Stale,
                "{e:?}"
            );
        }
        assert_eq!(
            outcome(&p, answer(id, E::NotController.code())),
            AlterOutcome::Retry
        );
        let stale_broker = ResponseKind::AlterPartition(
            AlterPartitionResponse::default().with_error_code(E::StaleBrokerEpoch.code()),
        );
        assert_eq!(outcome(&p, stale_broker), AlterOutcome::Retry);
        assert_eq!(
            outcome(&p, answer(Uuid::new_v4(), 0)),
            AlterOutcome::Retry,
            "another partition's answer"
        );
    }
}
