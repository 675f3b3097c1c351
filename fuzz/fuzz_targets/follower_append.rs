//! What a leader sends a follower: `PartitionLog::append_as_follower` takes the records of a
//! Fetch response from another broker and must never panic on arbitrary bytes. Whatever it
//! accepts must read back exactly, batch for batch, at the offsets the batches carry.
//!
//! One log (in a temporary directory) serves every input; it is emptied again when it grows
//! past a few segments, so the fuzzer stays fast and rolls are reached.

#![no_main]

use std::cell::RefCell;

use caudal_storage::batch::BatchIter;
use caudal_storage::{LogConfig, PartitionLog};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    _dir: std::path::PathBuf,
    log: PartitionLog,
}

thread_local! {
    static LOG: RefCell<Fixture> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("caudal-fuzz-follower-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = LogConfig {
            segment_bytes: 4096,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&dir, config, 0).expect("a fresh log opens");
        Fixture { _dir: dir, log }
    });
}

fuzz_target!(|data: &[u8]| {
    LOG.with(|fixture| {
        let log = &mut fixture.borrow_mut().log;
        if log.log_end_offset() > 1 << 20 || log.segment_count() > 8 {
            log.truncate_fully_and_start_at(0, 0).expect("the log empties");
        }
        let before = log.log_end_offset();
        let Ok(Some(info)) = log.append_as_follower(data, 0) else {
            assert_eq!(log.log_end_offset(), before, "a refused append left bytes behind");
            return;
        };
        assert!(info.base_offset >= before && info.last_offset >= info.base_offset);
        assert_eq!(log.log_end_offset(), info.last_offset + 1);
        // What was accepted reads back as the batches of `data` it came from.
        let plan = log
            .read(info.base_offset, usize::MAX / 2, i64::MAX, true)
            .expect("the appended range reads")
            .expect("something to read");
        let stored = plan.read().expect("the appended bytes read back");
        let sent: Vec<_> = BatchIter::new(data).map(|(at, h)| (at, h.total_len())).collect();
        let mut at_stored = 0;
        for (at, len) in sent {
            let len = len.expect("BatchIter yields whole lengths");
            if at_stored >= stored.len() {
                break;
            }
            assert_eq!(&stored[at_stored..at_stored + len], &data[at..at + len]);
            at_stored += len;
        }
    });
});
