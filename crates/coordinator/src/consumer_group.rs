//! Consumer groups of Kafka's new group protocol (KIP-848): ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe, with the partition assignment computed by the coordinator.
//!
//! A group has an epoch, bumped whenever its members, their subscriptions or the metadata of
//! the subscribed topics change. The target assignment is recomputed (by a server-side
//! assignor, `uniform` or `range`) when the group epoch passes the target's epoch. Each
//! member then converges on its target, one heartbeat at a time, the way Kafka's
//! `CurrentAssignmentBuilder` does it: partitions it must give up are revoked first
//! (UNREVOKED_PARTITIONS, member epoch unchanged); partitions still owned by another member
//! are assigned only once that member released them (UNRELEASED_PARTITIONS); otherwise the
//! member moves to the target epoch (STABLE).
//!
//! Membership lives in memory only: committed offsets are written to `__consumer_offsets`
//! like those of classic groups, but after a restart the members are unknown and their
//! heartbeats are answered UNKNOWN_MEMBER_ID, so they rejoin with epoch 0.
//!
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-848%3A+The+Next+Generation+of+the+Consumer+Rebalance+Protocol>

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::errors::*;
use crate::group::{Coordinator, Effect, GroupState, Ms};

// Error codes only consumer groups answer with (the shared ones are in `errors`).
pub const INVALID_REQUEST: i16 = 42;
pub const FENCED_MEMBER_EPOCH: i16 = 110;
pub const UNRELEASED_INSTANCE_ID: i16 = 111;
pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
pub const STALE_MEMBER_EPOCH: i16 = 113;
pub const INVALID_REGULAR_EXPRESSION: i16 = 128;

/// A member leaving the group sends this epoch.
pub const LEAVE_GROUP_MEMBER_EPOCH: i32 = -1;
/// A static member leaving for now (it keeps its assignment until its session expires).
pub const LEAVE_GROUP_STATIC_MEMBER_EPOCH: i32 = -2;

/// Partitions by topic id.
pub type TopicPartitions = BTreeMap<Uuid, BTreeSet<i32>>;

/// What the coordinator knows of a topic: passed in by the runtime, never read by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMetadata {
    pub id: Uuid,
    pub partitions: i32,
}

/// Every topic by name, as the broker sees it now.
pub type TopicsImage = BTreeMap<String, TopicMetadata>;

/// The server-side assignors (`group.consumer.assignors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Balanced and sticky: every member gets as many partitions as any other, give or take
    /// one, and keeps as many of its partitions as balance allows.
    Uniform,
    /// Per topic, consecutive ranges of partitions to the subscribers in member id order.
    Range,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "uniform" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }
}

/// Settings of consumer groups (Kafka's `group.consumer.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupConfig {
    /// `group.consumer.heartbeat.interval.ms`
    pub heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms`
    pub session_timeout_ms: i32,
    /// `group.consumer.assignors`; the first is the default.
    pub assignors: Vec<Assignor>,
}

impl Default for ConsumerGroupConfig {
    fn default() -> Self {
        ConsumerGroupConfig {
            heartbeat_interval_ms: 5_000,
            session_timeout_ms: 45_000,
            assignors: vec![Assignor::Uniform, Assignor::Range],
        }
    }
}

/// A ConsumerGroupHeartbeat request. `None` fields did not change since the last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1 when unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned_partitions: Option<Vec<(Uuid, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
    /// v1 and later: the client generates its member id (KIP-1082); before, the coordinator.
    pub client_generates_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub error: i16,
    pub error_message: Option<String>,
    pub member_id: Option<String>,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's assigned partitions, sent when they changed or on a full request.
    pub assignment: Option<TopicPartitions>,
}

impl HeartbeatResponse {
    fn error(error: i16, message: impl Into<String>) -> Self {
        HeartbeatResponse {
            error,
            error_message: Some(message.into()),
            member_id: None,
            member_epoch: 0,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }
}

/// Where a member is in converging on its target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Owns its target assignment (or is on its way with nothing to wait for).
    Stable,
    /// Must give up partitions before it may move to the next epoch.
    UnrevokedPartitions,
    /// Waits for partitions other members still own.
    UnreleasedPartitions,
}

/// The state of a consumer group, in Kafka's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl ConsumerGroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
struct ConsumerMember {
    member_id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    subscribed_topic_names: BTreeSet<String>,
    server_assignor: Option<String>,
    state: MemberState,
    member_epoch: i32,
    previous_member_epoch: i32,
    assigned: TopicPartitions,
    pending_revocation: TopicPartitions,
    session_deadline: Ms,
    /// While revoking: when the member is fenced if it has not revoked yet.
    revocation_deadline: Option<Ms>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ConsumerGroup {
    group_id: String,
    group_epoch: i32,
    target_epoch: i32,
    members: BTreeMap<String, ConsumerMember>,
    /// Member id -> target assignment, as of `target_epoch`.
    target: BTreeMap<String, TopicPartitions>,
    /// Which partitions are owned (assigned or pending revocation), and at which member epoch.
    partition_epochs: HashMap<(Uuid, i32), i32>,
    /// The subscribed topics' metadata when the group epoch was last bumped.
    subscription_metadata: BTreeMap<String, TopicMetadata>,
    assignor: Option<Assignor>,
}

impl ConsumerGroup {
    fn new(group_id: &str) -> Self {
        ConsumerGroup {
            group_id: group_id.to_string(),
            ..ConsumerGroup::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn is_subscribed_to(&self, topic: &str) -> bool {
        self.members
            .values()
            .any(|m| m.subscribed_topic_names.contains(topic))
    }

    pub(crate) fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.group_epoch != self.target_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.target_epoch || m.state != MemberState::Stable)
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    fn static_member_id(&self, instance_id: &str) -> Option<String> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
            .map(|m| m.member_id.clone())
    }

    /// Removes a member and frees its partitions; the group epoch moves so the others rebalance.
    fn remove_member(&mut self, member_id: &str) {
        if let Some(m) = self.members.remove(member_id) {
            self.release_partitions(&m);
            self.target.remove(member_id);
            self.group_epoch += 1;
        }
    }

    fn release_partitions(&mut self, m: &ConsumerMember) {
        for (topic, partitions) in m.assigned.iter().chain(&m.pending_revocation) {
            for p in partitions {
                self.partition_epochs.remove(&(*topic, *p));
            }
        }
    }

    fn claim_partitions(&mut self, m: &ConsumerMember) {
        for (topic, partitions) in m.assigned.iter().chain(&m.pending_revocation) {
            for p in partitions {
                self.partition_epochs.insert((*topic, *p), m.member_epoch);
            }
        }
    }

    /// The subscribed topics as they are in `topics` now.
    fn current_subscription_metadata(
        &self,
        topics: &TopicsImage,
    ) -> BTreeMap<String, TopicMetadata> {
        self.members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter())
            .filter_map(|t| topics.get(t).map(|meta| (t.clone(), *meta)))
            .collect()
    }

    /// The assignor most members asked for, else the configured default (as Kafka chooses).
    fn preferred_assignor(&self, config: &ConsumerGroupConfig) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by_key(|(_, n)| **n)
            .and_then(|(name, _)| Assignor::from_name(name))
            .or_else(|| config.assignors.first().copied())
            .unwrap_or(Assignor::Uniform)
    }

    fn compute_target_assignment(&mut self, config: &ConsumerGroupConfig) {
        let assignor = self.preferred_assignor(config);
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscribed_topic_names.clone()))
            .collect();
        self.target = match assignor {
            Assignor::Uniform => {
                assign_uniform(&subscriptions, &self.subscription_metadata, &self.target)
            }
            Assignor::Range => assign_range(&subscriptions, &self.subscription_metadata),
        };
        self.assignor = Some(assignor);
        self.target_epoch = self.group_epoch;
    }

    /// Moves `member` towards its target assignment, given the partitions it says it owns
    /// (`None`: it did not say). Mirrors Kafka's CurrentAssignmentBuilder.
    fn reconcile(&self, member: &mut ConsumerMember, owned: Option<&TopicPartitions>) {
        let target_epoch = self.target_epoch;
        match member.state {
            MemberState::Stable if member.member_epoch == target_epoch => {}
            MemberState::Stable | MemberState::UnreleasedPartitions => {
                let assigned = member.assigned.clone();
                self.next_assignment(member, member.member_epoch, &assigned, owned);
            }
            MemberState::UnrevokedPartitions => {
                if !owns_any(owned, &member.pending_revocation) {
                    let assigned = member.assigned.clone();
                    self.next_assignment(member, member.member_epoch + 1, &assigned, owned);
                }
            }
        }
    }

    fn next_assignment(
        &self,
        member: &mut ConsumerMember,
        epoch: i32,
        current: &TopicPartitions,
        owned: Option<&TopicPartitions>,
    ) {
        let empty = TopicPartitions::new();
        let target = self.target.get(&member.member_id).unwrap_or(&empty);
        let topics: BTreeSet<Uuid> = target.keys().chain(current.keys()).copied().collect();
        let mut assigned = TopicPartitions::new();
        let mut revoking = TopicPartitions::new();
        let mut pending = TopicPartitions::new();
        let mut unreleased = false;
        let none = BTreeSet::new();
        for topic in topics {
            let want = target.get(&topic).unwrap_or(&none);
            let have = current.get(&topic).unwrap_or(&none);
            let keep: BTreeSet<i32> = have.intersection(want).copied().collect();
            let revoke: BTreeSet<i32> = have.difference(&keep).copied().collect();
            let mut add = BTreeSet::new();
            for p in want.difference(&keep) {
                if self.partition_epochs.contains_key(&(topic, *p)) {
                    unreleased = true;
                } else {
                    add.insert(*p);
                }
            }
            if !keep.is_empty() {
                assigned.insert(topic, keep);
            }
            if !revoke.is_empty() {
                revoking.insert(topic, revoke);
            }
            if !add.is_empty() {
                pending.insert(topic, add);
            }
        }
        if !revoking.is_empty() && owns_any(owned, &revoking) {
            // Revoke first: the member stays in its epoch until it confirms.
            member.state = MemberState::UnrevokedPartitions;
            set_epoch(member, epoch);
            member.assigned = assigned;
            member.pending_revocation = revoking;
            return;
        }
        for (topic, partitions) in pending {
            assigned.entry(topic).or_default().extend(partitions);
        }
        member.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        set_epoch(member, self.target_epoch);
        member.assigned = assigned;
        member.pending_revocation = TopicPartitions::new();
    }

    fn topic_name(&self, id: Uuid) -> Option<&str> {
        self.subscription_metadata
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(n, _)| n.as_str())
    }
}

fn set_epoch(member: &mut ConsumerMember, epoch: i32) {
    if member.member_epoch != epoch {
        member.previous_member_epoch = member.member_epoch;
        member.member_epoch = epoch;
    }
}

/// Whether the member still owns any of `partitions`. Not knowing counts as owning.
fn owns_any(owned: Option<&TopicPartitions>, partitions: &TopicPartitions) -> bool {
    let Some(owned) = owned else {
        return true;
    };
    owned.iter().any(|(topic, ps)| {
        partitions
            .get(topic)
            .is_some_and(|revoking| ps.iter().any(|p| revoking.contains(p)))
    })
}

fn is_subset(owned: Option<&TopicPartitions>, of: &TopicPartitions) -> bool {
    let Some(owned) = owned else {
        return false;
    };
    owned
        .iter()
        .all(|(topic, ps)| ps.is_empty() || of.get(topic).is_some_and(|have| ps.is_subset(have)))
}

fn to_topic_partitions(list: &[(Uuid, Vec<i32>)]) -> TopicPartitions {
    let mut out = TopicPartitions::new();
    for (topic, partitions) in list {
        if !partitions.is_empty() {
            out.entry(*topic)
                .or_default()
                .extend(partitions.iter().copied());
        }
    }
    out
}

/// Every partition of the subscribed topics, with the members that may have it.
fn partitions_with_subscribers(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    metadata: &BTreeMap<String, TopicMetadata>,
) -> Vec<((Uuid, i32), Vec<String>)> {
    let mut out = Vec::new();
    for (name, meta) in metadata {
        let subscribers: Vec<String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(name))
            .map(|(id, _)| id.clone())
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..meta.partitions.max(0) {
            out.push(((meta.id, p), subscribers.clone()));
        }
    }
    out
}

/// The `uniform` assignor: members keep what they had while it exists and they still
/// subscribe to it; the rest goes to the least loaded eligible member; then partitions move
/// from the most to the least loaded eligible members until no two differ by more than one.
pub fn assign_uniform(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    metadata: &BTreeMap<String, TopicMetadata>,
    previous: &BTreeMap<String, TopicPartitions>,
) -> BTreeMap<String, TopicPartitions> {
    let partitions = partitions_with_subscribers(subscriptions, metadata);
    let mut owner: BTreeMap<(Uuid, i32), String> = BTreeMap::new();
    let mut load: BTreeMap<String, usize> = subscriptions.keys().map(|m| (m.clone(), 0)).collect();
    let eligible: BTreeMap<(Uuid, i32), Vec<String>> = partitions.into_iter().collect();
    for (member, assigned) in previous {
        for (topic, ps) in assigned {
            for p in ps {
                let key = (*topic, *p);
                let may = eligible.get(&key).is_some_and(|e| e.contains(member));
                if may && !owner.contains_key(&key) {
                    owner.insert(key, member.clone());
                    *load.entry(member.clone()).or_default() += 1;
                }
            }
        }
    }
    for (key, members) in &eligible {
        if owner.contains_key(key) {
            continue;
        }
        let Some(m) = members
            .iter()
            .min_by_key(|m| (load.get(*m).copied().unwrap_or(0), (*m).clone()))
        else {
            continue;
        };
        owner.insert(*key, m.clone());
        *load.entry(m.clone()).or_default() += 1;
    }
    // Each move lowers the sum of squared loads, so this ends; the bound is a safety net.
    let max_moves = eligible.len() * subscriptions.len().max(1);
    for _ in 0..max_moves {
        let mut moved = false;
        let mut by_load: Vec<(usize, String)> = load.iter().map(|(m, n)| (*n, m.clone())).collect();
        by_load.sort_by(|a, b| b.cmp(a));
        'outer: for (n, from) in &by_load {
            for (key, m) in owner.iter() {
                if m != from {
                    continue;
                }
                let Some(to) = eligible.get(key).and_then(|e| {
                    e.iter()
                        .filter(|c| load.get(*c).copied().unwrap_or(0) + 1 < *n)
                        .min_by_key(|c| (load.get(*c).copied().unwrap_or(0), (*c).clone()))
                }) else {
                    continue;
                };
                let (key, to) = (*key, to.clone());
                owner.insert(key, to.clone());
                *load.entry(from.clone()).or_default() -= 1;
                *load.entry(to).or_default() += 1;
                moved = true;
                break 'outer;
            }
        }
        if !moved {
            break;
        }
    }
    let mut out: BTreeMap<String, TopicPartitions> = subscriptions
        .keys()
        .map(|m| (m.clone(), TopicPartitions::new()))
        .collect();
    for ((topic, p), m) in owner {
        out.entry(m)
            .or_default()
            .entry(topic)
            .or_default()
            .insert(p);
    }
    out
}

/// The `range` assignor: per topic, its subscribers in member id order get consecutive
/// ranges, the first ones one partition more when the count does not divide evenly.
pub fn assign_range(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    metadata: &BTreeMap<String, TopicMetadata>,
) -> BTreeMap<String, TopicPartitions> {
    let mut out: BTreeMap<String, TopicPartitions> = subscriptions
        .keys()
        .map(|m| (m.clone(), TopicPartitions::new()))
        .collect();
    for (name, meta) in metadata {
        let subscribers: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(name))
            .map(|(id, _)| id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let count = meta.partitions.max(0) as usize;
        let quota = count / subscribers.len();
        let extra = count % subscribers.len();
        let mut next = 0i32;
        for (i, m) in subscribers.into_iter().enumerate() {
            let n = quota + usize::from(i < extra);
            let range: BTreeSet<i32> = (next..next + n as i32).collect();
            next += n as i32;
            if !range.is_empty() {
                out.entry(m.clone()).or_default().insert(meta.id, range);
            }
        }
    }
    out
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    /// `(topic id, topic name, partitions)`
    pub assignment: Vec<(Uuid, String, Vec<i32>)>,
    pub target_assignment: Vec<(Uuid, String, Vec<i32>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    pub group_id: String,
    pub state: ConsumerGroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    pub members: Vec<ConsumerMemberDescription>,
}

/// What [`Coordinator::consumer_group_describe`] finds for a group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescribedConsumerGroup {
    Found(ConsumerGroupDescription),
    NotFound,
    /// The id belongs to a classic group.
    NotConsumerGroup,
}

/// A consumer group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupListing {
    pub group_id: String,
    pub state: ConsumerGroupState,
}

fn invalid(message: &str) -> HeartbeatResponse {
    HeartbeatResponse::error(INVALID_REQUEST, message)
}

fn validate(req: &HeartbeatRequest, config: &ConsumerGroupConfig) -> Result<(), HeartbeatResponse> {
    if req.group_id.is_empty() {
        return Err(HeartbeatResponse::error(
            INVALID_GROUP_ID,
            "GroupId can't be empty.",
        ));
    }
    if req.instance_id.as_deref() == Some("") {
        return Err(invalid("InstanceId can't be empty."));
    }
    if req.rack_id.as_deref() == Some("") {
        return Err(invalid("RackId can't be empty."));
    }
    if req.client_generates_member_id && req.member_id.is_empty() {
        return Err(invalid("MemberId can't be empty."));
    }
    match req.member_epoch {
        0 => {
            if req.rebalance_timeout_ms == -1 {
                return Err(invalid(
                    "RebalanceTimeoutMs must be provided in first request.",
                ));
            }
            if req.owned_partitions.as_ref().is_none_or(|p| !p.is_empty()) {
                return Err(invalid("TopicPartitions must be empty when (re-)joining."));
            }
            if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                return Err(invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                ));
            }
        }
        e if e > 0 || e == LEAVE_GROUP_MEMBER_EPOCH => {
            if req.member_id.is_empty() {
                return Err(invalid("MemberId can't be empty."));
            }
        }
        LEAVE_GROUP_STATIC_MEMBER_EPOCH => {
            if req.member_id.is_empty() {
                return Err(invalid("MemberId can't be empty."));
            }
            if req.instance_id.is_none() {
                return Err(invalid("InstanceId can't be null."));
            }
        }
        _ => return Err(invalid("MemberEpoch is invalid.")),
    }
    // An empty pattern means "no pattern" (clients send it to clear one, or alongside names).
    if req
        .subscribed_topic_regex
        .as_deref()
        .is_some_and(|r| !r.is_empty())
    {
        // Resolving RE2J patterns needs a regex engine the coordinator does not carry yet.
        return Err(HeartbeatResponse::error(
            INVALID_REGULAR_EXPRESSION,
            "SubscribedTopicRegex is not supported by this broker; subscribe to topic names.",
        ));
    }
    if let Some(a) = &req.server_assignor {
        if !Assignor::from_name(a).is_some_and(|a| config.assignors.contains(&a)) {
            let names: Vec<&str> = config.assignors.iter().map(|a| a.name()).collect();
            return Err(HeartbeatResponse::error(
                UNSUPPORTED_ASSIGNOR,
                format!(
                    "ServerAssignor {a} is not supported. Supported assignors: {}.",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

impl<R> Coordinator<R> {
    /// ConsumerGroupHeartbeat: joins, heartbeats, reconciles and leaves. `topics` is the
    /// broker's topics now; a subscribed topic created or grown since the last heartbeat moves
    /// the group epoch, so its partitions get assigned.
    pub fn consumer_group_heartbeat(
        &mut self,
        req: HeartbeatRequest,
        topics: &TopicsImage,
        now: Ms,
    ) -> (HeartbeatResponse, Vec<Effect<R>>) {
        let group_id = req.group_id.clone();
        let response = self.heartbeat_inner(req, topics, now);
        // Only this member's deadlines moved (a new member's session, a revocation's rebalance
        // timeout): tell the runtime about them alone, O(1) rather than a scan of the group.
        let deadline = response.member_id.as_ref().and_then(|id| {
            let m = self.consumer_groups.get(&group_id)?.members.get(id)?;
            Some(
                m.revocation_deadline
                    .map_or(m.session_deadline, |r| r.min(m.session_deadline)),
            )
        });
        (response, deadline.map(Effect::TickBy).into_iter().collect())
    }

    fn heartbeat_inner(
        &mut self,
        req: HeartbeatRequest,
        topics: &TopicsImage,
        now: Ms,
    ) -> HeartbeatResponse {
        let config = self.config.consumer.clone();
        if let Err(response) = validate(&req, &config) {
            return response;
        }
        if self.is_active_classic_group(&req.group_id) {
            return HeartbeatResponse::error(
                GROUP_ID_NOT_FOUND,
                format!("Group {} is not a consumer group.", req.group_id),
            );
        }
        let interval = config.heartbeat_interval_ms;
        if req.member_epoch == LEAVE_GROUP_MEMBER_EPOCH
            || req.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH
        {
            return self.consumer_group_leave(&req, interval);
        }
        let max_size = self.config.max_size;
        if !self.consumer_groups.contains_key(&req.group_id) {
            if req.member_epoch != 0 {
                // Kafka answers GROUP_ID_NOT_FOUND; membership is not persisted here, so after
                // a restart this is a known member the broker forgot: make it rejoin.
                return HeartbeatResponse::error(
                    UNKNOWN_MEMBER_ID,
                    format!(
                        "Member {} is not a member of group {}.",
                        req.member_id, req.group_id
                    ),
                );
            }
            self.consumer_groups
                .insert(req.group_id.clone(), ConsumerGroup::new(&req.group_id));
        }
        let Some(group) = self.consumer_groups.get_mut(&req.group_id) else {
            return HeartbeatResponse::error(COORDINATOR_NOT_AVAILABLE, "group vanished");
        };
        let owned = req.owned_partitions.as_deref().map(to_topic_partitions);
        let mut bump = false;

        // Find the member, creating or taking over one when (re)joining.
        let member_id = if req.member_epoch == 0 {
            let id = if req.client_generates_member_id {
                req.member_id.clone()
            } else if req.member_id.is_empty() {
                Uuid::new_v4().to_string()
            } else {
                req.member_id.clone()
            };
            match req
                .instance_id
                .as_deref()
                .and_then(|i| group.static_member_id(i))
            {
                Some(old_id) if old_id != id => {
                    let Some(old) = group.members.get(&old_id) else {
                        return HeartbeatResponse::error(
                            COORDINATOR_NOT_AVAILABLE,
                            "member vanished",
                        );
                    };
                    if old.member_epoch != LEAVE_GROUP_STATIC_MEMBER_EPOCH {
                        return HeartbeatResponse::error(
                            UNRELEASED_INSTANCE_ID,
                            format!(
                                "Static member {old_id} with instance id {} is not released yet.",
                                old.instance_id.as_deref().unwrap_or_default()
                            ),
                        );
                    }
                    // A static member back from a restart takes over its old identity and
                    // assignment (KIP-345), without a rebalance.
                    let Some(mut m) = group.members.remove(&old_id) else {
                        return HeartbeatResponse::error(
                            COORDINATOR_NOT_AVAILABLE,
                            "member vanished",
                        );
                    };
                    m.member_id = id.clone();
                    m.member_epoch = m.previous_member_epoch.max(0);
                    if let Some(t) = group.target.remove(&old_id) {
                        group.target.insert(id.clone(), t);
                    }
                    group.members.insert(id.clone(), m);
                }
                _ => {}
            }
            if !group.members.contains_key(&id) {
                if group.members.len() >= max_size {
                    return HeartbeatResponse::error(
                        GROUP_MAX_SIZE_REACHED,
                        format!("The consumer group has reached its maximum capacity of {max_size} members."),
                    );
                }
                group.members.insert(
                    id.clone(),
                    ConsumerMember {
                        member_id: id.clone(),
                        instance_id: req.instance_id.clone(),
                        rack_id: None,
                        client_id: String::new(),
                        client_host: String::new(),
                        rebalance_timeout_ms: req.rebalance_timeout_ms,
                        subscribed_topic_names: BTreeSet::new(),
                        server_assignor: None,
                        state: MemberState::Stable,
                        member_epoch: 0,
                        previous_member_epoch: -1,
                        assigned: TopicPartitions::new(),
                        pending_revocation: TopicPartitions::new(),
                        session_deadline: now,
                        revocation_deadline: None,
                    },
                );
                bump = true;
            }
            id
        } else {
            let Some(m) = group.members.get(&req.member_id) else {
                return HeartbeatResponse::error(
                    UNKNOWN_MEMBER_ID,
                    format!(
                        "Member {} is not a member of group {}.",
                        req.member_id, req.group_id
                    ),
                );
            };
            if let Some(instance) = &req.instance_id {
                if m.instance_id.as_ref() != Some(instance) {
                    return HeartbeatResponse::error(
                        FENCED_INSTANCE_ID,
                        format!("Instance id {instance} belongs to another member."),
                    );
                }
            }
            if req.member_epoch > m.member_epoch {
                return HeartbeatResponse::error(
                    FENCED_MEMBER_EPOCH,
                    format!(
                        "The consumer group member has a greater member epoch ({}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.",
                        req.member_epoch, m.member_epoch
                    ),
                );
            }
            if req.member_epoch < m.member_epoch
                && (req.member_epoch != m.previous_member_epoch
                    || !is_subset(owned.as_ref(), &m.assigned))
            {
                return HeartbeatResponse::error(
                    FENCED_MEMBER_EPOCH,
                    format!(
                        "The consumer group member has a smaller member epoch ({}) than the one known by the group coordinator ({}). The member must abandon all its partitions and rejoin.",
                        req.member_epoch, m.member_epoch
                    ),
                );
            }
            req.member_id.clone()
        };

        let Some(mut member) = group.members.remove(&member_id) else {
            return HeartbeatResponse::error(COORDINATOR_NOT_AVAILABLE, "member vanished");
        };
        let old_assigned = member.assigned.clone();
        // Update what the member told us; a changed subscription moves the group epoch.
        if req.rebalance_timeout_ms != -1 {
            member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if req.rack_id.is_some() {
            member.rack_id = req.rack_id.clone();
        }
        if req.instance_id.is_some() {
            member.instance_id = req.instance_id.clone();
        }
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        if let Some(names) = &req.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().cloned().collect();
            if names != member.subscribed_topic_names {
                member.subscribed_topic_names = names;
                bump = true;
            }
        }
        if let Some(a) = &req.server_assignor {
            if member.server_assignor.as_ref() != Some(a) {
                member.server_assignor = Some(a.clone());
                bump = true;
            }
        }
        group.release_partitions(&member);
        group.members.insert(member_id.clone(), member);

        let metadata = group.current_subscription_metadata(topics);
        if metadata != group.subscription_metadata {
            group.subscription_metadata = metadata;
            bump = true;
        }
        if bump {
            group.group_epoch += 1;
        }
        if group.group_epoch > group.target_epoch {
            group.compute_target_assignment(&config);
        }

        let Some(mut member) = group.members.remove(&member_id) else {
            return HeartbeatResponse::error(COORDINATOR_NOT_AVAILABLE, "member vanished");
        };
        let was_revoking = member.state == MemberState::UnrevokedPartitions;
        group.reconcile(&mut member, owned.as_ref());
        member.session_deadline = now + Ms::from(config.session_timeout_ms);
        member.revocation_deadline = match member.state {
            MemberState::UnrevokedPartitions if was_revoking => member.revocation_deadline,
            MemberState::UnrevokedPartitions => {
                Some(now + Ms::from(member.rebalance_timeout_ms.max(0)))
            }
            _ => None,
        };
        group.claim_partitions(&member);
        let full_request = req.member_epoch == 0
            || (req.rebalance_timeout_ms != -1
                && (req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some())
                && req.owned_partitions.is_some());
        let response = HeartbeatResponse {
            error: NONE,
            error_message: None,
            member_id: Some(member_id.clone()),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: interval,
            assignment: (full_request || member.assigned != old_assigned)
                .then(|| member.assigned.clone()),
        };
        group.members.insert(member_id, member);
        response
    }

    fn consumer_group_leave(&mut self, req: &HeartbeatRequest, interval: i32) -> HeartbeatResponse {
        let unknown = || {
            HeartbeatResponse::error(
                UNKNOWN_MEMBER_ID,
                format!(
                    "Member {} is not a member of group {}.",
                    req.member_id, req.group_id
                ),
            )
        };
        let Some(group) = self.consumer_groups.get_mut(&req.group_id) else {
            return unknown();
        };
        let Some(m) = group.members.get_mut(&req.member_id) else {
            return unknown();
        };
        if req.instance_id.is_some() && m.instance_id != req.instance_id {
            return HeartbeatResponse::error(
                FENCED_INSTANCE_ID,
                "The instance id belongs to another member.",
            );
        }
        if req.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            // The static member keeps its partitions until its session expires or it returns.
            m.previous_member_epoch = m.member_epoch;
            m.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
        } else {
            group.remove_member(&req.member_id);
        }
        HeartbeatResponse {
            error: NONE,
            error_message: None,
            member_id: Some(req.member_id.clone()),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: interval,
            assignment: None,
        }
    }

    /// Fences members whose session expired or who did not revoke within their rebalance
    /// timeout. Called from [`tick`](Coordinator::tick).
    pub(crate) fn consumer_groups_tick(&mut self, now: Ms) {
        for group in self.consumer_groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.session_deadline <= now || m.revocation_deadline.is_some_and(|d| d <= now)
                })
                .map(|m| m.member_id.clone())
                .collect();
            for id in expired {
                group.remove_member(&id);
            }
        }
    }

    pub(crate) fn consumer_groups_next_deadline(&self) -> Option<Ms> {
        self.consumer_groups
            .values()
            .flat_map(|g| g.members.values())
            .flat_map(|m| std::iter::once(m.session_deadline).chain(m.revocation_deadline))
            .min()
    }

    /// Whether `group_id` is a classic group with members.
    fn is_active_classic_group(&self, group_id: &str) -> bool {
        self.describe(group_id)
            .is_some_and(|g| g.state != GroupState::Empty || !g.members.is_empty())
    }

    /// Whether `group_id` is a consumer group (of the new protocol).
    pub fn is_consumer_group(&self, group_id: &str) -> bool {
        self.consumer_groups.contains_key(group_id)
    }

    /// Consumer groups for ListGroups, sorted by id.
    pub fn consumer_groups_list(&self) -> Vec<ConsumerGroupListing> {
        let mut out: Vec<ConsumerGroupListing> = self
            .consumer_groups
            .values()
            .map(|g| ConsumerGroupListing {
                group_id: g.group_id.clone(),
                state: g.state(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// ConsumerGroupDescribe for one group.
    pub fn consumer_group_describe(&self, group_id: &str) -> DescribedConsumerGroup {
        let Some(g) = self.consumer_groups.get(group_id) else {
            return if self.describe(group_id).is_some() {
                DescribedConsumerGroup::NotConsumerGroup
            } else {
                DescribedConsumerGroup::NotFound
            };
        };
        let named = |tp: &TopicPartitions| -> Vec<(Uuid, String, Vec<i32>)> {
            tp.iter()
                .map(|(id, ps)| {
                    (
                        *id,
                        g.topic_name(*id).unwrap_or_default().to_string(),
                        ps.iter().copied().collect(),
                    )
                })
                .collect()
        };
        let empty = TopicPartitions::new();
        DescribedConsumerGroup::Found(ConsumerGroupDescription {
            group_id: g.group_id.clone(),
            state: g.state(),
            group_epoch: g.group_epoch,
            assignment_epoch: g.target_epoch,
            assignor_name: g
                .assignor
                .or_else(|| self.config.consumer.assignors.first().copied())
                .unwrap_or(Assignor::Uniform)
                .name()
                .to_string(),
            members: g
                .members
                .values()
                .map(|m| ConsumerMemberDescription {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.member_epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.subscribed_topic_names.iter().cloned().collect(),
                    assignment: named(&m.assigned),
                    target_assignment: named(g.target.get(&m.member_id).unwrap_or(&empty)),
                })
                .collect(),
        })
    }

    /// OffsetCommit against a consumer group with members: `Some(error)` decides, `None` leaves
    /// the commit to the classic checks (an empty group, or not a consumer group).
    pub(crate) fn consumer_group_commit_check(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Option<i16> {
        let g = self.consumer_groups.get(group_id)?;
        if g.members.is_empty() {
            return None;
        }
        Some(match g.members.get(member_id) {
            None => UNKNOWN_MEMBER_ID,
            Some(m) if m.member_epoch != member_epoch => STALE_MEMBER_EPOCH,
            Some(_) => NONE,
        })
    }

    /// OffsetFetch v9+ from a member (`member_id` set): UNKNOWN_MEMBER_ID or STALE_MEMBER_EPOCH
    /// when the member or its epoch is not the group's.
    pub fn consumer_group_fetch_check(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> i16 {
        let Some(g) = self.consumer_groups.get(group_id) else {
            return NONE;
        };
        let Some(member_id) = member_id else {
            return NONE;
        };
        if member_epoch < 0 && member_id.is_empty() {
            return NONE;
        }
        match g.members.get(member_id) {
            None => UNKNOWN_MEMBER_ID,
            Some(m) if m.member_epoch != member_epoch => STALE_MEMBER_EPOCH,
            Some(_) => NONE,
        }
    }

    /// Drops an empty consumer group (DeleteGroups, or a classic join taking the id over).
    pub(crate) fn remove_empty_consumer_group(&mut self, group_id: &str) -> Result<(), i16> {
        match self.consumer_groups.get(group_id) {
            Some(g) if !g.is_empty() => Err(NON_EMPTY_GROUP),
            Some(_) => {
                self.consumer_groups.remove(group_id);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(crate) fn consumer_group_subscribes(&self, group_id: &str, topic: &str) -> bool {
        self.consumer_groups
            .get(group_id)
            .is_some_and(|g| g.is_subscribed_to(topic))
    }
}

#[cfg(test)]
#[path = "consumer_group_tests.rs"]
mod tests;
