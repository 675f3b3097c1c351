//! Checkpoint files: an image written as metadata records, named after the log position it
//! covers, `<end offset:020>-<term:010>.checkpoint` (end offset = last index + 1, as Kafka
//! names its snapshots).
//!
//! The file is a run of record batches in the log's own format (see `entry.rs`), numbered from
//! offset 0 and stamped with the snapshot's term: a `header` record (format, last log id,
//! membership), `records` records of at most [`CHUNK_BYTES`] of JSON each, and a `footer` with
//! the record count, so a cut-off file is told from a whole one. Loading replays the records into
//! an empty delta: the same code path as applying the log.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::entry::{decode_batch, encode_batch, StoredLogId};
use super::files::{replace, sync_dir, Durability};
use super::{QuorumMembership, QuorumStoreError};
use crate::records::{EntryRecords, MetadataRecord};
use caudal_storage::batch::BatchIter;

const SUFFIX: &str = ".checkpoint";
const FORMAT: u16 = 1;
const KEY_HEADER: &[u8] = b"header";
const KEY_RECORDS: &[u8] = b"records";
const KEY_FOOTER: &[u8] = b"footer";
/// Records are grouped into batches of about this much JSON.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckpointHeader {
    pub format: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_id: Option<StoredLogId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_log_id: Option<StoredLogId>,
    pub membership: QuorumMembership,
}

impl CheckpointHeader {
    /// The file stem, also the snapshot id openraft carries.
    pub fn name(&self) -> String {
        let (end, term) = self
            .last_log_id
            .map_or((0, 0), |id| (id.index.saturating_add(1), id.term));
        format!("{end:020}-{term:010}")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Footer {
    records: u64,
}

/// A checkpoint's bytes.
pub(crate) fn encode(
    header: &CheckpointHeader,
    records: &[MetadataRecord],
    timestamp_ms: i64,
) -> Result<Vec<u8>, QuorumStoreError> {
    let term = header.last_log_id.map_or(0, |id| id.term);
    let mut out = Vec::new();
    let mut index = 0u64;
    let mut put = |out: &mut Vec<u8>, key: &[u8], value: &[u8]| -> Result<(), QuorumStoreError> {
        out.extend(encode_batch(
            StoredLogId { term, index },
            key,
            Some(value),
            timestamp_ms,
        )?);
        index += 1;
        Ok(())
    };
    let json = |what: &'static str| move |source| QuorumStoreError::Json { what, source };
    put(
        &mut out,
        KEY_HEADER,
        &serde_json::to_vec(header).map_err(json("a checkpoint header"))?,
    )?;
    let mut chunk: Vec<MetadataRecord> = Vec::new();
    let mut chunk_bytes = 0;
    for record in records {
        chunk_bytes += serde_json::to_vec(record).map_err(json("a record"))?.len();
        chunk.push(record.clone());
        if chunk_bytes >= CHUNK_BYTES {
            put(
                &mut out,
                KEY_RECORDS,
                &EntryRecords(std::mem::take(&mut chunk)).encode()?,
            )?;
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        put(&mut out, KEY_RECORDS, &EntryRecords(chunk).encode()?)?;
    }
    let footer = Footer {
        records: records.len() as u64,
    };
    put(
        &mut out,
        KEY_FOOTER,
        &serde_json::to_vec(&footer).map_err(json("a checkpoint footer"))?,
    )?;
    Ok(out)
}

/// Reads a checkpoint's bytes: its header and its records, checked whole.
pub(crate) fn decode(
    bytes: &[u8],
) -> Result<(CheckpointHeader, Vec<MetadataRecord>), QuorumStoreError> {
    let corrupt = |reason: &str| QuorumStoreError::corrupt("checkpoint", reason);
    let mut header: Option<CheckpointHeader> = None;
    let mut records = Vec::new();
    let mut footer: Option<Footer> = None;
    let mut iter = BatchIter::new(bytes);
    for (at, h) in iter.by_ref() {
        let len = h.total_len().map_err(|e| corrupt(&e.to_string()))?;
        let record = decode_batch(&bytes[at..at + len])?;
        let (key, value) = (record.key, record.value);
        let value = value.ok_or_else(|| corrupt("a record without a value"))?;
        if footer.is_some() {
            return Err(corrupt("records after the footer"));
        }
        match key.as_slice() {
            KEY_HEADER if header.is_none() => {
                let parsed: CheckpointHeader =
                    serde_json::from_slice(&value).map_err(|source| QuorumStoreError::Json {
                        what: "a checkpoint header",
                        source,
                    })?;
                if parsed.format > FORMAT {
                    return Err(corrupt(&format!(
                        "format {} is newer than this build reads ({FORMAT})",
                        parsed.format
                    )));
                }
                header = Some(parsed);
            }
            KEY_RECORDS if header.is_some() => records.extend(EntryRecords::decode(&value)?.0),
            KEY_FOOTER if header.is_some() => {
                footer = Some(serde_json::from_slice(&value).map_err(|source| {
                    QuorumStoreError::Json {
                        what: "a checkpoint footer",
                        source,
                    }
                })?)
            }
            _ => return Err(corrupt("batches out of order")),
        }
    }
    if iter.position() != bytes.len() {
        return Err(corrupt("bytes after the last whole batch"));
    }
    let header = header.ok_or_else(|| corrupt("no header"))?;
    let footer = footer.ok_or_else(|| corrupt("no footer: the file is cut off"))?;
    if footer.records != records.len() as u64 {
        return Err(corrupt(&format!(
            "the footer counts {} records, the file holds {}",
            footer.records,
            records.len()
        )));
    }
    Ok((header, records))
}

/// Writes a checkpoint durably under its name in `dir`, then deletes older ones.
pub(crate) fn write(
    dir: &Path,
    header: &CheckpointHeader,
    bytes: &[u8],
) -> Result<PathBuf, QuorumStoreError> {
    let name = header.name();
    let path = dir.join(format!("{name}{SUFFIX}"));
    replace(&path, bytes, Durability::Durable)
        .map_err(QuorumStoreError::io(format!("writing {}", path.display())))?;
    let mut removed = false;
    for (stem, old) in list(dir)? {
        if stem < name {
            fs::remove_file(&old)
                .map_err(QuorumStoreError::io(format!("removing {}", old.display())))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir).map_err(QuorumStoreError::io(format!("syncing {}", dir.display())))?;
    }
    Ok(path)
}

/// The newest checkpoint in `dir`, if any.
pub(crate) fn latest(dir: &Path) -> Result<Option<PathBuf>, QuorumStoreError> {
    Ok(list(dir)?.into_iter().max().map(|(_, path)| path))
}

/// Removes what an interrupted write left (`*.checkpoint.tmp`).
pub(crate) fn remove_leftovers(dir: &Path) -> Result<(), QuorumStoreError> {
    let entries =
        fs::read_dir(dir).map_err(QuorumStoreError::io(format!("listing {}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".checkpoint.tmp") {
            fs::remove_file(entry.path()).map_err(QuorumStoreError::io(format!(
                "removing {}",
                entry.path().display()
            )))?;
        }
    }
    Ok(())
}

/// Checkpoints in `dir` by stem. Zero-padded stems sort as (end offset, term).
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, QuorumStoreError> {
    let entries =
        fs::read_dir(dir).map_err(QuorumStoreError::io(format!("listing {}", dir.display())))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(SUFFIX) {
            if stem.len() == 31 && stem.as_bytes()[20] == b'-' {
                found.push((stem.to_string(), entry.path()));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record_sequence;
    use proptest::prelude::*;

    fn header(records: u64) -> CheckpointHeader {
        CheckpointHeader {
            format: FORMAT,
            last_log_id: Some(StoredLogId {
                term: 3,
                index: records + 10,
            }),
            membership_log_id: Some(StoredLogId { term: 1, index: 0 }),
            membership: QuorumMembership {
                configs: vec![[1, 2, 3].into()],
                nodes: [1, 2, 3].map(|id| (id, Default::default())).into(),
            },
        }
    }

    proptest! {
        #[test]
        fn a_checkpoint_gives_back_its_header_and_records(records in record_sequence(40)) {
            let header = header(records.len() as u64);
            let bytes = encode(&header, &records, 0).unwrap();
            let (back, back_records) = decode(&bytes).unwrap();
            prop_assert_eq!(back, header);
            prop_assert_eq!(back_records, records);
        }
    }

    #[test]
    fn a_cut_off_checkpoint_is_refused() {
        let records: Vec<MetadataRecord> = (0..3)
            .map(|i| MetadataRecord::ClusterId {
                v: 0,
                cluster_id: format!("c{i}"),
            })
            .collect();
        let bytes = encode(&header(3), &records, 0).unwrap();
        for cut in [1, 30, bytes.len() / 2] {
            assert!(
                decode(&bytes[..bytes.len() - cut]).is_err(),
                "a checkpoint cut {cut} bytes short was read"
            );
        }
    }

    #[test]
    fn newer_checkpoints_replace_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let older = header(1);
        let newer = header(2);
        write(dir.path(), &newer, &encode(&newer, &[], 0).unwrap()).unwrap();
        // An older one written late (a slow build) does not displace the newer.
        write(dir.path(), &older, &encode(&older, &[], 0).unwrap()).unwrap();
        let latest = latest(dir.path()).unwrap().unwrap();
        assert!(latest.ends_with(format!("{}{SUFFIX}", newer.name())));
        let third = header(5);
        write(dir.path(), &third, &encode(&third, &[], 0).unwrap()).unwrap();
        let names: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(names, [third.name()]);
        assert_eq!(third.name(), "00000000000000000016-0000000003");
    }
}
