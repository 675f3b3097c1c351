//! The log under a faulty disk: full disks, EIO on writes, fsyncs and file creation, torn
//! writes, and indexes that point between batches.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::batch::tests::batch;
use crate::batch::BatchHeader;
use crate::disk::faults::{Fault, FaultyDisk, Op};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

fn open_faulty(dir: &Path, disk: &FaultyDisk, segment_bytes: u64) -> PartitionLog {
    PartitionLog::open_on(Arc::new(disk.clone()), dir, config(segment_bytes), 0)
        .unwrap()
        .0
}

fn value(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    v.resize(v.len() + size, b'x');
    v
}

/// `(offset, value)` of every record readable from the start of the log.
fn records(log: &mut PartitionLog) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while let Some(plan) = log.read(offset, 1 << 20, i64::MAX, true).unwrap() {
        let bytes = plan.read().unwrap();
        assert!(!bytes.is_empty(), "a read at {offset} returned nothing");
        for (at, h) in BatchIter::new(&bytes) {
            let len = h.total_len().unwrap();
            crate::batch::validate_batch(&bytes[at..at + len]).expect("only whole batches");
            for (delta, _key, v) in crate::compact::tests_support::records(
                &bytes[at + BATCH_HEADER_LEN..at + len],
                h.records_count(),
            ) {
                out.push((
                    h.base_offset() + i64::from(delta),
                    v.unwrap_or_default().into_bytes(),
                ));
            }
            offset = h.last_offset() + 1;
        }
    }
    out
}

/// Runs a flush as the broker's flusher does.
fn flush(log: &mut PartitionLog) {
    if let Some(job) = log.flush_job() {
        match job.run() {
            Ok(()) => {
                let _ = log.flush_done(&job);
            }
            Err(e) => log.flush_failed(&e),
        }
    }
}

#[test]
fn a_full_disk_leaves_no_torn_bytes_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new();
    let mut log = open_faulty(dir.path(), &disk, 1 << 20);
    let mut acked = Vec::new();
    for i in 0..10 {
        let v = value(i, 50);
        let info = log.append(&batch(&[&v], 0), 0).unwrap().unwrap();
        acked.push((info.base_offset, v));
    }
    let size_before = log.size_bytes();
    disk.arm(Fault::NoSpaceAfter { bytes: 30 });
    for i in 10..15 {
        let e = log.append(&batch(&[&value(i, 50)], 0), 0).unwrap_err();
        assert!(matches!(e, AppendError::Io(_)), "{e}");
    }
    assert!(
        log.offline_reason().is_none(),
        "a repaired failure keeps the partition online"
    );
    assert_eq!(log.size_bytes(), size_before);
    let on_disk = fs::metadata(dir.path().join("00000000000000000000.log"))
        .unwrap()
        .len();
    assert_eq!(on_disk, size_before, "the torn bytes were truncated away");
    disk.free_space();
    for i in 15..25 {
        let v = value(i, 50);
        let info = log.append(&batch(&[&v], 0), 0).unwrap().unwrap();
        acked.push((info.base_offset, v));
    }
    assert_eq!(records(&mut log), acked);
    flush(&mut log);
    drop(log);
    let (mut log, report) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(records(&mut log), acked);
}

#[test]
fn a_failed_fsync_takes_the_partition_offline_and_a_restart_recovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new();
    let mut log = open_faulty(dir.path(), &disk, 1 << 20);
    let mut acked = Vec::new();
    for i in 0..5 {
        let v = value(i, 10);
        let info = log.append(&batch(&[&v], 0), 0).unwrap().unwrap();
        acked.push((info.base_offset, v));
    }
    disk.arm(Fault::Eio {
        op: Op::Sync,
        nth: 0,
        torn: 0,
    });
    flush(&mut log);
    assert!(log.offline_reason().is_some_and(|r| r.contains("fsync")));
    assert!(matches!(
        log.append(&batch(&[b"late"], 0), 0),
        Err(AppendError::Offline(_))
    ));
    assert!(matches!(
        log.read(0, 1 << 20, i64::MAX, true),
        Err(ReadError::Offline(_))
    ));
    assert!(log.flush_job().is_none(), "an fsync is never retried");
    assert!(
        log.close().is_err(),
        "an offline log writes no clean checkpoint"
    );
    drop(log);
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    assert_eq!(records(&mut log), acked);
    log.append(&batch(&[b"after"], 0), 0).unwrap();
}

#[test]
fn a_failed_repair_takes_the_partition_offline() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new();
    let mut log = open_faulty(dir.path(), &disk, 1 << 20);
    let v = value(0, 10);
    log.append(&batch(&[&v], 0), 0).unwrap();
    // A torn write, and the truncation that should undo it fails too.
    disk.arm(Fault::Eio {
        op: Op::Write,
        nth: 0,
        torn: 25,
    });
    disk.arm(Fault::Eio {
        op: Op::SetLen,
        nth: 0,
        torn: 0,
    });
    assert!(matches!(
        log.append(&batch(&[b"torn"], 0), 0),
        Err(AppendError::Io(_))
    ));
    assert_eq!(disk.fired(), 2);
    assert!(
        log.offline_reason()
            .is_some_and(|r| r.contains("back to its last whole batch")),
        "{:?}",
        log.offline_reason()
    );
    assert!(matches!(
        log.append(&batch(&[b"next"], 0), 0),
        Err(AppendError::Offline(_))
    ));
    drop(log);
    let (mut log, report) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    assert_eq!(
        report.truncated_bytes, 25,
        "recovery cut the torn tail: {report:?}"
    );
    assert_eq!(records(&mut log), vec![(0, v)]);
}

#[test]
fn a_segment_roll_that_cannot_create_its_files_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new();
    let mut log = open_faulty(dir.path(), &disk, 200);
    let mut acked = Vec::new();
    for i in 0..3 {
        let v = value(i, 100);
        if let Ok(Some(info)) = log.append(&batch(&[&v], 0), 0) {
            acked.push((info.base_offset, v));
        }
        if i == 0 {
            // The next append rolls: its index file cannot be created.
            disk.arm(Fault::Eio {
                op: Op::Open,
                nth: 1,
                torn: 0,
            });
        }
    }
    assert_eq!(disk.fired(), 1);
    assert_eq!(
        acked.len(),
        2,
        "only the append whose roll failed was refused"
    );
    let mut files: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let stems = ["00000000000000000000", "00000000000000000001"];
    let mut expected: Vec<String> = stems
        .iter()
        .flat_map(|s| ["index", "log", "timeindex"].map(|e| format!("{s}.{e}")))
        .collect();
    // The roll that succeeded snapshotted the producers at its base.
    expected.push(format!("{}.snapshot", stems[1]));
    expected.sort();
    assert_eq!(
        files, expected,
        "the failed roll's files are gone, the retry's are whole"
    );
    assert_eq!(records(&mut log), acked);
}

#[test]
fn an_index_pointing_between_batches_is_rebuilt_at_the_first_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(4000), 0).unwrap();
    let mut all = Vec::new();
    for i in 0..120 {
        let v = value(i, 20);
        let info = log
            .append(&batch(&[&v], 1000 + i as i64), 0)
            .unwrap()
            .unwrap();
        all.push((info.base_offset, v));
    }
    log.close().unwrap();
    assert!(log.segment_count() >= 3);
    drop(log);
    // Shift every entry but the last of the first (sealed, trusted) segment's offset index by a
    // few bytes: still sorted, still inside the file, but no longer at batch starts.
    let path = dir.path().join("00000000000000000000.index");
    let mut index = fs::read(&path).unwrap();
    let entries = index.len() / 8;
    assert!(entries >= 4, "{entries} entries");
    for e in 1..entries - 1 {
        let at = e * 8 + 4;
        let position = u32::from_be_bytes(index[at..at + 4].try_into().unwrap()) + 3;
        index[at..at + 4].copy_from_slice(&position.to_be_bytes());
    }
    fs::write(&path, &index).unwrap();
    let (mut log, report) = PartitionLog::open(dir.path(), config(4000), 0).unwrap();
    assert_eq!(
        report.rebuilt_indexes, 1,
        "only the active segment is scanned at open"
    );
    for (offset, v) in all.iter().take(40) {
        let plan = log.read(*offset, 1 << 20, i64::MAX, true).unwrap().unwrap();
        let bytes = plan.read().unwrap();
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(
            h.base_offset(),
            *offset,
            "a read at {offset} starts at its batch"
        );
        let got = crate::compact::tests_support::records(
            &bytes[BATCH_HEADER_LEN..h.total_len().unwrap()],
            1,
        );
        assert_eq!(got[0].2.as_deref().map(str::as_bytes), Some(v.as_slice()));
    }
    assert_eq!(log.offset_for_timestamp(1020).unwrap(), Some((20, 1020)));
    assert!(log.offline_reason().is_none());
    let rebuilt = fs::read(&path).unwrap();
    assert_ne!(rebuilt, index, "the index file was rewritten");
    assert_eq!(records(&mut log), all);
}

#[test]
fn a_log_under_a_tight_file_budget_reads_back_everything() {
    let dir = tempfile::tempdir().unwrap();
    let disk = crate::disk::BoundedDisk::new(2);
    let open = |disk: &crate::disk::BoundedDisk| {
        PartitionLog::open_on(Arc::new(disk.clone()), dir.path(), config(600), 0)
            .unwrap()
            .0
    };
    let mut log = open(&disk);
    let mut acked = Vec::new();
    for i in 0..200 {
        let v = value(i, i % 90);
        let info = log.append(&batch(&[&v], i as i64), 0).unwrap().unwrap();
        acked.push((info.base_offset, v));
        if i % 7 == 0 {
            flush(&mut log);
        }
    }
    assert!(log.segment_count() > 10, "{} segments", log.segment_count());
    assert!(disk.reopened() > 0, "the budget never closed a file");
    assert!(disk.open_files() <= 4, "{} files open", disk.open_files());
    assert_eq!(records(&mut log), acked);
    assert_eq!(
        log.offset_for_timestamp(150).unwrap().map(|(o, _)| o),
        Some(150)
    );
    log.close().unwrap();
    drop(log);
    let mut log = open(&disk);
    assert_eq!(records(&mut log), acked);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// For any sequence of appends (with rolls and flushes) and one injected fault (a full disk
    /// from any byte until space is freed, EIO on any write with a torn prefix of any length,
    /// on any fsync, on any file creation), then a restart: every acknowledged batch is read
    /// back with its offset and contents, nothing unacknowledged is, and offsets never go
    /// backwards.
    #[test]
    fn one_fault_then_a_restart_loses_nothing_acknowledged(
        sizes in prop::collection::vec(1usize..300, 4..50),
        kind in 0u8..4,
        at in 0u64..12_000,
        nth in 0u64..60,
        torn in 0u64..200,
        segment_bytes in 400u64..3000,
        flush_every in 1usize..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new();
        let mut log = open_faulty(dir.path(), &disk, segment_bytes);
        disk.arm(match kind {
            0 => Fault::NoSpaceAfter { bytes: at },
            1 => Fault::Eio { op: Op::Write, nth, torn },
            2 => Fault::Eio { op: Op::Sync, nth: nth % 8, torn: 0 },
            _ => Fault::Eio { op: Op::Open, nth: nth % 12, torn: 0 },
        });
        let mut acked: Vec<(i64, Vec<u8>)> = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let v = value(i, size);
            if let Ok(Some(info)) = log.append(&batch(&[&v], i as i64), i as i64) {
                prop_assert!(acked.last().is_none_or(|(o, _)| info.base_offset > *o));
                acked.push((info.base_offset, v));
            }
            if i % flush_every == 0 {
                flush(&mut log);
            }
            if i == sizes.len() / 2 {
                disk.free_space();
            }
        }
        if log.offline_reason().is_none() {
            prop_assert_eq!(&records(&mut log), &acked, "the live log");
        }
        let _ = log.close();
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(segment_bytes), 0).unwrap();
        prop_assert_eq!(&records(&mut log), &acked, "after a restart");
        let next = log.append(&batch(&[b"after"], 0), 0).unwrap().unwrap();
        prop_assert!(acked.last().is_none_or(|(o, _)| next.base_offset > *o));
    }
}

/// A truncation that fails part-way (the cut of the segment, or the fsync that makes it
/// durable) takes the log offline; the restart recovers a log that is a prefix of the old one and
/// holds at least what the truncation was to keep.
#[test]
fn a_failed_truncation_takes_the_log_offline_and_a_restart_recovers_a_prefix() {
    for op in [Op::SetLen, Op::Sync, Op::Write] {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new();
        let mut log = open_faulty(dir.path(), &disk, 1 << 20);
        let mut acked = Vec::new();
        for i in 0..10 {
            let v = value(i, 20);
            let info = log.append(&batch(&[&v], 0), 0).unwrap().unwrap();
            acked.push((info.base_offset, v));
        }
        flush(&mut log);
        disk.arm(Fault::Eio {
            op,
            nth: 0,
            torn: 0,
        });
        match log.truncate_to(4, 0) {
            Err(e) => {
                assert!(
                    log.offline_reason()
                        .is_some_and(|r| r.contains("truncation")),
                    "{op:?}: {e}"
                );
                assert!(log.truncate_to(2, 0).is_err(), "{op:?}: offline");
            }
            // Op::Write hits the index entries the truncation rewrites for the batches kept.
            Ok(()) => panic!("{op:?} did not fail the truncation"),
        }
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        let got = records(&mut log);
        assert!(got.len() >= 4, "{op:?}: kept {}", got.len());
        assert_eq!(got[..], acked[..got.len()], "{op:?}: not a prefix");
    }
}
