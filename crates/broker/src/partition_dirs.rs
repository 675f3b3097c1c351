//! Partition directories in the data directory, whoever decides which partitions exist (the
//! topic list of this node, or the cluster's metadata image): their names, the topic id each
//! carries (`partition.metadata`, as Kafka's), and the names they are set aside under.
//!
//! A directory that belongs to no partition of this broker, or to another topic of the same
//! name, is never adopted: it is renamed aside as `<dir>.<id>-stray` (Kafka's KIP-858) and
//! reported. A deleted partition's directory is renamed `<dir>.<topic id>-delete` and removed in
//! the background; one left by a crash is removed at the next start.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caudal_storage::{Disk, LogConfig, PartitionLog};
use uuid::Uuid;

use crate::partition::Partition;
use crate::topics::validate_topic_name;

/// Beside each partition's segments: the id of the topic it belongs to.
const PARTITION_METADATA_FILE: &str = "partition.metadata";

/// The suffix of a directory set aside after its topic was deleted.
pub(crate) const DELETED_SUFFIX: &str = "delete";

/// The suffix of a partition directory being made; one a crash left is removed at start.
pub(crate) const UNFINISHED_SUFFIX: &str = "new";

pub(crate) fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// The topic name and partition index a directory name stands for, if it is one a partition
/// directory can have.
fn parse_partition_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, index) = name.rsplit_once('-')?;
    let index = index.parse::<i32>().ok()?;
    validate_topic_name(topic).ok()?;
    Some((topic, index))
}

/// `<dir>.<id>-<suffix>`: a partition directory set aside under a name no topic can have.
pub(crate) fn aside_name(dir: &Path, id: Uuid, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tail = format!(".{}-{suffix}", id.simple());
    // A file name has at most 255 bytes: cut a long name (as Kafka does for its `-delete`
    // directories) rather than fail to make or rename the directory.
    let mut keep = name.len().min(MAX_FILE_NAME.saturating_sub(tail.len()));
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    dir.with_file_name(format!("{}{tail}", &name[..keep]))
}

/// The longest file name Linux file systems take, in bytes.
const MAX_FILE_NAME: usize = 255;

/// Renames a directory aside as `-<suffix>` and says so.
pub(crate) fn set_aside(dir: &Path, suffix: &str, why: &str) -> io::Result<()> {
    let aside = aside_name(dir, Uuid::new_v4(), suffix);
    fs::rename(dir, &aside)?;
    tracing::warn!(dir = %dir.display(), moved_to = %aside.display(), reason = why, "partition directory set aside, not adopted; remove it when it is no longer needed");
    Ok(())
}

/// Not fsync'd: losing it in a crash is harmless. A directory without it is adopted by the
/// partition of its name, or set aside if there is no such partition; and ten thousand fsyncs
/// would make a large topic slow to create.
pub(crate) fn write_partition_metadata(dir: &Path, topic_id: Uuid) -> io::Result<()> {
    let path = dir.join(PARTITION_METADATA_FILE);
    let mut f = fs::File::create(&path)?;
    write!(f, "version: 0\ntopic_id: {}\n", topic_id.hyphenated())
}

/// Makes the directory `dir` of a new partition of topic `topic_id`, carrying its id, in one
/// step: made under a temporary name, then renamed into place, so that a failure or a crash
/// never leaves a partition directory without its topic's id. On failure nothing is left.
pub(crate) fn create_partition_dir(dir: &Path, topic_id: Uuid) -> io::Result<()> {
    let unfinished = aside_name(dir, Uuid::new_v4(), UNFINISHED_SUFFIX);
    let made = fs::create_dir(&unfinished)
        .and_then(|()| write_partition_metadata(&unfinished, topic_id))
        .and_then(|()| fs::rename(&unfinished, dir));
    if made.is_err() {
        let _ = fs::remove_dir_all(&unfinished);
    }
    made
}

/// The topic id a partition directory carries, if it has one.
pub(crate) fn read_partition_metadata(dir: &Path) -> Option<Uuid> {
    let text = fs::read_to_string(dir.join(PARTITION_METADATA_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
}

/// Sets aside the partition directories that `owner` (topic name, index -> the id of the topic
/// whose partition this broker keeps there) gives to no topic, or to another topic than the id
/// they carry, and reports the ones set aside before. A directory that carries no id is adopted
/// by its owner (it was made before directories carried their topic's id). Returns how many
/// directories were set aside by this call.
pub(crate) fn set_aside_strays(
    data_dir: &Path,
    owner: impl Fn(&str, i32) -> Option<Uuid>,
) -> usize {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return 0;
    };
    let (mut kept_aside, mut set_aside_now) = (0usize, 0usize);
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == caudal_metadata::quorum::METADATA_LOG_DIR {
            continue; // the metadata log, not a partition of a topic
        }
        if name.ends_with("-stray") {
            kept_aside += 1;
            continue;
        }
        let Some((topic, index)) = parse_partition_dir(&name) else {
            continue;
        };
        let why = match (owner(topic, index), read_partition_metadata(&path)) {
            (None, _) => "no topic has this partition",
            (Some(owner), Some(id)) if id != owner => {
                "it belongs to an earlier topic of the same name"
            }
            (Some(owner), None) => {
                if let Err(e) = write_partition_metadata(&path, owner) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not record the topic id of a partition directory");
                }
                continue;
            }
            (Some(_), Some(_)) => continue,
        };
        match set_aside(&path, "stray", why) {
            Ok(()) => set_aside_now += 1,
            Err(e) => {
                tracing::error!(dir = %path.display(), error = %e, "could not set aside a partition directory that belongs to no topic")
            }
        }
    }
    if kept_aside + set_aside_now > 0 {
        tracing::warn!(
            dir = %data_dir.display(),
            directories = kept_aside + set_aside_now,
            "partition directories set aside as -stray are kept, not served; remove them when no longer needed"
        );
    }
    set_aside_now
}

/// Removes the directories a crash left under a name ending in `-<suffix>` for one of
/// `suffixes` (a deleted partition's files, a partition directory never finished).
pub(crate) fn remove_leftover_dirs(data_dir: &Path, suffixes: &[&str]) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = suffixes
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|n| n.ends_with('-')));
        if leftover && entry.path().is_dir() {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove a partition directory left by an earlier run");
            }
        }
    }
}

/// Opens (recovering as needed) the log of a partition directory that exists, and says what
/// recovery found.
pub(crate) fn open_existing_log(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    config: LogConfig,
    now_ms: i64,
    topic: &str,
    index: i32,
) -> io::Result<PartitionLog> {
    let (log, report) = PartitionLog::open_on(disk.clone(), dir, config, now_ms)?;
    if report.truncated_bytes > 0 || !report.reasons.is_empty() {
        tracing::warn!(topic, partition = index, truncated_bytes = report.truncated_bytes, details = ?report.reasons, "recovered partition log");
    } else if report.recovered_segments > 0 {
        tracing::debug!(
            topic,
            partition = index,
            segments = report.recovered_segments,
            "scanned segments after the recovery point"
        );
    }
    Ok(log)
}

/// Stops the logs of deleted partitions, renames their directories aside
/// (`<dir>.<topic id>-delete`) and removes them in the background. A directory that cannot be
/// renamed stays; the next start sets it aside.
pub(crate) fn delete_partitions(partitions: &[Arc<Partition>], reason: &str) {
    let mut doomed = Vec::with_capacity(partitions.len());
    for p in partitions {
        // Requests waiting on it answer now, and new ones are turned away before the log goes.
        p.become_follower();
        let dir = {
            let mut log = p.log();
            log.retire(reason);
            log.dir().to_path_buf()
        };
        let aside = aside_name(&dir, p.topic_id, DELETED_SUFFIX);
        match fs::rename(&dir, &aside) {
            Ok(()) => doomed.push(aside),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not rename a deleted partition's directory aside; it is set aside at the next start")
            }
        }
    }
    if doomed.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for dir in doomed {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted partition's files; removed at the next start");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_of_the_longest_topic_name_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition_dir(dir.path(), &"y".repeat(249), 0);
        let aside = aside_name(&partition, Uuid::new_v4(), UNFINISHED_SUFFIX);
        let name = aside.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.len() <= MAX_FILE_NAME, "{} bytes", name.len());
        assert!(name.ends_with("-new") && name.starts_with("yyy"), "{name}");
        assert_eq!(parse_partition_dir(&name), None);
        create_partition_dir(&partition, Uuid::new_v4()).unwrap();
        assert!(partition.is_dir());
    }
}
