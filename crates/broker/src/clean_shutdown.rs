//! The broker epoch a clean stop ended, kept for the next start.
//!
//! After a clean stop (controlled shutdown, then every log synced and checkpointed) the broker
//! writes its epoch to `clean-shutdown` in the data directory, as Kafka writes
//! `.kafka_cleanshutdown`. The next start takes the file (reads and removes it) and registers
//! with that epoch as `previous_broker_epoch`: the controller then knows this incarnation follows
//! a clean stop, and lets it register even while the old session has not yet lapsed. A start
//! that finds no file (a crash, or a first start) registers with -1.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "clean-shutdown";
const VERSION: &str = "0";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Records that the broker stopped cleanly at `broker_epoch`. Written whole or not at all.
pub(crate) fn record(data_dir: &Path, broker_epoch: i64) -> io::Result<()> {
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    write!(file, "version={VERSION}\nbroker.epoch={broker_epoch}\n")?;
    file.sync_all()?;
    fs::rename(&tmp, path(data_dir))?;
    fs::File::open(data_dir)?.sync_all()
}

/// The epoch the last clean stop recorded, or -1; the record is removed, so that a crash of
/// this incarnation is not taken for a clean stop.
pub(crate) fn take(data_dir: &Path) -> i64 {
    let file = path(data_dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return -1,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the clean-shutdown record; starting as after a crash");
            return -1;
        }
    };
    if let Err(e) = fs::remove_file(&file) {
        tracing::warn!(file = %file.display(), error = %e, "cannot remove the clean-shutdown record; starting as after a crash");
        return -1;
    }
    let epoch = parse(&text);
    if epoch.is_none() {
        tracing::warn!(file = %file.display(), "the clean-shutdown record is not readable; starting as after a crash");
    }
    epoch.unwrap_or(-1)
}

fn parse(text: &str) -> Option<i64> {
    let mut version = None;
    let mut epoch = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("version", v)) => version = Some(v.trim()),
            Some(("broker.epoch", e)) => epoch = e.trim().parse::<i64>().ok(),
            _ => {}
        }
    }
    (version == Some(VERSION))
        .then_some(epoch)
        .flatten()
        .filter(|e| *e >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_epoch_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()), -1, "nothing recorded yet");
        record(dir.path(), 42).unwrap();
        assert_eq!(take(dir.path()), 42);
        assert_eq!(
            take(dir.path()),
            -1,
            "a crash after this start is not a clean stop"
        );
    }

    #[test]
    fn an_unreadable_record_counts_as_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "",
            "version=0\n",
            "version=9\nbroker.epoch=3\n",
            "version=0\nbroker.epoch=x\n",
            "version=0\nbroker.epoch=-5\n",
        ] {
            fs::write(path(dir.path()), text).unwrap();
            assert_eq!(take(dir.path()), -1, "{text:?}");
            assert!(!path(dir.path()).exists());
        }
    }
}
