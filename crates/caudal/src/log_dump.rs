//! `caudal log dump`: what is inside a partition's files, like Kafka's `kafka-dump-log`.
//! Segments (`.log`) show every batch (offsets, timestamps, producer, compression, CRC) and,
//! unless `--batches-only`, every record (offset, timestamp, key, value, headers); indexes
//! (`.index`, `.timeindex`) show their entries; producer snapshots (`.snapshot`) each
//! idempotent producer's epoch and last batch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use caudal_protocol::kafka_protocol::records::RecordBatchDecoder;
use caudal_storage::batch::BatchIter;
use caudal_storage::producers::ProducerStates;
use caudal_storage::{control_marker, validate_batch};
use clap::{Arg, ArgAction, ArgMatches, Command};

pub fn command() -> Command {
    Command::new("log")
        .about("Look inside partition log files")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("dump")
                .about("Print the batches and records of a segment (.log), the entries of an index (.index, .timeindex, .txnindex) or a producer snapshot (.snapshot)")
                .long_about(
                    "Print what a partition's files hold, like Kafka's kafka-dump-log.\n\n\
                     A partition lives in <data-dir>/<topic>-<partition>/ as segments named by their first offset:\n  \
                     00000000000000000000.log        the record batches, as producers sent them\n  \
                     00000000000000000000.index      offset -> position in the .log, every few KiB\n  \
                     00000000000000000000.timeindex  timestamp -> offset\n  \
                     00000000000000004096.snapshot   idempotent producers as of that offset (written at each\n                                     segment roll and at a clean shutdown), with their open transactions\n  \
                     00000000000000004096.txnindex   the transactions aborted in that segment (only where there are some)\n\n\
                     Examples:\n  caudal log dump caudal-data/orders-0/00000000000000000000.log\n  caudal log dump caudal-data/orders-0/*.index",
                )
                .arg(Arg::new("files").required(true).num_args(1..).value_parser(clap::value_parser!(PathBuf)).help("Segment, index or producer snapshot files"))
                .arg(Arg::new("batches-only").long("batches-only").action(ArgAction::SetTrue).help("Print batch headers only, not each record"))
                .arg(Arg::new("max-bytes").long("max-bytes").default_value("80").value_parser(clap::value_parser!(usize)).help("Show at most this many bytes of each key and value")),
        )
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    let Some(("dump", m)) = m.subcommand() else {
        return Ok(());
    };
    let records = !m.get_flag("batches-only");
    let max = m.get_one::<usize>("max-bytes").copied().unwrap_or(80);
    for file in m.get_many::<PathBuf>("files").into_iter().flatten() {
        let out = match file.extension().and_then(|e| e.to_str()) {
            Some("log") => dump_segment(file, records, max)?,
            Some("index") => dump_index(file, 8)?,
            Some("timeindex") => dump_index(file, 12)?,
            Some("snapshot") => dump_snapshot(file)?,
            Some("txnindex") => dump_txnindex(file)?,
            _ => bail!(
                "{}: not a .log, .index, .timeindex, .txnindex or .snapshot file",
                file.display()
            ),
        };
        print!("{out}");
    }
    Ok(())
}

fn base_offset_of(path: &Path) -> anyhow::Result<i64> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "{}: a segment file is named by its base offset, like 00000000000000000000.log",
                path.display()
            )
        })
}

fn dump_snapshot(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let states = ProducerStates::from_snapshot(&bytes)
        .with_context(|| format!("{}: not a readable producer snapshot", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dumping {} (producer state as of offset {}, {} producers)",
        path.display(),
        base_offset_of(path)?,
        states.len()
    );
    for p in states.summaries() {
        let _ = writeln!(
            out,
            "producerId: {} producerEpoch: {} firstSequence: {} lastSequence: {} baseOffset: {} lastOffset: {} lastAppendMs: {} coordinatorEpoch: {} currentTxnFirstOffset: {}",
            p.producer_id, p.epoch, p.first_sequence, p.last_sequence, p.base_offset, p.last_offset, p.last_append_ms, p.coordinator_epoch, p.txn_first_offset
        );
    }
    Ok(out)
}

fn dump_txnindex(path: &Path) -> anyhow::Result<String> {
    let entries = caudal_storage::txnindex::read_file(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dumping {} ({} aborted transactions)",
        path.display(),
        entries.len()
    );
    for e in entries {
        let _ = writeln!(
            out,
            "version: 0 producerId: {} firstOffset: {} lastOffset: {} lastStableOffset: {}",
            e.producer_id, e.first_offset, e.last_offset, e.last_stable_offset
        );
    }
    Ok(out)
}

fn compression_name(codec: i16) -> &'static str {
    match codec {
        0 => "none",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown",
    }
}

/// Bytes as text when they are printable UTF-8, else as hex; at most `max` bytes.
fn show(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let more = if bytes.len() > max {
        format!("... ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(cut) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s}{more}"),
        _ => {
            let mut hex = String::from("0x");
            for b in cut {
                let _ = write!(hex, "{b:02x}");
            }
            format!("{hex}{more}")
        }
    }
}

fn dump_segment(path: &Path, records: bool, max: usize) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dumping {} ({} bytes, base offset {})",
        path.display(),
        bytes.len(),
        base_offset_of(path)?
    );
    let mut iter = BatchIter::new(&bytes);
    let mut batches = 0usize;
    for (position, h) in iter.by_ref() {
        batches += 1;
        let len = h.total_len().unwrap_or(0);
        let batch = &bytes[position..position + len];
        let valid = validate_batch(batch).is_ok();
        let _ = writeln!(
            out,
            "baseOffset: {} lastOffset: {} count: {} baseTimestamp: {} maxTimestamp: {} timestampType: {} producerId: {} producerEpoch: {} baseSequence: {} isTransactional: {} isControl: {} compression: {} position: {position} size: {len} crc: {:#010x} isValid: {valid}",
            h.base_offset(),
            h.last_offset(),
            h.records_count(),
            h.base_timestamp(),
            h.max_timestamp(),
            if h.is_log_append_time() { "LogAppendTime" } else { "CreateTime" },
            h.producer_id(),
            h.producer_epoch(),
            h.base_sequence(),
            h.is_transactional(),
            h.is_control(),
            compression_name(h.compression()),
            h.crc(),
        );
        if records && h.is_control() {
            // Kafka's DumpLogSegments shows a marker's type and coordinator epoch.
            match control_marker(batch) {
                Some(m) => {
                    let _ = writeln!(
                        out,
                        "| offset: {} endTxnMarker: {} coordinatorEpoch: {}",
                        h.base_offset(),
                        if m.commit { "COMMIT" } else { "ABORT" },
                        m.coordinator_epoch
                    );
                }
                None => {
                    let _ = writeln!(out, "| offset: {} unknown control record", h.base_offset());
                }
            }
        } else if records {
            let mut buf = bytes::Bytes::copy_from_slice(batch);
            match RecordBatchDecoder::decode_all(&mut buf) {
                Ok(sets) => {
                    for r in sets.iter().flat_map(|s| &s.records) {
                        let headers: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                format!(
                                    "{}={}",
                                    k.as_str(),
                                    v.as_ref()
                                        .map(|v| show(v, max))
                                        .unwrap_or_else(|| "null".into())
                                )
                            })
                            .collect();
                        let _ = writeln!(
                            out,
                            "| offset: {} timestamp: {} key: {} value: {} headers: [{}]",
                            r.offset,
                            r.timestamp,
                            r.key
                                .as_ref()
                                .map(|k| show(k, max))
                                .unwrap_or_else(|| "null".into()),
                            r.value
                                .as_ref()
                                .map(|v| show(v, max))
                                .unwrap_or_else(|| "null".into()),
                            headers.join(", ")
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "| records could not be decoded: {e}");
                }
            }
        }
    }
    let rest = bytes.len() - iter.position();
    let _ = writeln!(out, "{batches} batches");
    if rest > 0 {
        let _ = writeln!(out, "{rest} bytes after the last whole batch (a torn write; the broker truncates it at start)");
    }
    Ok(out)
}

fn dump_index(path: &Path, entry_len: usize) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = base_offset_of(path)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dumping {} ({} entries, base offset {base})",
        path.display(),
        bytes.len() / entry_len
    );
    for e in bytes.chunks_exact(entry_len) {
        if entry_len == 8 {
            let rel = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let pos = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
            let _ = writeln!(out, "offset: {} position: {pos}", base + i64::from(rel));
        } else {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&e[..8]);
            let rel = u32::from_be_bytes([e[8], e[9], e[10], e[11]]);
            let _ = writeln!(
                out,
                "timestamp: {} offset: {}",
                i64::from_be_bytes(ts),
                base + i64::from(rel)
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use caudal_storage::{control_batch, ControlMarker, LogConfig, PartitionLog};

    #[test]
    fn markers_and_open_transactions_are_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
        let marker = ControlMarker {
            commit: true,
            coordinator_epoch: 3,
        };
        // A transactional batch of producer 9 (the marker's own layout, its control bit off).
        let mut data = control_batch(9, 0, marker, 0);
        data[22] = 0x10;
        data[53..57].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append(&data, 0).unwrap();
        log.close().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
        log.roll(0).unwrap();
        log.append_marker(9, 0, marker, 0).unwrap();
        log.close().unwrap();
        let segment = dir.path().join("00000000000000000000.log");
        let dumped = dump_segment(&segment, true, 100).unwrap();
        assert!(
            dumped.contains("isTransactional: true isControl: false"),
            "{dumped}"
        );
        let snapshot = dir.path().join("00000000000000000001.snapshot");
        let open = dump_snapshot(&snapshot).unwrap();
        assert!(open.contains("producerId: 9 "), "{open}");
        assert!(open.contains("currentTxnFirstOffset: 0"), "{open}");
        let next = dir.path().join("00000000000000000001.log");
        let dumped = dump_segment(&next, true, 100).unwrap();
        assert!(
            dumped.contains("| offset: 1 endTxnMarker: COMMIT coordinatorEpoch: 3"),
            "{dumped}"
        );
        assert!(
            dumped.contains("isTransactional: true isControl: true"),
            "{dumped}"
        );
        // An aborted transaction shows in the segment's .txnindex.
        let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0)
            .unwrap()
            .0;
        data[53..57].copy_from_slice(&1i32.to_be_bytes());
        let crc = crc32c::crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append(&data, 0).unwrap();
        let abort = ControlMarker {
            commit: false,
            coordinator_epoch: 3,
        };
        log.append_marker(9, 0, abort, 0).unwrap();
        log.close().unwrap();
        let index = dir.path().join("00000000000000000001.txnindex");
        let dumped = dump_txnindex(&index).unwrap();
        assert!(
            dumped.contains("producerId: 9 firstOffset: 2 lastOffset: 3 lastStableOffset: 4"),
            "{dumped}"
        );
    }
}
