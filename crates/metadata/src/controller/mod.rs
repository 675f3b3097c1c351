//! The controller's decisions, sans-IO: a request and the committed image go in, the records to
//! propose and the answer come out. Time is an argument and randomness an injected [`IdSource`],
//! so every rule is tested by replaying the controller's own records into the next image.
//!
//! The runtime ([`service`], the Raft leader's controller task) feeds requests one at a time: it calls
//! [`Controller::handle`], proposes the records as one entry, waits for the commit, and only then
//! answers. Serial proposals mean each decision sees every earlier one applied, so two
//! CreateTopics of one name cannot both pass. Broker sessions live in this memory only; a new
//! active controller starts them afresh in [`Controller::activate`].

mod alter_partition;
mod brokers;
pub mod elect_leaders;
pub mod partition_change;
mod producer_ids;
mod reassignments;
pub mod service;
mod topics;

use std::collections::BTreeSet;

use kafka_protocol::messages::{
    AllocateProducerIdsRequest, AlterPartitionReassignmentsRequest, AlterPartitionRequest,
    BrokerHeartbeatRequest, BrokerRegistrationRequest, BrokerRegistrationResponse,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, ElectLeadersRequest,
    ListPartitionReassignmentsRequest, ResponseKind, UnregisterBrokerRequest,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::image::MetadataImage;
use crate::placement::Start;
use crate::records::MetadataRecord;

pub use brokers::BrokerSessions;
pub use elect_leaders::{ElectionType, MAX_ELECTIONS_PER_BALANCE};
pub use partition_change::{partition_change, BrokerEvent, PartitionChange};
pub use producer_ids::PRODUCER_ID_BLOCK_SIZE;
pub use service::{
    ControllerCallError, ControllerClock, ControllerHandle, ControllerService,
    ControllerServiceConfig, ControllerState,
};
pub use topics::{validate_topic_name, InvalidTopicName, MAX_TOPIC_NAME_LEN, METADATA_TOPIC};

/// Checks one topic config override and returns the value to store (normalised), or why it is
/// refused. The broker owns the table of settings; it hands its check to the controller so the
/// rules live in one place.
pub type TopicConfigCheck = fn(&str, &str) -> Result<String, String>;

/// What the controller is configured with.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This node's id, for logs.
    pub node_id: i32,
    /// Kafka's `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: i64,
    /// The most records one decision may write; a request needing more is refused, so one
    /// entry stays small enough to replicate and apply in one go.
    pub max_records_per_decision: usize,
    /// The most bytes of encoded records one decision may write, for the same reason.
    pub max_bytes_per_decision: usize,
    /// Partitions of a topic created with `num_partitions: -1` (Kafka's `num.partitions`).
    pub default_num_partitions: i32,
    /// Replicas of a topic created with `replication_factor: -1`.
    pub default_replication_factor: i16,
    /// The largest replication factor served (placement also needs as many live brokers).
    pub max_replication_factor: i16,
    /// The broker's topic config rules; `None` accepts any non-empty key with a value.
    pub topic_config_check: Option<TopicConfigCheck>,
    /// Ids of voters that run only the controller role: no broker may register with one, as
    /// the two would share a node id on the wire.
    pub controller_only_node_ids: BTreeSet<i32>,
    /// Kafka's `auto.leader.rebalance.enable`: leadership goes back to each partition's
    /// preferred replica (its first) once that replica is alive and in the ISR again.
    pub auto_leader_rebalance: bool,
    /// Kafka's `leader.imbalance.check.interval.seconds`, in milliseconds: how often the
    /// controller looks for partitions to give back to their preferred replica.
    pub leader_imbalance_check_interval_ms: i64,
    /// `min.insync.replicas` of a topic without an override (this node's setting): below it,
    /// replicas leaving the ISR become eligible leader replicas (KIP-966).
    pub default_min_insync_replicas: usize,
}

impl ControllerConfig {
    /// Kafka's default `broker.session.timeout.ms`.
    pub const DEFAULT_BROKER_SESSION_TIMEOUT_MS: i64 = 9_000;
    /// At most this many records in one decision.
    pub const DEFAULT_MAX_RECORDS_PER_DECISION: usize = 100_000;
    /// At most this many bytes of encoded records in one decision.
    pub const DEFAULT_MAX_BYTES_PER_DECISION: usize = 16 << 20;
    /// Kafka's default `leader.imbalance.check.interval.seconds` (300), in milliseconds.
    pub const DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS: i64 = 300_000;

    pub fn new(node_id: i32) -> ControllerConfig {
        ControllerConfig {
            node_id,
            broker_session_timeout_ms: Self::DEFAULT_BROKER_SESSION_TIMEOUT_MS,
            max_records_per_decision: Self::DEFAULT_MAX_RECORDS_PER_DECISION,
            max_bytes_per_decision: Self::DEFAULT_MAX_BYTES_PER_DECISION,
            default_num_partitions: 1,
            default_replication_factor: 1,
            max_replication_factor: i16::MAX,
            topic_config_check: None,
            controller_only_node_ids: BTreeSet::new(),
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: Self::DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS,
            default_min_insync_replicas: 1,
        }
    }
}

/// Topic ids and placement starts: the controller's only randomness, injected so that a test
/// (or a bug report) replays exactly. A small SplitMix64 generator: ids need to be unpredictable
/// enough not to collide, not secret.
#[derive(Debug, Clone)]
pub struct IdSource {
    state: u64,
}

impl IdSource {
    /// A source that yields the same sequence for the same seed.
    pub fn seeded(seed: u64) -> IdSource {
        IdSource { state: seed }
    }

    /// A source seeded from the operating system's randomness, for production.
    pub fn random() -> IdSource {
        IdSource::seeded(Uuid::new_v4().as_u64_pair().0)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fresh random (version 4) topic id. Never the nil id or Kafka's reserved id 1 (the
    /// metadata topic's), which clients treat specially.
    pub fn topic_id(&mut self) -> Uuid {
        loop {
            let high = self.next_u64().to_be_bytes();
            let low = self.next_u64().to_be_bytes();
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&high);
            bytes[8..].copy_from_slice(&low);
            let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
            if id.as_u128() > 1 {
                return id;
            }
        }
    }

    /// Where a new topic's placement stripe starts.
    pub fn placement_start(&mut self) -> Start {
        Start::fresh(self.next_u64())
    }
}

/// A request the controller decides, with its API version where the answer depends on it.
#[derive(Debug, Clone)]
pub enum ControllerRequest {
    CreateTopics(CreateTopicsRequest, i16),
    DeleteTopics(DeleteTopicsRequest, i16),
    CreatePartitions(CreatePartitionsRequest, i16),
    RegisterBroker(BrokerRegistrationRequest, i16),
    Heartbeat(BrokerHeartbeatRequest, i16),
    UnregisterBroker(UnregisterBrokerRequest, i16),
    AllocateProducerIds(AllocateProducerIdsRequest, i16),
    AlterPartition(AlterPartitionRequest, i16),
    ElectLeaders(ElectLeadersRequest, i16),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest, i16),
    /// Decides nothing: answered from the controller's image.
    ListPartitionReassignments(ListPartitionReassignmentsRequest, i16),
}

/// What one request decided: the records to propose as one entry (possibly none) and the answer.
/// The runtime answers only after the records commit, so a client never sees a change that could
/// still be lost.
#[derive(Debug, Clone)]
pub struct Decision {
    pub records: Vec<MetadataRecord>,
    pub reply: Reply,
}

impl Decision {
    fn now(records: Vec<MetadataRecord>, response: ResponseKind) -> Decision {
        Decision {
            records,
            reply: Reply::Now(response),
        }
    }
}

/// The answer to a request. One exists per request and moves once, so the size difference
/// between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Known now (sent after the records, if any, commit).
    Now(ResponseKind),
    /// Known only once the records commit, because it names the entry's index.
    AtCommit(CommitReply),
}

/// Answers that need the commit. An enum rather than a closure so tests can look inside and the
/// runtime can log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitReply {
    /// A new registration: its broker epoch is the index of the entry that holds it.
    BrokerRegistered { broker_id: i32 },
}

impl CommitReply {
    /// The answer once the decision's entry committed at `commit_index` and `image` includes it.
    pub fn resolve(&self, commit_index: u64, image: &MetadataImage) -> ResponseKind {
        match self {
            CommitReply::BrokerRegistered { broker_id } => {
                // The image is the source of truth; the index is what it will say when the
                // image lags the commit by nothing.
                let broker_epoch = image
                    .broker(*broker_id)
                    .map(|b| b.epoch)
                    .unwrap_or_else(|| i64::try_from(commit_index).unwrap_or(i64::MAX));
                ResponseKind::BrokerRegistration(
                    BrokerRegistrationResponse::default().with_broker_epoch(broker_epoch),
                )
            }
        }
    }
}

/// The active controller's state: configuration, broker sessions and the id source. Everything
/// else it needs is in the image it is handed.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    sessions: BrokerSessions,
    ids: IdSource,
    /// When the next preferred-leader balancing pass is due; `None` when balancing is off.
    next_balance_ms: Option<i64>,
}

impl Controller {
    pub fn new(config: ControllerConfig, ids: IdSource) -> Controller {
        Controller {
            config,
            sessions: BrokerSessions::default(),
            ids,
            next_balance_ms: None,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// This node became the active controller and `image` holds everything committed. Every
    /// registered broker gets a fresh session: the previous controller's view of who was silent
    /// is lost, and fencing the whole cluster for it would be far worse than fencing a dead
    /// broker one session timeout late.
    pub fn activate(&mut self, image: &MetadataImage, now_ms: i64) {
        self.sessions = BrokerSessions::default();
        for broker in image.brokers().values() {
            self.sessions
                .touch(broker.id, broker.incarnation_id, now_ms);
        }
        self.next_balance_ms = self
            .config
            .auto_leader_rebalance
            .then(|| now_ms.saturating_add(self.config.leader_imbalance_check_interval_ms.max(1)));
        tracing::info!(
            node_id = self.config.node_id,
            brokers = image.brokers().len(),
            index = image.provenance().index,
            "controller active"
        );
    }

    /// Decides one request against the committed `image`.
    pub fn handle(
        &mut self,
        image: &MetadataImage,
        request: ControllerRequest,
        now_ms: i64,
    ) -> Decision {
        match request {
            ControllerRequest::CreateTopics(request, version) => {
                topics::create_topics(self, image, request, version)
            }
            ControllerRequest::DeleteTopics(request, version) => {
                topics::delete_topics(self, image, request, version)
            }
            ControllerRequest::CreatePartitions(request, _) => {
                topics::create_partitions(self, image, request)
            }
            ControllerRequest::RegisterBroker(request, version) => {
                brokers::register(self, image, request, version, now_ms)
            }
            ControllerRequest::Heartbeat(request, _) => {
                brokers::heartbeat(self, image, request, now_ms)
            }
            ControllerRequest::UnregisterBroker(request, _) => {
                brokers::unregister(self, image, request)
            }
            ControllerRequest::AllocateProducerIds(request, _) => {
                producer_ids::allocate(image, request)
            }
            ControllerRequest::AlterPartition(request, version) => {
                alter_partition::alter_partition(
                    image,
                    request,
                    version,
                    self.config.default_min_insync_replicas,
                )
            }
            ControllerRequest::ElectLeaders(request, version) => elect_leaders::elect_leaders(
                image,
                request,
                version,
                self.config.max_records_per_decision,
            ),
            ControllerRequest::AlterPartitionReassignments(request, version) => {
                reassignments::alter_partition_reassignments(
                    image,
                    request,
                    version,
                    self.config.max_records_per_decision,
                )
            }
            ControllerRequest::ListPartitionReassignments(request, _) => {
                reassignments::list_partition_reassignments(image, request)
            }
        }
    }

    /// Fences brokers whose session expired by `now_ms`, moving their leaderships, and, when
    /// a balancing pass is due and nothing was fenced, gives partitions back to their preferred
    /// replicas. Called at [`Controller::next_deadline`]; what does not fit one decision's bound
    /// is left for the next call (the deadline then stays in the past).
    pub fn tick(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<MetadataRecord> {
        let fenced = brokers::fence_expired(self, image, now_ms);
        if !fenced.is_empty() {
            // Balance on the image that has the fencing applied, at the next call.
            return fenced;
        }
        match self.next_balance_ms {
            Some(due) if due <= now_ms => {
                let max = MAX_ELECTIONS_PER_BALANCE.min(self.config.max_records_per_decision);
                let records = elect_leaders::balance(image, max);
                // A full pass may have left partitions over: the next one runs at once.
                self.next_balance_ms = Some(if records.len() >= max {
                    now_ms
                } else {
                    now_ms.saturating_add(self.config.leader_imbalance_check_interval_ms.max(1))
                });
                records
            }
            _ => Vec::new(),
        }
    }

    /// When [`Controller::tick`] next has something to do; `None` while no session can expire
    /// and balancing is off.
    pub fn next_deadline(&self) -> Option<i64> {
        let sessions = self
            .sessions
            .next_deadline(self.config.broker_session_timeout_ms);
        match (sessions, self.next_balance_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests;
