//! The topics this broker hosts: names, ids, partitions and per-topic config overrides, kept in
//! `caudal-metadata.toml` in the data directory and written atomically on every change.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use caudal_storage::PartitionLog;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::Partition;

const METADATA_FILE: &str = "caudal-metadata.toml";
/// Kafka's limit on topic name length.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Arc<Partition>>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct MetadataFile {
    cluster_id: String,
    #[serde(default)]
    topics: Vec<TopicRecord>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct TopicRecord {
    name: String,
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic name {0:?} is invalid: {1}")]
    InvalidName(String, &'static str),
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    #[error("topic '{0}' does not exist")]
    Unknown(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("'{0}' is an internal topic: the broker manages it")]
    Internal(String),
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

/// Kafka's topic name rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |why| Err(TopicError::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Topics by name and by id (Fetch v13+ and Metadata v10+ name topics by id), kept together.
#[derive(Debug, Default)]
struct TopicMap {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl TopicMap {
    fn get(&self, name: &str) -> Option<&Arc<Topic>> {
        self.by_name.get(name)
    }

    /// Adds or replaces a topic.
    fn insert(&mut self, topic: Arc<Topic>) {
        self.by_id.insert(topic.id, topic.clone());
        self.by_name.insert(topic.name.clone(), topic);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let topic = self.by_name.remove(name)?;
        self.by_id.remove(&topic.id);
        Some(topic)
    }
}

#[derive(Debug)]
pub struct Topics {
    data_dir: PathBuf,
    cluster_id: String,
    by_name: RwLock<TopicMap>,
    /// Serialises changes so the file always matches the map.
    change: tokio::sync::Mutex<()>,
}

impl Topics {
    /// Loads the topic list and opens (recovering as needed) every partition's log.
    pub fn load(config: &BrokerConfig, now_ms: i64) -> io::Result<Topics> {
        let data_dir = config.data_dir.clone();
        let path = data_dir.join(METADATA_FILE);
        let file: MetadataFile = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => MetadataFile {
                cluster_id: if config.cluster_id.is_empty() {
                    new_cluster_id()
                } else {
                    config.cluster_id.clone()
                },
                topics: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        remove_deleted_dirs(&data_dir);
        let mut by_name = TopicMap::default();
        for record in &file.topics {
            let topic = open_topic(config, record, now_ms)?;
            by_name.insert(Arc::new(topic));
        }
        let topics = Topics {
            data_dir,
            cluster_id: file.cluster_id,
            by_name: RwLock::new(by_name),
            change: tokio::sync::Mutex::new(()),
        };
        topics.persist()?;
        Ok(topics)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.read().by_id.get(&id).cloned()
    }

    pub fn partition(&self, name: &str, index: i32) -> Option<Arc<Partition>> {
        let topic = self.get(name)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i).cloned())
    }

    /// All topics, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicMap> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a topic (unless `validate_only`) after checking its name and partition count.
    pub async fn create(
        &self,
        config: &BrokerConfig,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<Option<Arc<Topic>>, TopicError> {
        validate_topic_name(name)?;
        if partitions < 1 {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be at least 1, not {partitions}"
            )));
        }
        let _change = self.change.lock().await;
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        if validate_only {
            return Ok(None);
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs,
        };
        let topic = Arc::new(open_topic(config, &record, now_ms)?);
        self.write().insert(topic.clone());
        if let Err(e) = self.persist() {
            self.write().remove(name);
            return Err(e.into());
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(Some(topic))
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if name == crate::groups::OFFSETS_TOPIC {
            return Err(TopicError::Internal(name.to_string()));
        }
        let _change = self.change.lock().await;
        let topic = self
            .write()
            .remove(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        self.persist()?;
        for p in &topic.partitions {
            let dir = p.log().dir().to_path_buf();
            let doomed = dir.with_file_name(format!(
                "{}.{}-delete",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                topic.id.simple()
            ));
            fs::rename(&dir, &doomed)?;
            if let Err(e) = fs::remove_dir_all(&doomed) {
                tracing::warn!(dir = %doomed.display(), error = %e, "could not remove a deleted partition's files; removed at next start");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(topic)
    }

    /// Raises a topic's partition count to `count`.
    pub async fn add_partitions(
        &self,
        config: &BrokerConfig,
        name: &str,
        count: i32,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<(), TopicError> {
        let _change = self.change.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(TopicError::InvalidPartitions(format!(
                "topic currently has {current} partitions, {count} would not be an increase"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let mut partitions = topic.partitions.clone();
        let log_config = config.log_config(&topic.configs);
        for index in current..count {
            let dir = partition_dir(&self.data_dir, name, index);
            let (log, _) = PartitionLog::open(&dir, log_config.clone(), now_ms)?;
            partitions.push(Partition::start(name.to_string(), index, log));
        }
        let grown = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions,
            configs: topic.configs.clone(),
        });
        self.write().insert(grown);
        if let Err(e) = self.persist() {
            self.write().insert(topic);
            return Err(e.into());
        }
        tracing::info!(topic = name, partitions = count, "added partitions");
        Ok(())
    }

    fn persist(&self) -> io::Result<()> {
        let mut topics: Vec<TopicRecord> = self
            .read()
            .by_name
            .values()
            .map(|t| TopicRecord {
                name: t.name.clone(),
                id: t.id,
                partitions: t.partitions.len() as i32,
                configs: t.configs.clone(),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let file = MetadataFile {
            cluster_id: self.cluster_id.clone(),
            topics,
        };
        let text = toml::to_string(&file).map_err(io::Error::other)?;
        let tmp = self.data_dir.join(format!("{METADATA_FILE}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(
            b"# Written by Caudal: the topics of this broker. Do not edit while it runs.\n",
        )?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, self.data_dir.join(METADATA_FILE))?;
        fs::File::open(&self.data_dir)?.sync_all()
    }

    /// Syncs and checkpoints every partition (clean shutdown).
    pub fn close_all(&self) {
        for topic in self.all() {
            for p in &topic.partitions {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing the log failed");
                }
            }
        }
    }

    /// Compacts every partition of compacted topics that needs it.
    pub fn compact(&self, now_ms: i64) {
        for topic in self.all() {
            for p in &topic.partitions {
                match p.log().compact(now_ms) {
                    Ok(Some(r)) => tracing::info!(
                        topic = %p.topic,
                        partition = p.index,
                        records_removed = r.records_removed,
                        segments = format!("{} -> {}", r.segments_before, r.segments_after),
                        bytes = format!("{} -> {}", r.bytes_before, r.bytes_after),
                        "compacted"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed; retrying later")
                    }
                }
            }
        }
    }

    /// Applies retention to every partition of topics that delete old segments, and forgets
    /// idempotent producers silent for a day (Kafka's `producer.id.expiration.ms`).
    pub fn apply_retention(&self, now_ms: i64) {
        const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
        for topic in self.all() {
            for p in &topic.partitions {
                p.log().expire_producers(now_ms, PRODUCER_ID_EXPIRATION_MS);
                if p.log().config().compact {
                    continue;
                }
                match p.log().apply_retention(now_ms) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted old segments")
                    }
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}

fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

fn open_topic(config: &BrokerConfig, record: &TopicRecord, now_ms: i64) -> io::Result<Topic> {
    let log_config = config.log_config(&record.configs);
    let mut partitions = Vec::with_capacity(record.partitions.max(0) as usize);
    for index in 0..record.partitions {
        let dir = partition_dir(&config.data_dir, &record.name, index);
        let (log, report) = PartitionLog::open(&dir, log_config.clone(), now_ms)?;
        if report.truncated_bytes > 0 || !report.reasons.is_empty() {
            tracing::warn!(topic = %record.name, partition = index, truncated_bytes = report.truncated_bytes, details = ?report.reasons, "recovered partition log");
        } else if report.recovered_segments > 0 {
            tracing::debug!(topic = %record.name, partition = index, segments = report.recovered_segments, "scanned segments after the recovery point");
        }
        partitions.push(Partition::start(record.name.clone(), index, log));
    }
    Ok(Topic {
        name: record.name.clone(),
        id: record.id,
        partitions,
        configs: record.configs.clone(),
    })
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22 characters of URL-safe base64 of a UUID; a simple hex UUID serves.
    Uuid::new_v4().simple().to_string()
}

fn remove_deleted_dirs(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with("-delete") {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove a deleted partition's files");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "orders", "my.topic_v2-x", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "bad name",
            "emoji😀",
            "slash/x",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
