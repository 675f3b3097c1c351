//! Who leads a partition and who is in its ISR after something happens to one broker.
//!
//! One function, [`partition_change`], holds the rules for every event, so fencing, unfencing,
//! controlled shutdown and a broker's new incarnation cannot drift apart:
//! - a broker that leaves service (fenced, shutting down, replaced by a new incarnation) leaves
//!   the ISR, unless it is the ISR's last member: the ISR never empties, so the partition knows
//!   which replica holds everything acknowledged and can come back when that broker does;
//! - the leader stays while it is alive and in the ISR; otherwise the first replica (in replica
//!   order) that is in the ISR and alive leads, and with none the partition has no leader (-1);
//! - with no ISR member alive, an eligible leader replica (KIP-966, below) that is alive leads,
//!   and becomes the whole ISR;
//! - nothing else is ever elected (no unclean election), and a broker coming back joins no ISR
//!   here: only its leader can vouch that it caught up (AlterPartition).
//!
//! Eligible leader replicas (ELR, KIP-966): the high watermark does not move while the ISR is
//! below `min.insync.replicas`, so a replica that leaves the ISR then still holds everything
//! committed. It joins the ELR, stays there while it is away, and may lead when the ISR has no
//! live member; once the ISR is back at `min.insync.replicas`, the ELR empties. A replica that
//! crashed keeps its place: a follower counts towards the high watermark only once its log is
//! fsync'd, so a crash loses nothing committed (Kafka, whose followers acknowledge from memory,
//! drops a replica from the ELR after an unclean shutdown instead). [`next_elr`] holds the rule
//! for every ISR change, here and in AlterPartition and elections.
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

/// A partition's new leadership; `isr` and `elr` are `None` when they do not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionChange {
    pub leader: LeaderChange,
    pub isr: Option<Vec<i32>>,
    pub elr: Option<Vec<i32>>,
}

/// A partition as a decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct PartitionView<'a> {
    pub replicas: &'a [i32],
    pub isr: &'a [i32],
    pub elr: &'a [i32],
    pub leader: i32,
    /// The topic's `min.insync.replicas`.
    pub min_isr: usize,
}

/// The eligible leader replicas after the ISR goes from `old_isr` to `new_isr`: none once the
/// new ISR has `min_isr` members; otherwise those there were, and those who just left the ISR,
/// in replica order, less the new ISR's members.
pub fn next_elr(
    replicas: &[i32],
    old_isr: &[i32],
    new_isr: &[i32],
    elr: &[i32],
    min_isr: usize,
) -> Vec<i32> {
    if new_isr.len() >= min_isr {
        return Vec::new();
    }
    replicas
        .iter()
        .copied()
        .filter(|b| (elr.contains(b) || old_isr.contains(b)) && !new_isr.contains(b))
        .collect()
}

/// The partition's new leader, ISR and ELR after `event`, or `None` when none changes.
/// `alive(b)` says whether broker `b` may lead *after* the event (unfenced, not shutting down).
pub fn partition_change(
    p: PartitionView<'_>,
    event: BrokerEvent,
    alive: impl Fn(i32) -> bool,
) -> Option<PartitionChange> {
    let broker = event.broker_id();
    let mut new_isr: Vec<i32> = if event.leaves() && p.isr.contains(&broker) && p.isr.len() > 1 {
        p.isr.iter().copied().filter(|b| *b != broker).collect()
    } else {
        p.isr.to_vec()
    };
    let first_alive = |among: &[i32]| {
        p.replicas
            .iter()
            .copied()
            .find(|b| among.contains(b) && alive(*b))
    };
    let new_leader = if p.leader >= 0 && alive(p.leader) && new_isr.contains(&p.leader) {
        p.leader
    } else if let Some(b) = first_alive(&new_isr) {
        b
    } else if let Some(b) = first_alive(p.elr) {
        // It holds everything committed: it leads, and is the ISR.
        new_isr = vec![b];
        b
    } else {
        -1
    };
    let new_elr = next_elr(p.replicas, p.isr, &new_isr, p.elr, p.min_isr);
    let isr_changed = new_isr.as_slice() != p.isr;
    let elr_changed = new_elr.as_slice() != p.elr;
    if new_leader == p.leader && !isr_changed && !elr_changed {
        return None;
    }
    Some(PartitionChange {
        leader: match new_leader {
            l if l == p.leader => LeaderChange::Keep,
            -1 => LeaderChange::NoLeader,
            l => LeaderChange::To(l),
        },
        isr: isr_changed.then_some(new_isr),
        elr: elr_changed.then_some(new_elr),
    })
}

/// A topic's `min.insync.replicas`: its override in the image, else the controller's default
/// (its node's setting, as a broker falls back to its own).
pub(crate) fn min_isr_of(image: &MetadataImage, topic: &str, default: usize) -> usize {
    image
        .config(&crate::image::ConfigResource::topic(topic))
        .and_then(|c| c.get("min.insync.replicas"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
        .max(1)
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
    /// Leader, ISR and ELR of the partitions changed so far, by topic id and partition.
    partitions: HashMap<(Uuid, i32), Changed>,
    /// `min.insync.replicas` of topics without an override.
    default_min_isr: usize,
    pub(crate) records: Vec<MetadataRecord>,
}

#[derive(Debug, Clone)]
struct Changed {
    leader: i32,
    isr: Vec<i32>,
    elr: Vec<i32>,
}

impl<'a> ClusterChanges<'a> {
    pub(crate) fn new(image: &'a MetadataImage, default_min_isr: usize) -> ClusterChanges<'a> {
        ClusterChanges {
            image,
            brokers: BTreeMap::new(),
            partitions: HashMap::new(),
            default_min_isr,
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
            let min_isr = min_isr_of(self.image, &topic.name, self.default_min_isr);
            for (index, partition) in topic.partitions.iter().enumerate() {
                if !partition.replicas.contains(&broker) {
                    continue;
                }
                let Ok(index) = i32::try_from(index) else {
                    break;
                };
                self.decide(topic.id, index, partition, min_isr, event);
            }
        }
        self.records.len() - before
    }

    fn decide(
        &mut self,
        topic_id: Uuid,
        index: i32,
        partition: &PartitionRegistration,
        min_isr: usize,
        event: BrokerEvent,
    ) {
        let now = match self.partitions.get(&(topic_id, index)) {
            Some(changed) => changed.clone(),
            None => Changed {
                leader: partition.leader,
                isr: partition.isr.clone(),
                elr: partition.elr.clone(),
            },
        };
        let view = PartitionView {
            replicas: &partition.replicas,
            isr: &now.isr,
            elr: &now.elr,
            leader: now.leader,
            min_isr,
        };
        let Some(change) = partition_change(view, event, |b| self.alive(b)) else {
            return;
        };
        let leader = match change.leader {
            LeaderChange::Keep => now.leader,
            LeaderChange::NoLeader => -1,
            LeaderChange::To(b) => b,
        };
        if leader >= 0 && !now.isr.contains(&leader) {
            tracing::info!(
                %topic_id,
                partition = index,
                leader,
                old_isr = ?now.isr,
                "no ISR member is alive: an eligible leader replica, which holds everything committed, leads (KIP-966)"
            );
        }
        let changed = Changed {
            leader,
            isr: change.isr.clone().unwrap_or(now.isr),
            elr: change.elr.clone().unwrap_or(now.elr),
        };
        self.partitions.insert((topic_id, index), changed);
        self.records.push(MetadataRecord::PartitionChange {
            v: RECORD_VERSION,
            topic_id,
            partition: index,
            leader: change.leader,
            isr: change.isr,
            replicas: None,
            elr: change.elr,
        });
    }

    /// Whether `broker_id` leads any partition, counting this decision's changes.
    pub(crate) fn leads_any(&self, broker_id: i32) -> bool {
        self.image.topics().any(|topic| {
            topic.partitions.iter().enumerate().any(|(index, p)| {
                let leader = i32::try_from(index)
                    .ok()
                    .and_then(|i| self.partitions.get(&(topic.id, i)))
                    .map_or(p.leader, |changed| changed.leader);
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

    /// A partition with no eligible leader replicas and `min.insync.replicas` 1.
    fn view<'a>(replicas: &'a [i32], isr: &'a [i32], leader: i32) -> PartitionView<'a> {
        PartitionView {
            replicas,
            isr,
            elr: &[],
            leader,
            min_isr: 1,
        }
    }

    #[test]
    fn a_fenced_leader_hands_over_to_the_first_alive_isr_member_in_replica_order() {
        let change = partition_change(
            view(&[1, 2, 3], &[3, 1, 2], 1),
            BrokerEvent::Fenced(1),
            alive_of(&[2, 3]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::To(2),
                isr: Some(vec![3, 2]),
                elr: None,
            })
        );
    }

    #[test]
    fn a_fenced_follower_leaves_the_isr_and_the_leader_stays() {
        let change = partition_change(
            view(&[1, 2], &[1, 2], 1),
            BrokerEvent::Fenced(2),
            alive_of(&[1]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::Keep,
                isr: Some(vec![1]),
                elr: None,
            })
        );
    }

    #[test]
    fn the_last_isr_member_stays_and_the_partition_goes_leaderless() {
        let change = partition_change(view(&[1], &[1], 1), BrokerEvent::Fenced(1), alive_of(&[]));
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::NoLeader,
                isr: None,
                elr: None,
            })
        );
        // Out-of-sync replicas are alive but never elected: no unclean election.
        let change = partition_change(
            view(&[1, 2], &[1], 1),
            BrokerEvent::Fenced(1),
            alive_of(&[2]),
        );
        assert_eq!(change.map(|c| c.leader), Some(LeaderChange::NoLeader));
    }

    #[test]
    fn an_unfenced_isr_member_takes_a_leaderless_partition_but_joins_no_isr() {
        let change = partition_change(
            view(&[1, 2], &[2], -1),
            BrokerEvent::Unfenced(2),
            alive_of(&[1, 2]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::To(2),
                isr: None,
                elr: None,
            })
        );
        assert_eq!(
            partition_change(
                view(&[1, 2], &[2], -1),
                BrokerEvent::Unfenced(1),
                alive_of(&[1])
            ),
            None,
            "broker 1 is not in the ISR, so it cannot lead"
        );
        assert_eq!(
            partition_change(
                view(&[1, 2], &[1, 2], 2),
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
                view(&[1, 2], &[1, 2], 1),
                BrokerEvent::Fenced(3),
                alive_of(&[1, 2])
            ),
            None
        );
    }

    fn with_elr<'a>(
        replicas: &'a [i32],
        isr: &'a [i32],
        elr: &'a [i32],
        leader: i32,
    ) -> PartitionView<'a> {
        PartitionView {
            replicas,
            isr,
            elr,
            leader,
            min_isr: 2,
        }
    }

    #[test]
    fn replicas_leaving_an_isr_below_min_insync_become_eligible_leaders() {
        // Down to min.insync.replicas: the one who left may miss committed data.
        let change = partition_change(
            with_elr(&[1, 2, 3], &[1, 2, 3], &[], 1),
            BrokerEvent::Fenced(3),
            alive_of(&[1, 2]),
        );
        assert_eq!(change.and_then(|c| c.elr), None);
        // Below it: the high watermark stops, so the one who leaves holds all of it.
        let change = partition_change(
            with_elr(&[1, 2, 3], &[1, 2], &[], 1),
            BrokerEvent::Fenced(2),
            alive_of(&[1]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::Keep,
                isr: Some(vec![1]),
                elr: Some(vec![2]),
            })
        );
        // The last ISR member goes too: no leader, and the eligible replica stays eligible.
        let change = partition_change(
            with_elr(&[1, 2, 3], &[1], &[2], 1),
            BrokerEvent::Fenced(1),
            alive_of(&[]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::NoLeader,
                isr: None,
                elr: None,
            })
        );
    }

    #[test]
    fn an_eligible_replica_that_comes_back_first_leads_and_the_old_isr_becomes_eligible() {
        let change = partition_change(
            with_elr(&[1, 2, 3], &[1], &[2], -1),
            BrokerEvent::Unfenced(2),
            alive_of(&[2]),
        );
        assert_eq!(
            change,
            Some(PartitionChange {
                leader: LeaderChange::To(2),
                isr: Some(vec![2]),
                elr: Some(vec![1]),
            })
        );
        // A replica that left the ISR while it was at min.insync.replicas may lack committed
        // data: it is not eligible, and the partition waits.
        assert_eq!(
            partition_change(
                with_elr(&[1, 2, 3], &[1], &[2], -1),
                BrokerEvent::Unfenced(3),
                alive_of(&[3]),
            ),
            None
        );
        // An ISR member that comes back is preferred to an eligible one.
        let change = partition_change(
            with_elr(&[1, 2, 3], &[1], &[2], -1),
            BrokerEvent::Unfenced(1),
            alive_of(&[1, 2]),
        );
        assert_eq!(
            change.map(|c| (c.leader, c.isr)),
            Some((LeaderChange::To(1), None))
        );
    }

    #[test]
    fn the_elr_empties_once_the_isr_is_back_at_min_insync() {
        assert_eq!(
            next_elr(&[1, 2, 3], &[2], &[2, 1], &[1], 2),
            Vec::<i32>::new()
        );
        assert_eq!(
            next_elr(&[1, 2, 3], &[2], &[2, 3], &[1], 2),
            Vec::<i32>::new()
        );
        // Still below: whoever joined the ISR leaves the ELR, the others stay.
        assert_eq!(next_elr(&[1, 2, 3, 4], &[2], &[2, 1], &[1, 3], 3), vec![3]);
        // min.insync.replicas 1: an ISR never empties, so nobody is ever eligible.
        assert_eq!(next_elr(&[1, 2], &[1, 2], &[1], &[], 1), Vec::<i32>::new());
    }
}
