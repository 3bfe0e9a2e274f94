//! The operator's way out of a journal that lost records: keep every
//! record up to a named sequence number, drop the rest on the record.
//!
//! Nothing here runs on its own: the exchange refuses to start on lost
//! files, and only an operator who accepts the loss (`exctl journal repair
//! DIR --after SEQ --accept-loss`) gets here. The repair moves every file
//! it changes or removes into `DIR/repair-<UTC time>/` (the segments after
//! SEQ, a copy of the segment it truncates, the snapshots ahead of SEQ, the
//! old checkpoint), truncates the journal after SEQ, writes a new
//! checkpoint, and appends what it dropped to `DIR/repairs.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use crate::checkpoint::{self, checkpoint_path, Checkpoint};
use crate::error::JournalError;
use crate::files::{create_private_dir, private_file_options, sync_dir, zero_tail};
use crate::recovery::DataDir;
use crate::segment::{
    list_segments, read_frame, scan_segment, segment_file_name, written_end, Frame, SegmentHeader,
    SEGMENT_HEADER_BYTES,
};
use crate::snapshots::list_snapshots;
use crate::writer::{create_segment, preallocate, JournalConfig, JournalLock};

/// The log of repairs, in the data directory.
pub const REPAIRS_LOG_FILE_NAME: &str = "repairs.log";

/// What an operator asked for.
#[derive(Clone, Debug)]
pub struct RepairRequest {
    /// The last record to keep.
    pub after_seq: u64,
    /// Who asked (user, host), for the record.
    pub requested_by: String,
    /// When, in UTC (`2026-11-25T12:00:00Z`); names the directory the
    /// originals go to.
    pub when_utc: String,
}

/// What a repair after a sequence number drops and changes, found without
/// changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    pub after_seq: u64,
    /// The last record of the journal's valid run from its oldest segment
    /// (`None`: no valid segment).
    pub last_valid_seq: Option<u64>,
    /// The highest sequence number known to have existed: the journal's
    /// readable records, the checkpoint's durable number, the snapshots.
    pub highest_known_seq: u64,
    /// Readable records after `after_seq` that go (in any segment).
    pub dropped_records: u64,
    /// Segments moved aside whole.
    pub moved_segments: Vec<PathBuf>,
    /// The segment cut after `after_seq` (copied aside first), with the
    /// offset where the kept records end.
    pub truncated: Option<(PathBuf, usize)>,
    /// A new empty segment created to continue after `after_seq`.
    pub created: Option<PathBuf>,
    /// Snapshots ahead of `after_seq`, moved aside.
    pub moved_snapshots: Vec<PathBuf>,
    /// The checkpoint that is replaced (copied aside first).
    pub old_checkpoint: Option<PathBuf>,
    /// The checkpoint written.
    pub checkpoint: Checkpoint,
    capacity_bytes: u64,
}

impl RepairPlan {
    /// The sequence numbers dropped (empty when nothing is).
    pub fn dropped_range(&self) -> Option<(u64, u64)> {
        (self.highest_known_seq > self.after_seq).then_some((self.after_seq + 1, self.highest_known_seq))
    }

    /// One line per fact, for the operator and the log.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![match self.dropped_range() {
            Some((from, to)) => format!(
                "keeps records up to {}; drops {from}..{to} ({} readable records; the rest of that range was \
                 already missing or unreadable)",
                self.after_seq, self.dropped_records
            ),
            None => format!("keeps records up to {}; no record is known after it", self.after_seq),
        }];
        for path in &self.moved_segments {
            lines.push(format!("moves aside segment {}", path.display()));
        }
        if let Some((path, offset)) = &self.truncated {
            lines.push(format!(
                "truncates segment {} after offset {offset} (the original is copied aside first)",
                path.display()
            ));
        }
        if let Some(path) = &self.created {
            lines.push(format!("creates the empty segment {}", path.display()));
        }
        for path in &self.moved_snapshots {
            lines.push(format!("moves aside snapshot {}", path.display()));
        }
        if let Some(path) = &self.old_checkpoint {
            lines.push(format!("replaces {} (the original is copied aside first)", path.display()));
        }
        lines.push(format!(
            "writes a checkpoint: durable sequence {}, segments {} to {} ({} of them)",
            self.checkpoint.durable_seq,
            self.checkpoint.oldest_first_seq,
            self.checkpoint.newest_first_seq,
            self.checkpoint.segment_count
        ));
        lines
    }
}

/// What a repair did.
#[derive(Clone, Debug)]
pub struct RepairReport {
    pub plan: RepairPlan,
    /// Where the originals went.
    pub originals_dir: PathBuf,
    pub log: PathBuf,
    /// What was appended to the log.
    pub lines: Vec<String>,
}

/// One segment as the repair sees it.
struct Seen {
    first_seq: u64,
    path: PathBuf,
    header: Option<SegmentHeader>,
    /// The last valid record from its start, and where its records end.
    last_seq: Option<u64>,
    end_offset: usize,
    /// Valid records with their sequence numbers and end offsets.
    records: Vec<(u64, usize)>,
}

fn refused(why: String) -> JournalError {
    JournalError::RepairRefused(why)
}

/// The segments of a journal directory as the repair sees them, and how
/// many of them (from the oldest) form the valid run, which ends at the
/// returned sequence number (`None`: no valid segment).
fn survey(journal_dir: &Path) -> Result<(Vec<Seen>, usize, Option<u64>), JournalError> {
    let segments = if journal_dir.is_dir() {
        list_segments(journal_dir).map_err(|e| JournalError::io(journal_dir, e))?
    } else {
        Vec::new()
    };
    let mut seen = Vec::with_capacity(segments.len());
    for (first_seq, path) in segments {
        seen.push(look_at(first_seq, path)?);
    }
    // The valid run: from the oldest segment, whole headers, records
    // running on from one segment into the next, up to the first damage.
    let mut chain = 0;
    let mut last_valid_seq = None;
    for (index, segment) in seen.iter().enumerate() {
        let expected = last_valid_seq.map_or(segment.first_seq, |last: u64| last + 1);
        if segment.header.is_none() || segment.first_seq != expected {
            break;
        }
        chain = index + 1;
        last_valid_seq = Some(segment.last_seq.unwrap_or(segment.first_seq - 1));
        let whole = segment.header.is_some_and(|h| h.capacity_bytes == file_len(&segment.path));
        if !whole || segment.end_offset < written_end_of(&segment.path, segment.end_offset)? {
            break;
        }
    }
    Ok((seen, chain, last_valid_seq))
}

/// The last record of the journal's valid run from its oldest segment:
/// the highest sequence number a repair can keep (`None`: no valid
/// segment).
pub fn last_valid_seq(journal_dir: &Path) -> Result<Option<u64>, JournalError> {
    Ok(survey(journal_dir)?.2)
}

/// Works out what `repair` would do, changing nothing.
pub fn plan_repair(data: &DataDir, after_seq: u64) -> Result<RepairPlan, JournalError> {
    let journal_dir = data.journal();
    let (seen, chain, last_valid_seq) = survey(&journal_dir)?;
    let chain_start = seen.first().map(|s| s.first_seq);
    let snapshots = list_snapshots(&data.snapshots())?;
    match (chain_start, last_valid_seq) {
        (Some(_), Some(last)) if after_seq > last => {
            let segment = &seen[chain - 1];
            return Err(refused(format!(
                "sequence {after_seq} is after the last valid record, {last} (in {}): nothing valid follows \
                 it to keep; choose --after {last} or less",
                segment.path.display()
            )));
        }
        (Some(start), _) if after_seq + 1 < start => {
            return Err(refused(format!(
                "the journal's oldest segment starts at sequence {start}: records before it are not kept, so \
                 the journal cannot end at {after_seq}; choose --after {} or more",
                start - 1
            )));
        }
        (None, _) | (Some(_), None)
            if after_seq != 0 && !snapshots.iter().any(|(seq, _)| *seq == after_seq) =>
        {
            return Err(refused(format!(
                "the journal has no valid segment to keep records from: choose --after 0 (start empty) or \
                 the sequence number of a snapshot (in {})",
                data.snapshots().display()
            )));
        }
        _ => {}
    }
    // The segment the journal goes on in: the last of the valid run that
    // holds `after_seq`, else a new empty one starting after it.
    let keep = seen[..chain].iter().rposition(|s| s.first_seq <= after_seq);
    let kept_segments = keep.map_or(0, |k| k + 1);
    let journal_start = seen.first().filter(|_| keep.is_some()).map_or(after_seq + 1, |s| s.first_seq);
    if journal_start > 1 && !snapshots.iter().any(|(seq, _)| (journal_start - 1..=after_seq).contains(seq)) {
        return Err(refused(format!(
            "after the repair the journal would start at sequence {journal_start}, and no snapshot from \
             {} to {after_seq} is left to start the state from: choose a SEQ at or after a snapshot, or \
             restore the snapshots and segments from a backup",
            journal_start - 1
        )));
    }
    let mut dropped_records = 0u64;
    let mut highest_known_seq = after_seq;
    for segment in &seen {
        for (seq, _) in &segment.records {
            if *seq > after_seq {
                dropped_records += 1;
            }
            highest_known_seq = highest_known_seq.max(*seq);
        }
    }
    let old_checkpoint = checkpoint_path(&journal_dir);
    let old = match checkpoint::read_checkpoint(&journal_dir) {
        Ok(old) => old,
        Err(JournalError::BadCheckpoint { .. }) => None,
        Err(error) => return Err(error),
    };
    if let Some(old) = old {
        highest_known_seq = highest_known_seq.max(old.durable_seq);
    }
    let moved_snapshots: Vec<PathBuf> =
        snapshots.iter().filter(|(seq, _)| *seq > after_seq).map(|(_, path)| path.clone()).collect();
    for (seq, _) in &snapshots {
        highest_known_seq = highest_known_seq.max(*seq);
    }
    let moved_segments: Vec<PathBuf> = seen[kept_segments..].iter().map(|s| s.path.clone()).collect();
    let capacity_bytes = seen
        .iter()
        .find_map(|s| s.header.map(|h| h.capacity_bytes))
        .unwrap_or(crate::writer::SEGMENT_BYTES_DEFAULT);
    let (truncated, created, newest_first_seq) = match keep {
        Some(k) => {
            let segment = &seen[k];
            let offset = segment
                .records
                .iter()
                .take_while(|(seq, _)| *seq <= after_seq)
                .last()
                .map_or(SEGMENT_HEADER_BYTES, |(_, end)| *end);
            let changes = file_len(&segment.path) != segment.header.map_or(0, |h| h.capacity_bytes)
                || written_end_of(&segment.path, offset)? > offset;
            (changes.then(|| (segment.path.clone(), offset)), None, segment.first_seq)
        }
        None => (None, Some(journal_dir.join(segment_file_name(after_seq + 1))), after_seq + 1),
    };
    let checkpoint = Checkpoint {
        durable_seq: after_seq,
        oldest_first_seq: journal_start,
        newest_first_seq,
        segment_count: kept_segments.max(1) as u64,
    };
    Ok(RepairPlan {
        after_seq,
        last_valid_seq,
        highest_known_seq,
        dropped_records,
        moved_segments,
        truncated,
        created,
        moved_snapshots,
        old_checkpoint: old_checkpoint.exists().then_some(old_checkpoint),
        checkpoint,
        capacity_bytes,
    })
}

/// Repairs the journal of `data` to end after `request.after_seq`, as
/// [`plan_repair`] describes, with the journal's lock held (a running
/// server holds it: stop it first). The caller has the operator's explicit
/// acceptance of the loss.
pub fn repair(data: &DataDir, request: &RepairRequest) -> Result<RepairReport, JournalError> {
    let journal_dir = data.journal();
    create_private_dir(&journal_dir)?;
    let _lock = JournalLock::acquire(&journal_dir)?;
    let plan = plan_repair(data, request.after_seq)?;
    let originals_dir = unused_repair_dir(&data.root, &request.when_utc);
    let aside_journal = originals_dir.join("journal");
    let aside_snapshots = originals_dir.join("snapshots");
    create_private_dir(&aside_journal)?;
    create_private_dir(&aside_snapshots)?;
    // Copies of what is changed in place, before anything changes.
    if let Some((path, _)) = &plan.truncated {
        copy_synced(path, &aside_journal.join(file_name(path)))?;
    }
    if let Some(path) = &plan.old_checkpoint {
        copy_synced(path, &aside_journal.join(file_name(path)))?;
    }
    for path in &plan.moved_segments {
        let target = aside_journal.join(file_name(path));
        std::fs::rename(path, &target).map_err(|e| JournalError::io(&target, e))?;
    }
    for path in &plan.moved_snapshots {
        let target = aside_snapshots.join(file_name(path));
        std::fs::rename(path, &target).map_err(|e| JournalError::io(&target, e))?;
    }
    if let Some((path, offset)) = &plan.truncated {
        truncate_after(path, *offset, plan.capacity_bytes)?;
    }
    if plan.created.is_some() {
        let config =
            JournalConfig { segment_bytes: plan.capacity_bytes, ..JournalConfig::new(journal_dir.clone()) };
        drop(create_segment(&config, request.after_seq + 1)?);
    }
    checkpoint::replace(&journal_dir, &plan.checkpoint)?;
    for dir in [&journal_dir, &aside_journal, &aside_snapshots, &originals_dir, &data.root] {
        sync_dir(dir)?;
    }
    if data.snapshots().is_dir() {
        sync_dir(&data.snapshots())?;
    }
    let mut lines = vec![format!(
        "{} repair of {} after sequence {}, asked by {}, originals in {}",
        request.when_utc,
        data.root.display(),
        request.after_seq,
        request.requested_by,
        originals_dir.display()
    )];
    lines.extend(plan.describe().into_iter().map(|line| format!("  {line}")));
    let log = data.root.join(REPAIRS_LOG_FILE_NAME);
    let mut text = lines.join("\n");
    text.push('\n');
    let append = || -> std::io::Result<()> {
        let mut file = private_file_options().append(true).create(true).open(&log)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    append().map_err(|e| JournalError::io(&log, e))?;
    Ok(RepairReport { plan, originals_dir, log, lines })
}

fn look_at(first_seq: u64, path: PathBuf) -> Result<Seen, JournalError> {
    let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
    // Safety: read-only, and the journal's lock (or the caller's knowledge
    // that no server runs) keeps writers away.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(&path, e))?;
    let header = SegmentHeader::decode(&map).ok().filter(|h| h.first_seq == first_seq);
    let mut seen = Seen { first_seq, path, header, last_seq: None, end_offset: 0, records: Vec::new() };
    if let Some(header) = &header {
        let mut offset = SEGMENT_HEADER_BYTES;
        let scan = scan_segment(&map, header, |_| {});
        // Record ends, for cutting after any of them.
        while let Frame::Record { command, next_offset, .. } = read_frame(&map, offset) {
            if seen.records.len() as u64 >= scan.records {
                break;
            }
            seen.records.push((command.seq, next_offset));
            offset = next_offset;
        }
        seen.last_seq = scan.last_seq;
        seen.end_offset = scan.end_offset;
    }
    Ok(seen)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn written_end_of(path: &Path, from: usize) -> Result<usize, JournalError> {
    let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
    // Safety: as in `look_at`.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(path, e))?;
    Ok(written_end(&map, from))
}

/// Zeroes a segment after `offset` and gives it back its preallocated size.
fn truncate_after(path: &Path, offset: usize, capacity_bytes: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| JournalError::io(path, e))?;
    let header_capacity = {
        // Safety: as in `look_at`; this process holds the journal's lock.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| JournalError::io(path, e))?;
        SegmentHeader::decode(&map).map_or(capacity_bytes, |h| h.capacity_bytes)
    };
    if file.metadata().map_err(|e| JournalError::io(path, e))?.len() != header_capacity {
        file.set_len(offset as u64).map_err(|e| JournalError::io(path, e))?;
        preallocate(&file, header_capacity).map_err(|e| JournalError::io(path, e))?;
    }
    // Safety: as above; the file is not resized while mapped.
    let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| JournalError::io(path, e))?;
    zero_tail(&mut map, path, offset)?;
    file.sync_all().map_err(|e| JournalError::io(path, e))
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), JournalError> {
    std::fs::copy(from, to).map_err(|e| JournalError::io(to, e))?;
    File::open(to).and_then(|f| f.sync_all()).map_err(|e| JournalError::io(to, e))
}

fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// Where a repair made at `when_utc` keeps the originals it changed:
/// `root/repair-20261125T120000Z`, or with `-2`, `-3`... when taken (a
/// single node's repair and a cluster node's alike).
pub fn unused_repair_dir(root: &Path, when_utc: &str) -> PathBuf {
    let stamp: String = when_utc
        .split('.')
        .next()
        .unwrap_or(when_utc)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let stamp = if stamp.ends_with('Z') { stamp } else { format!("{stamp}Z") };
    let base = root.join(format!("repair-{stamp}"));
    let mut candidate = base.clone();
    let mut n = 2;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    candidate
}
