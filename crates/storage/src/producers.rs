//! Idempotent producer state for one partition (KIP-98): the recent batches of each producer id,
//! so a retried batch is recognised and answered with its original offsets, and a gap in
//! sequence numbers is refused instead of stored.
//!
//! The state is snapshotted as Kafka lays it out (`ProducerStateManager`, snapshot version 1):
//! an i16 version, a CRC-32C (unsigned i32) of everything after it, then an i32 count of
//! entries, each 46 bytes: producer id (i64), epoch (i16), last sequence (i32), last offset
//! (i64), offset delta of the last batch (i32), timestamp (i64), coordinator epoch (i32) and
//! the first offset of the open transaction (i64, -1 for none). As in Kafka, a snapshot keeps
//! each producer's last batch only; the batches after the snapshot's offset are replayed from
//! the log. The timestamp is when the last batch was appended, which is what expiration reads.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::batch::BatchHeader;

/// Kafka keeps the last five batches of each producer (max.in.flight.requests.per.connection).
const BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEntry {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchEntry>,
    last_append_ms: i64,
    /// The offset of the producer's first batch in its open transaction; -1 for none.
    txn_first_offset: i64,
    /// The epoch of the transaction coordinator that wrote the producer's last marker.
    coordinator_epoch: i32,
    /// Where the producer's last marker went since this state was loaded; -1 for none.
    last_marker_offset: i64,
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            last_append_ms: 0,
            txn_first_offset: NONE_I64,
            coordinator_epoch: NONE_I32,
            last_marker_offset: NONE_I64,
        }
    }
}

/// A transaction a marker ended: its producer and the offsets from its first batch to the
/// marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What to do with a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order (or not idempotent): append it.
    Append,
    /// Already stored at these offsets: answer success without storing it again.
    Duplicate { base_offset: i64, last_offset: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    StaleEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// Kafka's INVALID_TXN_STATE: a producer with an open transaction wrote outside it.
    #[error("producer {producer_id} has an open transaction but sent a non-transactional batch")]
    NotTransactional { producer_id: i64 },
    /// Kafka's INVALID_TXN_STATE: a marker ended the producer's transaction after its
    /// coordinator verified the batch (KIP-890), so the batch would open a transaction nobody
    /// ends.
    #[error("producer {producer_id}'s transaction ended while its batch was being verified")]
    EndedWhileVerifying { producer_id: i64 },
    /// Kafka's TRANSACTION_COORDINATOR_FENCED: a marker from an older coordinator.
    #[error(
        "a marker from coordinator epoch {got}; the producer's last came from epoch {current}"
    )]
    CoordinatorFenced { got: i32, current: i32 },
}

/// Why a producer state snapshot could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} bytes, too short for a snapshot header")]
    Short(usize),
    #[error("snapshot version {0}; this release reads version 1")]
    Version(i16),
    #[error("the CRC does not match the contents")]
    Crc,
    #[error("the header announces {announced} producers, the file holds {held} bytes of entries")]
    Length { announced: i32, held: usize },
}

/// One producer's epoch and last batch (-1s for none), as [`ProducerStates::summaries`] gives
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub last_append_ms: i64,
    /// The epoch of the coordinator that wrote the producer's last marker (-1: none).
    pub coordinator_epoch: i32,
    /// Where the producer's open transaction began (-1: none open).
    pub txn_first_offset: i64,
}

const SNAPSHOT_VERSION: i16 = 1;
/// Version and CRC.
const SNAPSHOT_HEADER_LEN: usize = 6;
const SNAPSHOT_ENTRY_LEN: usize = 46;
/// Kafka's "no sequence", "no coordinator epoch" and "no open transaction".
const NONE_I32: i32 = -1;
const NONE_I64: i64 = -1;

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// The open transactions, by first offset: the smallest bounds the last stable offset.
    open: BTreeSet<(i64, i64)>,
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

fn last_sequence(h: &BatchHeader<'_>) -> i32 {
    let first = h.base_sequence();
    // Sequences wrap at i32::MAX back to 0.
    ((i64::from(first) + i64::from(h.last_offset_delta())) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerStates {
    /// Checks a batch before it is appended.
    pub fn check(&self, h: &BatchHeader<'_>) -> Result<SequenceCheck, SequenceError> {
        let producer_id = h.producer_id();
        if producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            // Unknown producer (new, or its state aged out): accept and start tracking.
            return Ok(SequenceCheck::Append);
        };
        let epoch = h.producer_epoch();
        if epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        // Without sequence numbers (the group coordinator's transactional offset commits)
        // only the epoch is checked.
        if h.base_sequence() < 0 {
            return Ok(SequenceCheck::Append);
        }
        if entry.txn_first_offset >= 0 && !h.is_transactional() {
            return Err(SequenceError::NotTransactional { producer_id });
        }
        let first = h.base_sequence();
        if epoch > entry.epoch {
            // A bumped epoch restarts its sequence at 0.
            return if first == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    producer_id,
                    expected: 0,
                    got: first,
                })
            };
        }
        let last = last_sequence(h);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| next_sequence(b.last_sequence))
            .unwrap_or(first);
        if first == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id,
                expected,
                got: first,
            })
        }
    }

    /// Checks a transaction marker for `producer_id` before it is appended: not from an older
    /// producer epoch, nor from an older coordinator than the producer's last marker.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), SequenceError> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id,
                epoch: producer_epoch,
                current: entry.epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(SequenceError::CoordinatorFenced {
                got: coordinator_epoch,
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a batch that was appended at `base_offset` (or replayed from the log). A
    /// transactional batch opens its producer's transaction if none is; a control batch (a
    /// marker, `coordinator_epoch` from its record when known) ends it, and the transaction it
    /// ended is returned.
    pub fn record(
        &mut self,
        h: &BatchHeader<'_>,
        base_offset: i64,
        now_ms: i64,
        coordinator_epoch: Option<i32>,
    ) -> Option<EndedTxn> {
        let producer_id = h.producer_id();
        if producer_id >= 0 && h.is_control() {
            let entry = self.producers.entry(producer_id).or_default();
            if h.producer_epoch() > entry.epoch {
                // A marker may carry a bumped epoch (transactions version 2).
                entry.batches.clear();
                entry.epoch = h.producer_epoch();
            }
            if let Some(epoch) = coordinator_epoch {
                entry.coordinator_epoch = epoch;
            }
            entry.last_append_ms = now_ms;
            entry.last_marker_offset = base_offset;
            let first = std::mem::replace(&mut entry.txn_first_offset, NONE_I64);
            if first < 0 {
                return None;
            }
            self.open.remove(&(first, producer_id));
            return Some(EndedTxn {
                producer_id,
                first_offset: first,
                last_offset: base_offset,
            });
        }
        if producer_id < 0 {
            return None;
        }
        if h.base_sequence() < 0 {
            // A transactional batch without sequence numbers (the group coordinator writes
            // transactional offset commits so) still opens its producer's transaction.
            if h.is_transactional() {
                let entry = self.producers.entry(producer_id).or_default();
                entry.epoch = entry.epoch.max(h.producer_epoch());
                entry.last_append_ms = now_ms;
                if entry.txn_first_offset < 0 {
                    entry.txn_first_offset = base_offset;
                    self.open.insert((base_offset, producer_id));
                }
            }
            return None;
        }
        let entry = self.producers.entry(producer_id).or_default();
        if h.producer_epoch() != entry.epoch {
            entry.batches.clear();
            entry.epoch = h.producer_epoch();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchEntry {
            first_sequence: h.base_sequence(),
            last_sequence: last_sequence(h),
            base_offset,
            last_offset: base_offset + i64::from(h.last_offset_delta()),
        });
        entry.last_append_ms = now_ms;
        if h.is_transactional() && entry.txn_first_offset < 0 {
            entry.txn_first_offset = base_offset;
            self.open.insert((base_offset, producer_id));
        }
        None
    }

    /// Whether `producer_id` at `producer_epoch` has a transaction open here: its next
    /// transactional batches belong to that transaction and need no verification (KIP-890).
    pub fn has_open_txn(&self, producer_id: i64, producer_epoch: i16) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.epoch == producer_epoch && e.txn_first_offset >= 0)
    }

    /// Refuses a transactional batch verified when the log ended at `verified_at` if a marker
    /// of its producer was appended since: the transaction it was verified for is over.
    pub fn check_verified(&self, producer_id: i64, verified_at: i64) -> Result<(), SequenceError> {
        match self.producers.get(&producer_id) {
            Some(e) if e.last_marker_offset >= verified_at => {
                Err(SequenceError::EndedWhileVerifying { producer_id })
            }
            _ => Ok(()),
        }
    }

    /// The first offset of the oldest open transaction: nothing from it on is stable.
    pub fn first_open_txn_offset(&self) -> Option<i64> {
        self.open.first().map(|(offset, _)| *offset)
    }

    /// Forgets producers silent for longer than `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        // A producer with an open transaction stays: its transaction still bounds what is
        // stable, until the coordinator's marker ends it.
        self.producers
            .retain(|_, e| e.txn_first_offset >= 0 || now_ms - e.last_append_ms <= expiration_ms);
        before - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Each producer's epoch and last batch, in producer id order (for tools).
    pub fn summaries(&self) -> Vec<ProducerSummary> {
        let mut out: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(&producer_id, e)| {
                let last = e.batches.back();
                ProducerSummary {
                    producer_id,
                    epoch: e.epoch,
                    first_sequence: last.map_or(NONE_I32, |b| b.first_sequence),
                    last_sequence: last.map_or(NONE_I32, |b| b.last_sequence),
                    base_offset: last.map_or(NONE_I64, |b| b.base_offset),
                    last_offset: last.map_or(NONE_I64, |b| b.last_offset),
                    last_append_ms: e.last_append_ms,
                    coordinator_epoch: e.coordinator_epoch,
                    txn_first_offset: e.txn_first_offset,
                }
            })
            .collect();
        out.sort_unstable_by_key(|s| s.producer_id);
        out
    }

    /// The state as a snapshot file's bytes (Kafka's layout, see the module), producers in
    /// id order.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + 4 + ids.len() * SNAPSHOT_ENTRY_LEN);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(ids.len() as i32).to_be_bytes());
        for id in ids {
            let entry = &self.producers[id];
            let (last_sequence, last_offset, delta) = match entry.batches.back() {
                Some(b) => (
                    b.last_sequence,
                    b.last_offset,
                    (b.last_offset - b.base_offset) as i32,
                ),
                None => (NONE_I32, NONE_I64, 0),
            };
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&last_sequence.to_be_bytes());
            out.extend_from_slice(&last_offset.to_be_bytes());
            out.extend_from_slice(&delta.to_be_bytes());
            out.extend_from_slice(&entry.last_append_ms.to_be_bytes());
            out.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
            out.extend_from_slice(&entry.txn_first_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[SNAPSHOT_HEADER_LEN..]);
        out[2..SNAPSHOT_HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot written by [`to_snapshot`](Self::to_snapshot) (or by Kafka): each
    /// producer with its last batch. Any damage is an error, never a partial state.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if bytes.len() < SNAPSHOT_HEADER_LEN + 4 {
            return Err(SnapshotError::Short(bytes.len()));
        }
        let version = i16::from_be_bytes([bytes[0], bytes[1]]);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let crc = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        if crc32c::crc32c(&bytes[SNAPSHOT_HEADER_LEN..]) != crc {
            return Err(SnapshotError::Crc);
        }
        let body = &bytes[SNAPSHOT_HEADER_LEN..];
        let announced = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let entries = &body[4..];
        let fits = usize::try_from(announced)
            .ok()
            .and_then(|n| n.checked_mul(SNAPSHOT_ENTRY_LEN))
            .is_some_and(|len| len == entries.len());
        if !fits {
            return Err(SnapshotError::Length {
                announced,
                held: entries.len(),
            });
        }
        let mut producers = HashMap::with_capacity(entries.len() / SNAPSHOT_ENTRY_LEN);
        for e in entries.chunks_exact(SNAPSHOT_ENTRY_LEN) {
            let mut r = Fields(e);
            let producer_id = r.i64();
            let epoch = r.i16();
            let last_sequence = r.i32();
            let last_offset = r.i64();
            let delta = r.i32();
            let timestamp = r.i64();
            let coordinator_epoch = r.i32();
            let txn_first_offset = r.i64().max(NONE_I64);
            let mut batches = VecDeque::new();
            if last_sequence >= 0 && last_offset >= 0 && delta >= 0 {
                let first = i64::from(last_sequence) - i64::from(delta);
                // Sequences wrap at i32::MAX back to 0.
                let first = if first < 0 {
                    first + i64::from(i32::MAX) + 1
                } else {
                    first
                };
                batches.push_back(BatchEntry {
                    first_sequence: first as i32,
                    last_sequence,
                    base_offset: last_offset - i64::from(delta),
                    last_offset,
                });
            }
            producers.insert(
                producer_id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_append_ms: timestamp,
                    txn_first_offset,
                    coordinator_epoch,
                    last_marker_offset: NONE_I64,
                },
            );
        }
        let open = producers
            .iter()
            .filter(|(_, e)| e.txn_first_offset >= 0)
            .map(|(&id, e)| (e.txn_first_offset, id))
            .collect();
        Ok(ProducerStates { producers, open })
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Big-endian fields read off a snapshot entry of known length.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[..N]);
        self.0 = &self.0[N..];
        out
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::batch;

    fn idempotent(values: usize, producer_id: i64, epoch: i16, sequence: i32) -> Vec<u8> {
        let owned: Vec<Vec<u8>> = (0..values).map(|i| vec![b'v'; i + 1]).collect();
        let refs: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
        let mut b = batch(&refs, 0);
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&sequence.to_be_bytes());
        b
    }

    #[test]
    fn in_order_batches_append_retries_are_duplicates_gaps_are_refused() {
        let mut s = ProducerStates::default();
        let b0 = idempotent(3, 7, 0, 0);
        let h0 = BatchHeader::parse(&b0).unwrap();
        assert_eq!(s.check(&h0), Ok(SequenceCheck::Append));
        s.record(&h0, 100, 0, None);
        assert_eq!(
            s.check(&h0),
            Ok(SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            })
        );
        let b1 = idempotent(2, 7, 0, 3);
        let h1 = BatchHeader::parse(&b1).unwrap();
        assert_eq!(s.check(&h1), Ok(SequenceCheck::Append));
        s.record(&h1, 103, 0, None);
        let gap = idempotent(1, 7, 0, 9);
        assert_eq!(
            s.check(&BatchHeader::parse(&gap).unwrap()),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 9
            })
        );
        let stale = idempotent(1, 7, -1, 5);
        assert!(matches!(
            s.check(&BatchHeader::parse(&stale).unwrap()),
            Err(SequenceError::StaleEpoch { .. })
        ));
        let bumped = idempotent(1, 7, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&bumped).unwrap()),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn plain_producers_are_not_tracked_and_silent_ones_expire() {
        let mut s = ProducerStates::default();
        let plain = batch(&[b"x"], 0);
        let h = BatchHeader::parse(&plain).unwrap();
        assert_eq!(s.check(&h), Ok(SequenceCheck::Append));
        s.record(&h, 0, 0, None);
        assert!(s.is_empty());
        let b = idempotent(1, 1, 0, 0);
        s.record(&BatchHeader::parse(&b).unwrap(), 1, 1000, None);
        assert_eq!(s.expire(2000, 5000), 0);
        assert_eq!(s.expire(10_000, 5000), 1);
    }

    #[test]
    fn a_snapshot_keeps_each_producers_last_batch_and_its_epoch() {
        let mut s = ProducerStates::default();
        let b0 = idempotent(3, 7, 2, 0);
        s.record(&BatchHeader::parse(&b0).unwrap(), 100, 1_000, None);
        let b1 = idempotent(2, 7, 2, 3);
        let h1 = BatchHeader::parse(&b1).unwrap();
        s.record(&h1, 103, 2_000, None);
        // A sequence that wraps: its batch starts at i32::MAX and ends at 1.
        let wrapped = idempotent(3, 9, 0, i32::MAX);
        let hw = BatchHeader::parse(&wrapped).unwrap();
        s.record(&hw, 200, 3_000, None);
        let bytes = s.to_snapshot();
        assert_eq!(
            bytes.len(),
            SNAPSHOT_HEADER_LEN + 4 + 2 * SNAPSHOT_ENTRY_LEN
        );
        let loaded = ProducerStates::from_snapshot(&bytes).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded.check(&h1),
            Ok(SequenceCheck::Duplicate {
                base_offset: 103,
                last_offset: 104
            })
        );
        assert_eq!(
            loaded.check(&hw),
            Ok(SequenceCheck::Duplicate {
                base_offset: 200,
                last_offset: 202
            })
        );
        let gap = idempotent(1, 7, 2, 6);
        assert_eq!(
            loaded.check(&BatchHeader::parse(&gap).unwrap()),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 6
            })
        );
        let stale = idempotent(1, 7, 1, 5);
        assert!(matches!(
            loaded.check(&BatchHeader::parse(&stale).unwrap()),
            Err(SequenceError::StaleEpoch { current: 2, .. })
        ));
        // The append times come back, so expiration goes on where it was.
        let mut loaded = loaded;
        assert_eq!(loaded.expire(2_500 + 1_000, 1_000), 1);
        // Written again, the loaded state gives the same bytes.
        assert_eq!(
            loaded.to_snapshot()[..],
            {
                let mut only9 = ProducerStates::default();
                only9.record(&hw, 200, 3_000, None);
                only9.to_snapshot()
            }[..]
        );
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whole() {
        let mut s = ProducerStates::default();
        let b = idempotent(1, 5, 0, 0);
        s.record(&BatchHeader::parse(&b).unwrap(), 0, 0, None);
        let good = s.to_snapshot();
        assert!(ProducerStates::from_snapshot(&good).is_ok());
        assert_eq!(
            ProducerStates::from_snapshot(&good[..5]).unwrap_err(),
            SnapshotError::Short(5)
        );
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert_eq!(
            ProducerStates::from_snapshot(&flipped).unwrap_err(),
            SnapshotError::Crc
        );
        let mut version = good.clone();
        version[1] = 2;
        assert_eq!(
            ProducerStates::from_snapshot(&version).unwrap_err(),
            SnapshotError::Version(2)
        );
        // A torn file whose CRC still matches what is left: the count gives it away.
        let mut torn = good[..good.len() - 10].to_vec();
        let crc = crc32c::crc32c(&torn[SNAPSHOT_HEADER_LEN..]);
        torn[2..6].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            ProducerStates::from_snapshot(&torn).unwrap_err(),
            SnapshotError::Length { announced: 1, .. }
        ));
    }

    proptest::proptest! {
        /// Whatever a snapshot file holds, reading it answers and never panics.
        #[test]
        fn any_bytes_read_as_a_snapshot_do_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            fix_crc in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = bytes;
            if fix_crc && bytes.len() >= SNAPSHOT_HEADER_LEN {
                bytes[0] = 0;
                bytes[1] = 1;
                let crc = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_LEN..]);
                bytes[2..6].copy_from_slice(&crc.to_be_bytes());
            }
            let _ = ProducerStates::from_snapshot(&bytes);
        }
    }

    fn transactional(values: usize, producer_id: i64, epoch: i16, sequence: i32) -> Vec<u8> {
        let mut b = idempotent(values, producer_id, epoch, sequence);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        crate::batch::tests::reseal(&mut b);
        b
    }

    fn marker(producer_id: i64, epoch: i16, commit: bool) -> Vec<u8> {
        let m = crate::batch::ControlMarker {
            commit,
            coordinator_epoch: 5,
        };
        crate::batch::control_batch(producer_id, epoch, m, 0)
    }

    #[test]
    fn a_batch_verified_before_its_producers_marker_is_refused() {
        let mut s = ProducerStates::default();
        assert!(!s.has_open_txn(7, 0));
        assert_eq!(s.check_verified(7, 0), Ok(()));
        let t0 = transactional(1, 7, 0, 0);
        s.record(&BatchHeader::parse(&t0).unwrap(), 100, 0, None);
        assert!(s.has_open_txn(7, 0));
        assert!(
            !s.has_open_txn(7, 1),
            "another epoch's transaction is not this one"
        );
        assert!(!s.has_open_txn(8, 0));
        // Verified when the log ended at 101; the marker lands at 101, before the batch.
        let m = marker(7, 0, true);
        s.record(&BatchHeader::parse(&m).unwrap(), 101, 0, Some(5));
        assert!(!s.has_open_txn(7, 0));
        assert_eq!(
            s.check_verified(7, 101),
            Err(SequenceError::EndedWhileVerifying { producer_id: 7 })
        );
        // Verified after the marker: the batch opens the next transaction.
        assert_eq!(s.check_verified(7, 102), Ok(()));
        assert_eq!(s.check_verified(8, 0), Ok(()));
    }

    #[test]
    fn a_transaction_is_open_from_its_first_batch_to_its_marker() {
        let mut s = ProducerStates::default();
        let t0 = transactional(3, 7, 0, 0);
        s.record(&BatchHeader::parse(&t0).unwrap(), 100, 0, None);
        let t1 = transactional(2, 7, 0, 3);
        s.record(&BatchHeader::parse(&t1).unwrap(), 103, 0, None);
        assert_eq!(s.first_open_txn_offset(), Some(100));
        // Outside its open transaction the producer may write nothing.
        let plain = idempotent(1, 7, 0, 5);
        assert_eq!(
            s.check(&BatchHeader::parse(&plain).unwrap()),
            Err(SequenceError::NotTransactional { producer_id: 7 })
        );
        let other = transactional(1, 8, 0, 0);
        s.record(&BatchHeader::parse(&other).unwrap(), 110, 0, None);
        let m = marker(7, 0, true);
        let ended = s.record(&BatchHeader::parse(&m).unwrap(), 120, 0, Some(5));
        assert_eq!(
            ended,
            Some(EndedTxn {
                producer_id: 7,
                first_offset: 100,
                last_offset: 120
            })
        );
        assert_eq!(s.first_open_txn_offset(), Some(110));
        assert_eq!(
            s.check(&BatchHeader::parse(&plain).unwrap()),
            Ok(SequenceCheck::Append)
        );
        // A second marker ends nothing.
        assert_eq!(
            s.record(&BatchHeader::parse(&m).unwrap(), 121, 0, Some(5)),
            None
        );
    }

    #[test]
    fn markers_from_older_producers_or_coordinators_are_refused() {
        let mut s = ProducerStates::default();
        let t = transactional(1, 7, 2, 0);
        s.record(&BatchHeader::parse(&t).unwrap(), 0, 0, None);
        s.record(
            &BatchHeader::parse(&marker(7, 2, false)).unwrap(),
            1,
            0,
            Some(5),
        );
        assert_eq!(s.check_marker(7, 2, 5), Ok(()));
        assert_eq!(s.check_marker(99, 0, 0), Ok(()), "an unknown producer");
        assert!(matches!(
            s.check_marker(7, 1, 5),
            Err(SequenceError::StaleEpoch { current: 2, .. })
        ));
        assert_eq!(
            s.check_marker(7, 2, 4),
            Err(SequenceError::CoordinatorFenced { got: 4, current: 5 })
        );
        // A marker with a bumped epoch (transactions version 2) moves the producer on.
        s.record(
            &BatchHeader::parse(&marker(7, 3, true)).unwrap(),
            2,
            0,
            Some(5),
        );
        let stale = transactional(1, 7, 2, 1);
        assert!(matches!(
            s.check(&BatchHeader::parse(&stale).unwrap()),
            Err(SequenceError::StaleEpoch { current: 3, .. })
        ));
    }

    #[test]
    fn open_transactions_survive_snapshots_and_expiry() {
        let mut s = ProducerStates::default();
        let t = transactional(1, 8, 0, 0);
        s.record(&BatchHeader::parse(&t).unwrap(), 110, 0, None);
        s.record(
            &BatchHeader::parse(&marker(9, 0, true)).unwrap(),
            111,
            0,
            Some(6),
        );
        let back = ProducerStates::from_snapshot(&s.to_snapshot()).unwrap();
        assert_eq!(back.first_open_txn_offset(), Some(110));
        assert_eq!(
            back.check_marker(9, 0, 5),
            Err(SequenceError::CoordinatorFenced { got: 5, current: 6 })
        );
        let mut back = back;
        assert_eq!(
            back.expire(1_000_000, 10),
            1,
            "only the producer without a transaction"
        );
        assert_eq!(back.first_open_txn_offset(), Some(110));
    }
}
