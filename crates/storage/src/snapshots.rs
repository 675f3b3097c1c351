//! Producer state snapshot files beside a log's segments, as Kafka keeps them: one named
//! `<offset>.snapshot` (the offset in 20 digits, like a segment's) holds the producers' state
//! as of that offset, i.e. after every batch below it. A log writes one when it rolls a segment
//! (at the new segment's base) and one at its log end when it closes cleanly; at open it loads
//! the newest readable one at or below its end and replays only the batches after it.
//!
//! Snapshots are written without an fsync: one lost or torn in a crash fails its CRC and the
//! log falls back to an older one (or to replaying every segment), which costs time at start,
//! never correctness.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::producers::ProducerStates;
use crate::segment::file_stem;

const SUFFIX: &str = ".snapshot";

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{}{SUFFIX}", file_stem(offset)))
}

/// The offsets of the snapshot files in `dir`, ascending. Leftover temporary files (a write
/// interrupted by a crash) are removed.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snapshot.tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(offset) = name.strip_suffix(SUFFIX).and_then(|s| s.parse().ok()) {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes `states` as the snapshot at `offset` (a temporary file renamed into place, synced
/// with the directory only if `durable`).
pub(crate) fn write(
    dir: &Path,
    offset: i64,
    states: &ProducerStates,
    durable: bool,
) -> io::Result<()> {
    let name = format!("{}{SUFFIX}", file_stem(offset));
    crate::disk::replace_file(dir, &name, &states.to_snapshot(), durable)
}

/// The newest readable snapshot in `offsets` within `from..=to`, with its offset. A damaged one
/// is removed with a log line, and the one before it is tried.
pub(crate) fn load_latest(
    dir: &Path,
    offsets: &[i64],
    from: i64,
    to: i64,
) -> Option<(i64, ProducerStates)> {
    for &offset in offsets.iter().rev().filter(|&&o| o >= from && o <= to) {
        let p = path(dir, offset);
        let read = fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|bytes| ProducerStates::from_snapshot(&bytes).map_err(|e| e.to_string()));
        match read {
            Ok(states) => return Some((offset, states)),
            Err(why) => {
                tracing::warn!(file = %p.display(), reason = %why, "a producer state snapshot is unreadable; removed, an older one or the log is used instead");
                let _ = fs::remove_file(&p);
            }
        }
    }
    None
}

/// Removes the snapshots at `offsets` for which `doomed` holds.
pub(crate) fn remove(dir: &Path, offsets: &[i64], doomed: impl Fn(i64) -> bool) {
    for &offset in offsets.iter().filter(|&&o| doomed(o)) {
        if let Err(e) = fs::remove_file(path(dir, offset)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), offset, error = %e, "could not remove a producer state snapshot");
            }
        }
    }
}

/// A snapshot file's path, for the log's tests.
#[cfg(test)]
pub(crate) fn tests_path(dir: &Path, offset: i64) -> PathBuf {
    path(dir, offset)
}
