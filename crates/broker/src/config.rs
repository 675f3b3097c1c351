//! Broker settings. Every Kafka-named setting is a row of [`SETTINGS`]: the command line, the
//! environment, the TOML file and DescribeConfigs all read that one table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::routes::ListenerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    Boolean,
    Int,
    Long,
    Str,
}

impl SettingType {
    /// The ConfigType code DescribeConfigs v3+ reports.
    pub fn describe_code(self) -> i8 {
        match self {
            SettingType::Boolean => 1,
            SettingType::Str => 2,
            SettingType::Int => 3,
            SettingType::Long => 5,
        }
    }
}

/// A broker setting, with the topic-level config it is the default for, if any.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub topic_key: Option<&'static str>,
    pub kind: SettingType,
    pub default: &'static str,
    pub doc: &'static str,
    /// Values accepted for string settings; empty means any.
    pub choices: &'static [&'static str],
    /// Smallest value accepted for numeric settings.
    pub min: i64,
}

const fn s(
    key: &'static str,
    topic_key: Option<&'static str>,
    kind: SettingType,
    default: &'static str,
    min: i64,
    doc: &'static str,
) -> Setting {
    Setting {
        key,
        topic_key,
        kind,
        default,
        doc,
        choices: &[],
        min,
    }
}

use SettingType::*;

/// Kafka's broker settings that Caudal honours, with Kafka's defaults.
pub const SETTINGS: &[Setting] = &[
    s("num.partitions", None, Int, "1", 1, "Partitions of a topic created without a count (auto-created topics, CreateTopics with -1)."),
    s("default.replication.factor", None, Int, "1", 1, "Replication factor of topics created without one."),
    s("auto.create.topics.enable", None, Boolean, "true", 0, "Create a topic when a client asks for its metadata or produces to it."),
    s("message.max.bytes", Some("max.message.bytes"), Int, "1048588", 0, "Largest record batch accepted, in bytes (after compression)."),
    s("message.max.decompression.factor", None, Int, "32", 1, "Not a Kafka setting: a compressed batch is decompressed and its records checked before it is stored; one that inflates past message.max.bytes times this factor is refused with CORRUPT_MESSAGE, so a small zip bomb cannot take the broker's memory."),
    s("log.dir.min.free.bytes", None, Long, "-1", -1, "Not a Kafka setting: below this much free space on the data directory's filesystem, produce is refused with KAFKA_STORAGE_ERROR (retriable) while consumers, offset commits, topic deletion and retention go on, so the disk never fills. -1: the smaller of 1 GiB and 5% of the filesystem; 0: no guard."),
    s("socket.request.max.bytes", None, Int, "104857600", 8, "Largest request frame accepted; a larger one closes the connection."),
    s("queued.max.requests", None, Int, "500", 1, "Requests a connection may have in flight before the broker stops reading from it."),
    s("max.connections", None, Int, "2147483647", 0, "Most client connections the broker serves at once; at the limit it accepts the next one only when another closes."),
    s("max.connections.per.ip", None, Int, "2147483647", 0, "Most connections from one IP address; a further one is closed at once."),
    s("max.connections.per.ip.overrides", None, Str, "", 0, "Per-address exceptions to max.connections.per.ip, as IP:COUNT,IP:COUNT (e.g. 10.0.0.5:200,::1:50)."),
    s("log.segment.bytes", Some("segment.bytes"), Int, "1073741824", 1024, "Size at which a partition's active segment is rolled."),
    s("log.roll.ms", Some("segment.ms"), Long, "604800000", 1, "Age at which a partition's active segment is rolled."),
    s("log.retention.ms", Some("retention.ms"), Long, "604800000", -1, "How long segments are kept after their newest record; -1 keeps them forever."),
    s("log.retention.bytes", Some("retention.bytes"), Long, "-1", -1, "Largest size of a partition's log before old segments are deleted; -1 means no limit."),
    s("log.retention.check.interval.ms", None, Long, "300000", 1, "How often retention is applied."),
    s("log.index.interval.bytes", Some("index.interval.bytes"), Int, "4096", 0, "Bytes of log between offset index entries."),
    Setting { choices: &["delete"], ..s("log.cleanup.policy", Some("cleanup.policy"), Str, "delete", 0, "What happens to old segments: delete (compaction is not available yet).") },
    Setting { choices: &["CreateTime"], ..s("log.message.timestamp.type", Some("message.timestamp.type"), Str, "CreateTime", 0, "Which timestamp records carry: the producer's (CreateTime).") },
    Setting { choices: &["producer"], ..s("compression.type", Some("compression.type"), Str, "producer", 0, "Batches are stored with the producer's compression.") },
    s("min.insync.replicas", Some("min.insync.replicas"), Int, "1", 1, "In-sync replicas a partition needs for acks=all: with fewer, produce with acks=all is refused with NOT_ENOUGH_REPLICAS and nothing is appended."),
    s("auto.leader.rebalance.enable", None, Boolean, "true", 0, "The controller gives each partition's leadership back to its preferred replica (the first in its replica list) once that replica is alive and in the ISR again, checking every leader.imbalance.check.interval.seconds."),
    s("leader.imbalance.check.interval.seconds", None, Long, "300", 1, "How often the controller looks for partitions not led by their preferred replica (with auto.leader.rebalance.enable)."),
    s("leader.replication.throttled.rate", None, Long, "9223372036854775807", 1, "Bytes per second a leader sends to the replicas a reassignment is adding (caudal cluster reassign), all partitions together, so that moving replicas leaves room for clients and in-sync followers. Kafka throttles the replicas its reassignment tool lists in leader.replication.throttled.replicas; Caudal throttles exactly the moving ones. The default is no limit."),
    s("replica.lag.time.max.ms", None, Long, "30000", 1, "A follower that has not caught up with the leader's log end for this long is taken out of the ISR; it is taken back once it has."),
    s("replica.fetch.max.bytes", None, Int, "1048576", 0, "Bytes a follower asks each partition's leader for in one fetch (the first batch comes whole even if larger). Each fetch round ends with an fsync of what it brought, so a larger value spreads that cost over more bytes when a follower is behind."),
    s("replica.fetch.response.max.bytes", None, Int, "10485760", 0, "Bytes a follower accepts in one fetch response, all the partitions it follows on that leader together (the first batch comes whole even if larger). Partitions that got data go to the back of the next request, so every one gets its turn."),
    s("replica.fetch.wait.max.ms", None, Int, "500", 0, "How long a leader holds a follower's fetch when it has nothing new; a write wakes it at once. At most replica.lag.time.max.ms."),
    s("replica.fetch.min.bytes", None, Int, "1", 1, "Bytes a leader waits to have for a follower's fetch before it answers (or replica.fetch.wait.max.ms passes)."),
    s("replica.fetch.backoff.ms", None, Int, "1000", 0, "How long a follower pauses after a fetch from a leader failed or was refused."),
    s("log.cleaner.delete.retention.ms", Some("delete.retention.ms"), Long, "86400000", 0, "How long tombstones are kept in compacted topics."),
    s("offsets.topic.num.partitions", None, Int, "50", 1, "Partitions of __consumer_offsets, where groups and committed offsets are kept. Fixed once the topic exists."),
    s("offsets.topic.replication.factor", None, Int, "3", 1, "Replicas of each __consumer_offsets partition, where groups and committed offsets are kept; a cluster of fewer live brokers when the topic is made gets one per broker. Fixed once the topic exists."),
    s("offsets.commit.timeout.ms", None, Int, "5000", 1, "How long an offset commit (and any other write of the group coordinator) waits for every in-sync replica of its __consumer_offsets partition before it is answered COORDINATOR_NOT_AVAILABLE."),
    s("offsets.topic.segment.bytes", None, Int, "104857600", 1024, "Segment size of __consumer_offsets, which is compacted segment by segment."),
    s("log.cleaner.backoff.ms", None, Long, "15000", 1, "How often compacted topics (such as __consumer_offsets) are cleaned."),
    s("offsets.retention.minutes", None, Int, "10080", 1, "How long committed offsets are kept after their group becomes empty."),
    s("transaction.state.log.num.partitions", None, Int, "50", 1, "Partitions of __transaction_state, where transactional producers' transactions are kept. Fixed once the topic exists."),
    s("transaction.state.log.replication.factor", None, Int, "3", 1, "Replicas of each __transaction_state partition; a cluster of fewer live brokers when the topic is made gets one per broker. Fixed once the topic exists."),
    s("transaction.state.log.min.isr", None, Int, "2", 1, "min.insync.replicas of __transaction_state (at most its replication factor)."),
    s("transaction.state.log.segment.bytes", None, Int, "104857600", 1024, "Segment size of __transaction_state, which is compacted."),
    s("transaction.max.timeout.ms", None, Int, "900000", 1, "The longest transaction.timeout.ms a producer may ask for; a longer one is refused with INVALID_TRANSACTION_TIMEOUT."),
    s("transactional.id.expiration.ms", None, Int, "604800000", 1, "A transactional id with no transaction for this long is forgotten."),
    s("transaction.abort.timed.out.transaction.cleanup.interval.ms", None, Int, "10000", 1, "How often the transaction coordinator aborts transactions open past their timeout (and forgets expired transactional ids)."),
    s("offsets.retention.check.interval.ms", None, Long, "600000", 1, "How often committed offsets are checked for expiry."),
    s("offset.metadata.max.bytes", None, Int, "4096", 0, "Largest metadata string an offset commit may carry."),
    s("group.initial.rebalance.delay.ms", None, Int, "3000", 0, "How long a new group waits for more members before its first rebalance."),
    s("group.min.session.timeout.ms", None, Int, "6000", 0, "Smallest session.timeout.ms a consumer may ask for."),
    s("group.max.session.timeout.ms", None, Int, "1800000", 0, "Largest session.timeout.ms a consumer may ask for."),
    s("group.max.size", None, Int, "2147483647", 1, "Most members a group may have."),
    s("group.consumer.heartbeat.interval.ms", None, Int, "5000", 1, "How often members of consumer-protocol groups (KIP-848, group.protocol=consumer) heartbeat."),
    s("group.consumer.session.timeout.ms", None, Int, "45000", 1, "How long a consumer-protocol member may stay silent before it is removed from its group."),
    s("group.consumer.assignors", None, Str, "uniform,range", 0, "Server-side assignors of consumer-protocol groups, the default first: uniform, range (or Kafka's class names)."),
    s("broker.heartbeat.interval.ms", None, Int, "2000", 1, "How often the broker heartbeats to the controller (once the broker runs on the metadata quorum)."),
    s("broker.session.timeout.ms", None, Int, "9000", 1, "How long the controller waits without a heartbeat before it fences a broker and moves its partition leaderships."),
    Setting { choices: &["", "org.apache.kafka.common.replica.RackAwareReplicaSelector", "org.apache.kafka.common.replica.LeaderSelector"], ..s("replica.selector.class", None, Str, "", 0, "How a partition leader picks the replica a consumer should fetch from (KIP-392). Empty or LeaderSelector: always the leader. org.apache.kafka.common.replica.RackAwareReplicaSelector: a consumer whose client.rack is not the leader's rack is sent to an in-sync replica in its rack, if there is one, and reads from it up to that replica's high watermark.") },
    s("broker.rack", None, Str, "", 0, "The broker's rack, given to the controller at registration so replicas spread over racks; empty for none."),
    Setting { choices: &["broker,controller", "controller,broker", "broker", "controller"], ..s("process.roles", None, Str, "broker,controller", 0, "What this node is. broker,controller (combined): a voter of the controller quorum that also serves clients; it must be in controller.quorum.voters. controller: a voter that runs only the quorum and the controller, on its CONTROLLER listener alone; it must be in controller.quorum.voters, `listen` holds only listeners named in controller.listener.names, and it never registers as a broker. broker: a broker that is not a voter; it must not be in controller.quorum.voters, asks the quorum leader to send it the metadata log (as a learner, Kafka's observer), and needs a listener named in controller.listener.names where the leader sends it (advertise it at an address the voters reach).") },
    s("controller.quorum.voters", None, Str, "", 0, "The controller quorum's voters as ID@HOST:PORT,... (each voter's CONTROLLER listener), the same on every node, e.g. 1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093. Empty: this node alone is its cluster."),
    s("inter.broker.listener.name", None, Str, "", 0, "The listener (by name in `listen`) whose advertised address other brokers use to fetch from this one as followers. Empty: the first listener that is not a controller listener. In a container network, name the listener the containers reach (INTERNAL in docker-compose.cluster.yml)."),
    s("controller.listener.names", None, Str, "CONTROLLER", 0, "The listeners (by name in `listen`) that serve the controller quorum and brokers' requests to the controller, not clients."),
    s("controller.quorum.election.timeout.ms", None, Int, "1000", 10, "A voter that hears nothing from the quorum leader stands for election after 1.5 to 2 times this (randomised, so that voters rarely stand at once); Kafka's voters stand after their fetch timeout, twice this by default."),
];

/// `group.consumer.assignors`: a comma-separated list of assignor names or Kafka's class names.
pub fn parse_assignors(
    value: &str,
) -> Result<Vec<caudal_coordinator::consumer_group::Assignor>, String> {
    use caudal_coordinator::consumer_group::Assignor;
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let short = match name.rsplit('.').next() {
            Some("UniformAssignor") => "uniform",
            Some("RangeAssignor") => "range",
            _ => name,
        };
        let assignor = Assignor::from_name(short)
            .ok_or_else(|| format!("unknown assignor `{name}`; Caudal supports uniform, range"))?;
        if !out.contains(&assignor) {
            out.push(assignor);
        }
    }
    if out.is_empty() {
        return Err("at least one assignor is needed".into());
    }
    Ok(out)
}

pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The broker setting whose value is the default of topic config `topic_key`.
pub fn setting_for_topic_key(topic_key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.topic_key == Some(topic_key))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown setting `{key}`{hint}")]
    Unknown { key: String, hint: String },
    #[error("`{key}` = `{value}`: {problem}")]
    Invalid {
        key: String,
        value: String,
        problem: String,
    },
}

/// Checks `value` against the setting's type, minimum and choices; returns it normalised.
pub fn check_value(setting: &Setting, key: &str, value: &str) -> Result<String, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        problem,
    };
    let value = value.trim();
    match setting.kind {
        Boolean => match value.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(value.to_ascii_lowercase()),
            _ => Err(invalid("expected true or false".into())),
        },
        Int | Long => {
            let n: i64 = value
                .parse()
                .map_err(|_| invalid("expected a whole number".into()))?;
            if setting.kind == Int && i32::try_from(n).is_err() {
                return Err(invalid(format!(
                    "must fit in 32 bits (at most {})",
                    i32::MAX
                )));
            }
            if n < setting.min {
                return Err(invalid(format!("must be at least {}", setting.min)));
            }
            Ok(n.to_string())
        }
        Str if setting.key == "group.consumer.assignors" => {
            parse_assignors(value).map_err(invalid)?;
            Ok(value.to_string())
        }
        Str if setting.key == "controller.quorum.voters" => {
            parse_voters(value).map_err(invalid)?;
            Ok(value.to_string())
        }
        Str if setting.key == "max.connections.per.ip.overrides" => {
            crate::connection_quotas::parse_overrides(value).map_err(invalid)?;
            Ok(value.to_string())
        }
        Str => {
            if !setting.choices.is_empty() && !setting.choices.contains(&value) {
                return Err(invalid(format!(
                    "Caudal supports {}",
                    setting.choices.join(", ")
                )));
            }
            Ok(value.to_string())
        }
    }
}

/// `process.roles`: what a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessRoles {
    /// A voter of the controller quorum and a broker (`broker,controller`, the default).
    Combined,
    /// A voter that runs only the quorum and the controller.
    Controller,
    /// A broker that follows the metadata log as a learner, not a voter.
    Broker,
}

impl ProcessRoles {
    pub fn is_broker(self) -> bool {
        self != ProcessRoles::Controller
    }

    pub fn is_voter(self) -> bool {
        self != ProcessRoles::Broker
    }
}

/// `controller.quorum.voters`: `ID@HOST:PORT` entries, comma-separated, to each voter's
/// controller listener address.
pub fn parse_voters(value: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut voters = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, address) = entry
            .split_once('@')
            .ok_or_else(|| format!("`{entry}` is not ID@HOST:PORT, e.g. 1@localhost:9093"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{entry}`: the node id must be a whole number of 0 or more"))?;
        let port = address
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port))
            .ok_or_else(|| format!("`{entry}`: expected HOST:PORT after the @"))?;
        port.parse::<u16>()
            .map_err(|_| format!("`{entry}`: `{port}` is not a port number"))?;
        if voters.insert(id, address.trim().to_string()).is_some() {
            return Err(format!("node id {id} is listed twice"));
        }
    }
    Ok(voters)
}

/// One listener, as Kafka's `listeners` / `advertised.listeners` pair: where the broker accepts
/// connections, and the address it gives the clients that came in this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub advertise: (String, u16),
    /// Which APIs the listener serves: the client APIs, or (once nodes talk) the controller's.
    pub kind: ListenerKind,
}

/// The broker's configuration: where it listens and stores, and the Kafka-named settings that
/// were set explicitly (the rest take their defaults from [`SETTINGS`]).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// At least one. Metadata answers each client with the advertised address of the listener
    /// it connected to, so clients inside and outside a container network each get one they
    /// can reach.
    pub listeners: Vec<Listener>,
    pub data_dir: PathBuf,
    pub node_id: i32,
    pub cluster_id: String,
    explicit: BTreeMap<String, String>,
}

impl BrokerConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        BrokerConfig {
            listeners: vec![Listener {
                name: "PLAINTEXT".to_string(),
                listen,
                advertise: (listen.ip().to_string(), listen.port()),
                kind: ListenerKind::Client,
            }],
            data_dir,
            node_id: 1,
            cluster_id: String::new(),
            explicit: BTreeMap::new(),
        }
    }

    /// The advertised address of listener `index` (the first if out of range; the broker
    /// refuses to start without a listener).
    pub fn advertise(&self, index: usize) -> (String, u16) {
        self.listeners
            .get(index)
            .or(self.listeners.first())
            .map(|l| l.advertise.clone())
            .unwrap_or_else(|| ("localhost".to_string(), 9092))
    }

    /// Sets a Kafka-named setting, checking it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(setting) = setting(key) else {
            let hint = if setting_for_topic_key(key).is_some() {
                format!(
                    " (that is a topic config; the broker-wide default is `{}`)",
                    setting_for_topic_key(key)
                        .map(|s| s.key)
                        .unwrap_or_default()
                )
            } else {
                String::new()
            };
            return Err(ConfigError::Unknown {
                key: key.to_string(),
                hint,
            });
        };
        let value = check_value(setting, key, value)?;
        self.explicit.insert(key.to_string(), value);
        Ok(())
    }

    /// The value of a setting and whether it was set explicitly.
    pub fn get(&self, key: &str) -> Option<(&str, bool)> {
        if let Some(v) = self.explicit.get(key) {
            return Some((v.as_str(), true));
        }
        setting(key).map(|s| (s.default, false))
    }

    fn number(&self, key: &str) -> i64 {
        self.get(key)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or_default()
    }

    pub fn num_partitions(&self) -> i32 {
        self.number("num.partitions") as i32
    }
    pub fn auto_create_topics(&self) -> bool {
        self.get("auto.create.topics.enable")
            .map(|(v, _)| v == "true")
            .unwrap_or(true)
    }
    pub fn socket_request_max_bytes(&self) -> usize {
        self.number("socket.request.max.bytes") as usize
    }
    pub fn queued_max_requests(&self) -> usize {
        self.number("queued.max.requests") as usize
    }
    pub fn max_connections(&self) -> usize {
        self.number("max.connections").max(0) as usize
    }
    pub fn max_connections_per_ip(&self) -> usize {
        self.number("max.connections.per.ip").max(0) as usize
    }
    /// `max.connections.per.ip.overrides`, checked when it was set.
    pub fn max_connections_per_ip_overrides(&self) -> Vec<(std::net::IpAddr, usize)> {
        self.get("max.connections.per.ip.overrides")
            .and_then(|(v, _)| crate::connection_quotas::parse_overrides(v).ok())
            .unwrap_or_default()
    }
    pub fn cleaner_backoff_ms(&self) -> u64 {
        self.number("log.cleaner.backoff.ms") as u64
    }
    pub fn offsets_topic_segment_bytes(&self) -> i64 {
        self.number("offsets.topic.segment.bytes")
    }
    pub fn retention_check_interval_ms(&self) -> u64 {
        self.number("log.retention.check.interval.ms") as u64
    }
    pub fn offsets_retention_check_interval_ms(&self) -> i64 {
        self.number("offsets.retention.check.interval.ms")
    }
    pub fn offsets_topic_replication_factor(&self) -> i16 {
        self.number("offsets.topic.replication.factor")
            .clamp(1, i64::from(i16::MAX)) as i16
    }
    pub fn offsets_commit_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("offsets.commit.timeout.ms").max(1) as u64)
    }
    pub fn offsets_topic_partitions(&self) -> i32 {
        self.number("offsets.topic.num.partitions") as i32
    }
    pub fn txn_topic_partitions(&self) -> i32 {
        self.number("transaction.state.log.num.partitions") as i32
    }
    pub fn txn_topic_replication_factor(&self) -> i16 {
        self.number("transaction.state.log.replication.factor")
            .clamp(1, i64::from(i16::MAX)) as i16
    }
    pub fn txn_topic_min_isr(&self) -> i64 {
        self.number("transaction.state.log.min.isr")
    }
    pub fn txn_topic_segment_bytes(&self) -> i64 {
        self.number("transaction.state.log.segment.bytes")
    }
    pub fn txn_check_interval_ms(&self) -> i64 {
        self.number("transaction.abort.timed.out.transaction.cleanup.interval.ms")
    }
    pub fn txn_config(&self) -> caudal_coordinator::txn::TxnConfig {
        caudal_coordinator::txn::TxnConfig {
            max_timeout_ms: self.number("transaction.max.timeout.ms") as i32,
            id_expiration_ms: self.number("transactional.id.expiration.ms"),
            ..caudal_coordinator::txn::TxnConfig::default()
        }
    }
    /// `log.dir.min.free.bytes`: -1 for the default (the smaller of 1 GiB and 5%).
    pub fn log_dir_min_free_bytes(&self) -> i64 {
        self.number("log.dir.min.free.bytes")
    }

    /// The group coordinator's settings.
    pub fn group_config(&self) -> caudal_coordinator::GroupConfig {
        caudal_coordinator::GroupConfig {
            min_session_timeout_ms: self.number("group.min.session.timeout.ms") as i32,
            max_session_timeout_ms: self.number("group.max.session.timeout.ms") as i32,
            initial_rebalance_delay_ms: self.number("group.initial.rebalance.delay.ms"),
            max_size: self.number("group.max.size") as usize,
            offset_metadata_max_bytes: self.number("offset.metadata.max.bytes") as usize,
            offsets_retention_ms: self.number("offsets.retention.minutes") * 60_000,
            consumer: caudal_coordinator::consumer_group::ConsumerGroupConfig {
                heartbeat_interval_ms: self.number("group.consumer.heartbeat.interval.ms") as i32,
                session_timeout_ms: self.number("group.consumer.session.timeout.ms") as i32,
                assignors: self
                    .get("group.consumer.assignors")
                    .and_then(|(v, _)| parse_assignors(v).ok())
                    .unwrap_or_default(),
            },
        }
    }

    /// `broker.heartbeat.interval.ms`.
    pub fn broker_heartbeat_interval_ms(&self) -> u64 {
        self.number("broker.heartbeat.interval.ms").max(1) as u64
    }
    /// `leader.replication.throttled.rate`, in bytes per second; `i64::MAX`: no limit.
    pub fn leader_replication_throttled_rate(&self) -> i64 {
        self.number("leader.replication.throttled.rate").max(1)
    }
    /// Whether `replica.selector.class` is Kafka's rack-aware selector (KIP-392).
    pub fn rack_aware_replica_selector(&self) -> bool {
        self.get("replica.selector.class")
            .is_some_and(|(v, _)| v.ends_with(".RackAwareReplicaSelector"))
    }
    /// `auto.leader.rebalance.enable`.
    pub fn auto_leader_rebalance(&self) -> bool {
        self.get("auto.leader.rebalance.enable")
            .is_none_or(|(v, _)| v == "true")
    }
    /// `leader.imbalance.check.interval.seconds`, in milliseconds.
    pub fn leader_imbalance_check_interval_ms(&self) -> i64 {
        self.number("leader.imbalance.check.interval.seconds")
            .max(1)
            .saturating_mul(1000)
    }
    /// `broker.session.timeout.ms`.
    pub fn broker_session_timeout_ms(&self) -> i64 {
        self.number("broker.session.timeout.ms").max(1)
    }
    /// `controller.quorum.voters`, checked when it was set; empty when unset (this node alone).
    pub fn quorum_voters(&self) -> BTreeMap<u64, String> {
        self.get("controller.quorum.voters")
            .and_then(|(v, _)| parse_voters(v).ok())
            .unwrap_or_default()
    }
    /// `inter.broker.listener.name`, or the first client listener's name when unset.
    pub fn inter_broker_listener_name(&self) -> String {
        match self.get("inter.broker.listener.name") {
            Some((name, _)) if !name.trim().is_empty() => name.trim().to_string(),
            _ => self
                .listeners
                .iter()
                .find(|l| l.kind == ListenerKind::Client)
                .or(self.listeners.first())
                .map_or_else(|| "PLAINTEXT".to_string(), |l| l.name.clone()),
        }
    }

    /// `controller.listener.names`.
    pub fn controller_listener_names(&self) -> Vec<String> {
        self.get("controller.listener.names")
            .map(|(v, _)| {
                v.split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// `process.roles`, checked when it was set.
    pub fn process_roles(&self) -> ProcessRoles {
        match self.get("process.roles").map(|(v, _)| v) {
            Some("broker") => ProcessRoles::Broker,
            Some("controller") => ProcessRoles::Controller,
            _ => ProcessRoles::Combined,
        }
    }

    /// `controller.quorum.election.timeout.ms`.
    pub fn election_timeout_ms(&self) -> u64 {
        self.number("controller.quorum.election.timeout.ms").max(10) as u64
    }

    /// Gives the listeners named in `controller.listener.names` the controller's APIs, and
    /// checks that the roles, the listeners and the voters make a node: a broker has a client
    /// listener; a voter is in `controller.quorum.voters` and a broker-only node is not; a
    /// controller-only node listens only as a controller; a node of a quorum of more than one
    /// voter, and a broker-only node (the leader sends it the log there), has a controller
    /// listener. Each refusal names the setting and the fix.
    pub fn apply_listener_roles(&mut self) -> Result<(), String> {
        let names = self.controller_listener_names();
        for l in &mut self.listeners {
            l.kind = if names.contains(&l.name) {
                ListenerKind::Controller
            } else {
                ListenerKind::Client
            };
        }
        let roles = self.process_roles();
        let example = format!(
            "{}://0.0.0.0:9093",
            names.first().map_or("CONTROLLER", String::as_str)
        );
        let has_controller_listener = self
            .listeners
            .iter()
            .any(|l| l.kind == ListenerKind::Controller);
        if roles.is_broker()
            && !self
                .listeners
                .iter()
                .any(|l| l.kind == ListenerKind::Client)
        {
            return Err(format!(
                "every listener is a controller listener ({}); add one for clients to `listen`, \
                 e.g. PLAINTEXT://0.0.0.0:9092, or set process.roles=controller for a node that \
                 serves no clients",
                names.join(", ")
            ));
        }
        if let (ProcessRoles::Controller, Some(l)) = (
            roles,
            self.listeners
                .iter()
                .find(|l| l.kind == ListenerKind::Client),
        ) {
            return Err(format!(
                "process.roles=controller, but `listen` has the listener {} that is not named in \
                 controller.listener.names ({}); a controller-only node serves no clients: remove \
                 it from `listen` (e.g. listen={example}), or set process.roles=broker,controller",
                l.name,
                names.join(", ")
            ));
        }
        let voters = self.quorum_voters();
        let listed = voters
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let me = u64::try_from(self.node_id).ok();
        let is_voter = me.is_some_and(|id| voters.contains_key(&id));
        match roles {
            ProcessRoles::Combined if !voters.is_empty() && !is_voter => {
                return Err(format!(
                    "node.id {} is not in controller.quorum.voters ({listed}), but \
                     process.roles=broker,controller makes it a voter: add it there, the same \
                     list on every node, or set process.roles=broker to run it as a broker-only \
                     node",
                    self.node_id
                ));
            }
            ProcessRoles::Controller if !is_voter => {
                return Err(format!(
                    "process.roles=controller, but node.id {} is not in controller.quorum.voters \
                     ({listed}); a controller-only node is a voter: add it there, the same list \
                     on every node, or set process.roles=broker",
                    self.node_id
                ));
            }
            ProcessRoles::Broker if voters.is_empty() => {
                return Err(
                    "process.roles=broker, but controller.quorum.voters is empty; a broker-only \
                     node joins the quorum of those voters: set it as on the voters, e.g. \
                     1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093"
                        .to_string(),
                );
            }
            ProcessRoles::Broker if is_voter => {
                return Err(format!(
                    "process.roles=broker, but node.id {} is in controller.quorum.voters \
                     ({listed}); a broker-only node is not a voter: give it a node.id outside \
                     that list, or set process.roles=broker,controller",
                    self.node_id
                ));
            }
            _ => {}
        }
        let needs_controller_listener = voters.len() > 1 || roles != ProcessRoles::Combined;
        if needs_controller_listener && !has_controller_listener {
            let why = match roles {
                ProcessRoles::Broker => {
                    "process.roles=broker: the quorum leader sends this \
                                         broker-only node the metadata log on a controller listener"
                        .to_string()
                }
                ProcessRoles::Controller => {
                    "process.roles=controller: a controller-only node serves the quorum and the \
                     brokers on its controller listener"
                        .to_string()
                }
                ProcessRoles::Combined => format!(
                    "controller.quorum.voters lists {} voters, which reach each other on their \
                     controller listeners",
                    voters.len()
                ),
            };
            return Err(format!(
                "{why}, but `listen` has none; add one named as in controller.listener.names, \
                 e.g. {example}"
            ));
        }
        Ok(())
    }

    /// `broker.rack`, if set.
    pub fn broker_rack(&self) -> Option<&str> {
        self.get("broker.rack")
            .map(|(v, _)| v)
            .filter(|v| !v.is_empty())
    }

    pub fn default_replication_factor(&self) -> i16 {
        self.number("default.replication.factor") as i16
    }

    /// The effective value of topic config `topic_key` for a topic with `overrides`, and where it
    /// comes from (DescribeConfigs' ConfigSource: 1 topic, 4 static broker, 5 default).
    pub fn topic_value<'a>(
        &'a self,
        overrides: &'a BTreeMap<String, String>,
        topic_key: &str,
    ) -> Option<(&'a str, i8)> {
        if let Some(v) = overrides.get(topic_key) {
            return Some((v.as_str(), 1));
        }
        let setting = setting_for_topic_key(topic_key)?;
        self.get(setting.key)
            .map(|(v, explicit)| (v, if explicit { 4 } else { 5 }))
    }

    /// The ISR rules for a topic with `overrides`: the broker's `replica.lag.time.max.ms` and
    /// the topic's `min.insync.replicas`.
    pub fn replica_settings(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> crate::replica_state::ReplicaSettings {
        let min_insync = self
            .topic_value(overrides, "min.insync.replicas")
            .and_then(|(v, _)| v.parse::<usize>().ok())
            .unwrap_or(1);
        crate::replica_state::ReplicaSettings {
            max_lag_ms: self.replica_lag_time_max_ms(),
            min_insync_replicas: min_insync.max(1),
        }
    }

    /// `replica.lag.time.max.ms`.
    pub fn replica_lag_time_max_ms(&self) -> i64 {
        self.number("replica.lag.time.max.ms").max(1)
    }

    /// How followers fetch: the `replica.fetch.*` settings.
    pub fn replica_fetch(&self) -> crate::replica_fetcher::FetchSettings {
        let int = |key| i32::try_from(self.number(key)).unwrap_or(i32::MAX);
        crate::replica_fetcher::FetchSettings {
            max_wait_ms: int("replica.fetch.wait.max.ms"),
            min_bytes: int("replica.fetch.min.bytes").max(1),
            partition_max_bytes: int("replica.fetch.max.bytes"),
            response_max_bytes: int("replica.fetch.response.max.bytes"),
            backoff: std::time::Duration::from_millis(
                u64::try_from(self.number("replica.fetch.backoff.ms")).unwrap_or(0),
            ),
        }
    }

    /// Settings that are valid alone but not together, as Kafka refuses them at start-up.
    pub fn check_combinations(&self) -> Result<(), ConfigError> {
        let wait = self.number("replica.fetch.wait.max.ms");
        let lag = self.number("replica.lag.time.max.ms");
        if wait > lag {
            return Err(ConfigError::Invalid {
                key: "replica.fetch.wait.max.ms".into(),
                value: wait.to_string(),
                problem: format!(
                    "must be at most replica.lag.time.max.ms ({lag}), or an idle follower \
                     would leave the ISR between two fetches; lower it or raise \
                     replica.lag.time.max.ms"
                ),
            });
        }
        Ok(())
    }

    /// The partition log settings for a topic with `overrides`.
    pub fn log_config(&self, overrides: &BTreeMap<String, String>) -> caudal_storage::LogConfig {
        let n = |k: &str| -> i64 {
            self.topic_value(overrides, k)
                .and_then(|(v, _)| v.parse().ok())
                .unwrap_or_default()
        };
        caudal_storage::LogConfig {
            segment_bytes: n("segment.bytes").max(1024) as u64,
            segment_ms: n("segment.ms").max(1),
            index_interval_bytes: n("index.interval.bytes").max(0) as u64,
            max_message_bytes: n("max.message.bytes").max(0) as usize,
            retention_ms: n("retention.ms"),
            retention_bytes: n("retention.bytes"),
            compact: self
                .topic_value(overrides, "cleanup.policy")
                .is_some_and(|(v, _)| v.split(',').any(|p| p.trim() == "compact")),
            delete_retention_ms: n("delete.retention.ms"),
            max_decompressed_bytes: (n("max.message.bytes").max(0) as usize)
                .saturating_mul(self.number("message.max.decompression.factor").max(1) as usize),
        }
    }
}

/// Checks a topic config from CreateTopics: known key and valid value.
pub fn check_topic_config(key: &str, value: &str) -> Result<String, ConfigError> {
    let setting = setting_for_topic_key(key).ok_or_else(|| ConfigError::Unknown {
        key: key.to_string(),
        hint: String::new(),
    })?;
    check_value(setting, key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_values_of_their_own_settings() {
        for s in SETTINGS {
            assert_eq!(
                check_value(s, s.key, s.default).as_deref(),
                Ok(s.default),
                "{}",
                s.key
            );
        }
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let mut c = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "d".into());
        let e = c.set("num.partitions", "zero").unwrap_err().to_string();
        assert!(
            e.contains("num.partitions") && e.contains("whole number"),
            "{e}"
        );
        let e = c.set("num.partitions", "0").unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = c.set("retention.ms", "5").unwrap_err().to_string();
        assert!(e.contains("log.retention.ms"), "{e}");
        c.set("log.segment.bytes", "4096").unwrap();
        let overrides = BTreeMap::from([("retention.ms".to_string(), "10".to_string())]);
        assert_eq!(
            c.topic_value(&overrides, "segment.bytes"),
            Some(("4096", 4))
        );
        assert_eq!(c.topic_value(&overrides, "retention.ms"), Some(("10", 1)));
        assert_eq!(
            c.topic_value(&overrides, "retention.bytes"),
            Some(("-1", 5))
        );
        assert_eq!(c.log_config(&overrides).retention_ms, 10);
    }

    #[test]
    fn connection_limits_have_kafkas_defaults_and_overrides_are_checked() {
        let mut c = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "d".into());
        assert_eq!(c.max_connections(), i32::MAX as usize);
        assert_eq!(c.max_connections_per_ip(), i32::MAX as usize);
        assert!(c.max_connections_per_ip_overrides().is_empty());
        c.set("max.connections.per.ip.overrides", "127.0.0.1:3,::1:4")
            .unwrap();
        assert_eq!(
            c.max_connections_per_ip_overrides(),
            vec![
                ("127.0.0.1".parse().unwrap(), 3),
                ("::1".parse().unwrap(), 4)
            ]
        );
        let e = c
            .set("max.connections.per.ip.overrides", "broker-a:3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an IP address"), "{e}");
        assert!(c.set("max.connections", "-1").is_err());
    }

    #[test]
    fn lifecycle_settings_have_kafkas_defaults() {
        let mut c = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "d".into());
        assert_eq!(c.broker_heartbeat_interval_ms(), 2000);
        assert_eq!(c.broker_session_timeout_ms(), 9000);
        assert_eq!(c.broker_rack(), None);
        c.set("broker.rack", "eu-west-1a").unwrap();
        c.set("broker.heartbeat.interval.ms", "500").unwrap();
        assert_eq!(c.broker_rack(), Some("eu-west-1a"));
        assert_eq!(c.broker_heartbeat_interval_ms(), 500);
        assert!(c.set("broker.session.timeout.ms", "0").is_err());
    }

    #[test]
    fn replica_fetch_settings_have_kafkas_defaults_and_a_wait_within_the_lag() {
        let mut c = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "d".into());
        assert_eq!(
            c.replica_fetch(),
            crate::replica_fetcher::FetchSettings::default()
        );
        c.set("replica.fetch.max.bytes", "8388608").unwrap();
        c.set("replica.fetch.backoff.ms", "50").unwrap();
        let f = c.replica_fetch();
        assert_eq!(f.partition_max_bytes, 8 << 20);
        assert_eq!(f.backoff, std::time::Duration::from_millis(50));
        assert!(c.check_combinations().is_ok());
        c.set("replica.fetch.wait.max.ms", "40000").unwrap();
        let e = c.check_combinations().unwrap_err().to_string();
        assert!(
            e.contains("replica.fetch.wait.max.ms")
                && e.contains("replica.lag.time.max.ms (30000)"),
            "{e}"
        );
        c.set("replica.lag.time.max.ms", "60000").unwrap();
        assert!(c.check_combinations().is_ok());
    }

    fn node(node_id: i32, listen: &[(&str, &str)], settings: &[(&str, &str)]) -> BrokerConfig {
        let mut c = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "d".into());
        c.node_id = node_id;
        c.listeners = listen
            .iter()
            .map(|(name, addr)| Listener {
                name: name.to_string(),
                listen: addr.parse().unwrap(),
                advertise: ("localhost".to_string(), 0),
                kind: ListenerKind::Client,
            })
            .collect();
        for (k, v) in settings {
            c.set(k, v).unwrap();
        }
        c
    }

    #[test]
    fn roles_listeners_and_voters_must_make_a_node_and_refusals_name_the_fix() {
        const VOTERS: &str = "1@h1:9093,2@h2:9093,3@h3:9093";
        let client = ("PLAINTEXT", "127.0.0.1:9092");
        let controller = ("CONTROLLER", "127.0.0.1:9093");
        let accepted = |id, listen: &[(&str, &str)], roles, voters| {
            let mut c = node(
                id,
                listen,
                &[
                    ("process.roles", roles),
                    ("controller.quorum.voters", voters),
                ],
            );
            c.apply_listener_roles().map(|()| c)
        };
        // With nothing set, a node is its own one-voter cluster, as always.
        let mut alone = node(1, &[client], &[]);
        alone.apply_listener_roles().unwrap();
        assert_eq!(alone.process_roles(), ProcessRoles::Combined);

        let c = accepted(1, &[client, controller], "broker,controller", VOTERS).unwrap();
        assert_eq!(c.process_roles(), ProcessRoles::Combined);
        let c = accepted(1, &[controller], "controller", VOTERS).unwrap();
        assert_eq!(c.process_roles(), ProcessRoles::Controller);
        assert!(!c.process_roles().is_broker());
        let c = accepted(4, &[client, controller], "broker", VOTERS).unwrap();
        assert_eq!(c.process_roles(), ProcessRoles::Broker);
        assert!(!c.process_roles().is_voter());
        // One controller-only voter is a quorum too.
        accepted(1, &[controller], "controller", "1@h1:9093").unwrap();
        accepted(2, &[client, controller], "broker", "1@h1:9093").unwrap();

        for (id, listen, roles, voters, expected) in [
            (
                4,
                &[client, controller][..],
                "broker,controller",
                VOTERS,
                "process.roles=broker",
            ),
            (
                4,
                &[controller][..],
                "controller",
                VOTERS,
                "not in controller.quorum.voters",
            ),
            (
                1,
                &[client, controller][..],
                "controller",
                VOTERS,
                "remove it from `listen`",
            ),
            (
                2,
                &[client, controller][..],
                "broker",
                VOTERS,
                "give it a node.id outside",
            ),
            (
                4,
                &[client, controller][..],
                "broker",
                "",
                "controller.quorum.voters is empty",
            ),
            (
                4,
                &[client][..],
                "broker",
                VOTERS,
                "CONTROLLER://0.0.0.0:9093",
            ),
            (
                4,
                &[controller][..],
                "broker",
                VOTERS,
                "add one for clients",
            ),
            (1, &[client][..], "broker,controller", VOTERS, "has none"),
        ] {
            let e = accepted(id, listen, roles, voters)
                .map(|_| ())
                .expect_err(&format!(
                    "node {id} as {roles} on {listen:?} with voters {voters:?}"
                ));
            assert!(e.contains(expected), "{e}");
        }
        assert!(check_value(
            setting("process.roles").unwrap(),
            "process.roles",
            "observer"
        )
        .is_err());
    }
}
