//! Files and directories the journal creates: private to their owner (the
//! journal and snapshots hold every user's orders and API key secrets), and
//! made durable with their directory entries.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::JournalError;

/// Creates `dir` (and missing parents) readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| JournalError::io(dir, e))
}

/// Options for files the journal creates: readable by their owner only.
pub(crate) fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Makes a directory's entries (a created or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| JournalError::io(dir, e))
}

/// Zeroes a mapped segment's written bytes from `from` on and syncs them:
/// how a torn tail is cut at open, how an operator's repair ends a segment,
/// and how the Raft log drops an uncommitted suffix. Unwritten space is
/// zero, so the segment then ends at `from`. Returns how many bytes were
/// written there (now zero).
pub(crate) fn zero_tail(map: &mut memmap2::MmapMut, path: &Path, from: usize) -> Result<usize, JournalError> {
    let end = crate::segment::written_end(map, from);
    if end > from {
        map[from..end].fill(0);
        map.flush_range(from, end - from).map_err(|e| JournalError::io(path, e))?;
    }
    Ok(end.saturating_sub(from))
}
