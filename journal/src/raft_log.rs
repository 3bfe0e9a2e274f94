//! The Raft log: the journal's segments in format 3 (`raft_segment.rs`),
//! one frame per Raft entry, with an in-memory index of every entry, and
//! the operations Raft needs (append, read, truncate an uncommitted
//! suffix, purge behind a snapshot). It knows nothing of openraft: the
//! `replication` crate implements openraft's log storage on top of it.
//!
//! # What must exist: `RAFT_SEGMENTS`
//!
//! Next to the segments, `RAFT_SEGMENTS` (two checksummed slots, see
//! `slot_file.rs`) records the last purged position and the first indexes
//! of the oldest and newest segments:
//!
//! ```text
//! body: | flags u8 | zeros 7 | purged index | purged term | oldest first index | newest first index | zeros |
//! flags: bit 0 purged present, bit 1 segments present (oldest and newest)
//! ```
//!
//! Every change to the set of segments goes through it in an order that a
//! crash at any point leaves a state the next open accepts:
//!
//! * a new segment is created (synced, directory synced), then recorded as
//!   newest: a crash between leaves one unrecorded newer segment, accepted;
//! * a purge records the new last purged position and oldest segment
//!   first, then deletes segments oldest first: a crash between leaves
//!   older segments wholly at or below the purged index, which the next
//!   open deletes (it finishes the purge);
//! * a truncation records the new newest segment first, then deletes
//!   segments newest first, then zeroes the tail of the segment it keeps:
//!   a crash between leaves valid entries after the truncation point, which
//!   open accepts and Raft truncates again (only uncommitted entries are
//!   ever truncated).
//!
//! So a segment recorded as oldest or newest that is missing, a gap or an
//! overlap between segments, damage anywhere but a torn last frame of the
//! newest segment, or segments without `RAFT_SEGMENTS` are refused with
//! [`JournalError::RaftLogDamaged`]: no crash leaves them. A torn last
//! frame is refused too when the cut would remove an entry at or below the
//! committed index `RAFT_STATE` records: the replication layer writes a
//! committed index only once the entries it covers are synced, so no crash
//! tears a committed entry, and damage there is the disk's, not a torn
//! append. The last purged
//! position lives here and not in `RAFT_STATE` so that a purge (the log's
//! owner) and a vote (the Raft state's owner) never write one file.
//!
//! # Durability
//!
//! [`RaftLog::append`] writes into the mapping: the entry is readable at
//! once and survives a crash of the process, not of the machine.
//! [`RaftLog::sync_request`] captures what to sync; its
//! [`run`](SyncRequest::run) does the `fdatasync` on any thread while the
//! owner keeps appending. A full segment is synced before the next one is
//! created, so only the newest segment can hold unsynced entries.
//! Truncation and purge are durable when they return.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

use crate::error::{data_dir_of, JournalError};
use crate::files::{create_private_dir, sync_dir, zero_tail};
use crate::raft_segment::{
    list_raft_segments, raft_frame_bytes, raft_segment_file_name, read_raft_frame, scan_raft_segment,
    write_raft_frame, EntryKind, RaftDamage, RaftFrameRead, RaftSegmentHeader, RAFT_ENTRY_PAYLOAD_MAX_BYTES,
};
use crate::raft_state::{LogPosition, RaftStateFile, RAFT_STATE_FILE_NAME};
use crate::segment::{read_u64, SEGMENT_HEADER_BYTES};
use crate::slot_file::{SlotFile, SLOT_BODY_BYTES};
use crate::writer::{create_mapped, lock_dir};

pub const RAFT_SEGMENTS_FILE_NAME: &str = "RAFT_SEGMENTS";
const RAFT_SEGMENTS_MAGIC: &[u8; 8] = b"EXRAFTSG";
/// The default size of a Raft segment file.
pub const RAFT_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// The Raft log's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftLogLimits {
    /// Size of each preallocated segment file; at least a header and one
    /// frame of `max_entry_bytes`.
    pub segment_bytes: u64,
    /// The largest payload [`RaftLog::append`] takes; at most
    /// [`RAFT_ENTRY_PAYLOAD_MAX_BYTES`] (what the format can hold).
    pub max_entry_bytes: usize,
}

impl Default for RaftLogLimits {
    fn default() -> RaftLogLimits {
        RaftLogLimits {
            segment_bytes: RAFT_SEGMENT_BYTES_DEFAULT,
            max_entry_bytes: RAFT_ENTRY_PAYLOAD_MAX_BYTES,
        }
    }
}

impl RaftLogLimits {
    fn check(&self) -> Result<(), JournalError> {
        if self.max_entry_bytes > RAFT_ENTRY_PAYLOAD_MAX_BYTES {
            return Err(JournalError::Config(format!(
                "max_entry_bytes {} is above what segment format 3 holds, {RAFT_ENTRY_PAYLOAD_MAX_BYTES}",
                self.max_entry_bytes
            )));
        }
        let smallest = (SEGMENT_HEADER_BYTES + raft_frame_bytes(self.max_entry_bytes)) as u64;
        if self.segment_bytes < smallest || usize::try_from(self.segment_bytes).is_err() {
            return Err(JournalError::Config(format!(
                "segment_bytes {} must hold a segment header and one entry of max_entry_bytes {}: at least \
                 {smallest}",
                self.segment_bytes, self.max_entry_bytes
            )));
        }
        Ok(())
    }
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: Vec<u8>,
}

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftOpenReport {
    /// A torn last frame cut off: the segment, the offset and the bytes.
    pub cut: Option<(PathBuf, usize, usize)>,
    /// Segments deleted: left by an interrupted purge, or an empty newest
    /// segment (created just before a crash).
    pub removed: Vec<PathBuf>,
}

/// What `RAFT_SEGMENTS` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bounds {
    last_purged: Option<LogPosition>,
    /// First indexes of the oldest and the newest segment.
    segments: Option<(u64, u64)>,
}

const BOUNDS_PURGED: u8 = 1;
const BOUNDS_SEGMENTS: u8 = 2;

impl Bounds {
    fn encode(&self) -> [u8; SLOT_BODY_BYTES] {
        let mut body = [0u8; SLOT_BODY_BYTES];
        if let Some(purged) = self.last_purged {
            body[0] |= BOUNDS_PURGED;
            body[8..16].copy_from_slice(&purged.index.to_le_bytes());
            body[16..24].copy_from_slice(&purged.term.to_le_bytes());
        }
        if let Some((oldest, newest)) = self.segments {
            body[0] |= BOUNDS_SEGMENTS;
            body[24..32].copy_from_slice(&oldest.to_le_bytes());
            body[32..40].copy_from_slice(&newest.to_le_bytes());
        }
        body
    }

    fn decode(body: &[u8; SLOT_BODY_BYTES]) -> Result<Bounds, &'static str> {
        let flags = body[0];
        let zero = |range: std::ops::Range<usize>| body[range].iter().all(|&b| b == 0);
        if flags & !(BOUNDS_PURGED | BOUNDS_SEGMENTS) != 0
            || !zero(1..8)
            || !zero(40..SLOT_BODY_BYTES)
            || (flags & BOUNDS_PURGED == 0 && !zero(8..24))
            || (flags & BOUNDS_SEGMENTS == 0 && !zero(24..40))
        {
            return Err("its newest slot has bytes set where this build writes zeros");
        }
        let bounds = Bounds {
            last_purged: (flags & BOUNDS_PURGED != 0)
                .then(|| LogPosition { index: read_u64(body, 8), term: read_u64(body, 16) }),
            segments: (flags & BOUNDS_SEGMENTS != 0).then(|| (read_u64(body, 24), read_u64(body, 32))),
        };
        if bounds.segments.is_some_and(|(oldest, newest)| oldest > newest) {
            return Err("its newest slot names an oldest segment after the newest");
        }
        Ok(bounds)
    }
}

/// The bytes of a `RAFT_SEGMENTS` file, checked as [`RaftLog::open`] reads
/// them: the last purged position, or why the bytes cannot be trusted.
/// Never panics, whatever the bytes: for the fuzz target.
pub fn decode_raft_segments_file(bytes: &[u8]) -> Result<Option<LogPosition>, &'static str> {
    let (_, _, body) = crate::slot_file::decode_slots(bytes, RAFT_SEGMENTS_MAGIC)?;
    Ok(Bounds::decode(&body)?.last_purged)
}

/// For the operator's repair of a log the node refuses to open (`exctl journal repair` on a
/// cluster node): records `segments` (the first indexes of the oldest and newest segment held,
/// `None`: none) in `RAFT_SEGMENTS`, synced, keeping the purged position it records. The
/// caller holds the directory's lock ([`crate::JournalLock`]) and has already moved away the
/// segments after the new newest one. Refused when `RAFT_SEGMENTS` is missing or does not
/// read: it holds the purged position, which a repair must never guess.
pub fn record_raft_segments(dir: &Path, segments: Option<(u64, u64)>) -> Result<(), JournalError> {
    let path = dir.join(RAFT_SEGMENTS_FILE_NAME);
    let Some((mut file, body)) = SlotFile::open(&path, RAFT_SEGMENTS_MAGIC)? else {
        return Err(damaged(
            &path,
            None,
            None,
            "the file is missing: the purged position it records is lost",
        ));
    };
    let recorded =
        Bounds::decode(&body).map_err(|why| JournalError::BadStateFile { path: path.clone(), why })?;
    if segments.is_some_and(|(oldest, newest)| oldest > newest) {
        return Err(JournalError::Config(format!("segments {segments:?}: the oldest is after the newest")));
    }
    let bounds = Bounds { segments, ..recorded };
    if bounds != recorded {
        file.save(&bounds.encode(), true)?;
    }
    Ok(())
}

/// One segment, mapped, with the offset and term of each entry in it.
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Shared with [`SyncRequest`]s, which sync it by descriptor.
    file: Arc<File>,
    map: MmapMut,
    /// Offset and term of entry `first_index + i`; never empty (a segment
    /// is created for an entry and deleted when its last entry goes).
    entries: Vec<(usize, u64)>,
    /// Where the next frame goes.
    end_offset: usize,
}

impl Segment {
    fn last(&self) -> LogPosition {
        let (_, term) = self.entries[self.entries.len() - 1];
        LogPosition { index: self.first_index + (self.entries.len() as u64 - 1), term }
    }
}

/// What the syncers know, shared between the log and its [`SyncRequest`]s.
#[derive(Debug, Default)]
struct SyncShared {
    /// Bumped by every truncation: a request captured before one may name
    /// entries that are gone (or replaced by others, in another file).
    epoch: u64,
    /// Every entry up to this index is on disk.
    durable: Option<u64>,
}

/// What was appended and not yet synced, captured by
/// [`RaftLog::sync_request`]; [`run`](SyncRequest::run) makes it durable
/// on any thread, without the log.
#[derive(Debug)]
pub struct SyncRequest {
    /// The newest segment when captured (only it can hold unsynced entries).
    file: Option<(Arc<File>, PathBuf)>,
    index: Option<u64>,
    epoch: u64,
    shared: Arc<Mutex<SyncShared>>,
}

impl SyncRequest {
    /// Syncs (`fdatasync`) what was appended when the request was captured,
    /// unless already durable, and returns the index now durable: every
    /// entry up to it is on disk (`None`: nothing was appended).
    pub fn run(self) -> Result<Option<u64>, JournalError> {
        let needed = {
            let shared = self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            shared.epoch != self.epoch || shared.durable < self.index
        };
        if needed {
            if let Some((file, path)) = &self.file {
                file.sync_data().map_err(|e| JournalError::io(path, e))?;
            }
        }
        let mut shared = self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // After a truncation, the captured index may name other entries
        // than the ones synced: only what the truncation made durable (and
        // later requests) counts.
        if shared.epoch == self.epoch && shared.durable < self.index {
            shared.durable = self.index;
        }
        Ok(shared.durable)
    }

    /// The last index this request covers (`None`: the log was empty).
    pub fn index(&self) -> Option<u64> {
        self.index
    }
}

/// The Raft log of one directory: owns its format-3 segments (and its
/// `LOCK`: one writer per directory).
///
/// ```
/// use journal::{EntryKind, LogPosition, RaftLog, RaftLogLimits};
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut log = RaftLog::open(dir.path(), RaftLogLimits::default()).unwrap();
/// log.append(1, 1, EntryKind::Blank, b"").unwrap();
/// log.append(2, 1, EntryKind::Commands, b"batch").unwrap();
/// assert_eq!(log.sync_request().run().unwrap(), Some(2)); // on disk
/// log.truncate_after(Some(1)).unwrap(); // an uncommitted suffix goes
/// log.append(2, 2, EntryKind::Commands, b"other").unwrap();
/// let entries = log.read_range(1, 3, usize::MAX).unwrap();
/// assert_eq!(entries[1].payload, b"other");
/// log.purge_through(LogPosition { index: 1, term: 1 }).unwrap();
/// assert_eq!(log.first(), Some(LogPosition { index: 2, term: 2 }));
/// ```
pub struct RaftLog {
    dir: PathBuf,
    limits: RaftLogLimits,
    /// Held for the log's life; the lock goes with the descriptor.
    _lock: File,
    /// Oldest first; every one holds at least one entry.
    segments: Vec<Segment>,
    last_purged: Option<LogPosition>,
    bounds: SlotFile,
    recorded: Bounds,
    /// Written into the header of the next segment created (0: unknown).
    next_seq: u64,
    sync: Arc<Mutex<SyncShared>>,
    report: RaftOpenReport,
}

fn damaged(path: &Path, offset: Option<usize>, index: Option<u64>, why: impl Into<String>) -> JournalError {
    JournalError::RaftLogDamaged { path: path.to_path_buf(), offset, index, why: why.into() }
}

fn refused(index: u64, why: impl Into<String>) -> JournalError {
    JournalError::RaftLogRefused { index, why: why.into() }
}

impl RaftLog {
    /// Opens (or creates, if the directory holds no format-3 segment) the
    /// log in `dir`: checks the segments against `RAFT_SEGMENTS`, scans and
    /// indexes every entry, cuts a torn tail (damage confined to one
    /// maximum frame at the very end of the newest segment, strictly above
    /// the committed index `RAFT_STATE` records, if any), finishes an
    /// interrupted purge, and refuses anything else with
    /// [`JournalError::RaftLogDamaged`] naming the file, the offset, the
    /// index and what to do.
    pub fn open(dir: &Path, limits: RaftLogLimits) -> Result<RaftLog, JournalError> {
        limits.check()?;
        create_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        remove_leftover_temp_files(dir)?;
        let bounds_path = dir.join(RAFT_SEGMENTS_FILE_NAME);
        let listed = list_raft_segments(dir).map_err(|e| JournalError::io(dir, e))?;
        let (bounds, recorded) = match SlotFile::open(&bounds_path, RAFT_SEGMENTS_MAGIC)? {
            Some((file, body)) => {
                let recorded = Bounds::decode(&body)
                    .map_err(|why| JournalError::BadStateFile { path: bounds_path.clone(), why })?;
                (file, recorded)
            }
            None if listed.is_empty() => {
                let recorded = Bounds::default();
                (SlotFile::create(&bounds_path, RAFT_SEGMENTS_MAGIC, &recorded.encode())?, recorded)
            }
            None => {
                return Err(damaged(
                    &bounds_path,
                    None,
                    None,
                    format!(
                        "the file is missing, yet {} Raft segments exist (it is written before the first \
                         segment is created, and never removed)",
                        listed.len()
                    ),
                ))
            }
        };
        let mut log = RaftLog {
            dir: dir.to_path_buf(),
            limits,
            _lock: lock,
            segments: Vec::new(),
            last_purged: recorded.last_purged,
            bounds,
            recorded,
            next_seq: 0,
            sync: Arc::new(Mutex::new(SyncShared::default())),
            report: RaftOpenReport::default(),
        };
        log.load(listed)?;
        Ok(log)
    }

    /// Checks the listed segments against what `RAFT_SEGMENTS` recorded,
    /// maps and scans them, and indexes their entries.
    fn load(&mut self, mut listed: Vec<(u64, PathBuf)>) -> Result<(), JournalError> {
        let bounds_path = self.dir.join(RAFT_SEGMENTS_FILE_NAME);
        if let Some((oldest, newest)) = self.recorded.segments {
            for (first, role) in [(newest, "newest"), (oldest, "oldest")] {
                if !listed.iter().any(|(f, _)| *f == first) {
                    return Err(damaged(
                        &self.dir.join(raft_segment_file_name(first)),
                        None,
                        Some(first),
                        format!(
                            "the segment is missing; {} records it as the {role} segment",
                            bounds_path.display()
                        ),
                    ));
                }
            }
        }
        // Segments wholly at or below the last purged index (the next one
        // starts at most just after it) are what an interrupted purge left:
        // finish it, without reading them.
        let mut removed = Vec::new();
        if let Some(purged) = self.last_purged {
            while listed.len() > 1 && listed[1].0 <= purged.index.saturating_add(1) {
                removed.push(listed.remove(0).1);
            }
        }
        // With no segment recorded, any listed are what a crash left: the
        // first segment created and not yet recorded, or segments a
        // truncation of everything had not deleted yet (valid entries,
        // which Raft truncates again).
        if let Some((oldest, _)) = self.recorded.segments {
            if listed.first().is_some_and(|(first, _)| *first < oldest) {
                let (first, path) = &listed[0];
                return Err(damaged(
                    path,
                    None,
                    Some(*first),
                    format!(
                        "the segment is older than the oldest one {} records ({oldest}), and not wholly \
                         purged",
                        bounds_path.display()
                    ),
                ));
            }
        }
        let newest = listed.len().saturating_sub(1);
        // Terms never go down; entries at or below the last purged index
        // may stay in the oldest segment with lower terms than its.
        let mut min_term = match (self.last_purged, listed.first()) {
            (Some(purged), Some((first, _))) if *first == purged.index.saturating_add(1) => purged.term,
            _ => 0,
        };
        let mut expected: Option<u64> = None;
        for (position, (first_index, path)) in listed.iter().enumerate() {
            let mut segment = map_segment(path, *first_index)?;
            if let Some(expected) = expected {
                if *first_index != expected {
                    let why = if *first_index > expected {
                        format!(
                            "entries {expected}..{} are missing: the segment before ends at {} (a segment file \
                             was removed or lost, which no crash does)",
                            first_index - 1,
                            expected - 1
                        )
                    } else {
                        format!("the segment before runs on to index {}, past this one's first", expected - 1)
                    };
                    return Err(damaged(path, None, Some(expected), why));
                }
            }
            let header = RaftSegmentHeader {
                first_index: *first_index,
                capacity_bytes: segment.map.len() as u64,
                next_seq: 0,
            };
            // A torn frame is at most the largest the writer takes.
            let torn_tail_max_bytes = raft_frame_bytes(self.limits.max_entry_bytes);
            let scan = scan_raft_segment(&segment.map, &header, min_term, torn_tail_max_bytes);
            if let Some(damage) = scan.damage {
                if position != newest || !damage.torn_tail {
                    let place =
                        if position != newest { " (in a segment the log had moved past)" } else { "" };
                    return Err(damaged(
                        path,
                        Some(damage.offset),
                        Some(damage.expected_index),
                        format!("{}{place}", damage.why),
                    ));
                }
                // A crash tears only what was being appended, never what
                // RAFT_STATE records committed (the replication layer saves a
                // committed index only once the entries it covers are synced).
                if let Some(committed) = self.committed_at_or_above(damage.expected_index, path, &damage)? {
                    return Err(damaged(
                        path,
                        Some(damage.offset),
                        Some(damage.expected_index),
                        format!(
                            "{}, within one frame of the end, which a crash during an append leaves; but {} \
                             records entries through {} (term {}) committed, so this is damage to a \
                             committed entry, not a torn append, and nothing was cut. `exctl journal verify \
                             {data}` lists every problem; `exctl journal repair {data} --after INDEX` cuts \
                             only entries above the committed index, so it refuses here: re-seed this node \
                             from the cluster",
                            damage.why,
                            self.dir.join(RAFT_STATE_FILE_NAME).display(),
                            committed.index,
                            committed.term,
                            data = data_dir_of(&self.dir).display(),
                        ),
                    ));
                }
                let bytes = zero_tail(&mut segment.map, path, damage.offset)?;
                tracing::warn!(
                    segment = %path.display(),
                    offset = damage.offset,
                    bytes,
                    index = damage.expected_index,
                    why = %damage.why,
                    "cut a torn tail off the Raft log (a crash during an append leaves one)"
                );
                self.report.cut = Some((path.clone(), damage.offset, bytes));
            }
            segment.entries = scan.entries;
            segment.end_offset = scan.end_offset;
            if let Some(&(_, term)) = segment.entries.last() {
                min_term = term;
            }
            expected = first_index.checked_add(segment.entries.len() as u64);
            if expected.is_none() && position != newest {
                return Err(damaged(
                    path,
                    None,
                    None,
                    "its entries reach index u64::MAX, yet a segment follows",
                ));
            }
            self.segments.push(segment);
        }
        if let (Some(purged), Some(first)) = (self.last_purged, self.segments.first()) {
            // A purge below the log's first entry leaves a recorded oldest
            // segment starting after it: nothing is missing then.
            let recorded_oldest =
                self.recorded.segments.is_some_and(|(oldest, _)| oldest == first.first_index);
            if first.first_index > purged.index.saturating_add(1) && !recorded_oldest {
                return Err(damaged(
                    &first.path,
                    None,
                    Some(purged.index + 1),
                    format!(
                        "entries {}..{} are missing: {} records the log purged through {} only",
                        purged.index + 1,
                        first.first_index - 1,
                        bounds_path.display(),
                        purged.index
                    ),
                ));
            }
            if let Some(term) = self.term_of(purged.index) {
                if term != purged.term {
                    return Err(damaged(
                        &first.path,
                        None,
                        Some(purged.index),
                        format!(
                            "the entry has term {term}, but {} records it purged with term {}",
                            bounds_path.display(),
                            purged.term
                        ),
                    ));
                }
            }
        }
        // An empty newest segment was created just before a crash: its
        // entry never reached the disk.
        if self.segments.last().is_some_and(|s| s.entries.is_empty()) {
            let empty = self.segments.pop().expect("checked");
            removed.push(empty.path.clone());
        }
        if let Some(purged) = self.last_purged {
            while self.segments.first().is_some_and(|s| s.last().index <= purged.index) {
                removed.push(self.segments.remove(0).path);
            }
        }
        self.refuse_an_end_below_committed()?;
        // What a crashed process left may be in the page cache only: on
        // disk before anything is built on it.
        if let Some(newest) = self.segments.last() {
            newest.file.sync_data().map_err(|e| JournalError::io(&newest.path, e))?;
        }
        self.record_segments()?;
        for path in &removed {
            std::fs::remove_file(path).map_err(|e| JournalError::io(path, e))?;
            tracing::info!(segment = %path.display(), "removed a Raft segment left by an interrupted purge or creation");
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.report.removed = removed;
        self.sync_mut().durable = self.last().map(|p| p.index);
        Ok(())
    }

    /// Refuses a log that ends (cleanly) below the committed index
    /// `RAFT_STATE` records: the replication layer records a committed
    /// index only once the entries it covers are synced (or purged), so
    /// entries above the end were on the disk and are gone (a segment cut,
    /// zeroed, or restored from an older copy), which no crash does. A
    /// node that started on such a log would answer for entries it no
    /// longer has. An unreadable `RAFT_STATE` is left to the replication
    /// layer, which reads it next and refuses it with its reason.
    fn refuse_an_end_below_committed(&self) -> Result<(), JournalError> {
        let held = self.last().map(|p| p.index).max(self.last_purged.map(|p| p.index)).unwrap_or(0);
        let Ok((_, state)) = RaftStateFile::open(&self.dir) else { return Ok(()) };
        let Some(committed) = state.and_then(|s| s.committed).filter(|c| c.index > held) else {
            return Ok(());
        };
        let path = self.segments.last().map_or_else(|| self.dir.clone(), |s| s.path.clone());
        Err(damaged(
            &path,
            None,
            Some(held + 1),
            format!(
                "the log ends at index {held}, but {} records entries through {} (term {}) committed: \
                 entries {}..{} were synced and are gone (a segment cut, zeroed or restored from an older \
                 copy; no crash does that), and nothing was changed. `exctl journal verify {data}` lists \
                 what the log holds; re-seed this node from the cluster",
                self.dir.join(RAFT_STATE_FILE_NAME).display(),
                committed.index,
                committed.term,
                held + 1,
                committed.index,
                data = data_dir_of(&self.dir).display(),
            ),
        ))
    }

    /// The committed position `RAFT_STATE` records, when it is at or
    /// above `index` (a cut from `index` on would remove a committed
    /// entry). No `RAFT_STATE` (a new or wiped node) records nothing
    /// committed; one that does not read leaves it unknown, and a cut is
    /// then refused as well.
    fn committed_at_or_above(
        &self,
        index: u64,
        path: &Path,
        damage: &RaftDamage,
    ) -> Result<Option<LogPosition>, JournalError> {
        match RaftStateFile::open(&self.dir) {
            Ok((_, state)) => Ok(state.and_then(|s| s.committed).filter(|c| c.index >= index)),
            Err(error) => Err(damaged(
                path,
                Some(damage.offset),
                Some(index),
                format!(
                    "{}, within one frame of the end, which a crash during an append leaves; but whether \
                     it holds committed entries is unknown ({error}), so nothing was cut",
                    damage.why
                ),
            )),
        }
    }

    fn sync_mut(&self) -> std::sync::MutexGuard<'_, SyncShared> {
        self.sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the segments held (and the last purged position) in
    /// `RAFT_SEGMENTS`, synced, if that changes what it says.
    fn record_segments(&mut self) -> Result<(), JournalError> {
        let bounds = Bounds {
            last_purged: self.last_purged,
            segments: self.segments.first().map(|oldest| {
                (oldest.first_index, self.segments.last().map_or(oldest.first_index, |s| s.first_index))
            }),
        };
        self.record(bounds)
    }

    fn record(&mut self, bounds: Bounds) -> Result<(), JournalError> {
        if bounds != self.recorded {
            self.bounds.save(&bounds.encode(), true)?;
            self.recorded = bounds;
        }
        Ok(())
    }

    /// What opening found and did.
    pub fn open_report(&self) -> &RaftOpenReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> RaftLogLimits {
        self.limits
    }

    /// Tells the log the sequence number of the next command to be
    /// appended: written into the header of the next segment created
    /// ("next seq at creation"), so readers can find a sequence number's
    /// segment without scanning. Optional (0, the default, is "unknown").
    pub fn note_next_seq(&mut self, next_seq: u64) {
        self.next_seq = next_seq;
    }

    /// The first readable entry.
    pub fn first(&self) -> Option<LogPosition> {
        let last = self.last()?;
        let first_index = match self.last_purged {
            Some(purged) => purged.index.saturating_add(1).max(self.segments[0].first_index),
            None => self.segments[0].first_index,
        };
        if first_index > last.index {
            return None;
        }
        Some(LogPosition { index: first_index, term: self.term_of(first_index)? })
    }

    /// The last entry appended (and not truncated or purged).
    pub fn last(&self) -> Option<LogPosition> {
        let last = self.segments.last()?.last();
        // Purged entries may stay on disk in a kept segment; never readable.
        (self.last_purged.is_none_or(|p| last.index > p.index)).then_some(last)
    }

    pub fn last_purged(&self) -> Option<LogPosition> {
        self.last_purged
    }

    /// The segment holding `index` (by first index), and the entry's place
    /// in it, whether or not it is purged.
    fn locate(&self, index: u64) -> Option<(usize, usize)> {
        let at = self.segments.partition_point(|s| s.first_index <= index).checked_sub(1)?;
        let slot = (index - self.segments[at].first_index) as usize;
        (slot < self.segments[at].entries.len()).then_some((at, slot))
    }

    /// The term of entry `index`, if the log holds it (purged or not).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        let (at, slot) = self.locate(index)?;
        Some(self.segments[at].entries[slot].1)
    }

    /// Appends one entry; `index` must be `last().index + 1` (or, on an
    /// empty log, `last_purged().index + 1`, or any index when nothing was
    /// ever written or purged: openraft's first entry has index 0), `term`
    /// at least the last entry's, the payload at most
    /// `limits.max_entry_bytes`. Written into the mapping at once (readable
    /// by [`read_range`](Self::read_range) on return, surviving a crash of
    /// the process), not synced: see [`sync_request`](Self::sync_request).
    pub fn append(
        &mut self,
        index: u64,
        term: u64,
        kind: EntryKind,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        if payload.len() > self.limits.max_entry_bytes {
            return Err(refused(
                index,
                format!(
                    "cannot append: the payload is {} bytes, above max_entry_bytes {} (split the batch)",
                    payload.len(),
                    self.limits.max_entry_bytes
                ),
            ));
        }
        let previous = self.last().or(self.last_purged);
        if let Some(previous) = previous {
            if Some(index) != previous.index.checked_add(1) {
                return Err(refused(
                    index,
                    format!("cannot append: the next entry must have index {}", previous.index as u128 + 1),
                ));
            }
            if term < previous.term {
                return Err(refused(
                    index,
                    format!(
                        "cannot append: term {term} is below the term {} of entry {}",
                        previous.term, previous.index
                    ),
                ));
            }
        }
        let frame_bytes = raft_frame_bytes(payload.len());
        let fits = self.segments.last().is_some_and(|s| {
            s.first_index.checked_add(s.entries.len() as u64) == Some(index)
                && s.end_offset + frame_bytes <= s.map.len()
        });
        if !fits {
            self.start_segment(index)?;
        }
        let segment = self.segments.last_mut().expect("a segment was just started if none was");
        let at = segment.end_offset;
        segment.end_offset =
            write_raft_frame(&mut segment.map, at, LogPosition { index, term }, kind, payload);
        segment.entries.push((at, term));
        debug_assert!(
            matches!(read_raft_frame(&segment.map, at), RaftFrameRead::Entry(f) if f.position.index == index)
        );
        Ok(())
    }

    /// Starts a new segment whose first entry will be `first_index`, after
    /// syncing the full one (so that only the newest segment can hold
    /// unsynced entries), and records it as the newest.
    fn start_segment(&mut self, first_index: u64) -> Result<(), JournalError> {
        if let Some(full) = self.segments.last() {
            full.file.sync_data().map_err(|e| JournalError::io(&full.path, e))?;
            let last = self.last().map(|p| p.index);
            let mut shared = self.sync_mut();
            shared.durable = shared.durable.max(last);
        }
        // Segments wholly purged while appends went on (the log emptied by
        // a purge keeps no segment, see `purge_through`) are gone already.
        let segment = create_segment(&self.dir, first_index, self.limits.segment_bytes, self.next_seq)?;
        self.segments.push(segment);
        self.record_segments()
    }

    /// A capture, cheap, of what is appended but not yet synced:
    /// [`SyncRequest::run`] syncs it on any thread (it does not borrow the
    /// log, so the owner keeps appending meanwhile).
    pub fn sync_request(&self) -> SyncRequest {
        let shared = self.sync_mut();
        SyncRequest {
            file: self.segments.last().map(|s| (Arc::clone(&s.file), s.path.clone())),
            index: self.last().map(|p| p.index),
            epoch: shared.epoch,
            shared: Arc::clone(&self.sync),
        }
    }

    /// The entries with `from <= index < to`, in order, stopping once
    /// `max_bytes` of payload were returned (at least one entry is). An
    /// empty range gives no entry; indexes outside `first()..=last()` are
    /// an error ([`JournalError::EntriesNotInLog`]), not an empty answer.
    pub fn read_range(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<LogEntry>, JournalError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let (first, last) = (self.first(), self.last());
        let held = first.zip(last).is_some_and(|(first, last)| first.index <= from && to - 1 <= last.index);
        if !held {
            return Err(JournalError::EntriesNotInLog {
                from,
                to,
                first: first.map(|p| p.index),
                last: last.map(|p| p.index),
            });
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for index in from..to {
            if !entries.is_empty() && bytes >= max_bytes {
                break;
            }
            let (at, slot) = self.locate(index).expect("checked against first and last");
            let segment = &self.segments[at];
            let (offset, term) = segment.entries[slot];
            // Checked again as it is read: a frame indexed at open must
            // still be that frame.
            let frame = match read_raft_frame(&segment.map, offset) {
                RaftFrameRead::Entry(frame) if frame.position == (LogPosition { index, term }) => frame,
                other => {
                    return Err(damaged(
                        &segment.path,
                        Some(offset),
                        Some(index),
                        format!("the frame indexed there no longer reads back: {other:?}"),
                    ))
                }
            };
            bytes += frame.payload.len();
            entries.push(LogEntry { index, term, kind: frame.kind, payload: frame.payload.to_vec() });
        }
        Ok(entries)
    }

    /// Drops every entry with an index above `keep` (`None`: every entry),
    /// newest segment first; durable on return (the kept entries too).
    pub fn truncate_after(&mut self, keep: Option<u64>) -> Result<(), JournalError> {
        if let Some(purged) = self.last_purged {
            if keep.is_none_or(|keep| keep < purged.index) {
                return Err(refused(
                    keep.map_or(0, |keep| keep + 1),
                    format!(
                        "cannot truncate after {}: entries through {} are purged, and purged (committed) \
                         entries are never truncated",
                        keep.map_or("nothing".to_string(), |keep| keep.to_string()),
                        purged.index
                    ),
                ));
            }
        }
        let keeps = |first_index: u64| keep.is_some_and(|keep| first_index <= keep);
        let kept_segments = self.segments.iter().take_while(|s| keeps(s.first_index)).count();
        if kept_segments < self.segments.len() {
            // Recorded first: a crash before the deletions leaves entries
            // after the truncation point, which open accepts.
            let bounds = Bounds {
                last_purged: self.last_purged,
                segments: (kept_segments > 0)
                    .then(|| (self.segments[0].first_index, self.segments[kept_segments - 1].first_index)),
            };
            self.record(bounds)?;
            while self.segments.len() > kept_segments {
                let segment = self.segments.pop().expect("more than kept");
                drop(segment.map);
                std::fs::remove_file(&segment.path).map_err(|e| JournalError::io(&segment.path, e))?;
            }
            sync_dir(&self.dir)?;
        }
        if let (Some(keep), Some(segment)) = (keep, self.segments.last_mut()) {
            let kept = (keep - segment.first_index + 1) as usize;
            if kept < segment.entries.len() {
                let cut_at = segment.entries[kept].0;
                zero_tail(&mut segment.map, &segment.path, cut_at)?;
                segment.entries.truncate(kept);
                segment.end_offset = cut_at;
            }
            segment.file.sync_data().map_err(|e| JournalError::io(&segment.path, e))?;
        }
        let last = self.last().map(|p| p.index);
        let mut shared = self.sync_mut();
        shared.epoch += 1;
        shared.durable = last;
        Ok(())
    }

    /// Records `upto` as the last purged position (durably, in
    /// `RAFT_SEGMENTS`), then deletes whole segments whose every entry is
    /// at or below `upto.index`, oldest first. Entries above it in a kept
    /// segment stay readable; entries at or below it may stay on disk but
    /// are never returned. A purge at or below the last purged index does
    /// nothing; a purge beyond the last entry empties the log (the next
    /// append is then `upto.index + 1`).
    pub fn purge_through(&mut self, upto: LogPosition) -> Result<(), JournalError> {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        if let Some(term) = self.term_of(upto.index) {
            if term != upto.term {
                return Err(refused(
                    upto.index,
                    format!(
                        "cannot purge through it with term {}: the log holds it with term {term}",
                        upto.term
                    ),
                ));
            }
        }
        let before = self.last().filter(|last| last.index < upto.index).or(self.last_purged);
        if let Some(before) = before.filter(|before| before.term > upto.term) {
            return Err(refused(
                upto.index,
                format!(
                    "cannot purge through it with term {}: entry {} before it has the higher term {}",
                    upto.term, before.index, before.term
                ),
            ));
        }
        let dropped = self.segments.iter().take_while(|s| s.last().index <= upto.index).count();
        self.last_purged = Some(upto);
        let bounds = Bounds {
            last_purged: Some(upto),
            segments: (dropped < self.segments.len()).then(|| {
                (self.segments[dropped].first_index, self.segments[self.segments.len() - 1].first_index)
            }),
        };
        if let Err(error) = self.record(bounds) {
            self.last_purged = self.recorded.last_purged;
            return Err(error);
        }
        for segment in self.segments.drain(..dropped) {
            drop(segment.map);
            std::fs::remove_file(&segment.path).map_err(|e| JournalError::io(&segment.path, e))?;
        }
        if dropped > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Maps an existing segment and checks its header against its name and
/// its size (segments are preallocated and renamed into place whole, so no
/// crash leaves another size).
fn map_segment(path: &Path, first_index: u64) -> Result<Segment, JournalError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| JournalError::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| JournalError::io(path, e))?.len();
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Err(damaged(
            path,
            Some(0),
            Some(first_index),
            "the file is shorter than a segment header: it was cut short, which no crash does",
        ));
    }
    // Safety: this process holds the directory's lock, so no other writes
    // the segment, and it is not resized while mapped.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(path, e))?;
    let header =
        RaftSegmentHeader::decode(&map).map_err(|why| damaged(path, Some(0), Some(first_index), why))?;
    if header.first_index != first_index {
        return Err(damaged(
            path,
            Some(0),
            Some(first_index),
            format!("the header names first index {}, the file name {first_index}", header.first_index),
        ));
    }
    if header.capacity_bytes != file_bytes {
        return Err(damaged(
            path,
            None,
            None,
            format!(
                "the file is {file_bytes} bytes, but its header says {}: segments are preallocated whole and no \
                 crash changes their size, so it was cut or copied short (or padded)",
                header.capacity_bytes
            ),
        ));
    }
    Ok(Segment {
        first_index,
        path: path.to_path_buf(),
        file: Arc::new(file),
        map,
        entries: Vec::new(),
        end_offset: SEGMENT_HEADER_BYTES,
    })
}

/// Creates, preallocates and maps a new segment (see
/// [`create_mapped`]: it appears whole, with its directory entry synced).
fn create_segment(
    dir: &Path,
    first_index: u64,
    capacity_bytes: u64,
    next_seq: u64,
) -> Result<Segment, JournalError> {
    let path = dir.join(raft_segment_file_name(first_index));
    let header = RaftSegmentHeader { first_index, capacity_bytes, next_seq };
    let (file, map) = create_mapped(dir, &path, capacity_bytes, &header.encode())?;
    Ok(Segment {
        first_index,
        path,
        file: Arc::new(file),
        map,
        entries: Vec::new(),
        end_offset: SEGMENT_HEADER_BYTES,
    })
}

/// Removes what a crash left half-created: segments and `RAFT_SEGMENTS`
/// under their temporary names (never read; the originals are whole).
fn remove_leftover_temp_files(dir: &Path) -> Result<(), JournalError> {
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let path = entry.map_err(|e| JournalError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let leftover = (name.starts_with("raft-") && name.ends_with(".log.tmp"))
            || name == format!("{RAFT_SEGMENTS_FILE_NAME}.tmp");
        if leftover {
            std::fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        }
    }
    Ok(())
}
