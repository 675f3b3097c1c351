//! Records of `__consumer_offsets`, in Kafka's own key and value schemas, so the topic reads
//! the same as Kafka's:
//!
//! - offset commit: key v1 `(group, topic, partition)`, value v3
//!   `(offset, leader_epoch, metadata, commit_timestamp)`;
//! - group metadata: key v2 `(group)`, value v3 `(protocol_type, generation, protocol, leader,
//!   current_state_timestamp, members[...])`.
//!
//! A null value is a tombstone: the offset or group is gone, and compaction drops the key.

use bytes::{Buf, BufMut, Bytes, BytesMut};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

/// The `__consumer_offsets` partition that holds a group: Java's `String.hashCode` of the group
/// id, made non-negative, modulo the partition count, exactly as Kafka computes it.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let hash = group_id
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash & 0x7fff_ffff) % partitions.max(1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberRecord {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub protocol_type: String,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<GroupMemberRecord>,
}

/// One `__consumer_offsets` record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group_id: String,
        topic: String,
        partition: i32,
        value: Option<OffsetRecord>,
    },
    Group {
        group_id: String,
        value: Option<GroupRecord>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown value version {0}")]
    UnknownValueVersion(i16),
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("record has no key")]
    NoKey,
    #[error("unknown transaction state {0}")]
    UnknownTxnState(i8),
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    out.put_i16(s.len().min(i16::MAX as usize) as i16);
    out.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

pub(crate) fn need(buf: &Bytes, n: usize) -> Result<(), RecordError> {
    if buf.remaining() < n {
        Err(RecordError::Truncated)
    } else {
        Ok(())
    }
}

pub(crate) fn get_i16(buf: &mut Bytes) -> Result<i16, RecordError> {
    need(buf, 2)?;
    Ok(buf.get_i16())
}
pub(crate) fn get_i32(buf: &mut Bytes) -> Result<i32, RecordError> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}
pub(crate) fn get_i64(buf: &mut Bytes) -> Result<i64, RecordError> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}
pub(crate) fn get_nullable_str(buf: &mut Bytes) -> Result<Option<String>, RecordError> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    need(buf, len as usize)?;
    let raw = buf.split_to(len as usize);
    String::from_utf8(raw.to_vec())
        .map(Some)
        .map_err(|_| RecordError::NotUtf8)
}
pub(crate) fn get_str(buf: &mut Bytes) -> Result<String, RecordError> {
    Ok(get_nullable_str(buf)?.unwrap_or_default())
}
fn get_bytes(buf: &mut Bytes) -> Result<Bytes, RecordError> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    need(buf, len as usize)?;
    Ok(buf.split_to(len as usize))
}

impl OffsetsRecord {
    /// The record's key and value (None for a tombstone).
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let mut key = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group_id,
                topic,
                partition,
                value,
            } => {
                key.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut key, group_id);
                put_str(&mut key, topic);
                key.put_i32(*partition);
                let value = value.as_ref().map(|v| {
                    let mut out = BytesMut::new();
                    out.put_i16(OFFSET_VALUE_VERSION);
                    out.put_i64(v.offset);
                    out.put_i32(v.leader_epoch);
                    put_str(&mut out, &v.metadata);
                    out.put_i64(v.commit_timestamp);
                    out.freeze()
                });
                (key.freeze(), value)
            }
            OffsetsRecord::Group { group_id, value } => {
                key.put_i16(GROUP_KEY_VERSION);
                put_str(&mut key, group_id);
                let value = value.as_ref().map(|g| {
                    let mut out = BytesMut::new();
                    out.put_i16(GROUP_VALUE_VERSION);
                    put_str(&mut out, &g.protocol_type);
                    out.put_i32(g.generation_id);
                    put_nullable_str(&mut out, g.protocol_name.as_deref());
                    put_nullable_str(&mut out, g.leader.as_deref());
                    out.put_i64(g.current_state_timestamp);
                    out.put_i32(g.members.len() as i32);
                    for m in &g.members {
                        put_str(&mut out, &m.member_id);
                        put_nullable_str(&mut out, m.group_instance_id.as_deref());
                        put_str(&mut out, &m.client_id);
                        put_str(&mut out, &m.client_host);
                        out.put_i32(m.rebalance_timeout_ms);
                        out.put_i32(m.session_timeout_ms);
                        put_bytes(&mut out, &m.subscription);
                        put_bytes(&mut out, &m.assignment);
                    }
                    out.freeze()
                });
                (key.freeze(), value)
            }
        }
    }

    /// Decodes a record read back from `__consumer_offsets`. Key versions 0 and 1 are offset
    /// commits, 2 is group metadata; offset values v1 and v3 and group values v0 to v3 are read.
    pub fn decode(key: Option<Bytes>, value: Option<Bytes>) -> Result<OffsetsRecord, RecordError> {
        let mut key = key.ok_or(RecordError::NoKey)?;
        let version = get_i16(&mut key)?;
        match version {
            0 | 1 => {
                let group_id = get_str(&mut key)?;
                let topic = get_str(&mut key)?;
                let partition = get_i32(&mut key)?;
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        let version = get_i16(&mut v)?;
                        let offset = get_i64(&mut v)?;
                        let leader_epoch = if version >= 3 { get_i32(&mut v)? } else { -1 };
                        let metadata = get_str(&mut v)?;
                        let commit_timestamp = get_i64(&mut v)?;
                        if version > 4 {
                            return Err(RecordError::UnknownValueVersion(version));
                        }
                        Some(OffsetRecord {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp,
                        })
                    }
                };
                Ok(OffsetsRecord::Offset {
                    group_id,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group_id = get_str(&mut key)?;
                let value = match value {
                    None => None,
                    Some(mut v) => Some(decode_group_value(&mut v)?),
                };
                Ok(OffsetsRecord::Group { group_id, value })
            }
            other => Err(RecordError::UnknownKeyVersion(other)),
        }
    }
}

fn decode_group_value(v: &mut Bytes) -> Result<GroupRecord, RecordError> {
    let version = get_i16(v)?;
    if !(0..=4).contains(&version) {
        return Err(RecordError::UnknownValueVersion(version));
    }
    let protocol_type = get_str(v)?;
    let generation_id = get_i32(v)?;
    let protocol_name = get_nullable_str(v)?;
    let leader = get_nullable_str(v)?;
    let current_state_timestamp = if version >= 2 { get_i64(v)? } else { -1 };
    let count = get_i32(v)?;
    let mut members = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(v.remaining()));
    for _ in 0..count.max(0) {
        let member_id = get_str(v)?;
        let group_instance_id = if version >= 3 {
            get_nullable_str(v)?
        } else {
            None
        };
        let client_id = get_str(v)?;
        let client_host = get_str(v)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(v)? } else { 0 };
        let session_timeout_ms = get_i32(v)?;
        let subscription = get_bytes(v)?;
        let assignment = get_bytes(v)?;
        members.push(GroupMemberRecord {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupRecord {
        protocol_type,
        generation_id,
        protocol_name,
        leader,
        current_state_timestamp,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafkas_hash() {
        // Java: Math.abs("my-group".hashCode()) % 50 etc., computed with Java's String.hashCode.
        assert_eq!("".encode_utf16().count(), 0);
        assert_eq!(partition_for("", 50), 0);
        // "a".hashCode() == 97; "ab".hashCode() == 97*31+98 == 3105
        assert_eq!(partition_for("a", 50), 97 % 50);
        assert_eq!(partition_for("ab", 50), 3105 % 50);
        // A string whose hash is negative: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }

    #[test]
    fn records_round_trip() {
        let records = vec![
            OffsetsRecord::Offset {
                group_id: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(OffsetRecord {
                    offset: 42,
                    leader_epoch: 0,
                    metadata: "m".into(),
                    commit_timestamp: 7,
                }),
            },
            OffsetsRecord::Offset {
                group_id: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: None,
            },
            OffsetsRecord::Group {
                group_id: "g".into(),
                value: None,
            },
            OffsetsRecord::Group {
                group_id: "g".into(),
                value: Some(GroupRecord {
                    protocol_type: "consumer".into(),
                    generation_id: 5,
                    protocol_name: Some("range".into()),
                    leader: Some("m1".into()),
                    current_state_timestamp: 9,
                    members: vec![GroupMemberRecord {
                        member_id: "m1".into(),
                        group_instance_id: Some("i1".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout_ms: 300_000,
                        session_timeout_ms: 45_000,
                        subscription: Bytes::from_static(b"sub"),
                        assignment: Bytes::from_static(b"asg"),
                    }],
                }),
            },
        ];
        for r in records {
            let (k, v) = r.encode();
            assert_eq!(OffsetsRecord::decode(Some(k), v).unwrap(), r);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let (k, v) = OffsetsRecord::Group {
            group_id: "group".into(),
            value: Some(GroupRecord {
                protocol_type: "consumer".into(),
                generation_id: 1,
                protocol_name: None,
                leader: None,
                current_state_timestamp: 0,
                members: vec![],
            }),
        }
        .encode();
        let v = v.unwrap();
        for cut in 0..v.len() {
            assert!(OffsetsRecord::decode(Some(k.clone()), Some(v.slice(..cut))).is_err());
        }
        for cut in 0..k.len() {
            assert!(OffsetsRecord::decode(Some(k.slice(..cut)), None).is_err());
        }
    }
}
