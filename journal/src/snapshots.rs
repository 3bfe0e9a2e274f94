//! Snapshot files: the engine's state at one sequence number, written
//! atomically, checksummed, and kept in a bounded number.
//!
//! ```text
//! 0      8        12           16    24           32            40            44
//! | magic | version | header crc | seq | state hash | payload len | payload crc |
//! 44               52           56          57
//! | views len      | views crc  | has views | zeros to 64 |
//! then the payload: engine_core::Snapshot encoded with the project's
//! codec (`codec` crate, layout in docs/encoding.md),
//! then the views section: the read views' state at the same sequence
//! number, opaque to this crate (the server encodes and checks it)
//! ```
//!
//! Older files still load: version 3 (the same header, the payload an
//! engine snapshot of format 1, before waiting orders and order lists),
//! version 2 (format 1 in bincode 2's standard layout) and version 1
//! (bincode too, and no views fields: they carry no views). Their header's
//! state hash is the one builds of their time computed, checked with
//! `Engine::state_hash_of_format_1`. New files are always version 4.

use std::io::Write;
use std::path::{Path, PathBuf};

use engine_core::{Engine, Snapshot, SnapshotFormat1};

use crate::error::JournalError;
use crate::files::{create_private_dir, private_file_options, sync_dir};
use crate::segment::{read_u32, read_u64};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"EXSNAPSH";
/// The version new snapshot files are written in: the payload an engine
/// snapshot of format 2 in the project's codec.
pub const SNAPSHOT_FILE_VERSION: u32 = 4;
/// The payload an engine snapshot of format 1 in the project's codec; still read.
pub const SNAPSHOT_FILE_VERSION_FORMAT_1: u32 = 3;
/// The same header, the payload in bincode 2's standard layout; still read.
pub const SNAPSHOT_FILE_VERSION_BINCODE: u32 = 2;
/// The version before the views section existed (payload in bincode);
/// still read.
pub const SNAPSHOT_FILE_VERSION_ENGINE_ONLY: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 64;
const SNAPSHOT_EXTENSION: &str = "snap";

/// What a snapshot file holds, from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub seq: u64,
    pub state_hash: u64,
    pub bytes: u64,
    /// The size of the views section (0 when the file has none).
    pub views_bytes: u64,
}

/// A snapshot file's contents, checked.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub engine: Engine,
    /// The read views' state at the same sequence number (checksum
    /// verified); `None` for a snapshot written without one.
    pub views: Option<Vec<u8>>,
    pub info: SnapshotInfo,
}

/// Why a snapshot file cannot be used. Recovery falls back to an older one.
#[derive(Debug)]
pub enum SnapshotFileError {
    Io(std::io::Error),
    BadHeader(&'static str),
    PayloadChecksum,
    ViewsChecksum,
    Decode(String),
    /// The views section is not what this build can read.
    Views(String),
    Invalid(engine_core::SnapshotError),
    /// The loaded state does not have the hash recorded when it was written.
    HashMismatch {
        recorded: u64,
        loaded: u64,
    },
}

impl std::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFileError::Io(error) => write!(f, "cannot read it: {error}"),
            SnapshotFileError::BadHeader(why) => write!(f, "bad header: {why}"),
            SnapshotFileError::PayloadChecksum => f.write_str("payload checksum mismatch"),
            SnapshotFileError::ViewsChecksum => f.write_str("views section checksum mismatch"),
            SnapshotFileError::Views(why) => write!(f, "views section unusable: {why}"),
            SnapshotFileError::Decode(why) => write!(f, "payload does not decode: {why}"),
            SnapshotFileError::Invalid(error) => write!(f, "inconsistent state: {error}"),
            SnapshotFileError::HashMismatch { recorded, loaded } => {
                write!(f, "state hash {loaded:016x} differs from the recorded {recorded:016x}")
            }
        }
    }
}

impl std::error::Error for SnapshotFileError {}

pub fn snapshot_file_name(seq: u64) -> String {
    format!("{seq:020}.{SNAPSHOT_EXTENSION}")
}

/// The snapshot files in `dir`, newest (highest sequence) first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut snapshots = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(snapshots),
        Err(error) => return Err(JournalError::io(dir, error)),
    };
    for entry in entries {
        let path = entry.map_err(|e| JournalError::io(dir, e))?.path();
        if path.extension().is_none_or(|ext| ext != SNAPSHOT_EXTENSION) {
            continue;
        }
        let Some(seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        snapshots.push((seq, path));
    }
    snapshots.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    Ok(snapshots)
}

/// Which snapshots survive when a new one is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotKeep {
    /// How many of the newest to keep (at least one).
    pub newest: usize,
    /// Also keep the newest snapshot at or below this sequence number: a
    /// reader that must replay from there (the database writer behind the
    /// matcher) needs it and the journal after it.
    pub hold_at_or_below: Option<u64>,
}

impl SnapshotKeep {
    pub fn newest(newest: usize) -> SnapshotKeep {
        SnapshotKeep { newest, hold_at_or_below: None }
    }
}

/// Writes the engine's state to `dir` atomically (temporary file, fsync,
/// rename, fsync of the directory), then deletes the snapshots `keep` does
/// not keep.
pub fn write_snapshot(dir: &Path, engine: &Engine, keep: SnapshotKeep) -> Result<SnapshotInfo, JournalError> {
    write_snapshot_with_views(dir, engine, None, keep)
}

/// Like [`write_snapshot`], with the read views' state at the engine's
/// sequence number in the same file, so that both are recovered together.
pub fn write_snapshot_with_views(
    dir: &Path,
    engine: &Engine,
    views: Option<&[u8]>,
    keep: SnapshotKeep,
) -> Result<SnapshotInfo, JournalError> {
    create_private_dir(dir)?;
    let snapshot = engine.snapshot();
    let payload = codec::encode_to_vec(&snapshot).map_err(|e| JournalError::Encode(e.to_string()))?;
    let views_bytes = views.map_or(0, |v| v.len());
    let seq = engine.last_seq();
    let state_hash = engine.state_hash();
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_FILE_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&state_hash.to_le_bytes());
    header[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[40..44].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    if let Some(views) = views {
        header[44..52].copy_from_slice(&(views.len() as u64).to_le_bytes());
        header[52..56].copy_from_slice(&crc32fast::hash(views).to_le_bytes());
        header[56] = 1;
    }
    let crc = header_crc(&header);
    header[12..16].copy_from_slice(&crc.to_le_bytes());

    let path = dir.join(snapshot_file_name(seq));
    let temp = path.with_extension("snap.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = private_file_options().write(true).create(true).truncate(true).open(&temp)?;
        file.write_all(&header)?;
        file.write_all(&payload)?;
        if let Some(views) = views {
            file.write_all(views)?;
        }
        file.sync_all()
    };
    write().map_err(|e| JournalError::io(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
    sync_dir(dir)?;

    let snapshots = list_snapshots(dir)?;
    // Newest first: the first at or below the hold is the one to keep.
    let held = keep.hold_at_or_below.and_then(|hold| snapshots.iter().position(|(seq, _)| *seq <= hold));
    for (index, (_, old)) in snapshots.iter().enumerate().skip(keep.newest.max(1)) {
        if Some(index) != held {
            std::fs::remove_file(old).map_err(|e| JournalError::io(old, e))?;
        }
    }
    Ok(SnapshotInfo {
        path,
        seq,
        state_hash,
        bytes: (SNAPSHOT_HEADER_BYTES + payload.len() + views_bytes) as u64,
        views_bytes: views_bytes as u64,
    })
}

fn header_crc(header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..12]);
    hasher.update(&header[16..SNAPSHOT_HEADER_BYTES]);
    hasher.finalize()
}

/// Reads and checks a snapshot file: header, checksum, decoding, the
/// engine's own consistency checks, and the recorded state hash.
pub fn load_snapshot(path: &Path) -> Result<(Engine, SnapshotInfo), SnapshotFileError> {
    load_snapshot_with_views(path).map(|loaded| (loaded.engine, loaded.info))
}

/// Reads and checks a snapshot file as [`load_snapshot`] does, and returns
/// its views section too (its checksum checked; decoding it is the
/// caller's business).
pub fn load_snapshot_with_views(path: &Path) -> Result<LoadedSnapshot, SnapshotFileError> {
    let bytes = std::fs::read(path).map_err(SnapshotFileError::Io)?;
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotFileError::BadHeader("file shorter than a snapshot header"));
    }
    let header = &bytes[..SNAPSHOT_HEADER_BYTES];
    if &header[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotFileError::BadHeader("not a snapshot file (bad magic)"));
    }
    let version = read_u32(header, 8);
    if !(SNAPSHOT_FILE_VERSION_ENGINE_ONLY..=SNAPSHOT_FILE_VERSION).contains(&version) {
        return Err(SnapshotFileError::BadHeader(
            "unsupported snapshot file version (this build reads 1 to 4)",
        ));
    }
    if read_u32(header, 12) != header_crc(header) {
        return Err(SnapshotFileError::BadHeader("header checksum mismatch"));
    }
    let seq = read_u64(header, 16);
    let state_hash = read_u64(header, 24);
    let payload_len = read_u64(header, 32);
    let has_views_fields = version != SNAPSHOT_FILE_VERSION_ENGINE_ONLY;
    let has_views = has_views_fields && header[56] == 1;
    if has_views_fields && header[56] > 1 {
        return Err(SnapshotFileError::BadHeader("bad views flag"));
    }
    let views_len = if has_views { read_u64(header, 44) } else { 0 };
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if payload_len.checked_add(views_len) != Some(body.len() as u64) {
        return Err(SnapshotFileError::BadHeader("payload length differs from the file size"));
    }
    let (payload, views) = body.split_at(payload_len as usize);
    if crc32fast::hash(payload) != read_u32(header, 40) {
        return Err(SnapshotFileError::PayloadChecksum);
    }
    if has_views && crc32fast::hash(views) != read_u32(header, 52) {
        return Err(SnapshotFileError::ViewsChecksum);
    }
    let engine = decode_snapshot_payload_of_version(payload, version)?;
    if engine.last_seq() != seq {
        return Err(SnapshotFileError::BadHeader("header sequence differs from the state's"));
    }
    let loaded =
        if version == SNAPSHOT_FILE_VERSION { engine.state_hash() } else { engine.state_hash_of_format_1() };
    if loaded != state_hash {
        return Err(SnapshotFileError::HashMismatch { recorded: state_hash, loaded });
    }
    let info = SnapshotInfo {
        path: path.to_path_buf(),
        seq,
        state_hash,
        bytes: bytes.len() as u64,
        views_bytes: views_len,
    };
    Ok(LoadedSnapshot { engine, views: has_views.then(|| views.to_vec()), info })
}

/// Decodes a snapshot's payload (what follows the header, its checksum
/// already checked) and rebuilds the engine, checking its consistency.
/// Never panics, whatever the bytes.
pub fn decode_snapshot_payload(payload: &[u8]) -> Result<Engine, SnapshotFileError> {
    decode_snapshot_payload_of_version(payload, SNAPSHOT_FILE_VERSION)
}

/// [`decode_snapshot_payload`] for a file of `version` (1 and 2: format 1
/// in bincode 2's standard layout; 3: format 1 in the project's codec; 4:
/// format 2). Never panics, whatever the bytes.
pub fn decode_snapshot_payload_of_version(payload: &[u8], version: u32) -> Result<Engine, SnapshotFileError> {
    let snapshot: Snapshot = match version {
        SNAPSHOT_FILE_VERSION => codec::decode(payload),
        SNAPSHOT_FILE_VERSION_FORMAT_1 => codec::decode::<SnapshotFormat1>(payload).map(Snapshot::from),
        _ => codec::decode_bincode_standard::<SnapshotFormat1>(payload).map(Snapshot::from),
    }
    .map_err(|e| SnapshotFileError::Decode(e.to_string()))?;
    Engine::from_snapshot(snapshot).map_err(SnapshotFileError::Invalid)
}

/// What to do with journal segments wholly covered by the oldest kept snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentRetention {
    Keep,
    Delete,
    /// Move them into this directory.
    Archive(PathBuf),
}

/// Applies `retention` to the segments of `journal_dir` whose every record
/// is at or below `covered_seq`. The newest segment is always kept. The
/// journal's checkpoint records the new oldest segment before any goes.
/// Returns the segments removed or moved.
pub fn prune_segments(
    journal_dir: &Path,
    covered_seq: u64,
    retention: &SegmentRetention,
) -> Result<Vec<PathBuf>, JournalError> {
    if *retention == SegmentRetention::Keep {
        return Ok(Vec::new());
    }
    let segments =
        crate::segment::list_segments(journal_dir).map_err(|e| JournalError::io(journal_dir, e))?;
    // Whole segments covered, oldest first, each followed by a newer one.
    let covered = |limit: u64| -> Vec<&(u64, PathBuf)> {
        segments
            .windows(2)
            .take_while(|pair| pair[1].0 - 1 <= covered_seq && pair[1].0 <= limit)
            .map(|pair| &pair[0])
            .collect()
    };
    let mut doomed = covered(u64::MAX);
    // The checkpoint first: a segment gone that it still names would read
    // as lost at the next start. Only up to the newest segment it names (a
    // newer one may not be recorded yet).
    crate::checkpoint::update(journal_dir, |checkpoint| {
        doomed = covered(checkpoint.newest_first_seq);
        let Some(last) = doomed.last() else { return };
        let Some(kept_oldest) = segments.iter().map(|(seq, _)| *seq).find(|seq| *seq > last.0) else {
            return;
        };
        if kept_oldest > checkpoint.oldest_first_seq {
            let counted = doomed
                .iter()
                .filter(|(seq, _)| (checkpoint.oldest_first_seq..=checkpoint.newest_first_seq).contains(seq))
                .count() as u64;
            checkpoint.segment_count = checkpoint.segment_count.saturating_sub(counted);
            checkpoint.oldest_first_seq = kept_oldest;
        }
    })?;
    let mut pruned = Vec::new();
    for (_, path) in doomed {
        match retention {
            SegmentRetention::Keep => {}
            SegmentRetention::Delete => std::fs::remove_file(path).map_err(|e| JournalError::io(path, e))?,
            SegmentRetention::Archive(archive) => {
                create_private_dir(archive)?;
                let Some(name) = path.file_name() else { continue };
                let target = archive.join(name);
                std::fs::rename(path, &target).map_err(|e| JournalError::io(&target, e))?;
            }
        }
        pruned.push(path.clone());
    }
    if !pruned.is_empty() {
        sync_dir(journal_dir)?;
    }
    Ok(pruned)
}
