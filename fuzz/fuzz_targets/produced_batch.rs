//! Produced RecordBatches as the broker checks them before storing: `validate_produced_batch`
//! must never panic, never allocate past its decompression limit, and accept only batches whose
//! records all parse.
//!
//! The first input byte is a mode. Even: the rest is a raw batch (the CRC guards almost every
//! mutation, so this explores the header checks). Odd: the rest is the body of a batch whose
//! header, CRC and length are made right here, with the codec and record count taken from the
//! mode byte, so the fuzzer reaches the decompressors and the record walk behind the CRC.

#![no_main]

use caudal_storage::batch::BATCH_HEADER_LEN;
use caudal_storage::{validate_produced_batch, BatchHeader};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fn wrap(codec: i16, count: i32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - 12 + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&codec.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(body);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let batch = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let codec = i16::from((mode >> 1) & 0x07);
        let count = i32::from(mode >> 4) + 1;
        wrap(codec, count, rest)
    };
    if let Ok(valid) = validate_produced_batch(&batch, LIMIT) {
        let h = BatchHeader::parse(&batch).expect("a valid batch has a header");
        assert!(valid.total_len >= BATCH_HEADER_LEN && valid.total_len <= batch.len());
        assert!(valid.records_count >= 1);
        assert_eq!(valid.last_offset_delta, valid.records_count - 1);
        assert_eq!(valid.records_count, h.records_count());
        assert!(valid.max_timestamp >= -1);
    }
});
