//! How a Raft entry is stored: one uncompressed record batch (magic 2) holding one record whose
//! key names the entry's kind and whose value is the JSON of Caudal's own payload type.
//!
//! One record per batch keeps offset == index, and puts the term where Kafka puts an epoch (the
//! batch's partition leader epoch), so the metadata log reads like any other Kafka log. The same
//! batches carry checkpoints (see `snapshot.rs`); entries between nodes carry the same kind and
//! JSON value (see `wire.rs`).

use caudal_storage::batch::{read_varint, read_varlong, BATCH_HEADER_LEN, LOG_OVERHEAD};
use caudal_storage::{validate_batch, BatchHeader};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use serde::{Deserialize, Serialize};

use super::{QuorumMembership, QuorumStoreError, QuorumTypes};
use crate::records::EntryRecords;

pub(crate) const KIND_BLANK: &[u8] = b"blank";
pub(crate) const KIND_RECORDS: &[u8] = b"records";
pub(crate) const KIND_MEMBERSHIP: &[u8] = b"membership";

/// A log id as Caudal stores it: Kafka's (epoch, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct StoredLogId {
    pub term: u64,
    pub index: u64,
}

impl From<&LogId<u64>> for StoredLogId {
    fn from(id: &LogId<u64>) -> Self {
        StoredLogId {
            term: id.leader_id.term,
            index: id.index,
        }
    }
}

impl StoredLogId {
    pub fn to_raft(self) -> LogId<u64> {
        // With `single-term-leader` a committed leader id is the term alone; the node id is
        // ignored.
        LogId::new(CommittedLeaderId::new(self.term, 0), self.index)
    }
}

/// A vote as Caudal stores it and sends it to peers.
///
/// A committed vote names its leader: openraft takes that for granted (it unwraps the leader of
/// a committed vote), so a vote read from a peer or a file that breaks the rule is refused when
/// it is decoded, never handed to Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VoteFields")]
pub(crate) struct StoredVote {
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voted_for: Option<u64>,
    pub committed: bool,
}

/// [`StoredVote`]'s fields as they are read, before the rule is checked.
#[derive(Deserialize)]
struct VoteFields {
    term: u64,
    #[serde(default)]
    voted_for: Option<u64>,
    committed: bool,
}

impl TryFrom<VoteFields> for StoredVote {
    type Error = &'static str;

    fn try_from(v: VoteFields) -> Result<StoredVote, &'static str> {
        if v.committed && v.voted_for.is_none() {
            return Err("a committed vote must name the node voted for");
        }
        Ok(StoredVote {
            term: v.term,
            voted_for: v.voted_for,
            committed: v.committed,
        })
    }
}

impl From<&Vote<u64>> for StoredVote {
    fn from(vote: &Vote<u64>) -> Self {
        StoredVote {
            term: vote.leader_id.term,
            voted_for: vote.leader_id.voted_for,
            committed: vote.committed,
        }
    }
}

impl StoredVote {
    pub fn to_raft(self) -> Vote<u64> {
        let mut vote = Vote::default();
        vote.leader_id.term = self.term;
        vote.leader_id.voted_for = self.voted_for;
        vote.committed = self.committed;
        vote
    }
}

impl From<&Membership<u64, super::QuorumNode>> for QuorumMembership {
    fn from(m: &Membership<u64, super::QuorumNode>) -> Self {
        QuorumMembership {
            configs: m.get_joint_config().clone(),
            nodes: m.nodes().map(|(id, node)| (*id, node.clone())).collect(),
        }
    }
}

impl QuorumMembership {
    pub(crate) fn to_raft(&self) -> Membership<u64, super::QuorumNode> {
        Membership::new(self.configs.clone(), self.nodes.clone())
    }
}

/// Encodes `entry` as the batch the log stores at offset `index`, epoch `term`.
pub(crate) fn encode_entry(
    entry: &Entry<QuorumTypes>,
    timestamp_ms: i64,
) -> Result<Vec<u8>, QuorumStoreError> {
    let (kind, value) = encode_payload(&entry.payload)?;
    let id = StoredLogId::from(&entry.log_id);
    encode_batch(id, kind, value.as_deref(), timestamp_ms)
}

/// An entry's kind and the JSON of its payload, as the log stores them (and the network sends
/// them).
pub(crate) fn encode_payload(
    payload: &EntryPayload<QuorumTypes>,
) -> Result<(&'static [u8], Option<Vec<u8>>), QuorumStoreError> {
    Ok(match payload {
        EntryPayload::Blank => (KIND_BLANK, None),
        EntryPayload::Normal(records) => (KIND_RECORDS, Some(records.encode()?)),
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(&QuorumMembership::from(m)).map_err(|source| {
                QuorumStoreError::Json {
                    what: "a membership",
                    source,
                }
            })?;
            (KIND_MEMBERSHIP, Some(json))
        }
    })
}

/// Decodes an entry from its stored batch.
pub(crate) fn decode_entry(batch: &[u8]) -> Result<Entry<QuorumTypes>, QuorumStoreError> {
    let BatchRecord { id, key, value } = decode_batch(batch)?;
    let payload = decode_payload(id, &key, value.as_deref())?;
    Ok(Entry {
        log_id: id.to_raft(),
        payload,
    })
}

/// The payload of entry `id` from its kind and JSON value: the inverse of [`encode_payload`].
pub(crate) fn decode_payload(
    id: StoredLogId,
    kind: &[u8],
    value: Option<&[u8]>,
) -> Result<EntryPayload<QuorumTypes>, QuorumStoreError> {
    let what = || format!("metadata log entry {}", id.index);
    Ok(match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_RECORDS => {
            let value = value.ok_or_else(|| QuorumStoreError::corrupt(what(), "no value"))?;
            EntryPayload::Normal(EntryRecords::decode(value)?)
        }
        KIND_MEMBERSHIP => {
            let value = value.ok_or_else(|| QuorumStoreError::corrupt(what(), "no value"))?;
            let m: QuorumMembership =
                serde_json::from_slice(value).map_err(|source| QuorumStoreError::Json {
                    what: "a membership entry",
                    source,
                })?;
            EntryPayload::Membership(m.to_raft())
        }
        other => {
            return Err(QuorumStoreError::corrupt(
                what(),
                format!("unknown kind {:?}", String::from_utf8_lossy(other)),
            ))
        }
    })
}

/// One uncompressed batch of one record: offset `id.index`, epoch `id.term`.
pub(crate) fn encode_batch(
    id: StoredLogId,
    key: &[u8],
    value: Option<&[u8]>,
    timestamp_ms: i64,
) -> Result<Vec<u8>, QuorumStoreError> {
    let base_offset = offset(id.index)?;
    let epoch = epoch(id.term)?;
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, key.len() as i64);
    record.extend_from_slice(key);
    match value {
        Some(v) => {
            put_varint(&mut record, v.len() as i64);
            record.extend_from_slice(v);
        }
        None => put_varint(&mut record, -1),
    }
    put_varint(&mut record, 0); // headers
    let mut records = Vec::with_capacity(record.len() + 5);
    put_varint(&mut records, record.len() as i64);
    records.extend_from_slice(&record);

    let batch_length = i32::try_from(BATCH_HEADER_LEN - LOG_OVERHEAD + records.len())
        .map_err(|_| QuorumStoreError::corrupt("an entry", "larger than 2 GiB"))?;
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + records.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&batch_length.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // crc, below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, create time
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&1i32.to_be_bytes()); // records count
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(b)
}

/// The one record of a stored batch, with the batch's position.
#[derive(Debug)]
pub(crate) struct BatchRecord {
    pub id: StoredLogId,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The log id, key and value of a one-record batch, its CRC checked.
pub(crate) fn decode_batch(batch: &[u8]) -> Result<BatchRecord, QuorumStoreError> {
    let header = BatchHeader::parse(batch)
        .map_err(|e| QuorumStoreError::corrupt("a metadata batch", e.to_string()))?;
    let what = || format!("metadata batch at offset {}", header.base_offset());
    let valid =
        validate_batch(batch).map_err(|e| QuorumStoreError::corrupt(what(), e.to_string()))?;
    if header.compression() != 0 || header.records_count() != 1 {
        return Err(QuorumStoreError::corrupt(
            what(),
            "not one uncompressed record",
        ));
    }
    let (index, term) = (
        u64::try_from(header.base_offset()),
        u64::try_from(header.partition_leader_epoch()),
    );
    let (Ok(index), Ok(term)) = (index, term) else {
        return Err(QuorumStoreError::corrupt(
            what(),
            "negative offset or epoch",
        ));
    };
    let mut rest = &batch[BATCH_HEADER_LEN..valid.total_len];
    let bad = || QuorumStoreError::corrupt(what(), "the record does not parse");
    let (_, used) = read_varint(rest).ok_or_else(bad)?; // record length
    rest = &rest[used..];
    rest = rest.get(1..).ok_or_else(bad)?; // attributes
    let (_, used) = read_varlong(rest).ok_or_else(bad)?; // timestamp delta
    rest = &rest[used..];
    let (_, used) = read_varint(rest).ok_or_else(bad)?; // offset delta
    rest = &rest[used..];
    let (key, after) = take_bytes(rest).ok_or_else(bad)?;
    let (value, _) = take_bytes(after).ok_or_else(bad)?;
    Ok(BatchRecord {
        id: StoredLogId { term, index },
        key: key.ok_or_else(bad)?.to_vec(),
        value: value.map(<[u8]>::to_vec),
    })
}

/// A varint-length-prefixed byte string (-1 is null) and what follows it.
fn take_bytes(bytes: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (len, used) = read_varint(bytes)?;
    let rest = &bytes[used..];
    if len < 0 {
        return Some((None, rest));
    }
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| (Some(&rest[..len]), &rest[len..]))
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn offset(index: u64) -> Result<i64, QuorumStoreError> {
    i64::try_from(index).map_err(|_| QuorumStoreError::IndexTooLarge(index))
}

pub(crate) fn epoch(term: u64) -> Result<i32, QuorumStoreError> {
    i32::try_from(term).map_err(|_| QuorumStoreError::TermTooLarge(term))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::QuorumNode;
    use crate::records::MetadataRecord;
    use std::collections::{BTreeMap, BTreeSet};

    fn id(term: u64, index: u64) -> LogId<u64> {
        StoredLogId { term, index }.to_raft()
    }

    #[test]
    fn every_kind_of_entry_round_trips_through_its_batch() {
        let membership = QuorumMembership {
            configs: vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            nodes: BTreeMap::from([
                (1, QuorumNode::default()),
                (2, QuorumNode::default()),
                (3, QuorumNode::default()),
                (
                    7,
                    QuorumNode {
                        address: Some("broker7:9092".into()),
                    },
                ),
            ]),
        };
        let entries: Vec<Entry<QuorumTypes>> = vec![
            Entry {
                log_id: id(3, 17),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(4, 18),
                payload: EntryPayload::Normal(EntryRecords(vec![MetadataRecord::ClusterId {
                    v: 0,
                    cluster_id: "abc".into(),
                }])),
            },
            Entry {
                log_id: id(4, 19),
                payload: EntryPayload::Membership(membership.to_raft()),
            },
        ];
        for entry in entries {
            let batch = encode_entry(&entry, 1_000).unwrap();
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(header.base_offset() as u64, entry.log_id.index);
            assert_eq!(
                header.partition_leader_epoch() as u64,
                entry.log_id.leader_id.term
            );
            let back = decode_entry(&batch).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(
                format!("{:?}", back.payload),
                format!("{:?}", entry.payload)
            );
        }
        assert_eq!(
            QuorumMembership::from(&membership.to_raft()),
            membership,
            "our membership survives openraft's"
        );
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_crc() {
        let entry: Entry<QuorumTypes> = Entry {
            log_id: id(1, 1),
            payload: EntryPayload::Blank,
        };
        let mut batch = encode_entry(&entry, 0).unwrap();
        let last = batch.len() - 2;
        batch[last] ^= 1;
        assert!(decode_entry(&batch).is_err());
    }
}
