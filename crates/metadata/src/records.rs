//! The metadata records: what one controller decision writes to the metadata log.
//!
//! They are Caudal's own types, named after Kafka's KRaft records (kafka-protocol has none), and
//! their bytes are JSON with a `type` tag. JSON because the log must stay readable by every later
//! release and by eye; the codec is this one module if a binary form is ever needed.
//!
//! The compatibility rules, which the fixtures in the tests hold us to:
//! - every record carries `v`; it changes only when a field's *meaning* changes, and a node that
//!   meets a `v` newer than it knows refuses to decode (it must stop, not apply a guess);
//! - a new field is `#[serde(default)]` (an old record still decodes) and unknown fields are
//!   ignored (an old node reads a new record of a kind it knows);
//! - a new record kind is written only once the `caudal.metadata.version` feature level allows it.
//!
//! Epochs that depend on the record's position are not carried: they are derived at replay from
//! the image and the entry's log id (see [`crate::image::delta`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The newest `v` of every record kind this build understands. When one kind's meaning changes,
/// this becomes a version per kind.
pub const RECORD_VERSION: u16 = 0;

/// The feature whose level gates new record kinds and meanings.
pub const METADATA_VERSION_FEATURE: &str = "caudal.metadata.version";

/// The level of [`METADATA_VERSION_FEATURE`] a new cluster starts at.
pub const METADATA_VERSION_LEVEL: i16 = 1;

/// One metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// The cluster's id, written once by the bootstrap entry; it never changes afterwards.
    ClusterId { v: u16, cluster_id: String },
    /// The level of a cluster-wide feature, such as [`METADATA_VERSION_FEATURE`].
    FeatureLevel { v: u16, name: String, level: i16 },
    /// A broker (re)registers. It starts fenced; its epoch is the index of the entry holding this
    /// record, so the controller need not know the index before it proposes.
    RegisterBroker {
        v: u16,
        broker_id: i32,
        incarnation_id: Uuid,
        #[serde(default)]
        endpoints: Vec<Endpoint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rack: Option<String>,
        #[serde(default)]
        features: Vec<FeatureRange>,
        /// Set only in snapshots, which replay every record at the snapshot's own index and so
        /// must carry the epoch the registration got from its original entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        broker_epoch: Option<i64>,
    },
    /// Fencing, unfencing and controlled shutdown of a registered broker. Skipped when
    /// `broker_epoch` is not the registration's current one (a change meant for an old
    /// incarnation).
    BrokerRegistrationChange {
        v: u16,
        broker_id: i32,
        broker_epoch: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fenced: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_controlled_shutdown: Option<bool>,
    },
    /// A broker's registration is removed (UnregisterBroker, API 64).
    UnregisterBroker {
        v: u16,
        broker_id: i32,
        broker_epoch: i64,
    },
    /// A topic is created; its partitions follow as [`MetadataRecord::Partition`] records.
    Topic {
        v: u16,
        name: String,
        topic_id: Uuid,
    },
    /// A whole partition registration: at creation, and in snapshots.
    Partition {
        v: u16,
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        /// Eligible leader replicas (KIP-966): out of the ISR, but holding everything
        /// committed, as they left it while it was below `min.insync.replicas`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        elr: Vec<i32>,
    },
    /// A change to a partition. Its epochs move at replay: the partition epoch always, the
    /// leader epoch when the leader changes.
    PartitionChange {
        v: u16,
        topic_id: Uuid,
        partition: i32,
        #[serde(default)]
        leader: LeaderChange,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        isr: Option<Vec<i32>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<Vec<i32>>,
        /// The new eligible leader replicas, when they change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elr: Option<Vec<i32>>,
    },
    /// A partition's reassignment (AlterPartitionReassignments): the replicas being added and
    /// removed, both empty once it completes or is cancelled. Its replicas list is the target's
    /// followed by the removing ones (a `PartitionChange` in the same entry, which moves the
    /// epochs). In snapshots it follows the partition's `Partition` record.
    PartitionReassignment {
        v: u16,
        topic_id: Uuid,
        partition: i32,
        #[serde(default)]
        adding: Vec<i32>,
        #[serde(default)]
        removing: Vec<i32>,
    },
    /// A topic and its partitions are deleted, and with them the topic's config overrides.
    RemoveTopic { v: u16, topic_id: Uuid },
    /// A config override of a resource; `value: None` removes it.
    Config {
        v: u16,
        /// Kafka's resource type: 2 topic, 4 broker.
        resource_type: i8,
        resource_name: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// A block of producer ids was handed out; `next_producer_id` is the first id not yet given.
    ProducerIds {
        v: u16,
        broker_id: i32,
        broker_epoch: i64,
        next_producer_id: i64,
    },
}

impl MetadataRecord {
    /// A topic config override of `topic` set to `value`, or removed with `None`.
    pub fn topic_config(topic: &str, name: &str, value: Option<&str>) -> MetadataRecord {
        MetadataRecord::Config {
            v: RECORD_VERSION,
            resource_type: crate::image::ConfigResource::TOPIC,
            resource_name: topic.to_string(),
            name: name.to_string(),
            value: value.map(str::to_string),
        }
    }

    /// The record's `type` tag, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataRecord::ClusterId { .. } => "ClusterId",
            MetadataRecord::FeatureLevel { .. } => "FeatureLevel",
            MetadataRecord::RegisterBroker { .. } => "RegisterBroker",
            MetadataRecord::BrokerRegistrationChange { .. } => "BrokerRegistrationChange",
            MetadataRecord::UnregisterBroker { .. } => "UnregisterBroker",
            MetadataRecord::Topic { .. } => "Topic",
            MetadataRecord::Partition { .. } => "Partition",
            MetadataRecord::PartitionChange { .. } => "PartitionChange",
            MetadataRecord::PartitionReassignment { .. } => "PartitionReassignment",
            MetadataRecord::RemoveTopic { .. } => "RemoveTopic",
            MetadataRecord::Config { .. } => "Config",
            MetadataRecord::ProducerIds { .. } => "ProducerIds",
        }
    }

    /// The record's `v`.
    pub fn version(&self) -> u16 {
        match *self {
            MetadataRecord::ClusterId { v, .. }
            | MetadataRecord::FeatureLevel { v, .. }
            | MetadataRecord::RegisterBroker { v, .. }
            | MetadataRecord::BrokerRegistrationChange { v, .. }
            | MetadataRecord::UnregisterBroker { v, .. }
            | MetadataRecord::Topic { v, .. }
            | MetadataRecord::Partition { v, .. }
            | MetadataRecord::PartitionChange { v, .. }
            | MetadataRecord::PartitionReassignment { v, .. }
            | MetadataRecord::RemoveTopic { v, .. }
            | MetadataRecord::Config { v, .. }
            | MetadataRecord::ProducerIds { v, .. } => v,
        }
    }
}

/// What a [`MetadataRecord::PartitionChange`] does to the leader. Kafka encodes this as -2
/// (unchanged), -1 (none) or a broker id; an enum cannot be misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderChange {
    #[default]
    Keep,
    NoLeader,
    To(i32),
}

/// A listener a broker advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The listener name, e.g. `PLAINTEXT` or `INTERNAL`.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Kafka's security protocol id (0 PLAINTEXT, 1 SSL, 2 SASL_PLAINTEXT, 3 SASL_SSL).
    pub security_protocol: i16,
}

/// The levels of a feature a broker can run, as it reports them when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRange {
    pub name: String,
    pub min: i16,
    pub max: i16,
}

/// The records of one Raft entry: one controller decision, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryRecords(pub Vec<MetadataRecord>);

/// Why an entry's bytes could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("metadata entry is not valid JSON of known records: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{kind} record has v{v}; this build reads up to v{supported}")]
    UnsupportedVersion {
        kind: &'static str,
        v: u16,
        supported: u16,
    },
}

impl EntryRecords {
    /// The entry as stored in the log and sent to peers.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Reads an entry. A record of a newer meaning is an error rather than a silent misreading:
    /// a node that cannot understand the log must stop applying it so images never diverge.
    pub fn decode(bytes: &[u8]) -> Result<EntryRecords, CodecError> {
        let entry: EntryRecords = serde_json::from_slice(bytes)?;
        if let Some(record) = entry.0.iter().find(|r| r.version() > RECORD_VERSION) {
            return Err(CodecError::UnsupportedVersion {
                kind: record.kind(),
                v: record.version(),
                supported: RECORD_VERSION,
            });
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One fixture per record kind, as this release writes it, some with a field from the future
    /// that must be ignored. The first string of each pair is frozen: every later release must
    /// decode it to the same values (add fixtures, never change one). The second is how this
    /// release writes the decoded value; it changes only when a new field is written.
    const FIXTURES: &[(&str, &str)] = &[
        (
            r#"{"type":"ClusterId","v":0,"cluster_id":"MkU3OEVBNTcwNTJENDM2Qg"}"#,
            r#"{"type":"ClusterId","v":0,"cluster_id":"MkU3OEVBNTcwNTJENDM2Qg"}"#,
        ),
        (
            r#"{"type":"FeatureLevel","v":0,"name":"caudal.metadata.version","level":1}"#,
            r#"{"type":"FeatureLevel","v":0,"name":"caudal.metadata.version","level":1}"#,
        ),
        (
            r#"{"type":"RegisterBroker","v":0,"broker_id":2,
                "incarnation_id":"00000000-0000-0000-0000-000000000007",
                "endpoints":[{"name":"PLAINTEXT","host":"b2","port":9092,"security_protocol":0}],
                "rack":"r1","features":[{"name":"caudal.metadata.version","min":1,"max":1}],
                "directories":["from-the-future"]}"#,
            r#"{"type":"RegisterBroker","v":0,"broker_id":2,"incarnation_id":"00000000-0000-0000-0000-000000000007","endpoints":[{"name":"PLAINTEXT","host":"b2","port":9092,"security_protocol":0}],"rack":"r1","features":[{"name":"caudal.metadata.version","min":1,"max":1}]}"#,
        ),
        (
            r#"{"type":"RegisterBroker","v":0,"broker_id":3,
                "incarnation_id":"00000000-0000-0000-0000-000000000008","broker_epoch":41}"#,
            r#"{"type":"RegisterBroker","v":0,"broker_id":3,"incarnation_id":"00000000-0000-0000-0000-000000000008","endpoints":[],"features":[],"broker_epoch":41}"#,
        ),
        (
            r#"{"type":"BrokerRegistrationChange","v":0,"broker_id":2,"broker_epoch":17,"fenced":false}"#,
            r#"{"type":"BrokerRegistrationChange","v":0,"broker_id":2,"broker_epoch":17,"fenced":false}"#,
        ),
        (
            r#"{"type":"UnregisterBroker","v":0,"broker_id":2,"broker_epoch":17}"#,
            r#"{"type":"UnregisterBroker","v":0,"broker_id":2,"broker_epoch":17}"#,
        ),
        (
            r#"{"type":"Topic","v":0,"name":"orders","topic_id":"00000000-0000-0000-0000-0000000000aa"}"#,
            r#"{"type":"Topic","v":0,"name":"orders","topic_id":"00000000-0000-0000-0000-0000000000aa"}"#,
        ),
        (
            r#"{"type":"Partition","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa",
                "partition":0,"replicas":[1,2,3],"isr":[1,2],"leader":1,"leader_epoch":4,
                "partition_epoch":9,"adding_replicas":[]}"#,
            r#"{"type":"Partition","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa","partition":0,"replicas":[1,2,3],"isr":[1,2],"leader":1,"leader_epoch":4,"partition_epoch":9}"#,
        ),
        (
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa",
                "partition":1,"leader":{"to":3},"isr":[3]}"#,
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa","partition":1,"leader":{"to":3},"isr":[3]}"#,
        ),
        (
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa",
                "partition":1,"leader":"no_leader"}"#,
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa","partition":1,"leader":"no_leader"}"#,
        ),
        (
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa",
                "partition":1,"replicas":[1,2]}"#,
            r#"{"type":"PartitionChange","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa","partition":1,"leader":"keep","replicas":[1,2]}"#,
        ),
        (
            r#"{"type":"PartitionReassignment","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa",
                "partition":1,"adding":[4],"removing":[1]}"#,
            r#"{"type":"PartitionReassignment","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa","partition":1,"adding":[4],"removing":[1]}"#,
        ),
        (
            r#"{"type":"RemoveTopic","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa"}"#,
            r#"{"type":"RemoveTopic","v":0,"topic_id":"00000000-0000-0000-0000-0000000000aa"}"#,
        ),
        (
            r#"{"type":"Config","v":0,"resource_type":2,"resource_name":"orders",
                "name":"retention.ms","value":"60000"}"#,
            r#"{"type":"Config","v":0,"resource_type":2,"resource_name":"orders","name":"retention.ms","value":"60000"}"#,
        ),
        (
            r#"{"type":"Config","v":0,"resource_type":4,"resource_name":"1","name":"log.retention.ms"}"#,
            r#"{"type":"Config","v":0,"resource_type":4,"resource_name":"1","name":"log.retention.ms"}"#,
        ),
        (
            r#"{"type":"ProducerIds","v":0,"broker_id":1,"broker_epoch":5,"next_producer_id":2000}"#,
            r#"{"type":"ProducerIds","v":0,"broker_id":1,"broker_epoch":5,"next_producer_id":2000}"#,
        ),
    ];

    #[test]
    fn every_fixture_keeps_decoding() {
        let mut kinds = std::collections::BTreeSet::new();
        for (json, decoded_as) in FIXTURES {
            let decoded = EntryRecords::decode(format!("[{json}]").as_bytes())
                .unwrap_or_else(|e| panic!("fixture {json} no longer decodes: {e}"));
            let expected: MetadataRecord =
                serde_json::from_str(decoded_as).expect("canonical form");
            assert_eq!(
                decoded.0,
                vec![expected],
                "fixture {json} decodes differently"
            );
            let encoded = serde_json::to_string(&decoded.0[0]).expect("encodes");
            assert_eq!(
                &encoded, decoded_as,
                "this release writes fixture {json} differently"
            );
            kinds.insert(decoded.0[0].kind());
        }
        assert_eq!(
            kinds.len(),
            12,
            "every record kind needs a fixture: {kinds:?}"
        );
    }

    #[test]
    fn a_newer_meaning_is_refused() {
        let json = br#"[{"type":"Topic","v":1,"name":"t","topic_id":"00000000-0000-0000-0000-000000000001"}]"#;
        match EntryRecords::decode(json) {
            Err(CodecError::UnsupportedVersion {
                kind: "Topic",
                v: 1,
                supported: 0,
            }) => {}
            other => panic!("a v1 Topic must be refused, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_kind_or_garbage_is_an_error() {
        assert!(EntryRecords::decode(br#"[{"type":"Mystery","v":0}]"#).is_err());
        assert!(EntryRecords::decode(br#"[{"type":"Topic","v":0,"name":"t"}]"#).is_err());
        assert!(EntryRecords::decode(b"\xff[").is_err());
    }

    proptest! {
        #[test]
        fn codec_round_trip(records in proptest::collection::vec(crate::testing::record(), 0..12)) {
            let entry = EntryRecords(records);
            let bytes = entry.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = EntryRecords::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, entry);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = EntryRecords::decode(&bytes);
        }
    }
}
