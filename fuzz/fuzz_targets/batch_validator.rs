//! RecordBatches from producers (and from segment files on disk): `validate_batch`, `BatchIter`,
//! the header accessors and the idempotent-producer check must never panic on arbitrary bytes.
//!
//! The input is read as a run of batches. Each one `BatchIter` yields is validated and then goes
//! through the append path's producer bookkeeping: `ProducerStates::check`, then `record` at a
//! broker-assigned offset when the check says append. Headers that `BatchIter` stops at are still
//! parsed and checked, as `append_validated` would see them.

#![no_main]

use caudal_storage::batch::{BatchIter, BATCH_HEADER_LEN};
use caudal_storage::producers::{ProducerStates, SequenceCheck};
use caudal_storage::{validate_batch, BatchHeader};
use libfuzzer_sys::fuzz_target;

fn touch(h: &BatchHeader<'_>) -> i64 {
    // Every accessor that only reads the header. (`last_offset` adds the base offset, which the
    // producer controls and the CRC does not cover; the broker only calls it on headers whose
    // base offset it wrote itself.)
    h.base_offset()
        ^ i64::from(h.batch_length())
        ^ i64::from(h.magic())
        ^ i64::from(h.crc())
        ^ i64::from(h.attributes())
        ^ i64::from(h.compression())
        ^ i64::from(h.is_log_append_time())
        ^ i64::from(h.is_transactional())
        ^ i64::from(h.is_control())
        ^ i64::from(h.last_offset_delta())
        ^ h.base_timestamp()
        ^ h.max_timestamp()
        ^ h.producer_id()
        ^ i64::from(h.producer_epoch())
        ^ i64::from(h.base_sequence())
        ^ i64::from(h.records_count())
        ^ h.total_len().map_or(-1, |n| n as i64)
}

fuzz_target!(|data: &[u8]| {
    let mut producers = ProducerStates::default();
    let mut log_end: i64 = 0;

    let whole = validate_batch(data);
    if let Ok(valid) = whole {
        assert!(valid.total_len >= BATCH_HEADER_LEN && valid.total_len <= data.len());
        // A stored batch may have gaps (compaction), never more records than offsets.
        assert!(valid.records_count >= 0 && valid.last_offset_delta >= 0);
        assert!(i64::from(valid.records_count) <= i64::from(valid.last_offset_delta) + 1);
    }

    let mut iter = BatchIter::new(data);
    let mut expected_at = 0;
    for (at, header) in iter.by_ref() {
        assert_eq!(at, expected_at);
        let len = header
            .total_len()
            .expect("BatchIter yielded an impossible length");
        assert!(at + len <= data.len());
        expected_at = at + len;
        std::hint::black_box(touch(&header));

        let batch = &data[at..at + len];
        let validated = validate_batch(batch);
        if at == 0 {
            assert_eq!(validated, whole, "validating the first batch alone differs");
        }
        let h = BatchHeader::parse(batch).expect("a yielded batch has a whole header");
        match producers.check(&h) {
            Ok(SequenceCheck::Append) => {
                if let Ok(valid) = validated {
                    producers.record(&h, log_end, 0);
                    log_end += i64::from(valid.last_offset_delta) + 1;
                }
            }
            Ok(SequenceCheck::Duplicate {
                base_offset,
                last_offset,
            }) => {
                assert!(base_offset <= last_offset && last_offset < log_end);
            }
            Err(e) => {
                std::hint::black_box(e.to_string());
            }
        }
    }
    assert_eq!(iter.position(), expected_at);

    // Whatever BatchIter stopped at: still a header to parse and check.
    if let Ok(h) = BatchHeader::parse(&data[expected_at..]) {
        std::hint::black_box(touch(&h));
        let _ = producers.check(&h);
    }
    std::hint::black_box(producers.expire(0, 1));
});
