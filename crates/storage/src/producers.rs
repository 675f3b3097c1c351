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

use std::collections::{HashMap, VecDeque};

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

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchEntry>,
    last_append_ms: i64,
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
        if producer_id < 0 || h.base_sequence() < 0 {
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

    /// Records a batch that was appended at `base_offset` (or replayed from the log).
    pub fn record(&mut self, h: &BatchHeader<'_>, base_offset: i64, now_ms: i64) {
        let producer_id = h.producer_id();
        if producer_id < 0 || h.base_sequence() < 0 {
            return;
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
    }

    /// Forgets producers silent for longer than `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms - e.last_append_ms <= expiration_ms);
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
            out.extend_from_slice(&NONE_I32.to_be_bytes());
            out.extend_from_slice(&NONE_I64.to_be_bytes());
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
                },
            );
        }
        Ok(ProducerStates { producers })
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
        s.record(&h0, 100, 0);
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
        s.record(&h1, 103, 0);
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
        s.record(&h, 0, 0);
        assert!(s.is_empty());
        let b = idempotent(1, 1, 0, 0);
        s.record(&BatchHeader::parse(&b).unwrap(), 1, 1000);
        assert_eq!(s.expire(2000, 5000), 0);
        assert_eq!(s.expire(10_000, 5000), 1);
    }

    #[test]
    fn a_snapshot_keeps_each_producers_last_batch_and_its_epoch() {
        let mut s = ProducerStates::default();
        let b0 = idempotent(3, 7, 2, 0);
        s.record(&BatchHeader::parse(&b0).unwrap(), 100, 1_000);
        let b1 = idempotent(2, 7, 2, 3);
        let h1 = BatchHeader::parse(&b1).unwrap();
        s.record(&h1, 103, 2_000);
        // A sequence that wraps: its batch starts at i32::MAX and ends at 1.
        let wrapped = idempotent(3, 9, 0, i32::MAX);
        let hw = BatchHeader::parse(&wrapped).unwrap();
        s.record(&hw, 200, 3_000);
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
                only9.record(&hw, 200, 3_000);
                only9.to_snapshot()
            }[..]
        );
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whole() {
        let mut s = ProducerStates::default();
        let b = idempotent(1, 5, 0, 0);
        s.record(&BatchHeader::parse(&b).unwrap(), 0, 0);
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
}
