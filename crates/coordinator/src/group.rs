//! Groups, members and the classic rebalance state machine.
//!
//! ```text
//!            join                  all joined / timeout        leader's sync
//!   Empty ----------> Preparing ------------------> Completing -------------> Stable
//!     ^                Rebalance                    Rebalance                  |
//!     |  last member      ^  ^                          |   member joins/leaves/   |
//!     +-- leaves ---------+  +------- member change ----+   fails, leader rejoins -+
//! ```

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::consumer_group::{ConsumerGroup, ConsumerGroupConfig};
use crate::errors::*;
use crate::records::{GroupMemberRecord, GroupRecord, OffsetRecord, OffsetsRecord};

/// Milliseconds since the epoch; the caller passes the clock in.
pub type Ms = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i64,
    /// `group.max.size`
    pub max_size: usize,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in milliseconds
    pub offsets_retention_ms: i64,
    /// Groups of the consumer protocol (KIP-848).
    pub consumer: ConsumerGroupConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            consumer: ConsumerGroupConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka's admin APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED and rejoins with its id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinMember>,
}

impl JoinResponse {
    fn error(error: i16, member_id: &str) -> Self {
        JoinResponse {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    fn error(error: i16) -> Self {
        SyncResponse {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// One partition's offset in an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// What the coordinator asks its runtime to do.
#[derive(Debug)]
pub enum Effect<R> {
    /// Answer a JoinGroup.
    Join(R, JoinResponse),
    /// Answer a SyncGroup.
    Sync(R, SyncResponse),
    /// Append this record to the group's `__consumer_offsets` partition.
    Write(OffsetsRecord),
    /// Append this offset commit as part of the transaction of `producer_id` (a transactional
    /// batch at `producer_epoch`): it takes effect when the transaction's marker lands.
    WriteTxn {
        producer_id: i64,
        producer_epoch: i16,
        record: OffsetsRecord,
    },
    /// A rebalance finished: the group is Stable at a new generation. For the log.
    Stabilized(Stabilized),
    /// Call [`Coordinator::tick`] by this time: a request set a deadline that may be earlier
    /// than any the runtime knew of. Ticking earlier does no harm.
    TickBy(Ms),
}

/// How a rebalance went, from its start to the leader's assignment reaching the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stabilized {
    pub group_id: String,
    pub generation_id: i32,
    pub members: usize,
    /// From the start of the join phase to the last member's join (or the timeout).
    pub join_ms: Ms,
    /// From then to the leader's SyncGroup.
    pub sync_ms: Ms,
}

#[derive(Debug)]
struct Member<R> {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<R>,
    awaiting_sync: Option<R>,
    heartbeat_deadline: Ms,
}

impl<R> Member<R> {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OffsetEntry {
    offset: i64,
    leader_epoch: i32,
    metadata: String,
    commit_timestamp: Ms,
}

#[derive(Debug)]
struct Group<R> {
    group_id: String,
    state: GroupState,
    state_since: Ms,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    /// In join order: the first member becomes leader when there is none.
    members: Vec<Member<R>>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with when they lapse.
    pending_members: HashMap<String, Ms>,
    /// When the join phase ends whoever has rejoined.
    join_deadline: Option<Ms>,
    /// Rebalance time left after the initial delay (KIP-134), for an Empty group's first join.
    initial_delay_left: Option<Ms>,
    new_member_joined_during_delay: bool,
    /// When the sync phase gives up on members that have not synced.
    sync_deadline: Option<Ms>,
    /// When the current rebalance's join phase started and ended.
    rebalance_started: Ms,
    join_completed: Ms,
    offsets: BTreeMap<(String, i32), OffsetEntry>,
}

impl<R> Group<R> {
    fn new(group_id: &str, now: Ms) -> Self {
        Group {
            group_id: group_id.to_string(),
            state: GroupState::Empty,
            state_since: now,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            pending_members: HashMap::new(),
            join_deadline: None,
            initial_delay_left: None,
            new_member_joined_during_delay: false,
            sync_deadline: None,
            rebalance_started: now,
            join_completed: now,
            offsets: BTreeMap::new(),
        }
    }

    fn member(&self, id: &str) -> Option<&Member<R>> {
        self.members.iter().find(|m| m.member_id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member<R>> {
        self.members.iter_mut().find(|m| m.member_id == id)
    }

    fn static_member(&self, instance: &str) -> Option<&Member<R>> {
        self.members
            .iter()
            .find(|m| m.group_instance_id.as_deref() == Some(instance))
    }

    fn set_state(&mut self, state: GroupState, now: Ms) {
        self.state = state;
        self.state_since = now;
    }

    /// A static member whose instance id now belongs to another member id is fenced.
    fn is_fenced(&self, member_id: &str, instance: Option<&str>) -> bool {
        match instance.and_then(|i| self.static_member(i)) {
            Some(m) => m.member_id != member_id,
            None => false,
        }
    }

    /// Whether a joining member's protocols fit the group's.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// The protocol every member supports that most members list first (KIP-62 voting).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let votes = |name: &String| {
            self.members
                .iter()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .map(|(n, _)| n)
                        .find(|n| candidates.contains(n))
                        == Some(name)
                })
                .count()
        };
        // max_by_key keeps the last maximum; iterate in reverse so ties go to the first member's preference.
        candidates
            .iter()
            .rev()
            .max_by_key(|n| votes(n))
            .map(|n| (*n).clone())
    }

    /// The earliest time at which `tick` has something to do for this group.
    fn next_deadline(&self) -> Option<Ms> {
        // Members waiting on a join or sync are not expired; the phase's deadline covers them.
        self.members
            .iter()
            .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none())
            .map(|m| m.heartbeat_deadline)
            .chain(self.pending_members.values().copied())
            .chain(
                self.join_deadline
                    .filter(|_| self.state == GroupState::PreparingRebalance),
            )
            .chain(
                self.sync_deadline
                    .filter(|_| self.state == GroupState::CompletingRebalance),
            )
            .min()
    }

    fn max_rebalance_timeout(&self) -> Ms {
        self.members
            .iter()
            .map(|m| Ms::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn leader_response(&self, member_id: &str) -> JoinResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResponse {
            error: NONE,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .iter()
                    .map(|m| JoinMember {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn snapshot(&self, now: Ms) -> OffsetsRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        OffsetsRecord::Group {
            group_id: self.group_id.clone(),
            value: Some(GroupRecord {
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                generation_id: self.generation_id,
                protocol_name: self.protocol_name.clone(),
                leader: self.leader.clone(),
                current_state_timestamp: now,
                members: self
                    .members
                    .iter()
                    .map(|m| GroupMemberRecord {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        session_timeout_ms: m.session_timeout_ms,
                        subscription: m.metadata_for(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect(),
            }),
        }
    }
}

/// Summary of a group for ListGroups and DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A committed offset as OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// An open transaction holds a newer offset for the partition (TxnOffsetCommit).
    pub pending: bool,
}

#[derive(Debug)]
pub struct Coordinator<R> {
    pub(crate) config: GroupConfig,
    groups: HashMap<String, Group<R>>,
    /// Groups of the consumer protocol; their committed offsets live in `groups`.
    pub(crate) consumer_groups: HashMap<String, ConsumerGroup>,
    /// Offsets committed in open transactions (TxnOffsetCommit), by producer id: applied when
    /// the transaction commits, dropped when it aborts.
    pending_txn: HashMap<i64, Vec<PendingOffset>>,
    /// The newest epoch of each producer that committed offsets in a transaction here, or whose
    /// marker landed here: an older one is a fenced producer (INVALID_PRODUCER_EPOCH).
    txn_epochs: HashMap<i64, i16>,
}

#[derive(Debug, Clone)]
struct PendingOffset {
    group_id: String,
    topic: String,
    partition: i32,
    entry: OffsetEntry,
}

fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl<R> Coordinator<R> {
    pub fn new(config: GroupConfig) -> Self {
        Coordinator {
            config,
            groups: HashMap::new(),
            consumer_groups: HashMap::new(),
            pending_txn: HashMap::new(),
            txn_epochs: HashMap::new(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// JoinGroup.
    pub fn join(&mut self, req: JoinRequest, responder: R, now: Ms) -> Vec<Effect<R>> {
        let group_id = req.group_id.clone();
        let mut out = self.join_group(req, responder, now);
        self.push_tick_by(&group_id, &mut out);
        out
    }

    fn join_group(&mut self, req: JoinRequest, responder: R, now: Ms) -> Vec<Effect<R>> {
        let mut out = Vec::new();
        if req.group_id.is_empty() {
            out.push(Effect::Join(
                responder,
                JoinResponse::error(INVALID_GROUP_ID, &req.member_id),
            ));
            return out;
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            out.push(Effect::Join(
                responder,
                JoinResponse::error(INVALID_SESSION_TIMEOUT, &req.member_id),
            ));
            return out;
        }
        // A consumer-protocol group keeps its id until it is empty (Kafka refuses the same way).
        if self.remove_empty_consumer_group(&req.group_id).is_err() {
            out.push(Effect::Join(
                responder,
                JoinResponse::error(INCONSISTENT_GROUP_PROTOCOL, &req.member_id),
            ));
            return out;
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                out.push(Effect::Join(
                    responder,
                    JoinResponse::error(UNKNOWN_MEMBER_ID, &req.member_id),
                ));
                return out;
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(&req.group_id, now));
        }
        let config = self.config.clone();
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return out;
        };
        if !group.supports(&req.protocol_type, &req.protocols) {
            out.push(Effect::Join(
                responder,
                JoinResponse::error(INCONSISTENT_GROUP_PROTOCOL, &req.member_id),
            ));
            return out;
        }
        if req.member_id.is_empty() {
            join_new_member(group, &config, req, responder, now, &mut out);
        } else {
            join_known_member(group, &config, req, responder, now, &mut out);
        }
        maybe_complete_join(group, now, &mut out);
        out
    }

    /// SyncGroup.
    pub fn sync(&mut self, req: SyncRequest, responder: R, now: Ms) -> Vec<Effect<R>> {
        let group_id = req.group_id.clone();
        let mut out = self.sync_group(req, responder, now);
        // The leader's assignment ends the sync phase: the members' sessions run again.
        self.push_tick_by(&group_id, &mut out);
        out
    }

    fn sync_group(&mut self, req: SyncRequest, responder: R, now: Ms) -> Vec<Effect<R>> {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            out.push(Effect::Sync(
                responder,
                SyncResponse::error(UNKNOWN_MEMBER_ID),
            ));
            return out;
        };
        let error = if group.is_fenced(&req.member_id, req.group_instance_id.as_deref()) {
            FENCED_INSTANCE_ID
        } else if group.member(&req.member_id).is_none() {
            UNKNOWN_MEMBER_ID
        } else if req.generation_id != group.generation_id {
            ILLEGAL_GENERATION
        } else if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != group.protocol_name.as_ref())
        {
            INCONSISTENT_GROUP_PROTOCOL
        } else {
            match group.state {
                GroupState::Empty | GroupState::Dead => UNKNOWN_MEMBER_ID,
                GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
                GroupState::CompletingRebalance | GroupState::Stable => NONE,
            }
        };
        if error != NONE {
            out.push(Effect::Sync(responder, SyncResponse::error(error)));
            return out;
        }
        let session = group
            .member(&req.member_id)
            .map(|m| Ms::from(m.session_timeout_ms))
            .unwrap_or(0);
        if group.state == GroupState::Stable {
            let Some(member) = group.member_mut(&req.member_id) else {
                return out;
            };
            member.heartbeat_deadline = now + session;
            let assignment = member.assignment.clone();
            out.push(Effect::Sync(
                responder,
                SyncResponse {
                    error: NONE,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment,
                },
            ));
            return out;
        }
        // CompletingRebalance: wait for the leader's assignment.
        if let Some(member) = group.member_mut(&req.member_id) {
            member.heartbeat_deadline = now + session;
            if let Some(old) = member.awaiting_sync.replace(responder) {
                out.push(Effect::Sync(
                    old,
                    SyncResponse::error(REBALANCE_IN_PROGRESS),
                ));
            }
        }
        if group.leader.as_deref() == Some(req.member_id.as_str()) {
            let mut assignments: HashMap<String, Bytes> = req.assignments.into_iter().collect();
            for m in &mut group.members {
                m.assignment = assignments.remove(&m.member_id).unwrap_or_default();
            }
            group.set_state(GroupState::Stable, now);
            group.sync_deadline = None;
            out.push(Effect::Write(group.snapshot(now)));
            out.push(Effect::Stabilized(Stabilized {
                group_id: group.group_id.clone(),
                generation_id: group.generation_id,
                members: group.members.len(),
                join_ms: group.join_completed - group.rebalance_started,
                sync_ms: now - group.join_completed,
            }));
            let (protocol_type, protocol_name) =
                (group.protocol_type.clone(), group.protocol_name.clone());
            for m in &mut group.members {
                if let Some(r) = m.awaiting_sync.take() {
                    out.push(Effect::Sync(
                        r,
                        SyncResponse {
                            error: NONE,
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment: m.assignment.clone(),
                        },
                    ));
                }
            }
        }
        out
    }

    /// Heartbeat: returns the error code to answer with. It only moves the member's session
    /// deadline later (same session timeout, later `now`), so the runtime's clock, already due
    /// no later than the old deadline, needs no [`Effect::TickBy`]: heartbeats stay O(1).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Ms,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if group.is_fenced(member_id, group_instance_id) {
            return FENCED_INSTANCE_ID;
        }
        if group.member(member_id).is_none() {
            return UNKNOWN_MEMBER_ID;
        }
        if generation_id != group.generation_id {
            return ILLEGAL_GENERATION;
        }
        let state = group.state;
        if let Some(m) = group.member_mut(member_id) {
            m.heartbeat_deadline = now + Ms::from(m.session_timeout_ms);
        }
        match state {
            GroupState::Empty | GroupState::Dead => UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => NONE,
        }
    }

    /// LeaveGroup for `(member_id, group_instance_id)` pairs; returns an error per member.
    pub fn leave(
        &mut self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
        now: Ms,
    ) -> (Vec<i16>, Vec<Effect<R>>) {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (vec![UNKNOWN_MEMBER_ID; leaving.len()], out);
        };
        let mut errors = Vec::with_capacity(leaving.len());
        let mut removed_any = false;
        let mut removed_pending = false;
        for (member_id, instance) in leaving {
            let target = match instance {
                Some(i) => match group.static_member(i) {
                    Some(m) if !member_id.is_empty() && &m.member_id != member_id => {
                        Err(FENCED_INSTANCE_ID)
                    }
                    Some(m) => Ok(m.member_id.clone()),
                    None => Err(UNKNOWN_MEMBER_ID),
                },
                None if group.pending_members.remove(member_id).is_some() => {
                    removed_pending = true;
                    errors.push(NONE);
                    continue;
                }
                None if group.member(member_id).is_some() => Ok(member_id.clone()),
                None => Err(UNKNOWN_MEMBER_ID),
            };
            match target {
                Ok(id) => {
                    remove_member(group, &id, UNKNOWN_MEMBER_ID, &mut out);
                    removed_any = true;
                    errors.push(NONE);
                }
                Err(e) => errors.push(e),
            }
        }
        if removed_any {
            after_membership_change(group, now, &mut out);
        } else if removed_pending {
            // A member id that never joined leaves no member behind, so no rebalance; but
            // the join phase may have been waiting only for it (Kafka's
            // removePendingMemberAndUpdateGroup).
            maybe_complete_join(group, now, &mut out);
        }
        self.push_tick_by(group_id, &mut out);
        (errors, out)
    }

    /// Advances time: expires silent members and lapsed member ids, ends join and sync phases
    /// whose time is up, and expires old offsets. Emits no [`Effect::TickBy`]: the runtime
    /// asks [`next_deadline`](Self::next_deadline) after each tick.
    pub fn tick(&mut self, now: Ms) -> Vec<Effect<R>> {
        let mut out = Vec::new();
        self.consumer_groups_tick(now);
        let config = self.config.clone();
        let mut emptied = Vec::new();
        let consumer_groups = &self.consumer_groups;
        for group in self.groups.values_mut() {
            let pending_before = group.pending_members.len();
            group.pending_members.retain(|_, deadline| *deadline > now);
            let pending_expired = group.pending_members.len() < pending_before;
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|m| {
                    m.awaiting_join.is_none()
                        && m.awaiting_sync.is_none()
                        && m.heartbeat_deadline <= now
                })
                .map(|m| m.member_id.clone())
                .collect();
            for id in &expired {
                remove_member(group, id, UNKNOWN_MEMBER_ID, &mut out);
            }
            if !expired.is_empty() {
                after_membership_change(group, now, &mut out);
            } else if pending_expired {
                // The members that did rejoin need not wait out the rebalance timeout for a
                // member id that was never used (Kafka's removePendingMemberAndUpdateGroup).
                maybe_complete_join(group, now, &mut out);
            }
            if group.state == GroupState::PreparingRebalance
                && group.join_deadline.is_some_and(|d| d <= now)
            {
                // KIP-134: while new members keep arriving during the initial delay, wait again.
                match group.initial_delay_left {
                    Some(left) if group.new_member_joined_during_delay && left > 0 => {
                        let delay = config.initial_rebalance_delay_ms.min(left);
                        group.join_deadline = Some(now + delay);
                        group.initial_delay_left = Some(left - delay);
                        group.new_member_joined_during_delay = false;
                    }
                    _ => complete_join(group, now, &mut out),
                }
            }
            if group.state == GroupState::CompletingRebalance
                && group.sync_deadline.is_some_and(|d| d <= now)
            {
                let lagging: Vec<String> = group
                    .members
                    .iter()
                    .filter(|m| m.awaiting_sync.is_none())
                    .map(|m| m.member_id.clone())
                    .collect();
                for id in &lagging {
                    remove_member(group, id, UNKNOWN_MEMBER_ID, &mut out);
                }
                for m in &mut group.members {
                    if let Some(r) = m.awaiting_sync.take() {
                        out.push(Effect::Sync(r, SyncResponse::error(REBALANCE_IN_PROGRESS)));
                    }
                }
                prepare_rebalance(group, 0, now);
                maybe_complete_join(group, now, &mut out);
            }
            // Offsets of an empty group expire `offsets.retention.minutes` after it emptied (KIP-211).
            let consumer_active = consumer_groups
                .get(&group.group_id)
                .is_some_and(|g| !g.is_empty());
            if group.state == GroupState::Empty
                && !consumer_active
                && now - group.state_since > config.offsets_retention_ms
            {
                let group_id = group.group_id.clone();
                for ((topic, partition), entry) in std::mem::take(&mut group.offsets) {
                    if now - entry.commit_timestamp > config.offsets_retention_ms {
                        out.push(Effect::Write(OffsetsRecord::Offset {
                            group_id: group_id.clone(),
                            topic,
                            partition,
                            value: None,
                        }));
                    } else {
                        group.offsets.insert((topic, partition), entry);
                    }
                }
                if group.offsets.is_empty() && group.pending_members.is_empty() {
                    emptied.push(group_id);
                }
            }
        }
        for id in emptied {
            self.groups.remove(&id);
            out.push(Effect::Write(OffsetsRecord::Group {
                group_id: id,
                value: None,
            }));
        }
        out
    }

    /// The earliest time at which [`tick`](Self::tick) has something to do. A scan of every
    /// member: for the runtime's clock after a tick, not per request.
    pub fn next_deadline(&self) -> Option<Ms> {
        self.groups
            .values()
            .filter_map(Group::next_deadline)
            .chain(self.consumer_groups_next_deadline())
            .min()
    }

    /// Tells the runtime when `group_id` next needs a tick, after a request that may have set
    /// an earlier deadline in it (a member id handed out, a join or sync phase started or
    /// ended, a session timeout changed). A scan of that group only.
    fn push_tick_by(&self, group_id: &str, out: &mut Vec<Effect<R>>) {
        if let Some(deadline) = self.groups.get(group_id).and_then(Group::next_deadline) {
            out.push(Effect::TickBy(deadline));
        }
    }

    /// OffsetCommit: validates membership (unless a standalone commit to an empty group) and
    /// returns an error per partition plus the records to write. Like a heartbeat it only
    /// moves a session deadline later, so it emits no [`Effect::TickBy`].
    pub fn commit_offsets(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<OffsetCommit>,
        now: Ms,
    ) -> (Vec<i16>, Vec<Effect<R>>) {
        self.commit_offsets_as(
            group_id,
            generation_id,
            member_id,
            group_instance_id,
            offsets,
            None,
            now,
        )
    }

    /// TxnOffsetCommit: as OffsetCommit (KIP-447's member checks), but the offsets are
    /// written in the transaction of `producer` and count only once it commits.
    #[allow(clippy::too_many_arguments)]
    pub fn txn_commit_offsets(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<OffsetCommit>,
        producer: (i64, i16),
        now: Ms,
    ) -> (Vec<i16>, Vec<Effect<R>>) {
        self.commit_offsets_as(
            group_id,
            generation_id,
            member_id,
            group_instance_id,
            offsets,
            Some(producer),
            now,
        )
    }

    /// A transaction marker landed in this coordinator's partition: the offsets `producer_id`
    /// committed in its transaction count now (`commit`), or are dropped.
    pub fn complete_txn(&mut self, producer_id: i64, producer_epoch: i16, commit: bool, now: Ms) {
        self.note_txn_epoch(producer_id, producer_epoch);
        let Some(pending) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        if !commit {
            return;
        }
        for p in pending {
            let group = self
                .groups
                .entry(p.group_id.clone())
                .or_insert_with(|| Group::new(&p.group_id, now));
            group.offsets.insert((p.topic, p.partition), p.entry);
        }
    }

    /// Replays an offset commit read from a transactional batch of `producer_id`: pending until
    /// the transaction's marker is replayed.
    pub fn replay_txn(&mut self, producer_id: i64, producer_epoch: i16, record: OffsetsRecord) {
        self.note_txn_epoch(producer_id, producer_epoch);
        if let OffsetsRecord::Offset {
            group_id,
            topic,
            partition,
            value: Some(v),
        } = record
        {
            self.pending_txn
                .entry(producer_id)
                .or_default()
                .push(PendingOffset {
                    group_id,
                    topic,
                    partition,
                    entry: OffsetEntry {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_timestamp: v.commit_timestamp,
                    },
                });
        }
    }

    fn note_txn_epoch(&mut self, producer_id: i64, epoch: i16) {
        let known = self.txn_epochs.entry(producer_id).or_insert(epoch);
        *known = (*known).max(epoch);
    }

    /// Whether an open transaction holds an offset of `group_id` for the partition (OffsetFetch
    /// with `require_stable` answers UNSTABLE_OFFSET_COMMIT for it).
    pub fn has_pending_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn
            .values()
            .flatten()
            .any(|p| p.group_id == group_id && p.topic == topic && p.partition == partition)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_offsets_as(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<OffsetCommit>,
        txn: Option<(i64, i16)>,
        now: Ms,
    ) -> (Vec<i16>, Vec<Effect<R>>) {
        let mut out = Vec::new();
        if group_id.is_empty() {
            return (vec![INVALID_GROUP_ID; offsets.len()], out);
        }
        if let Some((producer_id, epoch)) = txn {
            if self
                .txn_epochs
                .get(&producer_id)
                .is_some_and(|&known| epoch < known)
            {
                return (vec![INVALID_PRODUCER_EPOCH; offsets.len()], out);
            }
            self.note_txn_epoch(producer_id, epoch);
        }
        // A consumer-protocol group with members checks the member and its epoch instead.
        let consumer_check = self.consumer_group_commit_check(group_id, member_id, generation_id);
        if let Some(error) = consumer_check {
            if error != NONE {
                return (vec![error; offsets.len()], out);
            }
            self.groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id, now));
        }
        if !self.groups.contains_key(group_id) {
            if generation_id >= 0 {
                return (vec![ILLEGAL_GENERATION; offsets.len()], out);
            }
            self.groups
                .insert(group_id.to_string(), Group::new(group_id, now));
        }
        let max_metadata = self.config.offset_metadata_max_bytes;
        let Some(group) = self.groups.get_mut(group_id) else {
            return (vec![COORDINATOR_NOT_AVAILABLE; offsets.len()], out);
        };
        // A commit outside group management: to an empty group, or in a transaction of a
        // producer that names no member (TxnOffsetCommit before v3, KIP-447).
        let unmanaged = generation_id < 0
            && member_id.is_empty()
            && (group.state == GroupState::Empty || txn.is_some());
        let error = if consumer_check.is_some() || unmanaged {
            NONE
        } else if group.is_fenced(member_id, group_instance_id) {
            FENCED_INSTANCE_ID
        } else if group.state == GroupState::CompletingRebalance {
            REBALANCE_IN_PROGRESS
        } else if group.member(member_id).is_none() {
            UNKNOWN_MEMBER_ID
        } else if generation_id != group.generation_id {
            ILLEGAL_GENERATION
        } else {
            NONE
        };
        if error != NONE {
            return (vec![error; offsets.len()], out);
        }
        if let Some(m) = group.member_mut(member_id) {
            m.heartbeat_deadline = now + Ms::from(m.session_timeout_ms);
        }
        let mut errors = Vec::with_capacity(offsets.len());
        for o in offsets {
            if o.metadata.len() > max_metadata {
                errors.push(OFFSET_METADATA_TOO_LARGE);
                continue;
            }
            let entry = OffsetEntry {
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata,
                commit_timestamp: now,
            };
            let record = OffsetsRecord::Offset {
                group_id: group_id.to_string(),
                topic: o.topic.clone(),
                partition: o.partition,
                value: Some(OffsetRecord {
                    offset: entry.offset,
                    leader_epoch: entry.leader_epoch,
                    metadata: entry.metadata.clone(),
                    commit_timestamp: now,
                }),
            };
            match txn {
                None => {
                    out.push(Effect::Write(record));
                    group.offsets.insert((o.topic, o.partition), entry);
                }
                Some((producer_id, producer_epoch)) => {
                    out.push(Effect::WriteTxn {
                        producer_id,
                        producer_epoch,
                        record,
                    });
                    self.pending_txn
                        .entry(producer_id)
                        .or_default()
                        .push(PendingOffset {
                            group_id: group_id.to_string(),
                            topic: o.topic,
                            partition: o.partition,
                            entry,
                        });
                }
            }
            errors.push(NONE);
        }
        (errors, out)
    }

    /// OffsetFetch: the committed offsets of `partitions`, or of everything the group committed.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<CommittedOffset> {
        let group = self.groups.get(group_id);
        let entry = |topic: &str, partition: i32| {
            group.and_then(|g| g.offsets.get(&(topic.to_string(), partition)))
        };
        let to_offset = |topic: &str, partition: i32, e: Option<&OffsetEntry>| CommittedOffset {
            topic: topic.to_string(),
            partition,
            offset: e.map(|e| e.offset).unwrap_or(-1),
            leader_epoch: e.map(|e| e.leader_epoch).unwrap_or(-1),
            metadata: e.map(|e| e.metadata.clone()).unwrap_or_default(),
            pending: self.has_pending_offset(group_id, topic, partition),
        };
        match partitions {
            Some(ps) => ps
                .iter()
                .map(|(t, p)| to_offset(t, *p, entry(t, *p)))
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), e)| to_offset(t, *p, Some(e)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// OffsetDelete: refused for topics an active group consumes (GROUP_SUBSCRIBED_TO_TOPIC).
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed: impl Fn(&str) -> bool,
    ) -> Result<(Vec<i16>, Vec<Effect<R>>), i16> {
        let consumer_subscribed: Vec<bool> = partitions
            .iter()
            .map(|(t, _)| self.consumer_group_subscribes(group_id, t))
            .collect();
        let group = self.groups.get_mut(group_id).ok_or(GROUP_ID_NOT_FOUND)?;
        let active = group.state != GroupState::Empty;
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for ((topic, partition), consumer_subscribed) in partitions.iter().zip(consumer_subscribed)
        {
            if consumer_subscribed || (active && subscribed(topic)) {
                errors.push(GROUP_SUBSCRIBED_TO_TOPIC);
                continue;
            }
            if group.offsets.remove(&(topic.clone(), *partition)).is_some() {
                out.push(Effect::Write(OffsetsRecord::Offset {
                    group_id: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                }));
            }
            errors.push(NONE);
        }
        Ok((errors, out))
    }

    /// DeleteGroups for one group: only an empty group can go.
    pub fn delete_group(&mut self, group_id: &str) -> Result<Vec<Effect<R>>, i16> {
        let was_consumer_group = self.is_consumer_group(group_id);
        self.remove_empty_consumer_group(group_id)?;
        if was_consumer_group && !self.groups.contains_key(group_id) {
            return Ok(Vec::new());
        }
        let group = self.groups.get(group_id).ok_or(GROUP_ID_NOT_FOUND)?;
        if group.state != GroupState::Empty {
            return Err(NON_EMPTY_GROUP);
        }
        let group = self.groups.remove(group_id).ok_or(GROUP_ID_NOT_FOUND)?;
        let mut out: Vec<Effect<R>> = group
            .offsets
            .into_keys()
            .map(|(topic, partition)| {
                Effect::Write(OffsetsRecord::Offset {
                    group_id: group_id.to_string(),
                    topic,
                    partition,
                    value: None,
                })
            })
            .collect();
        out.push(Effect::Write(OffsetsRecord::Group {
            group_id: group_id.to_string(),
            value: None,
        }));
        Ok(out)
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let g = self.groups.get(group_id)?;
        let protocol = g.protocol_name.clone().unwrap_or_default();
        Some(GroupSummary {
            group_id: g.group_id.clone(),
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: if g.state == GroupState::Stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .iter()
                .map(|m| MemberSummary {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: if g.state == GroupState::Stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// Every group, sorted by id.
    pub fn list(&self) -> Vec<GroupSummary> {
        let mut ids: Vec<&String> = self.groups.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.describe(id)).collect()
    }

    /// Rebuilds state from a `__consumer_offsets` record read back at start.
    pub fn replay(&mut self, record: OffsetsRecord, now: Ms) {
        match record {
            OffsetsRecord::Offset {
                group_id,
                topic,
                partition,
                value,
            } => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(&group_id, now));
                match value {
                    Some(v) => {
                        group.offsets.insert(
                            (topic, partition),
                            OffsetEntry {
                                offset: v.offset,
                                leader_epoch: v.leader_epoch,
                                metadata: v.metadata,
                                commit_timestamp: v.commit_timestamp,
                            },
                        );
                    }
                    None => {
                        group.offsets.remove(&(topic, partition));
                    }
                }
            }
            OffsetsRecord::Group {
                group_id,
                value: None,
            } => {
                self.groups.remove(&group_id);
            }
            OffsetsRecord::Group {
                group_id,
                value: Some(v),
            } => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(&group_id, now));
                group.generation_id = v.generation_id;
                group.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
                group.protocol_name = v.protocol_name.clone();
                group.leader = v.leader;
                let protocol = v.protocol_name.unwrap_or_default();
                group.members = v
                    .members
                    .into_iter()
                    .map(|m| Member {
                        member_id: m.member_id,
                        group_instance_id: m.group_instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        protocols: vec![(protocol.clone(), m.subscription)],
                        assignment: m.assignment,
                        awaiting_join: None,
                        awaiting_sync: None,
                        // Members loaded from the log get a full session to show up again.
                        heartbeat_deadline: now + Ms::from(m.session_timeout_ms),
                    })
                    .collect();
                let state = if group.members.is_empty() {
                    GroupState::Empty
                } else {
                    GroupState::Stable
                };
                group.set_state(state, now);
            }
        }
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Gives every group up, as when this broker stops leading their `__consumer_offsets`
    /// partition: members waiting on a join or a sync are answered NOT_COORDINATOR, so they go
    /// and find the new coordinator (Kafka's `GroupMetadataManager.onUnloaded`). Nothing is
    /// written: the state stays in the log for the next coordinator to load.
    pub fn unload(self) -> Vec<Effect<R>> {
        let mut out = Vec::new();
        for group in self.groups.into_values() {
            for m in group.members {
                if let Some(r) = m.awaiting_join {
                    out.push(Effect::Join(
                        r,
                        JoinResponse::error(NOT_COORDINATOR, &m.member_id),
                    ));
                }
                if let Some(r) = m.awaiting_sync {
                    out.push(Effect::Sync(r, SyncResponse::error(NOT_COORDINATOR)));
                }
            }
        }
        out
    }
}

fn join_new_member<R>(
    group: &mut Group<R>,
    config: &GroupConfig,
    req: JoinRequest,
    responder: R,
    now: Ms,
    out: &mut Vec<Effect<R>>,
) {
    if let Some(instance) = req.group_instance_id.clone() {
        if let Some(old_id) = group.static_member(&instance).map(|m| m.member_id.clone()) {
            join_returning_static_member(
                group, config, req, &old_id, &instance, responder, now, out,
            );
            return;
        }
        let id = new_member_id(&instance);
        add_member(
            group,
            config.initial_rebalance_delay_ms,
            req,
            id,
            responder,
            now,
        );
        return;
    }
    if group.members.len() + group.pending_members.len() >= config.max_size {
        out.push(Effect::Join(
            responder,
            JoinResponse::error(GROUP_MAX_SIZE_REACHED, ""),
        ));
        return;
    }
    let id = new_member_id(if req.client_id.is_empty() {
        "member"
    } else {
        &req.client_id
    });
    if req.require_known_member_id {
        // KIP-394: hand out the id first; the member rejoins with it.
        group
            .pending_members
            .insert(id.clone(), now + Ms::from(req.session_timeout_ms));
        out.push(Effect::Join(
            responder,
            JoinResponse::error(MEMBER_ID_REQUIRED, &id),
        ));
        return;
    }
    add_member(
        group,
        config.initial_rebalance_delay_ms,
        req,
        id,
        responder,
        now,
    );
}

/// A static member rejoining with a new member id (a restart, KIP-345): it takes over its old
/// identity, fencing the old id; a stable group with unchanged protocols does not rebalance.
#[allow(clippy::too_many_arguments)]
fn join_returning_static_member<R>(
    group: &mut Group<R>,
    config: &GroupConfig,
    req: JoinRequest,
    old_id: &str,
    instance: &str,
    responder: R,
    now: Ms,
    out: &mut Vec<Effect<R>>,
) {
    let new_id = new_member_id(instance);
    let state = group.state;
    let Some(member) = group.member_mut(old_id) else {
        return;
    };
    if let Some(r) = member.awaiting_join.take() {
        out.push(Effect::Join(
            r,
            JoinResponse::error(FENCED_INSTANCE_ID, old_id),
        ));
    }
    if let Some(r) = member.awaiting_sync.take() {
        out.push(Effect::Sync(r, SyncResponse::error(FENCED_INSTANCE_ID)));
    }
    let unchanged = member.protocols == req.protocols;
    member.member_id = new_id.clone();
    member.client_id = req.client_id;
    member.client_host = req.client_host;
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.protocols = req.protocols;
    member.heartbeat_deadline = now + Ms::from(req.session_timeout_ms);
    if group.leader.as_deref() == Some(old_id) {
        group.leader = Some(new_id.clone());
    }
    match state {
        GroupState::Stable if unchanged => {
            out.push(Effect::Write(group.snapshot(now)));
            out.push(Effect::Join(responder, group.leader_response(&new_id)));
        }
        GroupState::PreparingRebalance => {
            if let Some(m) = group.member_mut(&new_id) {
                m.awaiting_join = Some(responder);
            }
        }
        _ => {
            if let Some(m) = group.member_mut(&new_id) {
                m.awaiting_join = Some(responder);
            }
            prepare_rebalance(group, config.initial_rebalance_delay_ms, now);
        }
    }
}

/// Adds a member waiting for the join phase to complete. `initial_delay_ms` applies if this is
/// an Empty group's first member (KIP-134).
fn add_member<R>(
    group: &mut Group<R>,
    initial_delay_ms: Ms,
    req: JoinRequest,
    member_id: String,
    responder: R,
    now: Ms,
) {
    if group.members.is_empty() {
        group.protocol_type = Some(req.protocol_type.clone());
    }
    group.members.push(Member {
        member_id,
        group_instance_id: req.group_instance_id,
        client_id: req.client_id,
        client_host: req.client_host,
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        protocols: req.protocols,
        assignment: Bytes::new(),
        awaiting_join: Some(responder),
        awaiting_sync: None,
        heartbeat_deadline: now + Ms::from(req.session_timeout_ms),
    });
    if group.initial_delay_left.is_some() && group.state == GroupState::PreparingRebalance {
        group.new_member_joined_during_delay = true;
    }
    match group.state {
        GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, initial_delay_ms, now)
        }
        GroupState::PreparingRebalance | GroupState::Dead => {}
    }
}

fn join_known_member<R>(
    group: &mut Group<R>,
    config: &GroupConfig,
    req: JoinRequest,
    responder: R,
    now: Ms,
    out: &mut Vec<Effect<R>>,
) {
    if group.pending_members.remove(&req.member_id).is_some() {
        let id = req.member_id.clone();
        add_member(
            group,
            config.initial_rebalance_delay_ms,
            req,
            id,
            responder,
            now,
        );
        return;
    }
    if group.is_fenced(&req.member_id, req.group_instance_id.as_deref()) {
        out.push(Effect::Join(
            responder,
            JoinResponse::error(FENCED_INSTANCE_ID, &req.member_id),
        ));
        return;
    }
    let state = group.state;
    let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
    let Some(member) = group.member_mut(&req.member_id) else {
        out.push(Effect::Join(
            responder,
            JoinResponse::error(UNKNOWN_MEMBER_ID, &req.member_id),
        ));
        return;
    };
    let unchanged = member.protocols == req.protocols;
    member.heartbeat_deadline = now + Ms::from(req.session_timeout_ms);
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.client_id = req.client_id;
    member.client_host = req.client_host;
    match state {
        GroupState::PreparingRebalance => {
            member.protocols = req.protocols;
            if let Some(old) = member.awaiting_join.replace(responder) {
                out.push(Effect::Join(
                    old,
                    JoinResponse::error(REBALANCE_IN_PROGRESS, &req.member_id),
                ));
            }
        }
        GroupState::CompletingRebalance if unchanged => {
            // A repeated join (a lost response): answer with the current generation again.
            out.push(Effect::Join(
                responder,
                group.leader_response(&req.member_id),
            ));
        }
        GroupState::Stable if unchanged && !is_leader => {
            out.push(Effect::Join(
                responder,
                group.leader_response(&req.member_id),
            ));
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            member.protocols = req.protocols;
            member.awaiting_join = Some(responder);
            prepare_rebalance(group, 0, now);
        }
        GroupState::Empty | GroupState::Dead => {
            out.push(Effect::Join(
                responder,
                JoinResponse::error(UNKNOWN_MEMBER_ID, &req.member_id),
            ));
        }
    }
}

/// Starts a join phase. An Empty group waits `initial_delay_ms` first (extended while members
/// keep arriving, up to the rebalance timeout) so its first members land in one generation.
fn prepare_rebalance<R>(group: &mut Group<R>, initial_delay_ms: Ms, now: Ms) {
    if group.state == GroupState::CompletingRebalance {
        for m in &mut group.members {
            m.assignment = Bytes::new();
        }
    }
    let rebalance_timeout = group.max_rebalance_timeout();
    if group.state == GroupState::Empty && initial_delay_ms > 0 {
        let delay = initial_delay_ms.min(rebalance_timeout);
        group.join_deadline = Some(now + delay);
        group.initial_delay_left = Some(rebalance_timeout - delay);
        group.new_member_joined_during_delay = false;
    } else {
        group.join_deadline = Some(now + rebalance_timeout);
        group.initial_delay_left = None;
    }
    group.sync_deadline = None;
    if group.state != GroupState::PreparingRebalance {
        group.rebalance_started = now;
    }
    group.set_state(GroupState::PreparingRebalance, now);
}

/// Completes the join phase early once every member has rejoined (not during an initial delay).
fn maybe_complete_join<R>(group: &mut Group<R>, now: Ms, out: &mut Vec<Effect<R>>) {
    if group.state != GroupState::PreparingRebalance || group.initial_delay_left.is_some() {
        return;
    }
    let all_joined =
        group.members.iter().all(|m| m.awaiting_join.is_some()) && group.pending_members.is_empty();
    if all_joined {
        complete_join(group, now, out);
    }
}

fn complete_join<R>(group: &mut Group<R>, now: Ms, out: &mut Vec<Effect<R>>) {
    let late: Vec<String> = group
        .members
        .iter()
        .filter(|m| m.awaiting_join.is_none())
        .map(|m| m.member_id.clone())
        .collect();
    for id in &late {
        remove_member(group, id, UNKNOWN_MEMBER_ID, out);
    }
    group.join_deadline = None;
    group.initial_delay_left = None;
    group.join_completed = now;
    group.generation_id += 1;
    if group.members.is_empty() {
        group.protocol_name = None;
        group.leader = None;
        group.set_state(GroupState::Empty, now);
        out.push(Effect::Write(group.snapshot(now)));
        return;
    }
    group.protocol_name = group.select_protocol();
    if group
        .leader
        .as_ref()
        .is_none_or(|l| group.member(l).is_none())
    {
        group.leader = group.members.first().map(|m| m.member_id.clone());
    }
    group.set_state(GroupState::CompletingRebalance, now);
    group.sync_deadline = Some(now + group.max_rebalance_timeout());
    let answers: Vec<(R, JoinResponse)> = {
        let ids: Vec<String> = group.members.iter().map(|m| m.member_id.clone()).collect();
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            let response = group.leader_response(&id);
            if let Some(m) = group.member_mut(&id) {
                m.heartbeat_deadline = now + Ms::from(m.session_timeout_ms);
                if let Some(r) = m.awaiting_join.take() {
                    answers.push((r, response));
                }
            }
        }
        answers
    };
    out.extend(answers.into_iter().map(|(r, resp)| Effect::Join(r, resp)));
}

/// Removes a member, answering whatever it was waiting on with `error`.
fn remove_member<R>(group: &mut Group<R>, member_id: &str, error: i16, out: &mut Vec<Effect<R>>) {
    let Some(index) = group.members.iter().position(|m| m.member_id == member_id) else {
        return;
    };
    let m = group.members.remove(index);
    if let Some(r) = m.awaiting_join {
        out.push(Effect::Join(r, JoinResponse::error(error, member_id)));
    }
    if let Some(r) = m.awaiting_sync {
        out.push(Effect::Sync(r, SyncResponse::error(error)));
    }
    if group.leader.as_deref() == Some(member_id) {
        group.leader = None;
    }
}

/// After members left or failed: rebalance the rest, or finish a join phase now complete.
fn after_membership_change<R>(group: &mut Group<R>, now: Ms, out: &mut Vec<Effect<R>>) {
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            for m in &mut group.members {
                if let Some(r) = m.awaiting_sync.take() {
                    out.push(Effect::Sync(r, SyncResponse::error(REBALANCE_IN_PROGRESS)));
                }
            }
            prepare_rebalance(group, 0, now);
            if group.members.is_empty() {
                complete_join(group, now, out);
            }
        }
        GroupState::PreparingRebalance => {
            if group.members.is_empty() {
                complete_join(group, now, out);
            } else {
                maybe_complete_join(group, now, out);
            }
        }
        GroupState::Empty | GroupState::Dead => {}
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
