//! Who leads a partition and who is in its ISR after something happens to one broker.
//!
//! One function, [`partition_change`], holds the rules for every event, so fencing, unfencing,
//! controlled shutdown and a broker's new incarnation cannot drift apart:
//! - a broker that leaves service (fenced, shutting down, replaced by a new incarnation) leaves
//!   the ISR, unless it is the ISR's last member: the ISR never empties, so the partition knows
//!   which replica holds everything acknowledged and can come back when that broker does;
//! - the leader stays while it is alive and in the ISR; otherwise the first replica (in replica
//!   order) that is in the ISR and alive leads, and with none the partition has no leader (-1);
//! - nothing outside the ISR is ever elected (no unclean election), and a broker coming back
//!   joins no ISR here: only its leader can vouch that it caught up (AlterPartition, issue 9).
//!
//! [`ClusterChanges`] applies the function across the image for a batch of events, keeping what
//! earlier events of the same decision changed, so that fencing two brokers in one decision
//! sees the first fence when it decides for the second.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::image::{MetadataImage, PartitionRegistration};
use crate::records::{LeaderChange, MetadataRecord, RECORD_VERSION};

/// What happened to a broker, as far as its partitions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerEvent {
    /// Fenced: its session expired, it asked to be, or it finished a controlled shutdown.
    Fenced(i32),
    /// Unfenced: it caught up with the metadata log and may lead again.
    Unfenced(i32),
    /// It is stopping and must hand over its leaderships first.
    ControlledShutdown(i32),
    /// It registered again with a new incarnation: the old process is gone, and the new one
    /// starts fenced.
    NewIncarnation(i32),
    /// It unregistered.
    Unregistered(i32),
}

impl BrokerEvent {
    pub fn broker_id(self) -> i32 {
        match self {
            BrokerEvent::Fenced(id)
            | BrokerEvent::Unfenced(id)
            | BrokerEvent::ControlledShutdown(id)
            | BrokerEvent::NewIncarnation(id)
            | BrokerEvent::Unregistered(id) => id,
        }
    }

    /// Whether the broker leaves service (and so the ISR, where it can).
    fn leaves(self) -> bool {
        !matches!(self, BrokerEvent::Unfenced(_))
    }
}

/// A partition's new leadership; `isr` is `None` when it does not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionChange {
    pub leader: LeaderChange,
    pub isr: Option<Vec<i32>>,
}

/// The partition's new leader and ISR after `event`, or `None` when neither changes.
/// `alive(b)` says whether broker `b` may lead *after* the event (unfenced, not shutting down).
pub fn partition_change(
    replicas: &[i32],
    isr: &[i32],
    leader: i32,
    event: BrokerEvent,
    alive: impl Fn(i32) -> bool,
) -> Option<PartitionChange> {
    let broker = event.broker_id();
    let new_isr: Vec<i32> = if event.leaves() && isr.contains(&broker) && isr.len() > 1 {
        isr.iter().copied().filter(|b| *b != broker).collect()
    } else {
        isr.to_vec()
    };
    let new_leader = if leader >= 0 && alive(leader) && new_isr.contains(&leader) {
        leader
    } else {
        replicas
            .iter()
            .copied()
            .find(|b| new_isr.contains(b) && alive(*b))
            .unwrap_or(-1)
    };
    let isr_changed = new_isr.as_slice() != isr;
    if new_leader == leader && !isr_changed {
        return None;
    }
    Some(PartitionChange {
        leader: match new_leader {
            l if l == leader => LeaderChange::Keep,
            -1 => LeaderChange::NoLeader,
            l => LeaderChange::To(l),
        },
        isr: isr_changed.then_some(new_isr),
    })
}

/// Liveness of a broker as this decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Away,
}

/// Broker events applied to every partition of an image, with what earlier events of the same
/// decision did. The records come out in event order.
#[derive(Debug)]
pub(crate) struct ClusterChanges<'a> {
    image: &'a MetadataImage,
    brokers: BTreeMap<i32, Liveness>,
    /// Leader and ISR of the partitions changed so far, by topic id and partition.
    partitions: HashMap<(Uuid, i32), (i32, Vec<i32>)>,
    pub(crate) records: Vec<MetadataRecord>,
}

impl<'a> ClusterChanges<'a> {
    pub(crate) fn new(image: &'a MetadataImage) -> ClusterChanges<'a> {
        ClusterChanges {
            image,
            brokers: BTreeMap::new(),
            partitions: HashMap::new(),
            records: Vec::new(),
        }
    }

    fn alive(&self, broker_id: i32) -> bool {
        match self.brokers.get(&broker_id) {
            Some(liveness) => *liveness == Liveness::Alive,
            None => self
                .image
                .broker(broker_id)
                .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown),
        }
    }

    /// Applies `event` to every partition that has the broker as a replica, writing a
    /// `PartitionChange` for each partition whose leader or ISR moves. Returns how many.
    pub(crate) fn apply(&mut self, event: BrokerEvent) -> usize {
        let broker = event.broker_id();
        let liveness = if event.leaves() {
            Liveness::Away
        } else {
            Liveness::Alive
        };
        self.brokers.insert(broker, liveness);
        let mut topics: Vec<_> = self.image.topics().collect();
        // Deterministic record order whatever the hash map's.
        topics.sort_unstable_by_key(|t| t.id);
        let before = self.records.len();
        for topic in topics {
            for (index, partition) in topic.partitions.iter().enumerate() {
                if !partition.replicas.contains(&broker) {
                    continue;
                }
                let Ok(index) = i32::try_from(index) else {
                    break;
                };
                self.decide(topic.id, index, partition, event);
            }
        }
        self.records.len() - before
    }

    fn decide(
        &mut self,
        topic_id: Uuid,
        index: i32,
        partition: &PartitionRegistration,
        event: BrokerEvent,
    ) {
        let (leader, isr) = match self.partitions.get(&(topic_id, index)) {
            Some((leader, isr)) => (*leader, isr.clone()),
            None => (partition.leader, partition.isr.clone()),
        };
        let Some(change) =
            partition_change(&partition.replicas, &isr, leader, event, |b| self.alive(b))
        else {
            return;
        };
        let new_leader = match change.leader {
            LeaderChange::Keep => leader,
            LeaderChange::NoLeader => -1,
            LeaderChange::To(b) => b,
        };
        let new_isr = change.isr.clone().unwrap_or(isr);
        self.partitions
            .insert((topic_id, index), (new_leader, new_isr));
        self.records.push(MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            leader: change.leader,
            isr: change.isr,
            replicas: None,
        });
    }

    /// Whether `broker_id` leads any partition, counting this decision's changes.
    pub(crate) fn leads_any(&self, broker_id: i32) -> bool {
        self.image.topics().any(|topic| {
            topic.partitions.iter().enumerate().any(|(index, p)| {
                let leader = i32::try_from(index)
                    .ok()
                    .and_then(|i| self.partitions.get(&(topic.id, i)))
                    .map_or(p.leader, |(leader, _)| *leader);
                leader == broker_id
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive_of(alive: &'static [i32]) -> impl Fn(i32) -> bool {
        move |b| alive.contains(&b)
    }

    #[test]
    fn a_fenced_leader_hands_over_to_the_first_alive_isr_member_in_replica_order() {
        let change = partition_change(
            &[1, 2, 3],
            &[3, 1, 2],
            1,
            BrokerEvent::Fenced(1),
            alive_of(&[2, 3]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::To(2),
                isr: Some(vec![3, 2]),
            })
        );
    }

    #[test]
    fn a_fenced_follower_leaves_the_isr_and_the_leader_stays() {
        let change = partition_change(&[1, 2], &[1, 2], 1, BrokerEvent::Fenced(2), alive_of(&[1]));
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::Keep,
                isr: Some(vec![1]),
            })
        );
    }

    #[test]
    fn the_last_isr_member_stays_and_the_partition_goes_leaderless() {
        let change = partition_change(&[1], &[1], 1, BrokerEvent::Fenced(1), alive_of(&[]));
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::NoLeader,
                isr: None,
            })
        );
        // Out-of-sync replicas are alive but never elected: no unclean election.
        let change = partition_change(&[1, 2], &[1], 1, BrokerEvent::Fenced(1), alive_of(&[2]));
        assert_eq!(change.map(|c| c.leader), Some(LeaderChange::NoLeader));
    }

    #[test]
    fn an_unfenced_isr_member_takes_a_leaderless_partition_but_joins_no_isr() {
        let change = partition_change(
            &[1, 2],
            &[2],
            -1,
            BrokerEvent::Unfenced(2),
            alive_of(&[1, 2]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::To(2),
                isr: None,
            })
        );
        assert_eq!(
            partition_change(&[1, 2], &[2], -1, BrokerEvent::Unfenced(1), alive_of(&[1])),
            None,
            "broker 1 is not in the ISR, so it cannot lead"
        );
        assert_eq!(
            partition_change(
                &[1, 2],
                &[1, 2],
                2,
                BrokerEvent::Unfenced(1),
                alive_of(&[1, 2])
            ),
            None,
            "a live leader keeps its leadership: no preferred-leader move here"
        );
    }

    #[test]
    fn nothing_changes_when_the_event_misses_the_partition() {
        assert_eq!(
            partition_change(
                &[1, 2],
                &[1, 2],
                1,
                BrokerEvent::Fenced(3),
                alive_of(&[1, 2])
            ),
            None
        );
    }
}
