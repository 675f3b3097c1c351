//! Properties of RecordBatch validation on untrusted bytes: `validate_batch`, `BatchIter` and the
//! idempotent-producer check never panic, and the CRC catches any change to the bytes it covers.
//!
//! The `batch_validator` fuzz target in `fuzz/` explores the same code for longer; inputs it found
//! that once misbehaved are pinned here as explicit cases.

use caudal_storage::batch::{BatchIter, BATCH_HEADER_LEN};
use caudal_storage::producers::{ProducerStates, SequenceCheck};
use caudal_storage::{validate_batch, BatchError, BatchHeader};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// First byte the CRC-32C covers (attributes onwards).
const CRC_START: usize = 21;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A valid uncompressed magic-2 batch of `values` (null keys, no headers) from `producer_id`
/// (-1: not idempotent) at base sequence `sequence`.
fn batch(values: &[Vec<u8>], producer_id: i64, sequence: i32) -> Vec<u8> {
    let mut records = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut r = vec![0u8];
        put_varint(&mut r, i as i64);
        put_varint(&mut r, i as i64);
        put_varint(&mut r, -1);
        put_varint(&mut r, value.len() as i64);
        r.extend_from_slice(value);
        put_varint(&mut r, 0);
        put_varint(&mut records, r.len() as i64);
        records.extend_from_slice(&r);
    }
    let n = values.len() as i32;
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - 12 + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&1_000i64.to_be_bytes());
    b.extend_from_slice(&(1_000 + i64::from(n - 1)).to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&(if producer_id < 0 { -1i16 } else { 0 }).to_be_bytes());
    b.extend_from_slice(&sequence.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn values() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 0..24), 1..6)
}

/// Runs everything the broker does with untrusted batch bytes: validation of the first batch,
/// the iterator over a run of batches, and the append path's producer bookkeeping.
fn exercise(bytes: &[u8]) {
    let first = validate_batch(bytes);
    let mut producers = ProducerStates::default();
    let mut log_end = 0i64;
    let mut iter = BatchIter::new(bytes);
    let mut end = 0;
    for (at, h) in iter.by_ref() {
        assert_eq!(at, end);
        let len = h
            .total_len()
            .expect("BatchIter yields possible lengths only");
        end = at + len;
        assert!(end <= bytes.len());
        let valid = validate_batch(&bytes[at..end]);
        if at == 0 {
            assert_eq!(valid, first);
        }
        if let (Ok(SequenceCheck::Append), Ok(v)) = (producers.check(&h), valid) {
            producers.record(&h, log_end, 0, None);
            log_end += i64::from(v.last_offset_delta) + 1;
        }
    }
    assert_eq!(iter.position(), end);
    if let Ok(h) = BatchHeader::parse(&bytes[end..]) {
        let _ = producers.check(&h);
    }
}

#[test]
fn a_built_batch_is_valid() {
    let b = batch(&[b"a".to_vec(), b"bc".to_vec()], 5, 0);
    let v = validate_batch(&b).expect("valid");
    assert_eq!((v.total_len, v.records_count), (b.len(), 2));
}

/// Inputs that probe the edges of the header checks.
#[test]
fn pinned_edge_cases() {
    let good = batch(&[b"edge".to_vec()], 1, 0);
    // Header only, no records, length claiming exactly the header.
    let mut bare = good[..BATCH_HEADER_LEN].to_vec();
    bare[8..12].copy_from_slice(&((BATCH_HEADER_LEN - 12) as i32).to_be_bytes());
    exercise(&bare);
    // batch_length i32::MAX and i32::MIN; records count i32::MIN; last offset delta -1.
    for (at, value) in [
        (8, i32::MAX),
        (8, i32::MIN),
        (57, i32::MIN),
        (57, 0),
        (23, -1),
        (53, i32::MAX),
    ] {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&value.to_be_bytes());
        exercise(&b);
        assert!(validate_batch(&b).is_err(), "{value} at {at} accepted");
    }
    // A record length varint that never ends, and one that claims a negative length.
    for records in [&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], &[0x01][..]] {
        let mut b = good[..BATCH_HEADER_LEN].to_vec();
        b.extend_from_slice(records);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(validate_batch(&b), Err(BatchError::BadRecords(_))));
        exercise(&b);
    }
    // Producer id and sequence at their extremes (idempotent check arithmetic).
    let mut wrap = batch(&[b"1".to_vec(), b"2".to_vec()], i64::MAX, i32::MAX);
    wrap[51..53].copy_from_slice(&i16::MAX.to_be_bytes());
    let crc = crc32c::crc32c(&wrap[CRC_START..]);
    wrap[17..21].copy_from_slice(&crc.to_be_bytes());
    let mut twice = wrap.clone();
    twice.extend_from_slice(&wrap);
    exercise(&twice);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..400)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        values in values(),
        rest in vec(any::<u8>(), 0..200),
    ) {
        // A plausible header (right magic, sane length) with garbage where the records go.
        let mut b = batch(&values, 3, 0)[..BATCH_HEADER_LEN].to_vec();
        b.extend_from_slice(&rest);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        exercise(&b);
    }

    #[test]
    fn single_byte_mutations_never_panic(
        values in values(),
        producer in prop_oneof![Just(-1i64), 0..10i64],
        at in any::<Index>(),
        value in any::<u8>(),
    ) {
        let mut b = batch(&values, producer, 0);
        let at = at.index(b.len());
        b[at] = value;
        exercise(&b);
        let mut run = batch(&values, producer, 0);
        run.extend_from_slice(&b);
        exercise(&run);
    }

    #[test]
    fn any_change_after_byte_21_is_rejected(
        values in values(),
        producer in prop_oneof![Just(-1i64), 0..10i64],
        at in any::<Index>(),
        flip in 1..=255u8,
    ) {
        let good = batch(&values, producer, 0);
        prop_assert!(validate_batch(&good).is_ok());
        let mut bad = good.clone();
        let at = CRC_START + at.index(good.len() - CRC_START);
        bad[at] ^= flip;
        prop_assert!(
            matches!(validate_batch(&bad), Err(BatchError::BadCrc { .. })),
            "byte {} ^ {:#04x} not caught by the CRC: {:?}", at, flip, validate_batch(&bad)
        );
    }

    #[test]
    fn a_changed_crc_is_rejected(values in values(), at in 17..21usize, flip in 1..=255u8) {
        let mut bad = batch(&values, -1, 0);
        bad[at] ^= flip;
        prop_assert!(
            matches!(validate_batch(&bad), Err(BatchError::BadCrc { .. })),
            "CRC byte {} ^ {:#04x} accepted", at, flip
        );
    }

    #[test]
    fn retried_batches_are_duplicates_with_their_first_offsets(
        values in values(),
        producer in 0..1000i64,
    ) {
        let b = batch(&values, producer, 0);
        let h = BatchHeader::parse(&b).expect("whole header");
        let mut producers = ProducerStates::default();
        prop_assert_eq!(producers.check(&h), Ok(SequenceCheck::Append));
        producers.record(&h, 10, 0, None);
        let last = 10 + values.len() as i64 - 1;
        prop_assert_eq!(
            producers.check(&h),
            Ok(SequenceCheck::Duplicate { base_offset: 10, last_offset: last })
        );
    }
}
