//! Records of `__transaction_state`, in Kafka's own key and value schemas, so the topic reads the
//! same as Kafka's: key v0 `(transactional_id)`; value v0 (transactions version 0) or v1
//! (flexible, with the client's transactions version as tagged field 2) `(producer_id,
//! producer_epoch, timeout_ms, state, partitions[(topic, [partition])], last_update_ms,
//! start_ms)`. A null value is a tombstone: the transactional id expired.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::records::{get_i16, get_i32, get_i64, get_str, need, put_str, RecordError};

const KEY_VERSION: i16 = 0;

/// A transaction's state, with the ids Kafka stores in `__transaction_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction open: after InitProducerId, or once nothing has been added since the
    /// last one completed.
    Empty,
    /// Partitions (or a group's offsets) were added; records may be written.
    Ongoing,
    /// The producer asked to commit; markers are being written.
    PrepareCommit,
    /// An abort was asked for (by the producer, a newer producer, or the timeout); markers are
    /// being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// The transactional id expired; never stored (a tombstone is).
    Dead,
    /// A newer producer fences the current one; never stored (the abort that follows is).
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions report, as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// A topic partition taking part in a transaction.
pub type TxnPartition = (String, i32);

/// One transaction's stored state: the value of its `__transaction_state` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TxnPartition>,
    pub last_update_ms: i64,
    /// When the current transaction began; -1 when none has.
    pub start_ms: i64,
    /// The transactions version the client last used (0 or 1: classic; 2: KIP-890's epoch
    /// bump per transaction).
    pub client_version: i16,
}

/// The record key of a transactional id.
pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut key = BytesMut::with_capacity(4 + transactional_id.len());
    key.put_i16(KEY_VERSION);
    put_str(&mut key, transactional_id);
    key.freeze()
}

/// The record value: v0 for a client of transactions version 0, v1 otherwise, as Kafka writes.
pub fn encode_value(r: &TxnRecord) -> Bytes {
    let flexible = r.client_version > 0;
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(i16::from(flexible));
    out.put_i64(r.producer_id);
    out.put_i16(r.producer_epoch);
    out.put_i32(r.timeout_ms);
    out.put_i8(r.state.id());
    let topics = by_topic(&r.partitions);
    // Kafka stores no partition list for an empty transaction, and an empty one otherwise.
    let null = r.state == TxnState::Empty;
    if flexible {
        put_uvarint(&mut out, if null { 0 } else { topics.len() as u32 + 1 });
        for (topic, ids) in &topics {
            put_uvarint(&mut out, topic.len() as u32 + 1);
            out.put_slice(topic.as_bytes());
            put_uvarint(&mut out, ids.len() as u32 + 1);
            ids.iter().for_each(|p| out.put_i32(*p));
            put_uvarint(&mut out, 0);
        }
    } else {
        out.put_i32(if null { -1 } else { topics.len() as i32 });
        for (topic, ids) in &topics {
            put_str(&mut out, topic);
            out.put_i32(ids.len() as i32);
            ids.iter().for_each(|p| out.put_i32(*p));
        }
    }
    out.put_i64(r.last_update_ms);
    out.put_i64(r.start_ms);
    if flexible {
        // Tagged fields: only the client's transactions version (tag 2, an int16).
        put_uvarint(&mut out, 1);
        put_uvarint(&mut out, 2);
        put_uvarint(&mut out, 2);
        out.put_i16(r.client_version);
    }
    out.freeze()
}

/// Decodes a record read back from `__transaction_state`: the transactional id, and its state
/// or `None` for a tombstone.
pub fn decode(
    key: Option<Bytes>,
    value: Option<Bytes>,
) -> Result<(String, Option<TxnRecord>), RecordError> {
    let mut key = key.ok_or(RecordError::NoKey)?;
    let version = get_i16(&mut key)?;
    if version != KEY_VERSION {
        return Err(RecordError::UnknownKeyVersion(version));
    }
    let id = get_str(&mut key)?;
    let Some(mut v) = value else {
        return Ok((id, None));
    };
    let version = get_i16(&mut v)?;
    if !(0..=1).contains(&version) {
        return Err(RecordError::UnknownValueVersion(version));
    }
    let flexible = version == 1;
    let producer_id = get_i64(&mut v)?;
    let producer_epoch = get_i16(&mut v)?;
    let timeout_ms = get_i32(&mut v)?;
    need(&v, 1)?;
    let state_id = v.get_i8();
    let state = TxnState::from_id(state_id).ok_or(RecordError::UnknownTxnState(state_id))?;
    let mut partitions = BTreeSet::new();
    let topics = if flexible {
        get_uvarint(&mut v)?.checked_sub(1)
    } else {
        u32::try_from(get_i32(&mut v)?).ok()
    };
    for _ in 0..topics.unwrap_or(0) {
        let topic = if flexible {
            get_compact_str(&mut v)?
        } else {
            get_str(&mut v)?
        };
        let count = if flexible {
            get_uvarint(&mut v)?.saturating_sub(1)
        } else {
            u32::try_from(get_i32(&mut v)?).unwrap_or(0)
        };
        for _ in 0..count {
            partitions.insert((topic.clone(), get_i32(&mut v)?));
        }
        if flexible {
            skip_tagged(&mut v, |_, _| Ok(()))?;
        }
    }
    let last_update_ms = get_i64(&mut v)?;
    let start_ms = get_i64(&mut v)?;
    let mut client_version = 0;
    if flexible {
        skip_tagged(&mut v, |tag, mut field| {
            if tag == 2 {
                client_version = get_i16(&mut field)?;
            }
            Ok(())
        })?;
    }
    Ok((
        id,
        Some(TxnRecord {
            producer_id,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_ms,
            start_ms,
            client_version,
        }),
    ))
}

fn by_topic(partitions: &BTreeSet<TxnPartition>) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, p) in partitions {
        match topics.last_mut() {
            Some((t, ids)) if *t == topic.as_str() => ids.push(*p),
            _ => topics.push((topic, vec![*p])),
        }
    }
    topics
}

fn put_uvarint(out: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn get_uvarint(buf: &mut Bytes) -> Result<u32, RecordError> {
    let mut n: u32 = 0;
    for shift in (0..35).step_by(7) {
        need(buf, 1)?;
        let b = buf.get_u8();
        n |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(RecordError::Truncated)
}

fn get_compact_str(buf: &mut Bytes) -> Result<String, RecordError> {
    let len = get_uvarint(buf)?.saturating_sub(1) as usize;
    need(buf, len)?;
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| RecordError::NotUtf8)
}

/// Reads a tagged-field section, handing each field's tag and bytes to `field`.
fn skip_tagged(
    buf: &mut Bytes,
    mut field: impl FnMut(u32, Bytes) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    for _ in 0..get_uvarint(buf)? {
        let tag = get_uvarint(buf)?;
        let len = get_uvarint(buf)? as usize;
        need(buf, len)?;
        field(tag, buf.split_to(len))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: TxnState, client_version: i16) -> TxnRecord {
        TxnRecord {
            producer_id: 4000,
            producer_epoch: 7,
            timeout_ms: 60_000,
            state,
            partitions: [("orders".to_string(), 2), ("orders".to_string(), 0)]
                .into_iter()
                .chain([("__consumer_offsets".to_string(), 17)])
                .collect(),
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
            client_version,
        }
    }

    #[test]
    fn both_value_versions_round_trip() {
        for version in [0, 2] {
            for state in [
                TxnState::Ongoing,
                TxnState::PrepareCommit,
                TxnState::CompleteAbort,
            ] {
                let r = record(state, version);
                let (id, back) =
                    decode(Some(encode_key("pipeline-1")), Some(encode_value(&r))).unwrap();
                assert_eq!(id, "pipeline-1");
                assert_eq!(back, Some(r));
            }
        }
        let (id, tomb) = decode(Some(encode_key("gone")), None).unwrap();
        assert_eq!((id.as_str(), tomb), ("gone", None));
    }

    #[test]
    fn an_empty_transaction_stores_no_partition_list() {
        let mut r = record(TxnState::Empty, 0);
        r.partitions.clear();
        let v = encode_value(&r);
        // version, producer id, epoch, timeout, state, then the null array.
        assert_eq!(&v[17..21], &(-1i32).to_be_bytes());
        assert_eq!(decode(Some(encode_key("t")), Some(v)).unwrap().1, Some(r));
    }

    #[test]
    fn the_value_layout_is_kafkas() {
        // A v0 value by hand from Kafka's schema: one topic, one partition.
        let mut v = BytesMut::new();
        v.put_i16(0);
        v.put_i64(9);
        v.put_i16(1);
        v.put_i32(1000);
        v.put_i8(1);
        v.put_i32(1);
        put_str(&mut v, "t");
        v.put_i32(1);
        v.put_i32(3);
        v.put_i64(20);
        v.put_i64(10);
        let r = TxnRecord {
            producer_id: 9,
            producer_epoch: 1,
            timeout_ms: 1000,
            state: TxnState::Ongoing,
            partitions: [("t".to_string(), 3)].into_iter().collect(),
            last_update_ms: 20,
            start_ms: 10,
            client_version: 0,
        };
        assert_eq!(encode_value(&r), v.freeze());
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        for version in [0, 2] {
            let v = encode_value(&record(TxnState::Ongoing, version));
            for cut in 0..v.len() {
                assert!(
                    decode(Some(encode_key("t")), Some(v.slice(..cut))).is_err(),
                    "cut at {cut}"
                );
            }
        }
        assert_eq!(decode(None, None), Err(RecordError::NoKey));
    }
}
