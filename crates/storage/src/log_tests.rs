use super::*;
use crate::batch::tests::batch;
use crate::batch::BatchHeader;
use proptest::prelude::*;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// Reads every batch from `offset` to the end and returns `(base_offset, last_offset)` pairs.
fn read_all(log: &mut PartitionLog, mut offset: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    while let Some(plan) = log.read(offset, 1 << 20, i64::MAX, true).unwrap() {
        let bytes = plan.read().unwrap();
        assert!(!bytes.is_empty(), "a read at {offset} returned nothing");
        for (at, h) in BatchIter::new(&bytes) {
            let len = h.total_len().unwrap();
            crate::batch::validate_batch(&bytes[at..at + len])
                .expect("every batch read back is intact");
            out.push((h.base_offset(), h.last_offset()));
            offset = h.last_offset() + 1;
        }
    }
    out
}

fn append_n(log: &mut PartitionLog, batches: usize, per_batch: usize, now: i64) {
    for i in 0..batches {
        let values: Vec<Vec<u8>> = (0..per_batch)
            .map(|j| format!("value-{i}-{j}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        log.append(&batch(&refs, now + i as i64), now).unwrap();
    }
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 50, 3, 1000);
    assert_eq!(log.log_end_offset(), 150);
    for offset in 0..150 {
        let first = read_all(&mut log, offset)[0];
        assert!(
            first.0 <= offset && offset <= first.1,
            "read at {offset} started at {first:?}"
        );
    }
    assert!(log.read(150, 1 << 20, i64::MAX, true).unwrap().is_none());
    assert!(matches!(
        log.read(151, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn a_cached_read_returns_what_a_disk_read_does_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 20, 5, 0);
    for (offset, max_bytes) in [(0, 1 << 20), (37, 200), (99, 10)] {
        let plan = log
            .read(offset, max_bytes, i64::MAX, true)
            .unwrap()
            .unwrap();
        // Just written, so in the page cache (the test directory is on a file system that
        // supports RWF_NOWAIT, as ext4, xfs and btrfs do).
        assert_eq!(
            plan.read_cached().unwrap(),
            Some(plan.read().unwrap()),
            "at {offset}"
        );
    }
    // A file that cannot tell what is cached never claims a cached read.
    let disk = crate::disk::faults::FaultyDisk::new();
    let (mut faulty, _) = PartitionLog::open_on(
        std::sync::Arc::new(disk),
        &dir.path().join("faulty"),
        config(1 << 20),
        0,
    )
    .unwrap();
    append_n(&mut faulty, 2, 5, 0);
    let plan = faulty.read(0, 1 << 20, i64::MAX, true).unwrap().unwrap();
    assert_eq!(plan.read_cached().unwrap(), None);
    assert!(!plan.read().unwrap().is_empty());
}

#[test]
fn reads_stop_at_max_bytes_on_a_batch_boundary_but_return_one_oversized_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 10, 5, 0);
    let one = log
        .read(0, 10, i64::MAX, true)
        .unwrap()
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(
        BatchIter::new(&one).count(),
        1,
        "min_one_batch must return the first batch whole"
    );
    let none = log
        .read(0, 10, i64::MAX, false)
        .unwrap()
        .unwrap()
        .read()
        .unwrap();
    assert!(none.is_empty());
    let some = log
        .read(0, 400, i64::MAX, true)
        .unwrap()
        .unwrap()
        .read()
        .unwrap();
    let mut iter = BatchIter::new(&some);
    let n = iter.by_ref().count();
    assert!(n >= 1 && iter.position() == some.len() && some.len() <= 400);
}

#[test]
fn reads_never_pass_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 10, 2, 0);
    let bytes = log
        .read(0, 1 << 20, 6, true)
        .unwrap()
        .unwrap()
        .read()
        .unwrap();
    let last = BatchIter::new(&bytes).last().unwrap().1.last_offset();
    assert_eq!(last, 5);
    assert!(log.read(6, 1 << 20, 6, true).unwrap().is_none());
}

#[test]
fn segments_roll_by_size_and_time_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    append_n(&mut log, 40, 4, 0);
    assert!(
        log.segment_count() > 3,
        "expected size-based rolls, got {}",
        log.segment_count()
    );
    let got = read_all(&mut log, 0);
    assert_eq!(got.len(), 40);
    assert_eq!(got.last().unwrap().1, 159);
    let before = log.segment_count();
    let mut timed = config(1 << 30);
    timed.segment_ms = 100;
    log.set_config(timed);
    append_n(&mut log, 1, 1, 10_000);
    append_n(&mut log, 1, 1, 20_000);
    assert!(log.segment_count() > before, "expected a time-based roll");
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"00000000000000000000.log".to_string()));
    assert!(names.contains(&"00000000000000000000.index".to_string()));
    assert!(names.contains(&"00000000000000000000.timeindex".to_string()));
}

#[test]
fn a_torn_tail_is_truncated_on_open_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 20, 3, 0);
    let path = dir.path().join("00000000000000000000.log");
    drop(log);
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    let (mut log, report) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    assert_eq!(
        log.log_end_offset(),
        57,
        "the last, torn batch must be gone"
    );
    assert!(report.truncated_bytes > 0);
    append_n(&mut log, 1, 1, 0);
    assert_eq!(log.log_end_offset(), 58);
    assert_eq!(read_all(&mut log, 0).len(), 20);
}

#[test]
fn a_corrupted_tail_batch_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    append_n(&mut log, 10, 1, 0);
    let path = dir.path().join("00000000000000000000.log");
    drop(log);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    assert_eq!(log.log_end_offset(), 9);
    assert!(
        report.reasons.iter().any(|r| r.contains("CRC")),
        "{:?}",
        report.reasons
    );
}

#[test]
fn missing_or_garbage_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(2000), 0).unwrap();
    append_n(&mut log, 60, 2, 0);
    log.close().unwrap();
    let segments = log.segment_count();
    drop(log);
    fs::remove_file(dir.path().join("00000000000000000000.index")).unwrap();
    fs::write(
        dir.path().join("00000000000000000000.timeindex"),
        [0xffu8; 24],
    )
    .unwrap();
    let (mut log, report) = PartitionLog::open(dir.path(), config(2000), 0).unwrap();
    assert!(report.rebuilt_indexes >= 1, "{report:?}");
    assert_eq!(log.segment_count(), segments);
    assert_eq!(read_all(&mut log, 0).len(), 60);
    assert_eq!(read_all(&mut log, 33)[0], (32, 33));
}

#[test]
fn a_clean_close_needs_no_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    append_n(&mut log, 30, 2, 0);
    log.close().unwrap();
    drop(log);
    let (log, report) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    assert_eq!(
        report.recovered_segments, 1,
        "only the active segment is rescanned"
    );
    assert_eq!(log.log_end_offset(), 60);
}

#[test]
fn a_close_in_two_halves_checkpoints_what_the_first_half_saw() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    append_n(&mut log, 30, 2, 0);
    log.set_leader_epoch(2);
    append_n(&mut log, 5, 2, 0);
    let up_to = log.prepare_close().unwrap();
    assert_eq!(up_to, 70);
    // (The broker syncs the filesystem here.) An append between the halves is not vouched for.
    append_n(&mut log, 1, 2, 0);
    log.checkpoint_synced(up_to).unwrap();
    assert!(!log.epochs().is_dirty());
    drop(log);
    let point: i64 = fs::read_to_string(dir.path().join("recovery-point"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(point, 70);
    let (log, report) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    assert_eq!(
        report.recovered_segments, 1,
        "only the active segment is rescanned"
    );
    assert_eq!(log.log_end_offset(), 72);
    let epochs: Vec<(i32, i64)> = log
        .epochs()
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect();
    assert_eq!(epochs, [(0, 0), (2, 60)]);
}

#[test]
fn timestamps_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1000), 0).unwrap();
    // batch i holds 3 records with timestamps 1000*i, 1000*i+1, 1000*i+2
    for i in 0..30i64 {
        log.append(&batch(&[b"a", b"b", b"c"], 1000 * i), 0)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(5001).unwrap(), Some((16, 5001)));
    assert_eq!(log.offset_for_timestamp(5003).unwrap(), Some((18, 6000)));
    assert_eq!(log.offset_for_timestamp(99_999).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((89, 29_002)));
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(500);
    cfg.retention_bytes = 1500;
    let (mut log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
    append_n(&mut log, 50, 2, 0);
    let deleted = log.apply_retention(0).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() <= 1500 + 500);
    assert!(log.log_start_offset() > 0);
    assert!(matches!(
        log.read(0, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    let start = log.log_start_offset();
    assert_eq!(read_all(&mut log, start)[0].0, start);
}

#[test]
fn flush_jobs_cover_everything_appended() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
    assert!(log.flush_job().is_none());
    append_n(&mut log, 10, 2, 0);
    let job = log.flush_job().unwrap();
    assert_eq!(job.up_to, 20);
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    assert_eq!(log.flushed_offset(), 20);
    assert!(log.flush_job().is_none());
    // the recovery point moved past the sealed segments
    let point: i64 = fs::read_to_string(dir.path().join("recovery-point"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(point > 0);
}

#[test]
fn a_roll_leaves_its_fsyncs_to_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
    append_n(&mut log, 1, 2, 0);
    let job = log.flush_job().unwrap();
    assert!(job.dir.is_none() && job.checkpoint.is_none(), "{job:?}");
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    // Appends until the log rolls: the new segment's files are in the directory, not yet
    // durably; the flush after the roll syncs the directory and the sealed segment's indexes.
    let segments = log.segment_count();
    while log.segment_count() == segments {
        append_n(&mut log, 1, 2, 0);
    }
    let job = log.flush_job().unwrap();
    assert_eq!(job.dir.as_deref(), Some(dir.path()));
    let checkpoint = job
        .checkpoint
        .as_ref()
        .expect("the sealed segment is checkpointed");
    assert_eq!(checkpoint.at, log.active().base_offset());
    assert_eq!(
        job.files.len(),
        1 + 3 + 1,
        "the sealed segment's log twice, its indexes, the active log"
    );
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    assert_eq!(log.recovery_point, checkpoint.at);
    // Nothing rolled since: the next flush syncs data only.
    append_n(&mut log, 1, 2, 0);
    let job = log.flush_job().unwrap();
    assert!(job.dir.is_none() && job.checkpoint.is_none(), "{job:?}");
}

#[test]
fn a_truncation_during_a_flush_voids_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
    append_n(&mut log, 10, 2, 0);
    let job = log.flush_job().unwrap();
    assert!(job.checkpoint.is_some());
    // While the job runs without the lock, a follower truncates its log to offset 4.
    log.truncate_to(4, 0).unwrap();
    let after_truncation = log.recovery_point;
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    assert_eq!(log.recovery_point, after_truncation);
    assert!(log.recovery_point <= log.active().base_offset());
    let on_disk: i64 = fs::read_to_string(dir.path().join("recovery-point"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(on_disk, after_truncation);
}

#[test]
fn an_epoch_begun_during_a_flush_is_written_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
    log.set_leader_epoch(1);
    append_n(&mut log, 10, 2, 0);
    let job = log.flush_job().unwrap();
    assert!(job.checkpoint.as_ref().is_some_and(|c| c.epochs.is_some()));
    // A new leader epoch begins while the job runs: the checkpoint it wrote lacks it.
    log.set_leader_epoch(2);
    append_n(&mut log, 1, 2, 0);
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    assert!(log.epochs.is_dirty(), "epoch 2 is not in the file yet");
    while log.recovery_point == log.active().base_offset() {
        append_n(&mut log, 1, 2, 0);
    }
    let job = log.flush_job().unwrap();
    job.run().unwrap();
    log.flush_done(&job).unwrap();
    assert!(!log.epochs.is_dirty());
    let loaded = LeaderEpochCache::load(dir.path()).unwrap().unwrap();
    assert_eq!(loaded.entries(), log.epochs.entries());
    assert_eq!(loaded.entries().len(), 2);
}

mod follower {
    use super::*;
    use crate::batch::tests::reseal;

    /// An idempotent producer's batch: producer id 7, epoch 0, first sequence `seq`.
    fn idempotent(values: &[&[u8]], seq: i32) -> Vec<u8> {
        let mut b = batch(values, 1000);
        b[43..51].copy_from_slice(&7i64.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        reseal(&mut b);
        b
    }

    /// Everything `log` holds from `offset`, as a fetch would send it.
    fn bytes_from(log: &mut PartitionLog, mut offset: i64) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(plan) = log.read(offset, 1 << 20, i64::MAX, true).unwrap() {
            let bytes = plan.read().unwrap();
            for (_, h) in BatchIter::new(&bytes) {
                offset = h.last_offset() + 1;
            }
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// A leader log with three epochs, an idempotent producer, and a few segments.
    fn leader(dir: &Path) -> PartitionLog {
        let (mut log, _) = PartitionLog::open(dir, config(400), 0).unwrap();
        log.set_leader_epoch(1);
        append_n(&mut log, 4, 2, 0);
        log.set_leader_epoch(3);
        for seq in 0..3 {
            log.append(&idempotent(&[b"a", b"b"], seq * 2), 0).unwrap();
        }
        log.set_leader_epoch(4);
        append_n(&mut log, 4, 3, 0);
        log
    }

    #[test]
    fn a_follower_keeps_the_leaders_batches_byte_for_byte() {
        let (l, f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = leader(l.path());
        let (mut follower, _) = PartitionLog::open(f.path(), config(400), 0).unwrap();
        let sent = bytes_from(&mut leader, 0);
        let info = follower.append_as_follower(&sent, 0).unwrap().unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset),
            (0, leader.log_end_offset() - 1)
        );
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(bytes_from(&mut follower, 0), sent);
        assert_eq!(follower.epochs().entries(), leader.epochs().entries());
        assert_eq!(
            follower.end_offset_for_epoch(3),
            leader.end_offset_for_epoch(3)
        );
        // Made leader, the follower knows the producer's last batch: its retry is a duplicate.
        follower.set_leader_epoch(5);
        let retry = follower
            .append(&idempotent(&[b"a", b"b"], 4), 0)
            .unwrap()
            .unwrap();
        assert!(retry.duplicate, "{retry:?}");
        // It survives a crash and a recovery the same.
        drop(follower);
        let (mut follower, _) = PartitionLog::open(f.path(), config(400), 0).unwrap();
        assert_eq!(bytes_from(&mut follower, 0), sent);
    }

    #[test]
    fn a_partial_batch_at_the_end_waits_for_the_next_fetch() {
        let (l, f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = leader(l.path());
        let (mut follower, _) = PartitionLog::open(f.path(), config(400), 0).unwrap();
        let sent = bytes_from(&mut leader, 0);
        let first = BatchHeader::parse(&sent).unwrap().total_len().unwrap();
        let info = follower
            .append_as_follower(&sent[..first + 30], 0)
            .unwrap()
            .unwrap();
        assert_eq!(info.base_offset, 0);
        assert_eq!(follower.log_end_offset(), info.last_offset + 1);
        assert_eq!(
            follower
                .append_as_follower(&sent[first..first + 30], 0)
                .unwrap(),
            None
        );
        follower.append_as_follower(&sent[first..], 0).unwrap();
        assert_eq!(bytes_from(&mut follower, 0), sent);
    }

    #[test]
    fn a_batch_below_the_log_end_or_damaged_is_refused_and_changes_nothing() {
        let (l, f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = leader(l.path());
        let (mut follower, _) = PartitionLog::open(f.path(), config(400), 0).unwrap();
        let sent = bytes_from(&mut leader, 0);
        follower.append_as_follower(&sent, 0).unwrap();
        let end = follower.log_end_offset();
        let again = follower.append_as_follower(&sent, 0);
        assert!(
            matches!(again, Err(AppendError::BelowLogEnd { base_offset: 0, log_end_offset }) if log_end_offset == end),
            "{again:?}"
        );
        let mut next = batch(&[b"x"], 0);
        next[..8].copy_from_slice(&end.to_be_bytes());
        reseal(&mut next);
        let mut damaged = next.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            follower.append_as_follower(&damaged, 0),
            Err(AppendError::Corrupt(_))
        ));
        // A good batch followed by a damaged one: nothing is appended.
        let mut run = next.clone();
        run.extend_from_slice(&damaged);
        assert!(matches!(
            follower.append_as_follower(&run, 0),
            Err(AppendError::Corrupt(_))
        ));
        // Two batches out of order: nothing is appended.
        let mut run = next.clone();
        run.extend_from_slice(&next);
        assert!(matches!(
            follower.append_as_follower(&run, 0),
            Err(AppendError::BelowLogEnd { .. })
        ));
        assert_eq!(follower.log_end_offset(), end);
        assert_eq!(bytes_from(&mut follower, 0), sent);
        // A gap, as compaction leaves them: the batch lands at its own offset.
        next[..8].copy_from_slice(&(end + 10).to_be_bytes());
        reseal(&mut next);
        follower.append_as_follower(&next, 0).unwrap();
        assert_eq!(follower.log_end_offset(), end + 11);
        assert_eq!(
            read_all(&mut follower, end).last(),
            Some(&(end + 10, end + 10))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// However a leader's log is cut into fetch responses (anywhere, partial batches
        /// included), a follower that fetches from its own log end ends byte-identical.
        #[test]
        fn any_cuts_give_an_identical_follower(cuts in proptest::collection::vec(1usize..600, 1..40)) {
            let (l, f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut leader = leader(l.path());
            let (mut follower, _) = PartitionLog::open(f.path(), config(400), 0).unwrap();
            let sent = bytes_from(&mut leader, 0);
            for cut in cuts.iter().cycle() {
                if follower.log_end_offset() == leader.log_end_offset() {
                    break;
                }
                let response = bytes_from(&mut leader, follower.log_end_offset());
                // A response holds at least its first batch whole, as Kafka's do.
                let first = BatchHeader::parse(&response).unwrap().total_len().unwrap();
                let n = (*cut).max(first).min(response.len());
                follower.append_as_follower(&response[..n], 0).unwrap();
            }
            prop_assert_eq!(follower.log_end_offset(), leader.log_end_offset());
            prop_assert_eq!(bytes_from(&mut follower, 0), sent);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever the batch sizes and wherever the file is cut, reopening keeps exactly the
    /// batches that were whole before the cut, with their offsets.
    #[test]
    fn recovery_keeps_exactly_the_whole_batches(sizes in prop::collection::vec(1usize..6, 1..30), cut_frac in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        let mut ends = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let values: Vec<Vec<u8>> = (0..*n).map(|j| vec![b'x'; i + j]).collect();
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            log.append(&batch(&refs, 0), 0).unwrap();
            ends.push((log.size_bytes(), log.log_end_offset()));
        }
        drop(log);
        let path = dir.path().join("00000000000000000000.log");
        let len = fs::metadata(&path).unwrap().len();
        let cut = (len as f64 * cut_frac) as u64;
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        let expected = ends.iter().rev().find(|(size, _)| *size <= cut).map(|(_, leo)| *leo).unwrap_or(0);
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        prop_assert_eq!(log.log_end_offset(), expected);
        let got = read_all(&mut log, 0);
        prop_assert_eq!(got.last().map(|b| b.1 + 1).unwrap_or(0), expected);
        let _ = BatchHeader::parse(&[]);
    }
}

mod compaction {
    use super::*;
    use crate::batch::tests::keyed_batch;

    fn compact_config(segment_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes,
            index_interval_bytes: 64,
            compact: true,
            delete_retention_ms: 1_000,
            ..LogConfig::default()
        }
    }

    /// Calls `f` with every stored batch, in offset order; each must still be valid.
    fn each_batch(log: &PartitionLog, mut f: impl FnMut(&BatchHeader<'_>, &[u8])) {
        for seg in log.segments.values() {
            let mut position = 0u64;
            let mut header = [0u8; BATCH_HEADER_LEN];
            while position < seg.size() {
                seg.log_file().read_exact_at(&mut header, position).unwrap();
                let len = BatchHeader::parse(&header).unwrap().total_len().unwrap();
                let mut buf = vec![0u8; len];
                seg.log_file().read_exact_at(&mut buf, position).unwrap();
                crate::batch::validate_batch(&buf).expect("every stored batch stays valid");
                f(&BatchHeader::parse(&buf).unwrap(), &buf);
                position += len as u64;
            }
        }
    }

    /// The records of a batch: (offset, key, value) with None for null.
    fn batch_records(h: &BatchHeader<'_>, buf: &[u8]) -> Vec<(i64, String, Option<String>)> {
        crate::compact::tests_support::records(&buf[BATCH_HEADER_LEN..], h.records_count())
            .into_iter()
            .map(|(d, k, v)| (h.base_offset() + i64::from(d), k, v))
            .collect()
    }

    /// Every record in the log: (offset, key, value) with None for null.
    fn contents(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
        let mut out = Vec::new();
        each_batch(log, |h, buf| out.extend(batch_records(h, buf)));
        out
    }

    /// A pass leaves no `.cleaned` file behind, swapped in or dropped.
    fn assert_no_cleaned_files(dir: &std::path::Path) {
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cleaned"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn put(log: &mut PartitionLog, key: &str, value: Option<&str>, now: i64) {
        let b = keyed_batch(&[(Some(key.as_bytes()), value.map(str::as_bytes))], now);
        log.append(&b, now).unwrap();
    }

    #[test]
    fn only_the_latest_record_of_each_key_survives_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        let writes = [
            ("a", "1"),
            ("b", "1"),
            ("a", "2"),
            ("c", "1"),
            ("b", "2"),
            ("a", "3"),
            ("d", "1"),
            ("c", "2"),
            ("e", "1"),
            ("f", "1"),
        ];
        for (k, v) in writes {
            put(&mut log, k, Some(v), 10);
        }
        let before = log.segment_count();
        assert!(before > 3, "small segments: {before}");
        // Segments are grouped by their current size, as in Kafka: with room, they merge.
        log.set_config(compact_config(300));
        let report = log.compact(20).unwrap().expect("a compaction pass");
        assert!(report.records_removed >= 3, "{report:?}");
        assert!(
            report.segments_after < before,
            "neighbouring segments were merged: {report:?}"
        );
        let got = contents(&log);
        let keys: Vec<&str> = got.iter().map(|(_, k, _)| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys.len(), sorted.len(), "one record per key: {got:?}");
        assert!(got.contains(&(5, "a".into(), Some("3".into()))), "{got:?}");
        assert!(got.contains(&(4, "b".into(), Some("2".into()))), "{got:?}");
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets still increase: {got:?}"
        );
        assert_eq!(log.log_end_offset(), 10, "the log end does not move");
        // Reads see the same, from any offset, including offsets that were compacted away.
        assert_eq!(read_all(&mut log, 0).first().unwrap().0, got[0].0);
        assert!(read_all(&mut log, 1).first().unwrap().0 >= 1);
        // Reopening finds the compacted log as it was left.
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), compact_config(300), 30).unwrap();
        assert!(report.reasons.is_empty(), "{report:?}");
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(contents(&log), got);
    }

    #[test]
    fn appends_during_a_pass_are_kept_and_the_pass_still_lands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        for i in 0..9 {
            put(&mut log, &format!("k{}", i % 3), Some(&i.to_string()), 10);
        }
        let plan = log.compaction_plan(20).expect("something to compact");
        // Built without the log: meanwhile producers append, and segments roll.
        let cleaned = plan.build().unwrap();
        for i in 9..15 {
            put(&mut log, &format!("k{}", i % 3), Some(&i.to_string()), 30);
        }
        let report = log
            .finish_compaction(cleaned, 40)
            .unwrap()
            .expect("swapped in");
        assert!(report.records_removed > 0, "{report:?}");
        let got = contents(&log);
        assert!(
            (9..15).all(|o| got.iter().any(|(offset, _, _)| *offset == o)),
            "a record appended during the pass was lost: {got:?}"
        );
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets still increase: {got:?}"
        );
        assert_eq!(log.log_end_offset(), 15);
        assert_no_cleaned_files(dir.path());
    }

    #[test]
    fn a_pass_built_before_a_truncation_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        // "k" is rewritten last in the active segment: the pass will drop every older "k".
        for i in 0..8 {
            put(&mut log, &format!("k{}", i % 2), Some(&i.to_string()), 10);
        }
        put(&mut log, "k0", Some("newest"), 10);
        let plan = log.compaction_plan(20).expect("something to compact");
        let cleaned = plan.build().unwrap();
        // The newest "k0" is cut away (a follower truncating to its leader's log, say).
        log.truncate_to(log.log_end_offset() - 1, 30).unwrap();
        let before = contents(&log);
        assert_eq!(log.finish_compaction(cleaned, 30).unwrap(), None);
        assert_eq!(
            contents(&log),
            before,
            "the pass dropped records still current"
        );
        assert!(before.iter().any(|(_, k, _)| k == "k0"));
        assert_no_cleaned_files(dir.path());
    }

    #[test]
    fn a_pass_over_segments_that_changed_meanwhile_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_ms: 100,
            ..compact_config(150)
        };
        let (mut log, _) = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
        for i in 0..9 {
            put(&mut log, &format!("k{}", i % 3), Some(&i.to_string()), 10);
        }
        let plan = log.compaction_plan(20).expect("something to compact");
        let cleaned = plan.build().unwrap();
        // Retention deletes the oldest planned segment before the pass is swapped in.
        log.set_config(LogConfig {
            compact: false,
            ..config.clone()
        });
        assert!(log.apply_retention(1_000).unwrap() > 0);
        log.set_config(config);
        let before = contents(&log);
        let report = log.finish_compaction(cleaned, 1_000).unwrap();
        assert_eq!(report, None, "a stale pass was swapped in");
        assert_eq!(contents(&log), before, "a stale pass changed the log");
        assert_no_cleaned_files(dir.path());
    }

    #[test]
    fn tombstones_last_delete_retention_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        put(&mut log, "gone", Some("v"), 0);
        put(&mut log, "kept", Some("v"), 0);
        put(&mut log, "gone", None, 100);
        for i in 0..5 {
            put(&mut log, &format!("filler{i}"), Some("v"), 100);
        }
        log.compact(500).unwrap();
        let got = contents(&log);
        assert!(
            got.iter().any(|(_, k, v)| k == "gone" && v.is_none()),
            "the tombstone is still within delete.retention.ms: {got:?}"
        );
        assert!(
            !got.iter().any(|(_, k, v)| k == "gone" && v.is_some()),
            "the deleted value is gone: {got:?}"
        );
        log.compact(5_000).unwrap();
        let got = contents(&log);
        assert!(
            !got.iter().any(|(_, k, _)| k == "gone"),
            "expired tombstone removed: {got:?}"
        );
        assert!(got.iter().any(|(_, k, _)| k == "kept"));
    }

    /// A keyed record in producer `pid`'s transaction.
    fn txn_put(log: &mut PartitionLog, pid: i64, seq: i32, key: &str, value: &str, now: i64) {
        let mut b = keyed_batch(&[(Some(key.as_bytes()), Some(value.as_bytes()))], now);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        crate::batch::tests::reseal(&mut b);
        log.append(&b, now).unwrap();
    }

    fn end_txn(log: &mut PartitionLog, pid: i64, commit: bool, now: i64) -> i64 {
        let marker = crate::batch::ControlMarker {
            commit,
            coordinator_epoch: 0,
        };
        log.append_marker(pid, 0, marker, now)
            .unwrap()
            .0
            .base_offset
    }

    /// The base offsets of the control batches (markers) in the log.
    fn markers(log: &PartitionLog) -> Vec<i64> {
        let mut out = Vec::new();
        each_batch(log, |h, _| {
            if h.is_control() {
                out.push(h.base_offset());
            }
        });
        out
    }

    /// Values of key `key` in the log, with their offsets.
    fn values_of(log: &PartitionLog, key: &str) -> Vec<(i64, String)> {
        contents(log)
            .into_iter()
            .filter(|(_, k, _)| k == key)
            .map(|(o, _, v)| (o, v.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn aborted_records_never_make_committed_ones_obsolete_and_go_with_their_markers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        // An offset commit, then a transaction committing a newer one between two aborted
        // ones: the shape of __consumer_offsets under an exactly-once pipeline that crashed.
        put(&mut log, "g", Some("committed-1"), 10); // 0
        txn_put(&mut log, 7, 0, "g", "aborted-1", 10); // 1
        assert_eq!(end_txn(&mut log, 7, false, 10), 2);
        txn_put(&mut log, 8, 0, "g", "committed-2", 10); // 3
        assert_eq!(end_txn(&mut log, 8, true, 10), 4);
        txn_put(&mut log, 9, 0, "g", "aborted-2", 10); // 5
        assert_eq!(end_txn(&mut log, 9, false, 10), 6);
        for i in 0..6 {
            put(&mut log, &format!("other-{i}"), Some("x"), 10);
        }
        log.set_config(compact_config(10_000));
        log.compact(20).unwrap().expect("a compaction pass");
        assert_eq!(values_of(&log, "g"), vec![(3, "committed-2".to_string())]);
        // Within delete.retention.ms every marker stays: a reader part-way through needs them.
        assert_eq!(markers(&log), vec![2, 4, 6]);
        assert_eq!(log.aborted_txns(0, log.log_end_offset()).len(), 2);

        // Past it, the markers of the aborted transactions go (nothing of theirs is left); the
        // commit marker stays with its record, which a replay must see committed.
        for i in 0..2 {
            put(&mut log, &format!("later-{i}"), Some("x"), 5_000);
        }
        log.compact(5_000).unwrap().expect("a second pass");
        assert_eq!(values_of(&log, "g"), vec![(3, "committed-2".to_string())]);
        assert_eq!(markers(&log), vec![4]);
        assert!(log.aborted_txns(0, log.log_end_offset()).is_empty());
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), compact_config(10_000), 6_000).unwrap();
        assert!(
            log.aborted_txns(0, log.log_end_offset()).is_empty(),
            "index files follow"
        );
        assert_eq!(values_of(&log, "g"), vec![(3, "committed-2".to_string())]);
    }

    #[test]
    fn records_of_an_open_transaction_make_nothing_obsolete_until_it_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        put(&mut log, "g", Some("committed"), 10); // 0
        txn_put(&mut log, 7, 0, "g", "pending", 10); // 1
        for i in 0..6 {
            put(&mut log, &format!("other-{i}"), Some("x"), 10);
        }
        log.set_config(compact_config(10_000));
        log.compact(20).unwrap();
        assert_eq!(
            values_of(&log, "g"),
            vec![(0, "committed".to_string()), (1, "pending".to_string())],
            "the transaction may still abort"
        );
        end_txn(&mut log, 7, true, 30);
        put(&mut log, "roll", Some("x"), 30);
        log.set_config(compact_config(150));
        put(&mut log, "roll-again", Some("x"), 30);
        log.set_config(compact_config(10_000));
        log.compact(40).unwrap().expect("a pass once it committed");
        assert_eq!(values_of(&log, "g"), vec![(1, "pending".to_string())]);
    }

    /// What a read_committed reader ends with: per key, the committed record with the highest
    /// offset (offset, value); and the records of transactions still open.
    #[allow(clippy::type_complexity)]
    fn committed_view(
        log: &PartitionLog,
    ) -> (
        std::collections::BTreeMap<String, (i64, Option<String>)>,
        Vec<i64>,
    ) {
        use std::collections::{BTreeMap, HashMap};
        let mut view: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
        let mut pending: HashMap<i64, Vec<(i64, String, Option<String>)>> = HashMap::new();
        each_batch(log, |h, buf| {
            let records = batch_records(h, buf);
            if h.is_control() {
                let commit = records[0].1.as_bytes().last() == Some(&1);
                for (o, k, v) in pending.remove(&h.producer_id()).unwrap_or_default() {
                    if commit && view.get(&k).is_none_or(|(at, _)| *at < o) {
                        view.insert(k, (o, v));
                    }
                }
            } else if h.is_transactional() {
                pending.entry(h.producer_id()).or_default().extend(records);
            } else {
                for (o, k, v) in records {
                    view.insert(k, (o, v));
                }
            }
        });
        let mut open: Vec<i64> = pending.values().flatten().map(|(o, _, _)| *o).collect();
        open.sort_unstable();
        (view, open)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8),
        TxnPut(u8, u8),
        End(u8, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Put),
            (0u8..3, 0u8..4).prop_map(|(p, k)| Op::TxnPut(p, k)),
            (0u8..3, any::<bool>()).prop_map(|(p, c)| Op::End(p, c)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the mix of plain writes and transactions (committed, aborted, still open),
        /// compaction changes nothing a read_committed reader ends with, keeps every record
        /// of the open transactions, and, once past delete.retention.ms, leaves no marker of
        /// a transaction that has no record left.
        #[test]
        fn compaction_keeps_the_committed_view(ops in prop::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = PartitionLog::open(dir.path(), compact_config(200), 0).unwrap();
            let mut seq = [0i32; 3];
            let mut open = [false; 3];
            for (i, op) in ops.iter().enumerate() {
                let value = format!("v{i}");
                match *op {
                    Op::Put(k) => put(&mut log, &format!("k{k}"), Some(&value), 10),
                    Op::TxnPut(p, k) => {
                        let pid = 7 + i64::from(p);
                        txn_put(&mut log, pid, seq[p as usize], &format!("k{k}"), &value, 10);
                        seq[p as usize] += 1;
                        open[p as usize] = true;
                    }
                    Op::End(p, commit) if open[p as usize] => {
                        end_txn(&mut log, 7 + i64::from(p), commit, 10);
                        open[p as usize] = false;
                    }
                    Op::End(..) => {}
                }
            }
            for i in 0..4 {
                put(&mut log, &format!("filler-{i}"), Some("x"), 10);
            }
            let before = committed_view(&log);
            log.set_config(compact_config(600));
            log.compact(20).unwrap();
            prop_assert_eq!(&committed_view(&log), &before);
            // Later, past delete.retention.ms: markers of emptied transactions go too.
            put(&mut log, "roll", Some("x"), 5_000);
            let before = committed_view(&log);
            log.compact(5_000).unwrap();
            prop_assert_eq!(&committed_view(&log), &before);
            let end = log.log_end_offset();
            for a in log.aborted_txns(0, end) {
                // An aborted transaction still indexed has its marker in the log.
                prop_assert!(markers(&log).contains(&a.last_offset), "{:?}", a);
            }
        }
    }

    #[test]
    fn a_crash_between_rename_and_delete_leaves_no_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), compact_config(150), 0).unwrap();
        for i in 0..12 {
            put(&mut log, &format!("k{}", i % 3), Some(&i.to_string()), 10);
        }
        // Keep copies of the sealed segments as they were, to put back after compacting.
        let saved: Vec<(std::path::PathBuf, Vec<u8>)> = log
            .segments
            .values()
            .take(log.segment_count() - 1)
            .skip(1)
            .map(|s| (s.log_path().to_path_buf(), fs::read(s.log_path()).unwrap()))
            .collect();
        assert!(!saved.is_empty());
        log.set_config(compact_config(10_000));
        log.compact(20).unwrap();
        assert_eq!(
            log.segment_count(),
            2,
            "the sealed segments merged into one"
        );
        let compacted = contents(&log);
        drop(log);
        for (path, bytes) in &saved {
            fs::write(path, bytes).unwrap();
        }
        fs::write(
            dir.path().join("00000000000000000000.log.cleaned"),
            b"half-written",
        )
        .unwrap();
        let (log, report) = PartitionLog::open(dir.path(), compact_config(10_000), 30).unwrap();
        assert!(
            report.reasons.iter().any(|r| r.contains("overlaps")),
            "{report:?}"
        );
        assert_eq!(contents(&log), compacted);
        assert!(!dir.path().join("00000000000000000000.log.cleaned").exists());
    }

    #[test]
    fn logs_that_are_not_compacted_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(
            dir.path(),
            LogConfig {
                compact: false,
                ..compact_config(100)
            },
            0,
        )
        .unwrap();
        for i in 0..6 {
            put(&mut log, "same", Some(&i.to_string()), 10);
        }
        assert!(log.compact(20).unwrap().is_none());
        assert_eq!(contents(&log).len(), 6);
    }
}

mod truncation_and_epochs {
    use super::*;
    use crate::epochs::LEADER_EPOCH_CHECKPOINT_FILE;

    fn epochs(log: &PartitionLog) -> Vec<(i32, i64)> {
        log.epochs()
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    /// The leader epochs written in the batch headers from `offset` on.
    fn stamped(log: &mut PartitionLog, offset: i64) -> Vec<i32> {
        let mut out = Vec::new();
        let mut at = offset;
        while let Some(plan) = log.read(at, 1 << 20, i64::MAX, true).unwrap() {
            let bytes = plan.read().unwrap();
            for (_, h) in BatchIter::new(&bytes) {
                out.push(h.partition_leader_epoch());
                at = h.last_offset() + 1;
            }
        }
        out
    }

    #[test]
    fn appends_are_stamped_with_the_leader_epoch_and_the_cache_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        append_n(&mut log, 2, 2, 0);
        log.set_leader_epoch(3);
        append_n(&mut log, 2, 2, 0);
        log.set_leader_epoch(7);
        append_n(&mut log, 1, 2, 0);
        assert_eq!(stamped(&mut log, 0), [0, 0, 3, 3, 7]);
        assert_eq!(epochs(&log), [(0, 0), (3, 4), (7, 8)]);
        assert_eq!(log.end_offset_for_epoch(3), (3, 8));
        assert_eq!(log.end_offset_for_epoch(5), (3, 8));
        assert_eq!(log.end_offset_for_epoch(7), (7, 10));
        // A clean close writes the checkpoint; the next start reads it and keeps stamping the
        // latest epoch.
        log.close().unwrap();
        drop(log);
        let text = fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n3\n0 0\n3 4\n7 8\n");
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        assert_eq!(epochs(&log), [(0, 0), (3, 4), (7, 8)]);
        assert_eq!(log.leader_epoch(), 7);
    }

    #[test]
    fn a_new_leader_epoch_begins_at_the_log_end_before_anything_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        // An empty log leading for the first time knows its epoch at once.
        log.set_leader_epoch(0);
        assert_eq!(epochs(&log), [(0, 0)]);
        assert_eq!(log.end_offset_for_epoch(0), (0, 0));
        append_n(&mut log, 2, 2, 0);
        assert!(log.close().is_ok());
        assert!(!log.epochs().is_dirty());

        log.set_leader_epoch(5);
        assert_eq!(epochs(&log), [(0, 0), (5, 4)]);
        assert!(
            log.epochs().is_dirty(),
            "the new entry is not checkpointed yet"
        );
        assert_eq!(log.end_offset_for_epoch(5), (5, 4));
        assert_eq!(
            log.end_offset_for_epoch(4),
            (0, 4),
            "an epoch between ends where the new one began"
        );
        assert_eq!(log.end_offset_for_epoch(0), (0, 4));
        // The same epoch again, or an older one, records nothing.
        log.set_leader_epoch(5);
        log.set_leader_epoch(2);
        assert_eq!(epochs(&log), [(0, 0), (5, 4)]);
        log.set_leader_epoch(5);

        // A clean close checkpoints it, and the next start keeps it and stamps it.
        log.close().unwrap();
        drop(log);
        let text = fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n2\n0 0\n5 4\n");
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        assert_eq!(epochs(&log), [(0, 0), (5, 4)]);
        assert_eq!(log.leader_epoch(), 5);
        assert_eq!(log.end_offset_for_epoch(4), (0, 4));
        append_n(&mut log, 1, 2, 0);
        assert_eq!(stamped(&mut log, 4), [5]);
        assert_eq!(epochs(&log), [(0, 0), (5, 4)]);
    }

    #[test]
    fn a_checkpointed_epoch_past_the_recovered_log_end_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        append_n(&mut log, 2, 2, 0);
        log.close().unwrap();
        drop(log);
        let path = dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE);
        // The epoch began at offset 9, but the log holds only 4 records: what was written in
        // it is gone, and so is the epoch.
        fs::write(&path, "0\n2\n0 0\n5 9\n").unwrap();
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        assert_eq!(epochs(&log), [(0, 0)]);
        assert_eq!(log.leader_epoch(), 0);
        drop(log);
        // At the log end it is kept; an epoch no newer than the batches' is not.
        fs::write(&path, "0\n2\n0 0\n5 4\n").unwrap();
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        assert_eq!(epochs(&log), [(0, 0), (5, 4)]);
        drop(log);
        fs::write(&path, "0\n1\n0 4\n").unwrap();
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        assert_eq!(epochs(&log), [(0, 0)]);
    }

    #[test]
    fn the_cache_is_rebuilt_from_the_batches_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(600), 0).unwrap();
        append_n(&mut log, 6, 3, 0);
        log.set_leader_epoch(2);
        append_n(&mut log, 6, 3, 0);
        // A roll made the first segments durable with their epochs; the rest only in memory.
        if let Some(job) = log.flush_job() {
            job.run().unwrap();
            log.flush_done(&job).unwrap();
        }
        log.set_leader_epoch(4);
        append_n(&mut log, 6, 3, 0);
        let before = epochs(&log);
        assert_eq!(before.len(), 3, "{before:?}");
        assert!(log.segment_count() > 2);
        drop(log); // no close: a crash
        let (log, _) = PartitionLog::open(dir.path(), config(600), 0).unwrap();
        assert_eq!(epochs(&log), before);
        // A lost or garbled checkpoint is rebuilt from every segment.
        drop(log);
        fs::write(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE), "garbage").unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config(600), 0).unwrap();
        assert_eq!(epochs(&log), before);
        assert!(
            report.reasons.iter().any(|r| r.contains("leader-epoch")),
            "{:?}",
            report.reasons
        );
    }

    #[test]
    fn truncation_removes_the_tail_across_segments_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        append_n(&mut log, 10, 2, 0);
        log.set_leader_epoch(1);
        append_n(&mut log, 10, 2, 0);
        log.close().unwrap();
        let segments = log.segment_count();
        assert!(segments > 3, "{segments} segments");
        log.truncate_to(13, 0).unwrap();
        // Batches of two: offset 13 is inside the batch 12..=13, which goes whole.
        assert_eq!(log.log_end_offset(), 12);
        assert!(log.segment_count() < segments);
        assert_eq!(read_all(&mut log, 0).last(), Some(&(10, 11)));
        assert_eq!(epochs(&log), [(0, 0)]);
        // Appends go on from the new end, in the current epoch.
        append_n(&mut log, 1, 2, 0);
        assert_eq!(read_all(&mut log, 0).last(), Some(&(12, 13)));
        assert_eq!(epochs(&log), [(0, 0), (1, 12)]);
        // Without a close: what the truncation removed stays removed, what came after is there.
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert_eq!(log.log_end_offset(), 14);
        assert_eq!(
            read_all(&mut log, 0),
            (0..7).map(|i| (2 * i, 2 * i + 1)).collect::<Vec<_>>()
        );
        assert_eq!(epochs(&log), [(0, 0), (1, 12)]);
        // A truncation at or past the end changes nothing.
        log.truncate_to(14, 0).unwrap();
        log.truncate_to(99, 0).unwrap();
        assert_eq!(log.log_end_offset(), 14);
    }

    #[test]
    fn truncation_below_the_log_start_empties_the_log_at_that_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        append_n(&mut log, 10, 2, 0);
        log.advance_log_start(6, 0).unwrap();
        log.truncate_to(4, 0).unwrap();
        assert_eq!(log.log_start_offset(), 4);
        assert_eq!(log.log_end_offset(), 4);
        assert_eq!(log.segment_count(), 1);
        assert!(epochs(&log).is_empty());
        append_n(&mut log, 1, 2, 0);
        assert_eq!(read_all(&mut log, 4), [(4, 5)]);
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (4, 6));
    }

    #[test]
    fn the_log_start_moves_inside_a_segment_and_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        append_n(&mut log, 4, 2, 0);
        log.set_leader_epoch(5);
        append_n(&mut log, 16, 2, 0);
        let segments = log.segment_count();
        log.advance_log_start(11, 0).unwrap();
        assert_eq!(log.log_start_offset(), 11);
        assert!(
            log.segment_count() < segments,
            "segments below the start go"
        );
        assert!(matches!(
            log.read(10, 1 << 20, i64::MAX, true),
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&mut log, 11)[0], (10, 11));
        assert_eq!(epochs(&log), [(5, 11)]);
        // Never backwards; never past the end.
        log.advance_log_start(3, 0).unwrap();
        assert_eq!(log.log_start_offset(), 11);
        assert!(log.advance_log_start(41, 0).is_err());
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert_eq!(log.log_start_offset(), 11);
        assert_eq!(epochs(&log), [(5, 11)]);
        // Up to the end: the log is empty but keeps its end offset and takes appends.
        log.advance_log_start(40, 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (40, 40));
        assert_eq!(log.segment_count(), 1);
        append_n(&mut log, 1, 2, 0);
        assert_eq!(read_all(&mut log, 40), [(40, 41)]);
    }

    #[test]
    fn a_log_emptied_to_start_past_its_end_stays_there_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        append_n(&mut log, 10, 2, 0);
        log.truncate_fully_and_start_at(100, 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
        assert_eq!(log.segment_count(), 1);
        assert!(epochs(&log).is_empty());
        log.set_leader_epoch(3);
        append_n(&mut log, 1, 2, 0);
        assert_eq!(read_all(&mut log, 100), [(100, 101)]);
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 102));
        assert_eq!(epochs(&log), [(3, 100)]);
        // Inside the log it empties it too, and an empty log can move back.
        log.truncate_fully_and_start_at(101, 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (101, 101));
        log.truncate_fully_and_start_at(7, 0).unwrap();
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
    }
}

#[test]
fn a_follower_keeps_gaps_wider_than_a_segment_can_index() {
    use crate::batch::tests::reseal;
    let at = |offset: i64| {
        let mut b = batch(&[b"x"], 0);
        b[..8].copy_from_slice(&offset.to_be_bytes());
        reseal(&mut b);
        b
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    // The empty active segment at 0 cannot index offset 5e9: it gives way to one there.
    let far = 5_000_000_000;
    log.append_as_follower(&at(far), 0).unwrap();
    assert_eq!((log.log_end_offset(), log.segment_count()), (far + 1, 1));
    // From a segment with data, the log rolls to a segment at the batch.
    let farther = 3 * far;
    log.append_as_follower(&at(farther), 0).unwrap();
    assert_eq!(
        (log.log_end_offset(), log.segment_count()),
        (farther + 1, 2)
    );
    assert_eq!(read_all(&mut log, 0), vec![(far, far), (farther, farther)]);
    drop(log);
    let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
    // Reopened, the log starts at its first segment, as Kafka's does.
    assert_eq!(log.log_start_offset(), far);
    assert_eq!(
        read_all(&mut log, far),
        vec![(far, far), (farther, farther)]
    );
}

mod producer_snapshots {
    use super::*;
    use crate::batch::tests::reseal;

    /// A batch of producer `pid` (epoch 0) with `count` records from sequence `seq`.
    fn idempotent(pid: i64, seq: i32, count: usize) -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("p{pid}-{i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let mut b = batch(&refs, 1000);
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        reseal(&mut b);
        b
    }

    /// Producer 7's state says its next batch starts at sequence 4: a gap is refused, and that
    /// batch is appended (not taken for a retry) at `end`.
    fn next_of_producer_7_is_sequence_4(log: &mut PartitionLog, end: i64) {
        assert!(matches!(
            log.append(&idempotent(7, 9, 1), 0),
            Err(AppendError::Sequence(SequenceError::OutOfOrder {
                expected: 4,
                got: 9,
                ..
            }))
        ));
        let next = log.append(&idempotent(7, 4, 2), 0).unwrap().unwrap();
        assert!(!next.duplicate);
        assert_eq!(next.base_offset, end);
    }

    fn snapshot_offsets(dir: &Path) -> Vec<i64> {
        snapshots::list(dir).unwrap()
    }

    fn bases(log: &PartitionLog) -> Vec<i64> {
        log.segments.keys().copied().collect()
    }

    /// Producer 7 writes two batches (offsets 0-1 and 2-3), then plain batches fill several
    /// segments.
    fn written_long_ago(dir: &Path) -> PartitionLog {
        let (mut log, _) = PartitionLog::open(dir, config(400), 0).unwrap();
        log.append(&idempotent(7, 0, 2), 0).unwrap();
        log.append(&idempotent(7, 2, 2), 0).unwrap();
        append_n(&mut log, 30, 2, 0);
        assert!(log.segment_count() >= 4, "{:?}", bases(&log));
        log
    }

    #[test]
    fn every_roll_snapshots_the_producers_at_the_new_segments_base() {
        let dir = tempfile::tempdir().unwrap();
        let log = written_long_ago(dir.path());
        assert_eq!(snapshot_offsets(dir.path()), bases(&log)[1..].to_vec());
        let newest = *bases(&log).last().unwrap();
        let bytes = std::fs::read(snapshots::tests_path(dir.path(), newest)).unwrap();
        assert_eq!(ProducerStates::from_snapshot(&bytes).unwrap().len(), 1);
    }

    #[test]
    fn a_retry_after_a_crash_is_recognised_however_many_segments_ago_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = written_long_ago(dir.path());
        let end = log.log_end_offset();
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        let retry = log.append(&idempotent(7, 2, 2), 0).unwrap().unwrap();
        assert!(retry.duplicate, "{retry:?}");
        assert_eq!((retry.base_offset, retry.last_offset), (2, 3));
        assert_eq!(log.log_end_offset(), end, "the retry was stored again");
        next_of_producer_7_is_sequence_4(&mut log, end);
    }

    #[test]
    fn a_clean_close_snapshots_the_log_end_and_the_next_start_starts_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = written_long_ago(dir.path());
        log.append(&idempotent(8, 0, 1), 0).unwrap();
        let end = log.log_end_offset();
        log.close().unwrap();
        assert_eq!(snapshot_offsets(dir.path()).last(), Some(&end));
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert!(
            log.append(&idempotent(8, 0, 1), 0)
                .unwrap()
                .unwrap()
                .duplicate
        );
        assert!(
            log.append(&idempotent(7, 2, 2), 0)
                .unwrap()
                .unwrap()
                .duplicate
        );
        // Once a later roll snapshots, the close's snapshot (at no segment base) goes at the
        // next start.
        append_n(&mut log, 10, 2, 0);
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        let offsets = snapshot_offsets(dir.path());
        assert!(
            offsets.iter().all(|o| bases(&log).contains(o)),
            "{offsets:?}"
        );
    }

    #[test]
    fn a_truncation_goes_back_to_the_snapshot_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = written_long_ago(dir.path());
        let cut = log.log_end_offset();
        log.append(&idempotent(7, 4, 2), 0).unwrap();
        append_n(&mut log, 20, 2, 0);
        let before = snapshot_offsets(dir.path());
        assert!(before.iter().any(|&o| o > cut));
        log.truncate_to(cut, 0).unwrap();
        assert!(snapshot_offsets(dir.path()).iter().all(|&o| o <= cut));
        // The truncated batch is gone from the producer's state too: sent again, it is new;
        // and the state before it is known.
        next_of_producer_7_is_sequence_4(&mut log, cut);
    }

    #[test]
    fn a_damaged_snapshot_falls_back_to_an_older_one_or_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = written_long_ago(dir.path());
        drop(log);
        for offset in snapshot_offsets(dir.path()).into_iter().rev().take(2) {
            std::fs::write(snapshots::tests_path(dir.path(), offset), b"torn").unwrap();
        }
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert!(
            log.append(&idempotent(7, 2, 2), 0)
                .unwrap()
                .unwrap()
                .duplicate
        );
        // With no snapshot at all, every segment is replayed.
        drop(log);
        for offset in snapshot_offsets(dir.path()) {
            std::fs::remove_file(snapshots::tests_path(dir.path(), offset)).unwrap();
        }
        let (mut log, _) = PartitionLog::open(dir.path(), config(400), 0).unwrap();
        assert!(
            log.append(&idempotent(7, 2, 2), 0)
                .unwrap()
                .unwrap()
                .duplicate
        );
    }

    #[test]
    fn snapshots_go_with_the_segments_retention_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(400);
        cfg.retention_bytes = 1200;
        let (mut log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
        append_n(&mut log, 40, 2, 0);
        assert!(log.apply_retention(0).unwrap() > 0);
        let first = bases(&log)[0];
        let offsets = snapshot_offsets(dir.path());
        assert!(
            !offsets.is_empty() && offsets.iter().all(|&o| o >= first),
            "{offsets:?}"
        );
    }
}

mod transactions {
    use super::*;
    use crate::batch::tests::reseal;
    use crate::batch::ControlMarker;

    fn transactional(pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
        let mut b = batch(&[b"in a transaction"], 1000);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        reseal(&mut b);
        b
    }

    const COMMIT: ControlMarker = ControlMarker {
        commit: true,
        coordinator_epoch: 1,
    };

    #[test]
    fn markers_end_transactions_and_the_open_ones_bound_what_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        append_n(&mut log, 2, 1, 0);
        assert_eq!(log.first_open_txn_offset(), None);
        log.append(&transactional(7, 0, 0), 0).unwrap();
        log.append(&transactional(8, 0, 0), 0).unwrap();
        log.append(&transactional(7, 0, 1), 0).unwrap();
        assert_eq!(log.first_open_txn_offset(), Some(2));
        let (info, ended) = log.append_marker(7, 0, COMMIT, 0).unwrap();
        assert_eq!(info.base_offset, 5);
        assert_eq!(
            ended,
            Some(EndedTxn {
                producer_id: 7,
                first_offset: 2,
                last_offset: 5
            })
        );
        assert_eq!(log.first_open_txn_offset(), Some(3));
        // The marker is in the log, as a control batch the readers see.
        let stored = read_all(&mut log, 5);
        assert_eq!(stored, vec![(5, 5)]);
        // A marker from an older epoch is refused and appends nothing.
        assert!(matches!(
            log.append_marker(8, -1, COMMIT, 0),
            Err(AppendError::Sequence(SequenceError::StaleEpoch { .. }))
        ));
        assert_eq!(log.log_end_offset(), 6);
        // Clients cannot write markers.
        let forged = crate::batch::control_batch(8, 0, COMMIT, 0);
        assert!(matches!(
            log.append(&forged, 0),
            Err(AppendError::Corrupt(BatchError::ControlFromClient))
        ));
    }

    #[test]
    fn an_open_transaction_is_still_open_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
            append_n(&mut log, 3, 1, 0);
            log.append(&transactional(7, 0, 0), 0).unwrap();
            // Segments roll past it: the snapshots at their bases carry the open transaction.
            append_n(&mut log, 10, 2, 0);
            log.close().unwrap();
        }
        let (mut log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
        assert_eq!(log.first_open_txn_offset(), Some(3));
        let (_, ended) = log.append_marker(7, 0, COMMIT, 0).unwrap();
        assert_eq!(ended.map(|e| e.first_offset), Some(3));
        assert_eq!(log.first_open_txn_offset(), None);
        drop(log);
        // Without the snapshots, replaying the log finds the same.
        for offset in snapshots::list(dir.path()).unwrap() {
            std::fs::remove_file(snapshots::tests_path(dir.path(), offset)).unwrap();
        }
        let (log, _) = PartitionLog::open(dir.path(), config(300), 0).unwrap();
        assert_eq!(log.first_open_txn_offset(), None);
    }

    #[test]
    fn a_follower_copying_a_marker_ends_the_transaction_too() {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let (mut leader, _) = PartitionLog::open(leader_dir.path(), config(1 << 20), 0).unwrap();
        let (mut follower, _) =
            PartitionLog::open(follower_dir.path(), config(1 << 20), 0).unwrap();
        leader.append(&transactional(7, 0, 0), 0).unwrap();
        let copy = |leader: &mut PartitionLog, follower: &mut PartitionLog| {
            let from = follower.log_end_offset();
            let plan = leader.read(from, 1 << 20, i64::MAX, true).unwrap().unwrap();
            follower
                .append_as_follower(&plan.read().unwrap(), 0)
                .unwrap();
        };
        copy(&mut leader, &mut follower);
        assert_eq!(follower.first_open_txn_offset(), Some(0));
        leader.append_marker(7, 0, COMMIT, 0).unwrap();
        copy(&mut leader, &mut follower);
        assert_eq!(follower.first_open_txn_offset(), None);
        // The follower learned the coordinator's epoch from the marker.
        let stale = ControlMarker {
            commit: false,
            coordinator_epoch: 0,
        };
        assert!(matches!(
            follower.append_marker(7, 0, stale, 0),
            Err(AppendError::Sequence(
                SequenceError::CoordinatorFenced { .. }
            ))
        ));
    }
}

mod aborted_index {
    use super::*;
    use crate::batch::tests::reseal;
    use crate::batch::ControlMarker;
    use crate::txnindex::AbortedTxn;

    fn transactional(pid: i64, seq: i32) -> Vec<u8> {
        let mut b = batch(&[b"in a transaction", b"and another"], 1000);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        reseal(&mut b);
        b
    }

    fn end(log: &mut PartitionLog, pid: i64, commit: bool) -> i64 {
        let marker = ControlMarker {
            commit,
            coordinator_epoch: 0,
        };
        log.append_marker(pid, 0, marker, 0).unwrap().0.base_offset
    }

    /// Producer 7's transaction at 0..=4 aborted, 8's at 2..=5 committed, 9's at 6..=8
    /// aborted; then plain records.
    fn three_transactions(log: &mut PartitionLog) -> (AbortedTxn, AbortedTxn) {
        log.append(&transactional(7, 0), 0).unwrap(); // 0, 1
        log.append(&transactional(8, 0), 0).unwrap(); // 2, 3
        assert_eq!(end(log, 7, false), 4);
        assert_eq!(end(log, 8, true), 5);
        log.append(&transactional(9, 0), 0).unwrap(); // 6, 7
        assert_eq!(end(log, 9, false), 8);
        append_n(log, 4, 2, 0);
        let first = AbortedTxn {
            producer_id: 7,
            first_offset: 0,
            last_offset: 4,
            // 8's transaction was still open at 2.
            last_stable_offset: 2,
        };
        let second = AbortedTxn {
            producer_id: 9,
            first_offset: 6,
            last_offset: 8,
            last_stable_offset: 9,
        };
        (first, second)
    }

    #[test]
    fn aborted_transactions_are_listed_for_the_range_a_fetch_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(1 << 20), 0).unwrap();
        let (a, b) = three_transactions(&mut log);
        let end = log.log_end_offset();
        assert_eq!(log.aborted_txns(0, end), vec![a, b]);
        assert_eq!(log.aborted_txns(5, end), vec![b], "7's marker is below 5");
        assert_eq!(log.aborted_txns(0, 6), vec![a], "9's began at 6");
        assert_eq!(log.aborted_txns(9, end), vec![]);
    }

    #[test]
    fn the_index_is_kept_across_restarts_and_rebuilt_when_lost_past_the_recovery_point() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(200);
        let expected = {
            let (mut log, _) = PartitionLog::open(dir.path(), cfg.clone(), 0).unwrap();
            let (a, b) = three_transactions(&mut log);
            log.close().unwrap();
            vec![a, b]
        };
        let index_files = || crate::txnindex::list(dir.path()).unwrap();
        assert!(!index_files().is_empty());
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone(), 0).unwrap();
        assert_eq!(log.aborted_txns(0, i64::MAX), expected);
        drop(log);
        // A crash that lost the index files and the checkpoint: replaying the log finds the
        // abort markers again.
        for base in index_files() {
            std::fs::remove_file(crate::txnindex::path(dir.path(), base)).unwrap();
        }
        std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
        let (log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
        assert_eq!(log.aborted_txns(0, i64::MAX), expected);
        assert!(!index_files().is_empty(), "and written back");
    }

    #[test]
    fn truncation_and_retention_take_the_entries_of_what_they_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(200);
        cfg.retention_bytes = 0;
        let (mut log, _) = PartitionLog::open(dir.path(), cfg, 0).unwrap();
        let (a, _) = three_transactions(&mut log);
        log.truncate_to(8, 0).unwrap();
        assert_eq!(log.aborted_txns(0, i64::MAX), vec![a], "9's marker was cut");
        // The open transaction of 9 is open again, as its marker is gone.
        assert_eq!(log.first_open_txn_offset(), Some(6));
        append_n(&mut log, 20, 2, 0);
        assert!(log.apply_retention(0).unwrap() > 0);
        assert!(log.log_start_offset() > 4);
        assert_eq!(log.aborted_txns(0, i64::MAX), vec![]);
        assert!(crate::txnindex::list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_follower_indexes_the_aborts_it_copies() {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let (mut leader, _) = PartitionLog::open(leader_dir.path(), config(1 << 20), 0).unwrap();
        let (mut follower, _) =
            PartitionLog::open(follower_dir.path(), config(1 << 20), 0).unwrap();
        let (a, b) = three_transactions(&mut leader);
        let plan = leader.read(0, 1 << 20, i64::MAX, true).unwrap().unwrap();
        follower
            .append_as_follower(&plan.read().unwrap(), 0)
            .unwrap();
        assert_eq!(follower.aborted_txns(0, i64::MAX), vec![a, b]);
    }
}
