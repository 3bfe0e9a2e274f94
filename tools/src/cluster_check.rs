//! `exctl journal verify` and `exctl journal repair` on a cluster node's
//! journal, the Raft log (segment format 3, `RAFT_STATE`, `RAFT_SEGMENTS`,
//! and the node's snapshot image in `DIR/snapshots`).
//!
//! Both start from one survey of the files, which reads every byte as
//! hostile input and never stops at the first problem: each problem is one
//! precise line, and the first place the log stops being a valid run of
//! entries is where a repair could cut. Verify also replays the committed
//! entries through an engine as every node does, checking the hash marks
//! (`cluster_log::replay_checked`).
//!
//! The repair only ever cuts entries above the committed index: committed
//! entries are the cluster's decision, and a node whose committed entries
//! are damaged is re-seeded from the cluster (wiped, and rejoined: it
//! installs the leader's snapshot image), never cut. Like the single-node
//! repair it is an explicit operator action: without `--accept-loss` it
//! only shows its plan; with it, it copies what it changes into
//! `DIR/repair-<UTC time>/journal/` first and appends what it did to
//! `DIR/repairs.log`. It holds the journal's lock meanwhile, so never runs
//! beside a node.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use journal::{
    decode_raft_segments_file, decode_raft_state, list_raft_segments, read_raft_frame, scan_raft_segment,
    JournalLock, LogPosition, RaftFrameRead, RaftSegmentHeader, RaftSegmentScan, RaftState,
    RAFT_FRAME_MAX_BYTES, RAFT_SEGMENTS_FILE_NAME, RAFT_STATE_FILE_NAME,
};

/// One problem, as one line for the operator.
struct Problem {
    text: String,
    /// A torn last entry of the newest segment, above the committed index:
    /// the shape a crash during an append leaves, which the node cuts when
    /// it opens the log.
    torn_tail: bool,
}

/// One segment file as the survey found it.
struct Seen {
    first_index: u64,
    path: PathBuf,
    /// The scan of a readable segment (header, size and name agree).
    scan: Option<RaftSegmentScan>,
    /// Its last valid entry.
    last: Option<LogPosition>,
}

/// Where the valid run of entries stops: entries from `index` on are lost
/// or damaged.
#[derive(Clone, Copy)]
struct Stop {
    index: u64,
    /// The segment (its position in `Survey::segments`) where it stops.
    segment: usize,
}

/// What the files say.
struct Survey {
    state: Option<RaftState>,
    /// `RAFT_STATE` and `RAFT_SEGMENTS` both read (absent only on a log
    /// that holds no segment).
    state_files_read: bool,
    /// The last purged position `RAFT_SEGMENTS` records.
    purged: Option<LogPosition>,
    /// Segments after what was purged (leftovers of an interrupted purge
    /// are left out: the node deletes them).
    segments: Vec<Seen>,
    /// The last entry of the valid run from the first entry held.
    valid_end: Option<LogPosition>,
    stop: Option<Stop>,
    problems: Vec<Problem>,
}

impl Survey {
    fn committed(&self) -> Option<u64> {
        self.state.and_then(|s| s.committed).map(|p| p.index)
    }

    fn problem(&mut self, text: String) {
        self.problems.push(Problem { text, torn_tail: false });
    }

    /// Marks where the valid run stops (the first place only).
    fn stop_at(&mut self, index: u64, segment: usize) {
        if self.stop.is_none() {
            self.stop = Some(Stop { index, segment });
        }
    }
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn survey(journal: &Path) -> Result<Survey, String> {
    let listed =
        list_raft_segments(journal).map_err(|e| format!("cannot list {}: {e}", journal.display()))?;
    let mut survey = Survey {
        state: None,
        state_files_read: true,
        purged: None,
        segments: Vec::new(),
        valid_end: None,
        stop: None,
        problems: Vec::new(),
    };
    let state_path = journal.join(RAFT_STATE_FILE_NAME);
    match read_file(&state_path)? {
        Some(bytes) => match decode_raft_state(&bytes) {
            Ok(state) => survey.state = Some(state),
            Err(why) => {
                survey.state_files_read = false;
                survey.problem(format!(
                    "{}: {why}: the node's vote and committed index cannot be read (both slots are damaged)",
                    state_path.display()
                ));
            }
        },
        None if !listed.is_empty() => {
            survey.state_files_read = false;
            survey.problem(format!(
                "{} is missing, yet the log holds segments: the node's vote and committed index are lost \
                 (it is written before the first entry and never removed)",
                state_path.display()
            ));
        }
        None => {}
    }
    let bounds_path = journal.join(RAFT_SEGMENTS_FILE_NAME);
    match read_file(&bounds_path)? {
        Some(bytes) => match decode_raft_segments_file(&bytes) {
            Ok(purged) => survey.purged = purged,
            Err(why) => {
                survey.state_files_read = false;
                survey.problem(format!(
                    "{}: {why}: the purged position and the segments held cannot be read",
                    bounds_path.display()
                ));
            }
        },
        None if !listed.is_empty() => {
            survey.state_files_read = false;
            survey.problem(format!(
                "{} is missing, yet the log holds segments: the purged position is lost",
                bounds_path.display()
            ));
        }
        None => {}
    }
    let purged_index = survey.purged.map(|p| p.index);
    // Segments wholly at or below the purged index (the next one starts at
    // most just after it) are an interrupted purge's leftovers.
    let mut listed = listed;
    if let Some(purged) = purged_index {
        while listed.len() > 1 && listed[1].0 <= purged.saturating_add(1) {
            listed.remove(0);
        }
    }
    let newest = listed.len().saturating_sub(1);
    let committed = survey.committed();
    // The next index and the lowest term the valid run allows.
    let mut expected: Option<u64> = purged_index.map(|p| p + 1);
    let mut min_term = survey.purged.map_or(0, |p| p.term);
    for (position, (first_index, path)) in listed.into_iter().enumerate() {
        let mut seen = Seen { first_index, path: path.clone(), scan: None, last: None };
        let name = path.display().to_string();
        let in_run = survey.stop.is_none();
        match (expected, in_run) {
            (Some(expected), true) if first_index > expected => {
                survey.problem(format!(
                    "{name}: entries {expected}..{} are missing: the segment before ends at {} (a segment \
                     file was removed or lost, which no crash does)",
                    first_index - 1,
                    expected.saturating_sub(1)
                ));
                survey.stop_at(expected, position);
            }
            (Some(expected), true) if first_index < expected && position > 0 => {
                survey.problem(format!(
                    "{name}: it starts at entry {first_index}, but the segment before runs on to {}",
                    expected - 1
                ));
                survey.stop_at(first_index, position);
            }
            _ => {}
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                survey.problem(format!("cannot read {name}: {e}"));
                survey.stop_at(expected.unwrap_or(first_index).min(first_index), position);
                survey.segments.push(seen);
                continue;
            }
        };
        let header = match RaftSegmentHeader::decode(&bytes) {
            Ok(header) if header.first_index != first_index => Err(format!(
                "the header names first index {}, the file name {first_index}",
                header.first_index
            )),
            Ok(header) if header.capacity_bytes != bytes.len() as u64 => Err(format!(
                "the file is {} bytes, but its header says {}: segments are preallocated whole and no crash \
                 changes their size, so it was cut or copied short",
                bytes.len(),
                header.capacity_bytes
            )),
            Ok(header) => Ok(header),
            Err(why) => Err(why.to_string()),
        };
        let header = match header {
            Ok(header) => header,
            Err(why) => {
                survey.problem(format!("{name}: {why} (every entry in it is unreadable)"));
                survey.stop_at(expected.unwrap_or(first_index).min(first_index), position);
                survey.segments.push(seen);
                continue;
            }
        };
        let scan =
            scan_raft_segment(&bytes, &header, if in_run { min_term } else { 0 }, RAFT_FRAME_MAX_BYTES);
        if let Some(&(offset, term)) = scan.entries.last() {
            let RaftFrameRead::Entry(frame) = read_raft_frame(&bytes, offset) else {
                return Err(format!("{name}: the entry at offset {offset} does not read back"));
            };
            debug_assert_eq!(frame.position.term, term);
            seen.last = Some(frame.position);
        }
        if let Some(damage) = &scan.damage {
            let torn = damage.torn_tail && position == newest;
            let shape = if torn {
                "a torn last entry (the shape a crash during an append leaves)"
            } else if position != newest {
                "damage in a segment the log had moved past"
            } else {
                "damage"
            };
            let committed_hit = committed.is_some_and(|c| damage.expected_index <= c);
            let text = format!(
                "{name}: {shape} at offset {}, where entry {} belongs: {}{}",
                damage.offset,
                damage.expected_index,
                damage.why,
                if committed_hit { " (a committed entry)" } else { "" }
            );
            survey.problems.push(Problem { text, torn_tail: torn && !committed_hit && in_run });
            survey.stop_at(damage.expected_index, position);
        }
        if in_run {
            if let Some(last) = seen.last {
                survey.valid_end = Some(last);
                min_term = last.term;
            }
            expected = seen.last.map_or(Some(first_index), |last| last.index.checked_add(1));
        }
        seen.scan = Some(scan);
        survey.segments.push(seen);
    }
    // The committed index and the purged position against the log.
    let end = survey.valid_end.map(|p| p.index).or(purged_index);
    if let Some(committed) = committed {
        if end.is_none_or(|end| committed > end) {
            survey.problem(format!(
                "{} records entries up to {committed} as committed, but the valid log ends at {}: committed \
                 entries are lost or damaged",
                RAFT_STATE_FILE_NAME,
                end.map_or("nothing".to_string(), |e| e.to_string())
            ));
        }
    }
    if let (Some(purged), Some(first)) = (survey.purged, survey.segments.first()) {
        if first.first_index > purged.index + 1 && survey.stop.is_none_or(|s| s.segment > 0) {
            survey.problem(format!(
                "{}: entries {}..{} are missing: {RAFT_SEGMENTS_FILE_NAME} records the log purged through {} only",
                first.path.display(),
                purged.index + 1,
                first.first_index - 1,
                purged.index
            ));
            survey.stop_at(purged.index + 1, 0);
        }
        if let Some(term) = term_of(&survey, purged.index) {
            if term != purged.term {
                survey.problem(format!(
                    "entry {} has term {term}, but {RAFT_SEGMENTS_FILE_NAME} records it purged with term {}",
                    purged.index, purged.term
                ));
            }
        }
    }
    Ok(survey)
}

/// The term of entry `index` in the valid run, if the log holds it.
fn term_of(survey: &Survey, index: u64) -> Option<u64> {
    if survey.stop.is_some_and(|s| index >= s.index) {
        return None;
    }
    let seen = survey.segments.iter().rev().find(|s| s.first_index <= index)?;
    let scan = seen.scan.as_ref()?;
    scan.entries.get(usize::try_from(index - seen.first_index).ok()?).map(|&(_, term)| term)
}

/// The first entry the log holds (after the purged ones).
fn first_held(survey: &Survey) -> Option<u64> {
    let first = survey.segments.first()?.first_index;
    Some(survey.purged.map_or(first, |p| first.max(p.index + 1)))
}

/// Checks the node's snapshot image against the log; one line about it.
fn check_image(survey: &mut Survey, snapshots: &Path) -> String {
    let purged = survey.purged.map(|p| p.index);
    let image = match replication::read_image_file(snapshots) {
        Ok(image) => image,
        Err(error) => {
            survey.problem(format!("snapshot image: {error}: the node refuses to start on it"));
            return "image:     damaged".to_string();
        }
    };
    let Some((image, _)) = image else {
        if let Some(purged) = purged {
            survey.problem(format!(
                "the log is purged through entry {purged}, and {} holds no snapshot image: the state up to \
                 it is gone",
                snapshots.display()
            ));
        }
        return "image:     none".to_string();
    };
    let seq = image.engine.last_seq();
    let Some(at) = image.meta.last_log_id else {
        return format!("image:     of no log entry (sequence {seq})");
    };
    let (index, term) = (at.index, at.leader_id.term);
    if purged.is_some_and(|purged| index < purged) {
        survey.problem(format!(
            "the snapshot image is of entry {index}, but the log is purged through {}: entries {}..={} are \
             in neither",
            purged.unwrap_or(0),
            index + 1,
            purged.unwrap_or(0)
        ));
    }
    if let Some(first) = first_held(survey) {
        if first > index + 1 && purged.is_none_or(|purged| index >= purged) {
            survey.problem(format!(
                "the log does not continue from the snapshot image: the image is of entry {index}, the log's \
                 first entry is {first}"
            ));
        }
    }
    if let Some(held) = term_of(survey, index) {
        if held != term {
            survey.problem(format!(
                "the snapshot image is of entry {index} with term {term}, but the log holds entry {index} with \
                 term {held}: the image is not of this log"
            ));
        }
    }
    format!("image:     entry {index} (term {term}), sequence {seq}, the log continues from it")
}

fn position(p: Option<LogPosition>) -> String {
    p.map_or("-".to_string(), |p| format!("index {} (term {})", p.index, p.term))
}

/// `exctl journal verify` on a Raft log. Exit status: 0 sound, 1 a torn
/// tail of uncommitted entries only (the node cuts it when it opens the
/// log), 2 anything else.
pub fn verify(dir: &Path, journal: &Path, snapshots: &Path) -> Result<ExitCode, String> {
    let mut survey = survey(journal)?;
    let image = check_image(&mut survey, snapshots);
    let mut lines = vec![format!("raft log {} (a cluster node's journal)", journal.display())];
    if let Some(state) = survey.state {
        let vote = state.vote.map_or("-".to_string(), |v| {
            format!("term {} for node {}{}", v.term, v.node_id, if v.committed { " (leader)" } else { "" })
        });
        lines.push(format!("vote:      {vote}"));
        lines.push(format!("committed: {}", position(state.committed)));
    }
    lines.push(format!("purged:    {}", position(survey.purged)));
    lines.push(image);
    let entries: usize =
        survey.segments.iter().filter_map(|s| s.scan.as_ref()).map(|s| s.entries.len()).sum();
    lines.push(format!(
        "segments:  {}, {entries} entries, valid run from {} to {}",
        survey.segments.len(),
        first_held(&survey).map_or("-".to_string(), |f| f.to_string()),
        position(survey.valid_end)
    ));
    let structural = survey.problems.iter().any(|p| !p.torn_tail);
    if structural {
        lines.push("replay:    not run (the problems below stop it)".to_string());
    } else {
        match crate::cluster_log::replay_checked(journal, snapshots, None) {
            Ok(replayed) => lines.push(format!(
                "replay:    {} committed commands to sequence {}, state hash {:016x}; hash marks checked: {} of \
                 {} in the log, all equal",
                replayed.replica.engine().last_seq() - replayed.image.map_or(0, |(_, seq)| seq),
                replayed.replica.engine().last_seq(),
                replayed.replica.engine().state_hash(),
                replayed.marks_checked,
                replayed.marks
            )),
            Err(error) => {
                lines.push("replay:    failed".to_string());
                survey.problem(format!("replay of the committed entries: {error}"));
            }
        }
    }
    for line in &lines {
        println!("{line}");
    }
    if survey.problems.is_empty() {
        println!(
            "ok: every checksum, index and term valid, the state files, purged position and image agree"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &survey.problems {
        println!("damage: {}", problem.text);
    }
    let committed = survey.committed();
    if survey.problems.iter().all(|p| p.torn_tail) {
        println!(
            "verdict: a torn tail of uncommitted entries only, the shape a crash leaves; the node cuts it when it \
             opens the log"
        );
        return Ok(ExitCode::from(1));
    }
    println!("verdict: the log is damaged");
    match way_out(&survey) {
        WayOut::Cut { keep } => println!(
            "way out: the damage is past the committed index ({}): cut the uncommitted entries after {keep} \
             (the cluster still has what was committed): exctl journal repair {} --after {keep} --accept-loss",
            committed.map_or("none".to_string(), |c| c.to_string()),
            dir.display()
        ),
        WayOut::Reseed(why) => println!("way out: {why}; {RESEED}"),
    }
    Ok(ExitCode::from(2))
}

const RESEED: &str =
    "re-seed this node from the cluster: stop it, wipe its data directory, and start it again \
                      to rejoin (it installs the leader's snapshot image and the entries after it)";

enum WayOut {
    /// A repair that keeps the entries up to `keep` removes every problem.
    Cut {
        keep: u64,
    },
    Reseed(String),
}

/// Whether cutting uncommitted entries removes every problem found.
fn way_out(survey: &Survey) -> WayOut {
    if !survey.state_files_read {
        return WayOut::Reseed(format!(
            "{RAFT_STATE_FILE_NAME} or {RAFT_SEGMENTS_FILE_NAME} cannot be read, so what is committed or purged \
             is unknown"
        ));
    }
    let committed = survey.committed();
    let Some(stop) = survey.stop else {
        return WayOut::Reseed("the damage is not in the log's entries (see above)".to_string());
    };
    if committed.is_some_and(|c| stop.index <= c) {
        return WayOut::Reseed(format!(
            "the damage reaches committed entries (entry {} is lost; entries up to {} are committed), which a \
             node never cuts",
            stop.index,
            committed.unwrap_or(0)
        ));
    }
    // Problems a cut does not remove: the state files, the image.
    let entry_problem = |p: &Problem| p.text.contains(".log:") || p.text.contains("committed entries");
    if survey.problems.iter().any(|p| !entry_problem(p)) {
        return WayOut::Reseed("the state files or the snapshot image are damaged (see above)".to_string());
    }
    WayOut::Cut { keep: stop.index.saturating_sub(1) }
}

/// What an operator asked of `exctl journal repair` on a Raft log.
pub struct RepairRequest {
    /// The last log index to keep.
    pub after_index: u64,
    pub accept_loss: bool,
    pub requested_by: String,
    pub when_utc: String,
}

/// What a cut does.
struct Plan {
    keep: u64,
    /// The entries cut (valid or not): `keep + 1 ..= last`.
    last_known: Option<u64>,
    /// The segment the log goes on in, cut after `offset` (copied aside
    /// first); `None` when nothing after the kept entries is written there.
    truncated: Option<(PathBuf, usize, usize)>,
    /// Segments moved aside whole.
    moved: Vec<PathBuf>,
    /// The segments held after the cut (first indexes of the oldest and the newest).
    segments_after: Option<(u64, u64)>,
}

impl Plan {
    fn describe(&self) -> Vec<String> {
        let mut lines = vec![match self.last_known {
            Some(last) if last > self.keep => format!(
                "keeps the log's entries up to index {}; cuts entries {}..={last} (uncommitted; the ones past \
                 the damage were unreadable already)",
                self.keep,
                self.keep + 1
            ),
            _ => format!("keeps the log's entries up to index {}; cuts the damaged bytes after it", self.keep),
        }];
        if let Some((path, offset, end)) = &self.truncated {
            lines.push(format!(
                "zeroes segment {} from offset {offset} to {end} (the original is copied aside first)",
                path.display()
            ));
        }
        for path in &self.moved {
            lines.push(format!("moves aside segment {}", path.display()));
        }
        lines.push(format!(
            "records in {RAFT_SEGMENTS_FILE_NAME} the segments {} (the original is copied aside first)",
            self.segments_after.map_or("none".to_string(), |(o, n)| format!("from {o} to {n}"))
        ));
        lines
    }
}

fn plan(survey: &Survey, keep: u64) -> Result<Plan, String> {
    if !survey.state_files_read {
        return Err(format!(
            "refused: {RAFT_STATE_FILE_NAME} or {RAFT_SEGMENTS_FILE_NAME} cannot be read, so what is committed or \
             purged is unknown and no cut is safe; {RESEED}"
        ));
    }
    if let Some(committed) = survey.committed().filter(|&c| keep < c) {
        return Err(format!(
            "refused: entries up to {committed} are committed (the cluster's decision, which a node never cuts); \
             a cut must keep at least them: --after {committed} or more{}",
            if survey.stop.is_some_and(|s| s.index <= committed) {
                format!("; but the damage reaches committed entries, so {RESEED}")
            } else {
                String::new()
            }
        ));
    }
    let valid_end = survey.valid_end.map(|p| p.index).or(survey.purged.map(|p| p.index));
    if let Some(purged) = survey.purged.filter(|p| keep < p.index) {
        return Err(format!("refused: entries up to {} are purged behind the snapshot image", purged.index));
    }
    if valid_end.is_none_or(|end| keep > end) {
        return Err(format!(
            "refused: the log's valid run ends at {}: nothing valid follows it to keep; choose --after {} or \
             less{}",
            valid_end.map_or("nothing".to_string(), |e| e.to_string()),
            valid_end.map_or("nothing".to_string(), |e| e.to_string()),
            if survey.committed().is_some_and(|c| valid_end.is_none_or(|end| c > end)) {
                format!("; but committed entries are missing, so {RESEED}")
            } else {
                String::new()
            }
        ));
    }
    // The segment the log goes on in: the last one of the valid run whose
    // first entry is kept.
    let run = survey.stop.map_or(survey.segments.len(), |s| s.segment + 1);
    let kept = survey.segments[..run].iter().rposition(|s| s.first_index <= keep && s.scan.is_some());
    let mut truncated = None;
    if let Some(k) = kept {
        let seen = &survey.segments[k];
        let bytes =
            std::fs::read(&seen.path).map_err(|e| format!("cannot read {}: {e}", seen.path.display()))?;
        let scan = seen.scan.as_ref().expect("kept segments are readable");
        let kept_entries = usize::try_from(keep - seen.first_index + 1).unwrap_or(usize::MAX);
        let offset = scan.entries.get(kept_entries).map_or(scan.end_offset, |&(offset, _)| offset);
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
        if end > offset {
            truncated = Some((seen.path.clone(), offset, end));
        }
    }
    let moved: Vec<PathBuf> =
        survey.segments[kept.map_or(0, |k| k + 1)..].iter().map(|s| s.path.clone()).collect();
    let last_known = survey.segments.iter().filter_map(|s| s.last.map(|l| l.index)).max();
    let segments_after = kept.map(|k| (survey.segments[0].first_index, survey.segments[k].first_index));
    Ok(Plan { keep, last_known, truncated, moved, segments_after })
}

/// `exctl journal repair` on a Raft log: cuts the uncommitted entries after
/// `request.after_index` (a torn or damaged tail), on the record.
pub fn repair(dir: &Path, journal: &Path, request: &RepairRequest) -> Result<ExitCode, String> {
    // Held to the end: no node may run meanwhile.
    let _lock = JournalLock::acquire(journal).map_err(|e| format!("{e} (stop the node first)"))?;
    let survey = survey(journal)?;
    let plan = plan(&survey, request.after_index)?;
    if plan.truncated.is_none() && plan.moved.is_empty() {
        println!("nothing to cut: the log ends at index {} without damage after it", request.after_index);
        return Ok(ExitCode::SUCCESS);
    }
    if !request.accept_loss {
        println!(
            "a repair of the raft log {} after index {} would do this:",
            journal.display(),
            request.after_index
        );
        for line in plan.describe() {
            println!("  {line}");
        }
        return Err(format!(
            "refused without --accept-loss: the entries after {} would be cut (the files are copied or moved \
             aside, not deleted); rerun with --accept-loss to accept it",
            request.after_index
        ));
    }
    let originals = journal::unused_repair_dir(dir, &request.when_utc);
    let aside = originals.join("journal");
    std::fs::create_dir_all(&aside).map_err(|e| format!("cannot create {}: {e}", aside.display()))?;
    let copy = |from: &Path| -> Result<(), String> {
        let to = aside.join(from.file_name().unwrap_or(from.as_os_str()));
        std::fs::copy(from, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        std::fs::File::open(&to).and_then(|f| f.sync_all()).map_err(|e| format!("{}: {e}", to.display()))
    };
    // Copies of what changes in place, before anything changes.
    copy(&journal.join(RAFT_SEGMENTS_FILE_NAME))?;
    if let Some((path, _, _)) = &plan.truncated {
        copy(path)?;
    }
    // Recorded first, as the log itself does for a truncation: a crash
    // before the moves leaves segments after the newest recorded, which the
    // next repair (or a look at the files) finds again.
    journal::record_raft_segments(journal, plan.segments_after).map_err(|e| e.to_string())?;
    for path in plan.moved.iter().rev() {
        let to = aside.join(path.file_name().unwrap_or(path.as_os_str()));
        std::fs::rename(path, &to)
            .map_err(|e| format!("cannot move {} to {}: {e}", path.display(), to.display()))?;
    }
    if let Some((path, offset, end)) = &plan.truncated {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.write_all_at(&vec![0u8; end - offset], *offset as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot zero {} from offset {offset}: {e}", path.display()))?;
    }
    for synced in [journal, &aside, &originals, dir] {
        std::fs::File::open(synced)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync the directory {}: {e}", synced.display()))?;
    }
    let mut lines = vec![format!(
        "{} repair of the raft log {} after index {}, asked by {}, originals in {}",
        request.when_utc,
        journal.display(),
        request.after_index,
        request.requested_by,
        originals.display()
    )];
    lines.extend(plan.describe().into_iter().map(|line| format!("  {line}")));
    let log = dir.join(journal::REPAIRS_LOG_FILE_NAME);
    let mut text = lines.join("\n");
    text.push('\n');
    let append = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&log)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    append().map_err(|e| format!("cannot append to {}: {e}", log.display()))?;
    for line in &lines {
        println!("{line}");
    }
    println!("recorded in {}", log.display());
    Ok(ExitCode::SUCCESS)
}
