//! What the leader of a partition knows of its followers, and the decisions Kafka's leader makes
//! from it: which follower fetches to answer and how, where the high watermark goes, when to ask
//! the controller to add a follower to the ISR or take one out, and what to make of the answer.
//! Sans-IO: the log's figures, the brokers' registrations and the time are passed in, so every
//! rule is tested without sockets (`docs/design/replication.md`, section 2).
//!
//! Two ISRs, as Kafka keeps them: the *committed* one is the metadata image's; the *maximal* one
//! adds a follower whose joining is proposed but not yet committed (a proposed removal keeps the
//! member until committed). The high watermark and `acks=all` go by the maximal ISR, the
//! `min.insync.replicas` checks by the committed one. One proposal is in flight at a time.

use std::collections::BTreeMap;

/// What the image says of a broker, as the ISR rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The broker epoch of its current registration.
    pub epoch: i64,
    /// Registered, unfenced and not in controlled shutdown: it may join an ISR.
    pub active: bool,
}

/// A follower's Fetch of one partition, as the leader reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica_id: i32,
    /// The follower's broker epoch (`ReplicaState.ReplicaEpoch`), -1 if it sent none.
    pub broker_epoch: i64,
    /// The leader epoch the follower believes current, -1 if it sent none.
    pub current_leader_epoch: i32,
    pub fetch_offset: i64,
    /// The epoch of the last batch in the follower's log, -1 if it sent none.
    pub last_fetched_epoch: i32,
}

/// Why a follower's fetch is answered with an error and no records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRefusal {
    /// The follower's leader epoch is older than this leader's (FENCED_LEADER_EPOCH).
    FencedLeaderEpoch,
    /// The follower's leader epoch is newer: this broker has not seen it yet (UNKNOWN_LEADER_EPOCH).
    UnknownLeaderEpoch,
    /// Not a replica of the partition, or fetching with a broker epoch the image has replaced.
    NotLeaderOrFollower,
    /// The fetch offset is below the log start (or the epoch lookup found nothing).
    OffsetOutOfRange,
}

impl FetchRefusal {
    pub fn code(self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            FetchRefusal::FencedLeaderEpoch => E::FencedLeaderEpoch.code(),
            FetchRefusal::UnknownLeaderEpoch => E::UnknownLeaderEpoch.code(),
            FetchRefusal::NotLeaderOrFollower => E::NotLeaderOrFollower.code(),
            FetchRefusal::OffsetOutOfRange => E::OffsetOutOfRange.code(),
        }
    }
}

/// Where a follower's log leaves the leader's: it must truncate to at most `end_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverging {
    pub epoch: i32,
    pub end_offset: i64,
}

/// An ISR change to send to the controller (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// The new ISR with each member's broker epoch (-1 for the leader itself, as Kafka sends).
    pub new_isr: Vec<(i32, i64)>,
}

/// The controller's answer to a [`Proposal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterOutcome {
    Committed {
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Refused: INELIGIBLE_REPLICA or OPERATION_NOT_ATTEMPTED. Back to the committed ISR.
    Refused,
    /// The partition changed under the proposal (FENCED_LEADER_EPOCH, INVALID_UPDATE_VERSION,
    /// NEW_LEADER_ELECTED, an unknown topic, INVALID_REQUEST): wait for the image to say how.
    Stale,
    /// Not answered (NOT_CONTROLLER, the network): send it again.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follower {
    /// -1 until it fetches under this leader epoch.
    log_end_offset: i64,
    last_caught_up_ms: i64,
    /// The leader's log end at the follower's previous fetch.
    last_fetch_leader_end: i64,
    last_fetch_ms: i64,
    /// The broker epoch of its last fetch; `None` before one.
    broker_epoch: Option<i64>,
    /// Whether, at its last fetch, its broker could join the ISR (see `LeaderState::eligible`).
    eligible: bool,
}

impl Follower {
    fn new(caught_up_ms: i64) -> Follower {
        Follower {
            log_end_offset: -1,
            last_caught_up_ms: caught_up_ms,
            last_fetch_leader_end: -1,
            last_fetch_ms: caught_up_ms,
            broker_epoch: None,
            eligible: false,
        }
    }

    fn caught_up(&self, leader_end: i64, now_ms: i64, max_lag_ms: i64) -> bool {
        self.log_end_offset == leader_end || now_ms - self.last_caught_up_ms <= max_lag_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Isr {
    Committed(Vec<i32>),
    Pending {
        committed: Vec<i32>,
        maximal: Vec<i32>,
        proposal: Proposal,
    },
}

/// The settings the rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// `replica.lag.time.max.ms`: an ISR member not caught up for this long is proposed out.
    pub max_lag_ms: i64,
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: usize,
}

/// The leader's state of one partition under one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    leader_id: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<i32>,
    isr: Isr,
    /// The log end when this leader epoch began: a follower joins the ISR only once it has
    /// everything before it.
    epoch_start_offset: i64,
    high_watermark: i64,
    followers: BTreeMap<i32, Follower>,
    settings: ReplicaSettings,
}

impl LeaderState {
    /// Becomes leader at `leader_epoch` with the log ending at `log_end_offset`. ISR members
    /// count as caught up as of `now_ms`, their log ends unknown until they fetch (so they hold
    /// the high watermark where it is).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        leader_id: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
        log_end_offset: i64,
        high_watermark: i64,
        settings: ReplicaSettings,
        now_ms: i64,
    ) -> LeaderState {
        let followers = replicas
            .iter()
            .filter(|r| **r != leader_id)
            .map(|r| {
                let caught_up = if isr.contains(r) { now_ms } else { 0 };
                (*r, Follower::new(caught_up))
            })
            .collect();
        LeaderState {
            leader_id,
            leader_epoch,
            partition_epoch,
            replicas: replicas.to_vec(),
            isr: Isr::Committed(isr.to_vec()),
            epoch_start_offset: log_end_offset,
            high_watermark: high_watermark.min(log_end_offset),
            followers,
            settings,
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// The topic's settings changed (an altered `min.insync.replicas`).
    pub fn set_settings(&mut self, settings: ReplicaSettings) {
        self.settings = settings;
    }
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    pub fn committed_isr(&self) -> &[i32] {
        match &self.isr {
            Isr::Committed(isr) => isr,
            Isr::Pending { committed, .. } => committed,
        }
    }
    pub fn maximal_isr(&self) -> &[i32] {
        match &self.isr {
            Isr::Committed(isr) => isr,
            Isr::Pending { maximal, .. } => maximal,
        }
    }
    pub fn in_flight(&self) -> Option<&Proposal> {
        match &self.isr {
            Isr::Committed(_) => None,
            Isr::Pending { proposal, .. } => Some(proposal),
        }
    }

    /// `min.insync.replicas`, as Kafka reads it: a partition with fewer replicas than that
    /// never takes `acks=all`.
    fn effective_min_isr(&self) -> usize {
        self.settings.min_insync_replicas.max(1)
    }

    /// Whether an `acks=all` produce may append: the committed ISR is at least
    /// `min.insync.replicas` (else NOT_ENOUGH_REPLICAS, nothing appended).
    pub fn enough_replicas(&self) -> bool {
        self.committed_isr().len() >= self.effective_min_isr()
    }

    /// Whether an `acks=all` produce whose last offset is `last_offset` is answered: `None`
    /// while it waits, `Some(true)` when acknowledged, `Some(false)` when the high watermark
    /// passed it but the maximal ISR is below `min.insync.replicas`
    /// (NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    pub fn acknowledged(&self, last_offset: i64) -> Option<bool> {
        (self.high_watermark > last_offset)
            .then(|| self.maximal_isr().len() >= self.effective_min_isr())
    }

    /// Checks a follower's fetch before anything is read: its epochs, and where its log leaves
    /// this one. `end_for_epoch(e)` is the log's `(epoch, end offset)` for the largest epoch at
    /// or below `e` (OffsetForLeaderEpoch's answer). `Ok(Some(_))`: answer with the diverging
    /// epoch and no records, and leave the follower's state as it was.
    pub fn check_fetch(
        &self,
        fetch: &FollowerFetch,
        log_start_offset: i64,
        broker: Option<BrokerStatus>,
        end_for_epoch: impl Fn(i32) -> (i32, i64),
    ) -> Result<Option<Diverging>, FetchRefusal> {
        if fetch.current_leader_epoch >= 0 {
            if fetch.current_leader_epoch < self.leader_epoch {
                return Err(FetchRefusal::FencedLeaderEpoch);
            }
            if fetch.current_leader_epoch > self.leader_epoch {
                return Err(FetchRefusal::UnknownLeaderEpoch);
            }
        }
        if !self.followers.contains_key(&fetch.replica_id) {
            return Err(if fetch.current_leader_epoch >= 0 {
                FetchRefusal::UnknownLeaderEpoch
            } else {
                FetchRefusal::NotLeaderOrFollower
            });
        }
        if fetch.broker_epoch != -1 && broker.is_some_and(|b| b.epoch > fetch.broker_epoch) {
            return Err(FetchRefusal::NotLeaderOrFollower);
        }
        if fetch.fetch_offset < log_start_offset {
            return Err(FetchRefusal::OffsetOutOfRange);
        }
        if fetch.last_fetched_epoch < 0 {
            return Ok(None);
        }
        let (epoch, end_offset) = end_for_epoch(fetch.last_fetched_epoch);
        if epoch < 0 || end_offset < 0 {
            return Err(FetchRefusal::OffsetOutOfRange);
        }
        if epoch < fetch.last_fetched_epoch || end_offset < fetch.fetch_offset {
            return Ok(Some(Diverging { epoch, end_offset }));
        }
        Ok(None)
    }

    /// Records a follower's fetch that [`check_fetch`](Self::check_fetch) let through.
    /// `leader_end` is this log's end read before the fetch's read (appends during the fetch
    /// must not keep a follower from catching up). Returns whether the high watermark moved,
    /// and a proposal to add the follower to the ISR if it now may join.
    pub fn record_fetch(
        &mut self,
        fetch: &FollowerFetch,
        leader_end: i64,
        brokers: impl Fn(i32) -> Option<BrokerStatus>,
        now_ms: i64,
    ) -> (bool, Option<Proposal>) {
        let Some(f) = self.followers.get_mut(&fetch.replica_id) else {
            return (false, None);
        };
        if fetch.fetch_offset >= leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if fetch.fetch_offset >= f.last_fetch_leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.last_fetch_leader_end = f.last_fetch_leader_end.max(leader_end);
        f.last_fetch_ms = now_ms;
        f.log_end_offset = fetch.fetch_offset;
        f.broker_epoch = Some(fetch.broker_epoch);
        // May join the ISR: its broker active, fetching with its registration's broker epoch
        // (or none).
        f.eligible = brokers(fetch.replica_id).is_some_and(|b| {
            b.active && (fetch.broker_epoch == -1 || fetch.broker_epoch == b.epoch)
        });
        let moved = self.update_high_watermark(leader_end, now_ms);
        let proposal = self.maybe_expand(fetch.replica_id);
        (moved, proposal)
    }

    /// Moves the high watermark to what every maximal-ISR member (and every caught-up eligible
    /// follower, so that it can join) has, never back, and not at all while the committed ISR
    /// is below `min.insync.replicas`. Call it after each append too. Returns whether it moved.
    pub fn update_high_watermark(&mut self, leader_end: i64, now_ms: i64) -> bool {
        if !self.enough_replicas() {
            return false;
        }
        let maximal = self.maximal_isr();
        let mut new = leader_end;
        for (id, f) in &self.followers {
            if f.log_end_offset < new
                && (maximal.contains(id)
                    || (f.eligible && f.caught_up(leader_end, now_ms, self.settings.max_lag_ms)))
            {
                new = f.log_end_offset;
            }
        }
        if new > self.high_watermark {
            self.high_watermark = new;
            true
        } else {
            false
        }
    }

    fn maybe_expand(&mut self, id: i32) -> Option<Proposal> {
        let Isr::Committed(committed) = &self.isr else {
            return None;
        };
        let f = self.followers.get(&id)?;
        if committed.contains(&id)
            || f.log_end_offset < self.high_watermark
            || f.log_end_offset < self.epoch_start_offset
            || !f.eligible
        {
            return None;
        }
        let mut proposed = committed.clone();
        proposed.push(id);
        let committed = committed.clone();
        Some(self.propose(committed, proposed.clone(), proposed))
    }

    /// Proposes taking out of the ISR every member but the leader that has not been caught up
    /// for `replica.lag.time.max.ms` (or has not fetched since this leader began). Kafka checks
    /// every half of that time. The maximal ISR keeps them until the change is committed.
    pub fn maybe_shrink(&mut self, leader_end: i64, now_ms: i64) -> Option<Proposal> {
        let Isr::Committed(committed) = &self.isr else {
            return None;
        };
        let out: Vec<i32> = committed
            .iter()
            .copied()
            .filter(|id| *id != self.leader_id)
            .filter(|id| {
                self.followers
                    .get(id)
                    .is_none_or(|f| !f.caught_up(leader_end, now_ms, self.settings.max_lag_ms))
            })
            .collect();
        if out.is_empty() {
            return None;
        }
        let proposed: Vec<i32> = committed
            .iter()
            .copied()
            .filter(|id| !out.contains(id))
            .collect();
        let committed = committed.clone();
        Some(self.propose(committed.clone(), committed, proposed))
    }

    fn propose(&mut self, committed: Vec<i32>, maximal: Vec<i32>, proposed: Vec<i32>) -> Proposal {
        let new_isr = proposed
            .iter()
            .map(|id| {
                let epoch = match self.followers.get(id) {
                    Some(f) => f.broker_epoch.unwrap_or(-1),
                    None => -1,
                };
                (*id, epoch)
            })
            .collect();
        let proposal = Proposal {
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            new_isr,
        };
        self.isr = Isr::Pending {
            committed,
            maximal,
            proposal: proposal.clone(),
        };
        proposal
    }

    /// Takes the controller's answer to the proposal in flight. Returns the proposal to send
    /// again, if any; whether the high watermark moved is for the caller to ask.
    pub fn alter_partition_done(&mut self, outcome: AlterOutcome) -> Option<Proposal> {
        let Isr::Pending {
            committed,
            proposal,
            ..
        } = &self.isr
        else {
            return None;
        };
        match outcome {
            AlterOutcome::Committed {
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                if leader_epoch == self.leader_epoch && partition_epoch >= self.partition_epoch {
                    self.partition_epoch = partition_epoch;
                    self.isr = Isr::Committed(isr);
                }
                None
            }
            AlterOutcome::Refused => {
                self.isr = Isr::Committed(committed.clone());
                None
            }
            AlterOutcome::Stale => None,
            AlterOutcome::Retry => Some(proposal.clone()),
        }
    }

    /// Takes a change of the partition from the image under the same leader epoch (an ISR
    /// change committed, whoever proposed it). A newer leader epoch makes a new state instead
    /// ([`new`](Self::new)). Replaces a pending proposal: the image is what was decided.
    pub fn image_changed(
        &mut self,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
        now_ms: i64,
    ) {
        if partition_epoch < self.partition_epoch {
            return;
        }
        self.partition_epoch = partition_epoch;
        self.isr = Isr::Committed(isr.to_vec());
        self.replicas = replicas.to_vec();
        let leader = self.leader_id;
        self.followers.retain(|id, _| replicas.contains(id));
        for r in replicas.iter().filter(|r| **r != leader) {
            self.followers
                .entry(*r)
                .or_insert_with(|| Follower::new(if isr.contains(r) { now_ms } else { 0 }));
        }
    }
}

#[cfg(test)]
#[path = "replica_state_tests.rs"]
mod tests;
