//! The leader-epoch cache of a partition: at which offset each leader epoch began.
//!
//! Every batch carries the epoch of the leader that appended it; this cache keeps the first
//! offset of each epoch so that a replica (or a consumer validating its position) can ask "where
//! did epoch N end?" without scanning the log. It is kept in `leader-epoch-checkpoint` in Kafka's
//! layout: a version line (`0`), a count line, then one `epoch start-offset` line per entry.
//!
//! The file does not have to be durable at every change: the batches themselves carry their
//! epochs, so the log rebuilds the entries of the segments it recovers at start. It is made
//! durable before the log's recovery point moves past new entries, and at a clean close.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The file name, as Kafka names it.
pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// Kafka's value for "no epoch" and "no offset" in OffsetForLeaderEpoch answers.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// The most entries a checkpoint file may list. One per leader change of a partition: a
/// file claiming more is not one this cache wrote.
const MAX_ENTRIES: usize = 1 << 20;

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Why a checkpoint file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EpochFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}, line {line}: {problem}")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The cache: entries with strictly increasing epochs and increasing start offsets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
    /// Counts changes to the entries; the file durably holds the entries as of change `durable`.
    changes: u64,
    durable: u64,
}

impl LeaderEpochCache {
    /// Reads the checkpoint in `dir`. `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> Result<Option<LeaderEpochCache>, EpochFileError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(EpochFileError::Io { path, source }),
        };
        let malformed = |line: usize, problem: String| EpochFileError::Malformed {
            path: path.clone(),
            line,
            problem,
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let mut next_line = |what: &str| {
            lines
                .next()
                .ok_or_else(|| malformed(0, format!("ends before its {what}")))
        };
        let (n, version) = next_line("version")?;
        if version != "0" {
            return Err(malformed(n, format!("unknown version {version:?}")));
        }
        let (n, count) = next_line("entry count")?;
        let count: usize = count
            .parse()
            .ok()
            .filter(|&c| c <= MAX_ENTRIES)
            .ok_or_else(|| malformed(n, format!("bad entry count {count:?}")))?;
        let mut cache = LeaderEpochCache::default();
        for _ in 0..count {
            let (n, line) = next_line("entries")?;
            let mut fields = line.split_whitespace();
            let parsed = match (fields.next(), fields.next(), fields.next()) {
                (Some(e), Some(o), None) => e.parse::<i32>().ok().zip(o.parse::<i64>().ok()),
                _ => None,
            };
            let Some((epoch, start_offset)) = parsed else {
                return Err(malformed(n, format!("not `epoch offset`: {line:?}")));
            };
            let in_order = cache
                .entries
                .last()
                .is_none_or(|last| epoch > last.epoch && start_offset >= last.start_offset);
            if epoch < 0 || start_offset < 0 || !in_order {
                return Err(malformed(n, format!("entry {line:?} out of order")));
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        Ok(Some(cache))
    }

    /// Writes the checkpoint to `dir` (a temporary file renamed over the old one), with an fsync
    /// of the file and the directory if `durable`. Without, the cache stays dirty until
    /// [`mark_durable`](Self::mark_durable) says a sync of the whole filesystem covered it.
    pub fn write(&mut self, dir: &Path, durable: bool) -> io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        crate::disk::replace_file(dir, LEADER_EPOCH_CHECKPOINT_FILE, text.as_bytes(), durable)?;
        if durable {
            self.durable = self.changes;
        }
        Ok(())
    }

    /// Records that the last unsynced [`write`](Self::write) was made durable by the caller.
    pub fn mark_durable(&mut self) {
        self.durable = self.changes;
    }

    /// Counts the changes so far: what [`mark_durable_as_of`](Self::mark_durable_as_of) takes.
    pub fn version(&self) -> u64 {
        self.changes
    }

    /// Records that an unsynced [`write`](Self::write) made at `version` was made durable by
    /// the caller; changes since then still need a write.
    pub fn mark_durable_as_of(&mut self, version: u64) {
        self.durable = self.durable.max(version.min(self.changes));
    }

    /// Whether there are changes the file does not hold durably.
    pub fn is_dirty(&self) -> bool {
        self.changes != self.durable
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` began at `start_offset` (a batch of that epoch was appended there).
    /// A negative epoch (a batch from before epochs were stamped) or an epoch already known from
    /// an earlier offset changes nothing. Entries that the new one contradicts (a later or equal
    /// epoch, or a start at or past this one) are dropped first: they belonged to a history the
    /// log has since been truncated away from.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) {
        if epoch < 0 {
            return;
        }
        if let Some(last) = self.latest() {
            if last.epoch == epoch && last.start_offset <= start_offset {
                return;
            }
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.changes += 1;
    }

    /// Drops what the log no longer holds after it was truncated to `end_offset`: every entry
    /// starting at or past it.
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.changes += 1;
        }
    }

    /// Drops what lies below a new log start offset: entries before it go, except the last of
    /// them, which now starts at `start_offset` (its epoch still covers the records from there).
    pub fn truncate_from_start(&mut self, start_offset: i64) {
        let below = self
            .entries
            .iter()
            .take_while(|e| e.start_offset <= start_offset)
            .count();
        if below == 0 {
            return;
        }
        let last_below = below - 1;
        if last_below == 0 && self.entries[0].start_offset == start_offset {
            return;
        }
        self.entries.drain(..last_below);
        self.entries[0].start_offset = start_offset;
        self.changes += 1;
    }

    /// Where epoch `requested` ended, as OffsetForLeaderEpoch answers it: `(epoch, end offset)`
    /// where the epoch is the largest known one at or below `requested`, and the end offset is
    /// the start of the next epoch (or `log_end_offset` if it is the latest). An epoch older
    /// than any known answers with the requested epoch and the first known start, since what
    /// came before was removed from the log. Unknown or undefined: `(-1, -1)`.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        match self.latest() {
            Some(last) if last.epoch == requested => return (requested, log_end_offset),
            None => return undefined,
            _ => {}
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let Some(next) = self.entries.get(higher) else {
            return undefined;
        };
        match higher.checked_sub(1).map(|i| self.entries[i]) {
            Some(floor) => (floor.epoch, next.start_offset),
            None => (requested, next.start_offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            c.assign(epoch, start);
        }
        c
    }

    fn pairs(c: &LeaderEpochCache) -> Vec<(i32, i64)> {
        c.entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_keeps_the_first_offset_of_each_epoch() {
        let mut c = cache(&[(0, 0), (0, 10), (2, 20), (2, 30), (5, 40)]);
        assert_eq!(pairs(&c), [(0, 0), (2, 20), (5, 40)]);
        c.assign(-1, 50);
        assert_eq!(pairs(&c), [(0, 0), (2, 20), (5, 40)]);
        assert!(c.is_dirty());
    }

    #[test]
    fn an_assignment_that_contradicts_later_entries_replaces_them() {
        // Epoch 3 starting at 25: the entries at or past offset 25 and epochs >= 3 were a
        // divergent history.
        let mut c = cache(&[(0, 0), (2, 20), (5, 40)]);
        c.assign(3, 25);
        assert_eq!(pairs(&c), [(0, 0), (2, 20), (3, 25)]);
        // The same epoch seen again from an earlier offset moves its start back.
        c.assign(3, 22);
        assert_eq!(pairs(&c), [(0, 0), (2, 20), (3, 22)]);
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let c = cache(&[(1, 10), (3, 30), (4, 45)]);
        let leo = 60;
        assert_eq!(
            c.end_offset_for(4, leo),
            (4, 60),
            "latest epoch: the log end"
        );
        assert_eq!(c.end_offset_for(3, leo), (3, 45));
        assert_eq!(
            c.end_offset_for(2, leo),
            (1, 30),
            "unknown epoch: the one below"
        );
        assert_eq!(
            c.end_offset_for(0, leo),
            (0, 10),
            "older than any: first start"
        );
        assert_eq!(c.end_offset_for(9, leo), (-1, -1), "newer than any known");
        assert_eq!(c.end_offset_for(-1, leo), (-1, -1));
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, leo), (-1, -1));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 10), (3, 30), (4, 45)]);
        c.truncate_from_end(45);
        assert_eq!(pairs(&c), [(1, 10), (3, 30)]);
        c.truncate_from_start(35);
        assert_eq!(pairs(&c), [(3, 35)]);
        c.truncate_from_start(5);
        assert_eq!(pairs(&c), [(3, 35)]);
        let mut c = cache(&[(1, 10), (3, 30)]);
        c.truncate_from_start(30);
        assert_eq!(pairs(&c), [(3, 30)]);
        c.truncate_from_end(0);
        assert!(c.entries().is_empty());
    }

    #[test]
    fn the_file_round_trips_in_kafkas_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(&[(0, 0), (2, 20), (5, 40)]);
        c.write(dir.path(), true).unwrap();
        assert!(!c.is_dirty());
        let text = fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n3\n0 0\n2 20\n5 40\n");
        let loaded = LeaderEpochCache::load(dir.path()).unwrap().unwrap();
        assert_eq!(pairs(&loaded), pairs(&c));
        assert!(LeaderEpochCache::load(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_malformed_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEADER_EPOCH_CHECKPOINT_FILE);
        for (text, line) in [
            ("1\n0\n", 1),
            ("0\n2\n0 0\n", 0),
            ("0\n2\n3 10\n2 20\n", 4),
            ("0\n1\nx 1\n", 3),
            ("0\n99999999999\n", 2),
            ("0\n1\n1 -5\n", 3),
        ] {
            fs::write(&path, text).unwrap();
            match LeaderEpochCache::load(dir.path()) {
                Err(EpochFileError::Malformed { line: at, .. }) => assert_eq!(at, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
