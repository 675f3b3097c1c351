//! The topics this broker hosts: names, ids, partitions and per-topic config overrides, kept in
//! `caudal-metadata.toml` in the data directory and written atomically on every change.
//!
//! Admin changes happen wholly or not at all, in memory and on disk. A new topic's partition
//! directories are made first and the topic list written after; if either fails, the
//! directories go and the topic never appears. A deletion writes the topic list first, then
//! renames the partition directories aside (`<dir>.<topic id>-delete`, as Kafka marks them) and
//! removes them in the background. Each partition directory carries its topic's id
//! (`partition.metadata`, as Kafka's), so a directory that belongs to no topic, or to an older
//! topic of the same name, is never adopted: at start it is renamed aside (`-stray`, as Kafka's
//! KIP-858) and reported.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use caudal_storage::{Disk, PartitionLog};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::partition_dirs::{
    self, open_existing_log, partition_dir, read_partition_metadata, set_aside,
    write_partition_metadata,
};
use crate::replica_manager::ReplicaManager;

const METADATA_FILE: &str = "caudal-metadata.toml";

/// A topic as the cluster knows it. Its partitions' logs are the replica manager's.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partition_count: i32,
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    /// Whether the topic has a partition of this index.
    pub fn has_partition(&self, index: i32) -> bool {
        (0..self.partition_count).contains(&index)
    }
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
    InvalidName(String, caudal_metadata::controller::InvalidTopicName),
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

/// Kafka's topic name rules, as the controller applies them: one copy of the rules, in
/// `caudal-metadata`, so a name this broker accepts is one the cluster accepts.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    caudal_metadata::controller::validate_topic_name(name)
        .map_err(|why| TopicError::InvalidName(name.to_string(), why))
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
    /// Where the partition logs keep their files (with the broker's budget of open files).
    disk: Arc<dyn Disk>,
    /// Where the opened partitions go.
    replicas: Arc<ReplicaManager>,
    cluster_id: String,
    by_name: RwLock<TopicMap>,
    /// Serialises changes so the file always matches the map.
    change: tokio::sync::Mutex<()>,
}

impl Topics {
    /// Loads the topic list and opens (recovering as needed) every partition's log, handing
    /// the partitions to `replicas`.
    pub fn load(
        config: &BrokerConfig,
        disk: Arc<dyn Disk>,
        replicas: Arc<ReplicaManager>,
        now_ms: i64,
    ) -> io::Result<Topics> {
        let data_dir = config.data_dir.clone();
        let path = data_dir.join(METADATA_FILE);
        let existed = path.exists();
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
        partition_dirs::remove_leftover_dirs(&data_dir, &[partition_dirs::DELETED_SUFFIX]);
        // Before anything opens them: directories of a topic whose creation or deletion a
        // crash cut short, or of an earlier topic of the same name.
        let owners: HashMap<&str, &TopicRecord> =
            file.topics.iter().map(|t| (t.name.as_str(), t)).collect();
        partition_dirs::set_aside_strays(&data_dir, |topic, index| {
            owners
                .get(topic)
                .filter(|t| (0..t.partitions).contains(&index))
                .map(|t| t.id)
        });
        let mut by_name = TopicMap::default();
        for record in &file.topics {
            replicas.add(open_topic(config, &disk, record, now_ms)?);
            by_name.insert(Arc::new(Topic {
                name: record.name.clone(),
                id: record.id,
                partition_count: record.partitions,
                configs: record.configs.clone(),
            }));
        }
        let topics = Topics {
            data_dir,
            disk,
            replicas,
            cluster_id: file.cluster_id,
            by_name: RwLock::new(by_name),
            change: tokio::sync::Mutex::new(()),
        };
        if !existed {
            // A new data directory: write the cluster id down. An existing list is not
            // rewritten, so a broker restarts on a full disk.
            topics.persist(topics.records())?;
        }
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
        let opened = open_new_partitions(config, &self.disk, &record, 0, now_ms);
        let partitions_opened = match opened {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(topic = name, partitions, error = %e, "creating topic failed; nothing of it was kept");
                return Err(e.into());
            }
        };
        let mut records = self.records();
        records.push(record.clone());
        if let Err(e) = self.persist(records) {
            remove_partition_dirs(&partitions_opened);
            tracing::warn!(topic = name, partitions, error = %e, "creating topic failed: the topic list could not be written; nothing of it was kept");
            return Err(e.into());
        }
        let topic = Arc::new(Topic {
            name: record.name,
            id: record.id,
            partition_count: record.partitions,
            configs: record.configs,
        });
        // Replicas first, so that a request finding the topic finds its partitions.
        self.replicas.add(partitions_opened);
        self.write().insert(topic.clone());
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
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let records = self
            .records()
            .into_iter()
            .filter(|r| r.name != name)
            .collect();
        if let Err(e) = self.persist(records) {
            tracing::warn!(topic = name, error = %e, "deleting topic failed: the topic list could not be written; the topic and its data are kept");
            return Err(e.into());
        }
        self.write().remove(name);
        // The topic is gone; its files go in the background.
        let retired = self.replicas.remove_topic(topic.id, topic.partition_count);
        partition_dirs::delete_partitions(&retired, "the topic was deleted");
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
        let current = topic.partition_count;
        if count <= current {
            return Err(TopicError::InvalidPartitions(format!(
                "topic currently has {current} partitions, {count} would not be an increase"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let record = TopicRecord {
            name: topic.name.clone(),
            id: topic.id,
            partitions: count,
            configs: topic.configs.clone(),
        };
        let added = match open_new_partitions(config, &self.disk, &record, current, now_ms) {
            Ok(added) => added,
            Err(e) => {
                tracing::warn!(topic = name, partitions = count, error = %e, "adding partitions failed; nothing of them was kept");
                return Err(e.into());
            }
        };
        let records = self
            .records()
            .into_iter()
            .map(|r| if r.name == name { record.clone() } else { r })
            .collect();
        if let Err(e) = self.persist(records) {
            remove_partition_dirs(&added);
            tracing::warn!(topic = name, partitions = count, error = %e, "adding partitions failed: the topic list could not be written; nothing of them was kept");
            return Err(e.into());
        }
        self.replicas.add(added);
        self.write().insert(Arc::new(Topic {
            name: record.name,
            id: record.id,
            partition_count: record.partitions,
            configs: record.configs,
        }));
        tracing::info!(topic = name, partitions = count, "added partitions");
        Ok(())
    }

    /// The topic list as it is in memory.
    fn records(&self) -> Vec<TopicRecord> {
        self.read()
            .by_name
            .values()
            .map(|t| TopicRecord {
                name: t.name.clone(),
                id: t.id,
                partitions: t.partition_count,
                configs: t.configs.clone(),
            })
            .collect()
    }

    /// Writes `topics` as the topic list, atomically: the old file stays whole if this fails.
    fn persist(&self, mut topics: Vec<TopicRecord>) -> io::Result<()> {
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let file = MetadataFile {
            cluster_id: self.cluster_id.clone(),
            topics,
        };
        let text = toml::to_string(&file).map_err(io::Error::other)?;
        let tmp = self.data_dir.join(format!("{METADATA_FILE}.tmp"));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(
                b"# Written by Caudal: the topics of this broker. Do not edit while it runs.\n",
            )?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            // Give back what the partial file took: the disk may be full.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, self.data_dir.join(METADATA_FILE))?;
        fs::File::open(&self.data_dir)?.sync_all()
    }
}

/// Makes the partitions `first..record.partitions` of a topic, each in a new directory that
/// carries the topic's id. On any failure, every directory made here is removed again.
fn open_new_partitions(
    config: &BrokerConfig,
    disk: &Arc<dyn Disk>,
    record: &TopicRecord,
    first: i32,
    now_ms: i64,
) -> io::Result<Vec<Arc<Partition>>> {
    let log_config = config.log_config(&record.configs);
    let mut partitions = Vec::with_capacity((record.partitions - first).max(0) as usize);
    for index in first..record.partitions {
        let dir = partition_dir(&config.data_dir, &record.name, index);
        let opened = (|| {
            if dir.exists() {
                // Not ours (it belongs to no topic): keep it, but never adopt it.
                set_aside(&dir, "stray", "a directory of that name was already there")?;
            }
            let (log, _) = PartitionLog::open_on(disk.clone(), &dir, log_config.clone(), now_ms)?;
            write_partition_metadata(&dir, record.id)?;
            Ok(log)
        })();
        match opened {
            Ok(log) => {
                partitions.push(Partition::start(record.name.clone(), record.id, index, log))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                remove_partition_dirs(&partitions);
                return Err(e);
            }
        }
    }
    Ok(partitions)
}

/// Removes the directories of partitions that were made but will not be kept.
fn remove_partition_dirs(partitions: &[Arc<Partition>]) {
    for p in partitions {
        let dir = {
            let mut log = p.log();
            log.retire("its topic was not created");
            log.dir().to_path_buf()
        };
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a partition directory made for a failed change; it is set aside at the next start");
        }
    }
}

/// Opens the partitions of a topic of the list, recovering their logs.
fn open_topic(
    config: &BrokerConfig,
    disk: &Arc<dyn Disk>,
    record: &TopicRecord,
    now_ms: i64,
) -> io::Result<Vec<Arc<Partition>>> {
    let log_config = config.log_config(&record.configs);
    let mut partitions = Vec::with_capacity(record.partitions.max(0) as usize);
    for index in 0..record.partitions {
        let dir = partition_dir(&config.data_dir, &record.name, index);
        let log = open_existing_log(disk, &dir, log_config.clone(), now_ms, &record.name, index)?;
        if read_partition_metadata(&dir).is_none() {
            write_partition_metadata(&dir, record.id)?;
        }
        partitions.push(Partition::start(record.name.clone(), record.id, index, log));
    }
    Ok(partitions)
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22 characters of URL-safe base64 of a UUID; a simple hex UUID serves.
    Uuid::new_v4().simple().to_string()
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
            "__cluster_metadata",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
