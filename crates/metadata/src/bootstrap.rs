//! The first entry of a cluster's metadata log, and what follows its commit.
//!
//! A voter that leads a quorum whose image has no cluster id proposes the bootstrap entry:
//! `ClusterId` and `FeatureLevel` for a fresh directory. A directory written by the previous
//! Caudal release (`caudal-metadata.toml`, and `producer-ids` if a producer ever needed one)
//! is taken over: the entry also carries its topics with their ids, one `Partition` per
//! partition led by this node, their config overrides and the producer-id floor, so every
//! partition directory, offset and committed group offset is used as it is.
//!
//! Crash-safe order (`docs/design/cluster.md`, section 4): the entry commits first (proposed only
//! while the image has no cluster id); then [`complete`] writes `meta.properties`, each taken
//! partition's `leader-epoch-checkpoint` where it has none, and last renames the two old files to
//! `.migrated`. [`complete`] is idempotent and runs at every start, so a crash between any two
//! steps is finished by the next start.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::controller::METADATA_TOPIC;
use crate::image::{ConfigResource, MetadataImage};
use crate::meta_properties::{self, MetaProperties, MetaPropertiesError};
use crate::quorum::metadata_log_dir;
use crate::records::{
    EntryRecords, MetadataRecord, METADATA_VERSION_FEATURE, METADATA_VERSION_LEVEL,
    RECORD_VERSION as V,
};

/// The topic list of the previous release.
pub const LEGACY_METADATA_FILE: &str = "caudal-metadata.toml";
/// The producer-id reservation of the previous release: the end of the last block handed out.
pub const LEGACY_PRODUCER_IDS_FILE: &str = "producer-ids";
/// Appended to the old files once the takeover is complete; they are never read again.
pub const MIGRATED_SUFFIX: &str = ".migrated";

/// What a start knows that the bootstrap entry depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// `node.id`.
    pub node_id: i32,
    /// `cluster.id`, if set.
    pub cluster_id: Option<String>,
    /// The voters of `controller.quorum.voters`; empty when unset (this node alone).
    pub voters: BTreeSet<u64>,
}

/// Why a bootstrap could not be prepared or completed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error(
        "{path} holds the data of a previous Caudal release, which only a single node can take \
         over (voters: {voters:?}, node {node_id}); start this node alone once to convert its \
         data, then add nodes"
    )]
    TakeoverNeedsOneVoter {
        path: PathBuf,
        node_id: i32,
        voters: BTreeSet<u64>,
    },
    #[error(
        "{path}: the data directory belongs to cluster {found}, but cluster.id is set to \
         {configured}; unset cluster.id or use another data directory"
    )]
    ClusterIdMismatch {
        path: PathBuf,
        found: String,
        configured: String,
    },
    #[error("cluster.id {0:?} is not usable: it must be non-empty printable ASCII without spaces")]
    InvalidClusterId(String),
    #[error(
        "{path} exists but the metadata log {log} has no cluster id; a lost metadata log is not \
         re-created (it would forget this node's vote): restore it or use another data directory"
    )]
    MetadataLogLost { path: PathBuf, log: PathBuf },
    #[error(
        "{path} is still here but the metadata log does not hold its topics ({missing}); the \
         takeover did not commit what this file lists: move the file aside and investigate"
    )]
    TakeoverNotCommitted { path: PathBuf, missing: String },
    #[error(transparent)]
    MetaProperties(#[from] MetaPropertiesError),
}

impl BootstrapError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> BootstrapError + '_ {
        move |source| BootstrapError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `caudal-metadata.toml` as the previous release wrote it. The format is frozen: the release
/// that wrote it is the last one, so these types are read-only copies of the broker's.
#[derive(Debug, Deserialize)]
struct LegacyMetadataFile {
    cluster_id: String,
    #[serde(default)]
    topics: Vec<LegacyTopic>,
}

#[derive(Debug, Clone, Deserialize)]
struct LegacyTopic {
    name: String,
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

/// The bootstrap entry one start proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    cluster_id: String,
    records: Vec<MetadataRecord>,
    takeover: bool,
}

impl Bootstrap {
    /// The bootstrap entry for `data_dir` if `image` (this leader's, with its term's first entry
    /// applied) needs one: `None` once the log has a cluster id, so a restart never proposes a
    /// second one. Refuses to take over a previous release's directory unless this node is the
    /// only voter.
    pub fn plan(
        data_dir: &Path,
        settings: &BootstrapSettings,
        image: &MetadataImage,
    ) -> Result<Option<Bootstrap>, BootstrapError> {
        if image.cluster_id().is_some() {
            return Ok(None);
        }
        Bootstrap::prepare(data_dir, settings).map(Some)
    }

    /// Reads `data_dir` and builds the bootstrap entry, without looking at the metadata log.
    pub fn prepare(
        data_dir: &Path,
        settings: &BootstrapSettings,
    ) -> Result<Bootstrap, BootstrapError> {
        if let Some(id) = &settings.cluster_id {
            validate_cluster_id(id)?;
        }
        let legacy_path = data_dir.join(LEGACY_METADATA_FILE);
        let legacy = read_legacy(&legacy_path)?;
        let meta = MetaProperties::read(data_dir)?;
        let Some(legacy) = legacy else {
            // `meta.properties` is written only after the bootstrap entry commits; finding one
            // with a log that has no cluster id means the log was lost.
            if meta.is_some() {
                return Err(BootstrapError::MetadataLogLost {
                    path: data_dir.join(meta_properties::META_PROPERTIES_FILE),
                    log: metadata_log_dir(data_dir),
                });
            }
            let cluster_id = settings.cluster_id.clone().unwrap_or_else(new_cluster_id);
            return Ok(Bootstrap {
                records: base_records(&cluster_id),
                cluster_id,
                takeover: false,
            });
        };

        let one_voter = settings.voters.is_empty()
            || (settings.voters.len() == 1
                && u64::try_from(settings.node_id).is_ok_and(|id| settings.voters.contains(&id)));
        if !one_voter {
            return Err(BootstrapError::TakeoverNeedsOneVoter {
                path: legacy_path,
                node_id: settings.node_id,
                voters: settings.voters.clone(),
            });
        }
        let cluster_id = legacy.cluster_id.clone();
        if let Some(configured) = settings.cluster_id.as_ref().filter(|c| **c != cluster_id) {
            return Err(BootstrapError::ClusterIdMismatch {
                path: legacy_path,
                found: cluster_id,
                configured: configured.clone(),
            });
        }
        // The previous release may have written `meta.properties` already; it must agree, or
        // `complete` would fail after the commit.
        if let Some(meta) = meta {
            let path = data_dir.join(meta_properties::META_PROPERTIES_FILE);
            if meta.cluster_id != cluster_id {
                return Err(MetaPropertiesError::OtherCluster {
                    path,
                    found: meta.cluster_id,
                    expected: cluster_id,
                }
                .into());
            }
            if meta.node_id != settings.node_id {
                return Err(MetaPropertiesError::OtherNode {
                    path,
                    found: meta.node_id,
                    configured: settings.node_id,
                }
                .into());
            }
        }
        let producer_ids_path = data_dir.join(LEGACY_PRODUCER_IDS_FILE);
        let next_producer_id = read_producer_ids(&producer_ids_path)?;
        let records = takeover_records(&legacy, settings.node_id, next_producer_id);
        tracing::info!(
            cluster_id,
            topics = legacy.topics.len(),
            next_producer_id,
            "taking over the data directory of the previous release"
        );
        Ok(Bootstrap {
            cluster_id,
            records,
            takeover: true,
        })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Whether this entry takes over a previous release's directory.
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }

    pub fn records(&self) -> &[MetadataRecord] {
        &self.records
    }

    /// The entry to propose.
    pub fn entry(&self) -> EntryRecords {
        EntryRecords(self.records.clone())
    }
}

/// What [`complete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// `meta.properties` was written now.
    pub wrote_meta_properties: bool,
    /// Partition directories given a `leader-epoch-checkpoint` now.
    pub epoch_checkpoints_written: usize,
    /// The old files renamed to `.migrated` now.
    pub migrated: Vec<PathBuf>,
}

/// The steps after the bootstrap entry committed, in their crash-safe order: `meta.properties`,
/// then (for a takeover) the partitions' `leader-epoch-checkpoint` files and last the renames of
/// the old files. Idempotent: call it at every start once `image` has a cluster id; a crash
/// between steps is finished by the next call.
pub fn complete(
    data_dir: &Path,
    image: &MetadataImage,
    node_id: i32,
) -> Result<Completed, BootstrapError> {
    let mut done = Completed::default();
    let Some(cluster_id) = image.cluster_id() else {
        return Ok(done);
    };
    let legacy_path = data_dir.join(LEGACY_METADATA_FILE);
    let producer_ids_path = data_dir.join(LEGACY_PRODUCER_IDS_FILE);
    let legacy = read_legacy(&legacy_path)?;
    if let Some(legacy) = &legacy {
        // Only what the log holds may retire the file that lists it; checked before anything
        // is written.
        let missing: Vec<&str> = legacy
            .topics
            .iter()
            .filter(|t| image.topic_by_name(&t.name).map(|i| i.id) != Some(t.id))
            .map(|t| t.name.as_str())
            .collect();
        if legacy.cluster_id != cluster_id || !missing.is_empty() {
            return Err(BootstrapError::TakeoverNotCommitted {
                path: legacy_path,
                missing: if missing.is_empty() {
                    format!("cluster {} is not {cluster_id}", legacy.cluster_id)
                } else {
                    missing.join(", ")
                },
            });
        }
    }
    done.wrote_meta_properties = MetaProperties::read(data_dir)?.is_none();
    meta_properties::ensure(data_dir, cluster_id, node_id)?;

    if let Some(legacy) = legacy {
        for topic in &legacy.topics {
            for partition in 0..topic.partitions {
                let dir = data_dir.join(format!("{}-{partition}", topic.name));
                if write_epoch_checkpoint(&dir)? {
                    done.epoch_checkpoints_written += 1;
                }
            }
        }
        // `producer-ids` first: the TOML is the mark of an unfinished takeover.
        for path in [&producer_ids_path, &legacy_path] {
            if path.exists() {
                let to = migrated(path);
                fs::rename(path, &to).map_err(BootstrapError::io(path))?;
                done.migrated.push(to);
            }
        }
        sync_dir(data_dir)?;
        tracing::info!(
            epoch_checkpoints = done.epoch_checkpoints_written,
            "takeover of the previous release's data directory complete"
        );
    } else if producer_ids_path.exists() {
        // A crash between the two renames.
        let to = migrated(&producer_ids_path);
        fs::rename(&producer_ids_path, &to).map_err(BootstrapError::io(&producer_ids_path))?;
        sync_dir(data_dir)?;
        done.migrated.push(to);
    }
    Ok(done)
}

/// A new cluster id in Kafka's form: 16 random bytes in unpadded base64url, 22 characters, never
/// starting with `-` (it would read as a command-line flag), as Kafka's `Uuid.randomUuid`.
pub fn new_cluster_id() -> String {
    loop {
        let id = Uuid::new_v4();
        let text = base64_unpadded(id.as_bytes(), BASE64_URL);
        if !text.starts_with('-') {
            return text;
        }
    }
}

const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding in the given alphabet.
fn base64_unpadded(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn validate_cluster_id(id: &str) -> Result<(), BootstrapError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BootstrapError::InvalidClusterId(id.to_string()));
    }
    Ok(())
}

fn base_records(cluster_id: &str) -> Vec<MetadataRecord> {
    vec![
        MetadataRecord::ClusterId {
            v: V,
            cluster_id: cluster_id.to_string(),
        },
        MetadataRecord::FeatureLevel {
            v: V,
            name: METADATA_VERSION_FEATURE.to_string(),
            level: METADATA_VERSION_LEVEL,
        },
    ]
}

fn takeover_records(
    legacy: &LegacyMetadataFile,
    node_id: i32,
    next_producer_id: Option<i64>,
) -> Vec<MetadataRecord> {
    let mut records = base_records(&legacy.cluster_id);
    let mut topics: Vec<&LegacyTopic> = legacy.topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        records.push(MetadataRecord::Topic {
            v: V,
            name: topic.name.clone(),
            topic_id: topic.id,
        });
        for partition in 0..topic.partitions {
            records.push(MetadataRecord::Partition {
                v: V,
                topic_id: topic.id,
                partition,
                replicas: vec![node_id],
                isr: vec![node_id],
                leader: node_id,
                leader_epoch: 0,
                partition_epoch: 0,
                elr: Vec::new(),
            });
        }
        for (name, value) in &topic.configs {
            records.push(MetadataRecord::Config {
                v: V,
                resource_type: ConfigResource::TOPIC,
                resource_name: topic.name.clone(),
                name: name.clone(),
                value: Some(value.clone()),
            });
        }
    }
    // Ids only move forward: a floor of 0 is the image's own, and needs no record.
    if let Some(next) = next_producer_id.filter(|n| *n > 0) {
        records.push(MetadataRecord::ProducerIds {
            v: V,
            broker_id: node_id,
            broker_epoch: -1,
            next_producer_id: next,
        });
    }
    records
}

/// Reads and checks the previous release's topic list; `None` if there is none.
fn read_legacy(path: &Path) -> Result<Option<LegacyMetadataFile>, BootstrapError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BootstrapError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let malformed = |problem: String| BootstrapError::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let file: LegacyMetadataFile = toml::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    validate_cluster_id(&file.cluster_id)
        .map_err(|_| malformed(format!("cluster_id {:?} is not usable", file.cluster_id)))?;
    // Replay would skip a duplicate rather than fail, losing a topic: refuse before proposing.
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for topic in &file.topics {
        if topic.partitions < 1 {
            return Err(malformed(format!(
                "topic {:?} has {} partitions",
                topic.name, topic.partitions
            )));
        }
        if topic.name.is_empty() || topic.name == METADATA_TOPIC {
            return Err(malformed(format!(
                "topic name {:?} is reserved",
                topic.name
            )));
        }
        if !names.insert(topic.name.as_str()) {
            return Err(malformed(format!("topic {:?} is listed twice", topic.name)));
        }
        if topic.id.as_u128() <= 1 || !ids.insert(topic.id) {
            return Err(malformed(format!(
                "topic {:?} has id {}, which is reserved or already used",
                topic.name, topic.id
            )));
        }
    }
    Ok(Some(file))
}

/// The end of the last producer-id block the previous release reserved; `None` if it never
/// reserved one.
fn read_producer_ids(path: &Path) -> Result<Option<i64>, BootstrapError> {
    match fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(end) if end >= 0 => Ok(Some(end)),
            _ => Err(BootstrapError::Malformed {
                path: path.to_path_buf(),
                problem: format!("{:?} is not a producer id", text.trim()),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn migrated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(MIGRATED_SUFFIX);
    PathBuf::from(name)
}

/// Gives a taken-over partition directory `leader-epoch-checkpoint` = `[(0, log start)]` if it
/// has none: the previous release stamped every batch with epoch 0. Not synced: the log rebuilds
/// a lost or torn checkpoint from its batches. False if there was one, or no directory.
fn write_epoch_checkpoint(dir: &Path) -> Result<bool, BootstrapError> {
    if !dir.is_dir()
        || dir
            .join(caudal_storage::epochs::LEADER_EPOCH_CHECKPOINT_FILE)
            .exists()
    {
        return Ok(false);
    }
    let start = log_start_offset(dir)?;
    let mut cache = caudal_storage::LeaderEpochCache::default();
    cache.assign(0, start);
    cache.write(dir, false).map_err(BootstrapError::io(dir))?;
    Ok(true)
}

/// The log start offset of a partition directory, as the log will open it: the first segment's
/// base offset, or the checkpointed `log-start-offset` past it.
fn log_start_offset(dir: &Path) -> Result<i64, BootstrapError> {
    let mut first_base: Option<i64> = None;
    for entry in fs::read_dir(dir).map_err(BootstrapError::io(dir))? {
        let entry = entry.map_err(BootstrapError::io(dir))?;
        let name = entry.file_name();
        let Some(base) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|b| b.len() == 20 && b.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|b| b.parse::<i64>().ok())
        else {
            continue;
        };
        first_base = Some(first_base.map_or(base, |f| f.min(base)));
    }
    let checkpointed = fs::read_to_string(dir.join("log-start-offset"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    Ok(first_base.unwrap_or(0).max(checkpointed))
}

fn sync_dir(dir: &Path) -> Result<(), BootstrapError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(BootstrapError::io(dir))
}

#[cfg(test)]
mod tests;
