//! Idempotent producer state for one partition (KIP-98): the recent batches of each producer id,
//! so a retried batch is recognised and answered with its original offsets, and a gap in
//! sequence numbers is refused instead of stored.

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

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
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
}
