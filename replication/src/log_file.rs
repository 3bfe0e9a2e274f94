//! A node's Raft log read from its files, without opening it for writing:
//! for the operator's tools (`exctl journal inspect`, `exctl replay` on a
//! cluster node's data directory) and for checkers in tests.
//!
//! It reads only what `RAFT_STATE` records as committed: entries past the
//! committed index may still be truncated by Raft, so they say nothing
//! about what the cluster decided. The committed index is saved lazily (a
//! stale value is safe: what was once committed stays committed), so the
//! reader may stop a little short of what the node had applied.
//!
//! What this module must never do: write to the directory (a running node
//! may hold it), or hand out an entry it could not check (every frame is
//! checksummed and decoded as hostile input; a gap in the committed prefix
//! is an error, never skipped).

use std::path::{Path, PathBuf};

use journal::{
    check_raft_segment, decode_raft_segments_file, decode_raft_state, list_raft_segments, read_raft_frame,
    LogEntry, RaftFrameRead, RaftState, RAFT_SEGMENTS_FILE_NAME, RAFT_STATE_FILE_NAME,
};

use crate::log_store::decode_entry;
use crate::types::Entry;

/// One segment file as the reader found it.
#[derive(Clone, Debug)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_index: u64,
    /// Valid entries in the file (committed or not).
    pub entries: usize,
    /// The index and term of the last valid entry.
    pub last: Option<(u64, u64)>,
    /// Bytes after the last valid entry that are not one (a torn tail
    /// after a crash, or damage), described.
    pub damage: Option<String>,
}

/// What [`read_committed`] found.
#[derive(Clone, Debug, Default)]
pub struct CommittedLog {
    /// `RAFT_STATE` (vote, committed and purged positions); `None` when the
    /// file does not exist.
    pub state: Option<RaftState>,
    /// The last purged index: the later of `RAFT_STATE`'s and `RAFT_SEGMENTS`'s (the log
    /// records its purges in the latter).
    pub purged: Option<u64>,
    pub segments: Vec<SegmentSummary>,
    /// Committed entries handed to the visitor.
    pub visited: u64,
}

/// Whether `dir` holds a Raft log (a cluster node's journal).
pub fn is_raft_log(dir: &Path) -> bool {
    dir.join(RAFT_STATE_FILE_NAME).exists() || list_raft_segments(dir).is_ok_and(|s| !s.is_empty())
}

/// Reads the committed entries of the Raft log in `dir` in index order and
/// hands each to `visit` (which may stop the reading with an error).
pub fn read_committed(
    dir: &Path,
    mut visit: impl FnMut(Entry) -> Result<(), String>,
) -> Result<CommittedLog, String> {
    read(dir, None, false, |entry, _| visit(entry))
}

/// Every entry of the Raft log in `dir` in index order, committed or not (the flag says which),
/// for `exctl journal dump`: entries past the committed index may still be truncated by Raft.
/// An entry missing before the last one found (a gap, damage in a segment a later one follows)
/// is an error, never skipped; damage at the end of the newest segment is reported in its
/// [`SegmentSummary::damage`].
pub fn read_all(
    dir: &Path,
    visit: impl FnMut(Entry, bool) -> Result<(), String>,
) -> Result<CommittedLog, String> {
    read(dir, None, true, visit)
}

/// [`read_committed`] from entry `from` on: segments wholly before it are not read. An entry
/// at or after `from` that the log no longer holds (purged) is an error that says so, never a
/// shorter log.
pub fn read_committed_from(
    dir: &Path,
    from: u64,
    mut visit: impl FnMut(Entry) -> Result<(), String>,
) -> Result<CommittedLog, String> {
    read(dir, Some(from), false, |entry, _| visit(entry))
}

/// `RAFT_STATE` (`None`: no such file) and the last purged index (the later of `RAFT_STATE`'s and
/// `RAFT_SEGMENTS`'s), checked; an unreadable file is an error naming it.
pub fn read_positions(dir: &Path) -> Result<(Option<RaftState>, Option<u64>), String> {
    let state_path = dir.join(RAFT_STATE_FILE_NAME);
    let state = match std::fs::read(&state_path) {
        Ok(bytes) => {
            Some(decode_raft_state(&bytes).map_err(|why| format!("{}: {why}", state_path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", state_path.display())),
    };
    let segments_path = dir.join(RAFT_SEGMENTS_FILE_NAME);
    let purged_by_log = match std::fs::read(&segments_path) {
        Ok(bytes) => decode_raft_segments_file(&bytes)
            .map_err(|why| format!("{}: {why}", segments_path.display()))?
            .map(|p| p.index),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", segments_path.display())),
    };
    let purged = state.and_then(|s| s.last_purged).map(|p| p.index).max(purged_by_log);
    Ok((state, purged))
}

/// The reader: from entry `from`, or from the first one held (`None`); the uncommitted
/// entries too when `uncommitted`.
fn read(
    dir: &Path,
    from: Option<u64>,
    uncommitted: bool,
    mut visit: impl FnMut(Entry, bool) -> Result<(), String>,
) -> Result<CommittedLog, String> {
    let (state, purged) = read_positions(dir)?;
    let committed = state.and_then(|s| s.committed).map(|p| p.index);
    let mut log = CommittedLog { state, purged, ..CommittedLog::default() };
    if let Some((from, purged)) = from.zip(purged).filter(|&(from, purged)| from <= purged) {
        return Err(format!(
            "entry {from} was purged from this log (it holds entries after {purged} only): a snapshot image \
             covers it"
        ));
    }
    let segments = list_raft_segments(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    // The first committed entry expected next: after the purged ones.
    let mut next = purged.map_or(0, |p| p + 1).max(from.unwrap_or(0));
    let starts: Vec<u64> = segments.iter().map(|(first, _)| *first).collect();
    for (position, (first_index, path)) in segments.into_iter().enumerate() {
        if from.is_some() && starts.get(position + 1).is_some_and(|&following| following <= next) {
            // Every entry of this segment is before `next` (a reader from the start still
            // lists such segments: an interrupted purge leaves them).
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let scan = check_raft_segment(&bytes).map_err(|why| format!("{}: {why}", path.display()))?;
        let mut summary = SegmentSummary {
            path: path.clone(),
            first_index,
            entries: scan.entries.len(),
            last: None,
            damage: scan.damage.as_ref().map(|d| {
                let shape = if d.torn_tail { "a torn last entry" } else { "damage" };
                format!("{shape} at offset {} (entry {} expected): {}", d.offset, d.expected_index, d.why)
            }),
        };
        for &(offset, _) in &scan.entries {
            let RaftFrameRead::Entry(frame) = read_raft_frame(&bytes, offset) else {
                return Err(format!("{}: the entry at offset {offset} does not read back", path.display()));
            };
            let (index, term) = (frame.position.index, frame.position.term);
            summary.last = Some((index, term));
            let is_committed = committed.is_some_and(|c| index <= c);
            if (!is_committed && !uncommitted) || index < next {
                // Past the committed index, or before what was purged or
                // already read (an interrupted purge or truncation leaves
                // such entries for the node to clean up).
                continue;
            }
            if index != next {
                let which = if is_committed { "committed entry" } else { "entry" };
                return Err(format!(
                    "{}: {which} {next} is missing (the next one found is {index}): the log has a gap",
                    path.display()
                ));
            }
            let entry = LogEntry { index, term, kind: frame.kind, payload: frame.payload.to_vec() };
            visit(decode_entry(&entry).map_err(|e| format!("{}: {e}", path.display()))?, is_committed)?;
            log.visited += 1;
            next += 1;
        }
        log.segments.push(summary);
    }
    if let Some(committed) = committed {
        if next <= committed {
            return Err(format!(
                "RAFT_STATE says entries up to {committed} are committed, but the log ends at {}: entries are \
                 missing",
                next.saturating_sub(1)
            ));
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::{EntryKind, LogPosition, RaftLog, RaftLogLimits, RaftStateFile};

    /// A log of `entries` blank entries, `committed` of them recorded as committed.
    fn log(dir: &Path, entries: u64, committed: u64) {
        let mut log = RaftLog::open(dir, RaftLogLimits::default()).unwrap();
        for index in 0..entries {
            log.append(index, 1, EntryKind::Blank, &[]).unwrap();
        }
        log.sync_request().run().unwrap();
        let (mut state, _) = RaftStateFile::open(dir).unwrap();
        let committed = Some(LogPosition { index: committed - 1, term: 1 });
        state.save(&RaftState { committed, ..RaftState::default() }, true).unwrap();
    }

    #[test]
    fn only_committed_entries_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), 10, 7);
        let mut indexes = Vec::new();
        let read = read_committed(dir.path(), |entry| {
            indexes.push(entry.log_id.index);
            Ok(())
        })
        .unwrap();
        assert_eq!(indexes, (0..7).collect::<Vec<_>>());
        assert_eq!((read.visited, read.segments.len()), (7, 1));
        assert!(is_raft_log(dir.path()));
    }

    #[test]
    fn a_reader_from_an_index_skips_what_is_before_and_refuses_what_was_purged() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), 10, 8);
        let indexes_from = |from: u64| {
            let mut indexes = Vec::new();
            read_committed_from(dir.path(), from, |entry| {
                indexes.push(entry.log_id.index);
                Ok(())
            })
            .map(|read| (indexes, read.purged))
        };
        assert_eq!(indexes_from(5).unwrap(), ((5..8).collect(), None));
        assert_eq!(indexes_from(8).unwrap(), (vec![], None), "nothing committed after 7");

        // The log records its purges in RAFT_SEGMENTS, not RAFT_STATE: the
        // reader takes them from there.
        let mut raft_log = RaftLog::open(dir.path(), RaftLogLimits::default()).unwrap();
        raft_log.purge_through(LogPosition { index: 3, term: 1 }).unwrap();
        drop(raft_log);
        assert!(indexes_from(3).is_err());
        let error = indexes_from(2).unwrap_err();
        assert!(error.contains("entry 2 was purged") && error.contains("after 3"), "{error}");
        assert_eq!(indexes_from(4).unwrap(), ((4..8).collect(), Some(3)));
        // A reader of the whole log starts after the purged entries.
        let mut indexes = Vec::new();
        let read = read_committed(dir.path(), |entry| {
            indexes.push(entry.log_id.index);
            Ok(())
        })
        .unwrap();
        assert_eq!((indexes, read.purged), ((4..8).collect(), Some(3)));
    }

    #[test]
    fn damaged_files_are_refused_with_their_name_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), 10, 7);
        let state = dir.path().join(RAFT_STATE_FILE_NAME);
        let good = std::fs::read(&state).unwrap();
        std::fs::write(&state, vec![0xA5; good.len()]).unwrap();
        let error = read_committed(dir.path(), |_| Ok(())).unwrap_err();
        assert!(error.contains(RAFT_STATE_FILE_NAME), "{error}");
        std::fs::write(&state, good).unwrap();

        let (_, segment) = list_raft_segments(dir.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.truncate(100);
        std::fs::write(&segment, &bytes).unwrap();
        let error = read_committed(dir.path(), |_| Ok(())).unwrap_err();
        assert!(error.contains("raft-"), "{error}");

        // A committed entry missing is an error, not a shorter log.
        std::fs::remove_file(&segment).unwrap();
        let error = read_committed(dir.path(), |_| Ok(())).unwrap_err();
        assert!(error.contains("entries are missing"), "{error}");
    }
}
