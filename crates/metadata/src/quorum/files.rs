//! Small files replaced whole: written beside their final name, synced, renamed over it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// How far a replacement must reach the disk before [`replace`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// The new contents and the rename are on disk (the directory is synced too).
    Durable,
    /// The file is synced before the rename, so a crash leaves the old file or the new one,
    /// whole; the rename itself may be lost and the old contents come back.
    WholeButMaybeOld,
}

/// Replaces `path` with `bytes` through `<path>.tmp`.
pub(crate) fn replace(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    {
        let mut file = File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(tmp, path)?;
    if durability == Durability::Durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
