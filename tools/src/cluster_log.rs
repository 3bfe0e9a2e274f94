//! exctl on a cluster node's journal, which is a Raft log (segment format
//! 3): what `journal inspect` shows of it, and `replay` through an engine
//! numbered as every node numbers committed commands, checking the state
//! hash marks the leader wrote into the log on the way.
//!
//! `journal dump` on it prints every entry, committed or not; `journal
//! verify` and `journal repair` on it live in `cluster_check.rs`.
//!
//! Read-only: a running node may hold the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use engine_core::{Engine, EngineLimits};
use replication::log_file::read_committed;
use replication::openraft::EntryPayload;
use replication::{Batch, Replica};

use crate::dump::Names;

pub fn inspect(journal: &Path) -> Result<ExitCode, String> {
    let mut kinds = BTreeMap::<&str, u64>::new();
    let mut commands = 0u64;
    let log = read_committed(journal, |entry| {
        let kind = match &entry.payload {
            EntryPayload::Blank => "blank",
            EntryPayload::Normal(Batch::Commands(proposals)) => {
                commands += proposals.len() as u64;
                "commands"
            }
            EntryPayload::Normal(Batch::HashMark { .. }) => "hash marks",
            EntryPayload::Membership(_) => "membership",
        };
        *kinds.entry(kind).or_default() += 1;
        Ok(())
    })?;
    println!("raft log {} (a cluster node's journal)", journal.display());
    match &log.state {
        Some(state) => {
            let position = |p: Option<journal::LogPosition>| {
                p.map_or("-".to_string(), |p| format!("index {} (term {})", p.index, p.term))
            };
            let vote = state.vote.map_or("-".to_string(), |v| {
                format!(
                    "term {} for node {}{}",
                    v.term,
                    v.node_id,
                    if v.committed { " (leader)" } else { "" }
                )
            });
            println!("vote:      {vote}");
            println!("committed: {}", position(state.committed));
            println!("purged:    {}", log.purged.map_or("-".to_string(), |index| format!("index {index}")));
        }
        None => println!("RAFT_STATE: none (a new node, or one whose disk was wiped)"),
    }
    println!(
        "{:<28} {:>12} {:>10} {:>24}  damage",
        "segment", "first index", "entries", "last (index, term)"
    );
    for segment in &log.segments {
        let name = segment.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!(
            "{:<28} {:>12} {:>10} {:>24}  {}",
            name,
            segment.first_index,
            segment.entries,
            segment.last.map_or("-".to_string(), |(i, t)| format!("({i}, {t})")),
            segment.damage.as_deref().unwrap_or("-"),
        );
    }
    let kinds: Vec<String> = kinds.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    println!("committed entries read: {} ({}); commands: {commands}", log.visited, kinds.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Replays the committed log (to sequence `to` at most) into an engine,
/// checking every hash mark whose sequence it passes. A log purged behind
/// a snapshot image starts from the image in `snapshots` (the node's).
pub fn replay(journal: &Path, snapshots: &Path, to: Option<u64>) -> Result<Replica, String> {
    let replayed = replay_checked(journal, snapshots, to)?;
    if let Some((index, seq)) = replayed.image {
        println!("starting from the snapshot image of log entry {index}, sequence {seq}");
    }
    let seq = replayed.replica.engine().last_seq();
    println!("raft log {}: replayed {seq} commands in {:.3} s", journal.display(), replayed.seconds);
    println!("hash marks checked: {} of {} in the log, all equal", replayed.marks_checked, replayed.marks);
    Ok(replayed.replica)
}

/// What [`replay_checked`] did.
pub struct Replayed {
    pub replica: Replica,
    /// The snapshot image started from: its log index and sequence number.
    pub image: Option<(u64, u64)>,
    /// Hash marks in the committed log, and those the replay compared (all equal).
    pub marks: usize,
    pub marks_checked: u64,
    pub seconds: f64,
}

/// [`replay`] without printing: the replica, or the first disagreement (a
/// hash mark that differs, an entry the replica refuses, a log it cannot read).
pub fn replay_checked(journal: &Path, snapshots: &Path, to: Option<u64>) -> Result<Replayed, String> {
    // First pass: where the marks are, so that the replay can hash there.
    let mut marks = BTreeSet::new();
    let log = read_committed(journal, |entry| {
        if let EntryPayload::Normal(Batch::HashMark { seq, .. }) = entry.payload {
            marks.insert(seq);
        }
        Ok(())
    })?;
    let started = std::time::Instant::now();
    let purged = log.purged;
    let (mut replica, image) = match purged {
        // A cluster node starts from an empty engine with the default
        // limits; the leader journals the configured ones (a command like
        // any other).
        None => (Replica::new(EngineLimits::default()), None),
        Some(purged) => from_image(snapshots, purged, to)?,
    };
    let mut hashes = BTreeMap::new();
    let (mut checked, mut events) = (0u64, Vec::new());
    let stop = to.unwrap_or(u64::MAX);
    let result = read_committed(journal, |entry| {
        if replica.applied().is_some_and(|applied| entry.log_id.index <= applied.index) {
            // In the image already.
            return Ok(());
        }
        if let EntryPayload::Normal(Batch::HashMark { seq, node, hash }) = entry.payload {
            if let Some(ours) = hashes.get(&seq) {
                if *ours != hash {
                    return Err(format!(
                        "the replay diverges from the cluster: at sequence {seq} its state hash is {ours:016x}, \
                         node {node}'s hash mark (log entry {}) says {hash:016x}",
                        entry.log_id.index
                    ));
                }
                checked += 1;
            }
        }
        let commands = match &entry.payload {
            EntryPayload::Normal(Batch::Commands(proposals)) => proposals.len() as u64,
            _ => 0,
        };
        if replica.engine().last_seq() + commands > stop {
            return Err(String::new());
        }
        events.clear();
        replica.apply_entry(&entry, &mut events).map_err(|e| format!("entry {}: {e}", entry.log_id.index))?;
        let seq = replica.engine().last_seq();
        if commands > 0 && marks.contains(&seq) {
            hashes.insert(seq, replica.engine().state_hash());
        }
        Ok(())
    });
    match result {
        Ok(_) => {}
        Err(stopped) if stopped.is_empty() => {}
        Err(error) => return Err(error),
    }
    Ok(Replayed {
        replica,
        image,
        marks: marks.len(),
        marks_checked: checked,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The replica of the image in `snapshots`, which must cover the log up to
/// `purged` (the entries before are gone) and be at `to` at most.
fn from_image(
    snapshots: &Path,
    purged: u64,
    to: Option<u64>,
) -> Result<(Replica, Option<(u64, u64)>), String> {
    let (_, bytes) =
        replication::read_image_file(snapshots).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!(
                "the log is purged through entry {purged} and {} holds no snapshot image to start from",
                snapshots.display()
            )
        })?;
    let (replica, meta) = Replica::from_image(&bytes).map_err(|e| format!("{}: {e}", snapshots.display()))?;
    let at = meta.last_log_id.map(|id| id.index);
    if at.is_none_or(|at| at < purged) {
        return Err(format!(
            "the log is purged through entry {purged}, but the snapshot image is of entry {at:?}: the entries \
             between are gone"
        ));
    }
    let seq = replica.engine().last_seq();
    if to.is_some_and(|to| to < seq) {
        return Err(format!(
            "the log is purged behind the snapshot image at sequence {seq}: it cannot replay to an earlier one"
        ));
    }
    Ok((replica, Some((at.unwrap_or(0), seq))))
}

/// The engine a dump names things with, and where in the log it stands.
struct DumpState {
    engine: Engine,
    last_timestamp_ns: u64,
    /// The last entry applied (the image's, at the start).
    applied: Option<u64>,
}

/// The engine before the log's first entry: empty, or the node's snapshot
/// image when the log is purged behind it. `None`, with a warning, when
/// there is no image that covers what was purged.
fn dump_start(snapshots: &Path, purged: Option<u64>) -> Option<DumpState> {
    let Some(purged) = purged else {
        return Some(DumpState {
            engine: Engine::new(EngineLimits::default()),
            last_timestamp_ns: 0,
            applied: None,
        });
    };
    let warn = |why: String| {
        tracing::warn!("{why}: the dump shows raw ticks, lots and units and no sequence numbers");
        None
    };
    match replication::read_image_file(snapshots) {
        Ok(Some((image, _))) => {
            let at = image.meta.last_log_id.map(|id| id.index);
            if at.is_none_or(|at| at < purged) {
                return warn(format!(
                    "the log is purged through entry {purged}, but the snapshot image is of entry {at:?}"
                ));
            }
            Some(DumpState { engine: image.engine, last_timestamp_ns: image.last_timestamp_ns, applied: at })
        }
        Ok(None) => warn(format!(
            "the log is purged through entry {purged} and {} holds no snapshot image",
            snapshots.display()
        )),
        Err(error) => warn(error.to_string()),
    }
}

/// `exctl journal dump` on a Raft log: every entry from index `from` (the
/// first held by default), at most `limit` of them, committed or not, with
/// its commands numbered as every node numbers them and described as the
/// dump of a single node's journal describes records. Exit status 0, or 1
/// when the log ends in damage (the entries before it are printed; `exctl
/// journal verify` says more); an unreadable log is an error.
pub fn dump(
    journal: &Path,
    snapshots: &Path,
    from: Option<u64>,
    limit: u64,
    json: bool,
) -> Result<ExitCode, String> {
    let (_, purged) = replication::log_file::read_positions(journal)?;
    let mut state = dump_start(snapshots, purged);
    let from = from.unwrap_or(0);
    let mut printed = 0u64;
    let mut events = Vec::new();
    let result = replication::log_file::read_all(journal, |entry, committed| {
        if printed >= limit {
            return Err(String::new());
        }
        let index = entry.log_id.index;
        let term = entry.log_id.leader_id.term;
        // Applied (so that the names and numbers are the node's) only when
        // committed and not in the image already.
        let apply = committed && state.as_ref().is_some_and(|s| s.applied.is_none_or(|a| index > a));
        let print = index >= from;
        let mut commands = Vec::new();
        let kind = match &entry.payload {
            EntryPayload::Blank => "blank".to_string(),
            EntryPayload::Membership(membership) => format!("membership {membership}"),
            EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
                let check = match &state {
                    Some(s) if s.engine.last_seq() == *seq && s.applied.is_none_or(|a| index > a) => {
                        if s.engine.state_hash() == *hash {
                            "equal to the dump's replay".to_string()
                        } else {
                            format!("DIFFERS from the dump's replay, {:016x}", s.engine.state_hash())
                        }
                    }
                    _ => "not at the dump's sequence: exctl journal verify checks it".to_string(),
                };
                format!("hash mark of node {node}: state hash {hash:016x} after sequence {seq} ({check})")
            }
            EntryPayload::Normal(Batch::Commands(proposals)) => {
                for proposal in proposals {
                    events.clear();
                    let mut seq = None;
                    let mut timestamp_ns = proposal.timestamp_ns;
                    if let Some(s) = state.as_mut().filter(|_| apply) {
                        let stamped =
                            replication::stamp(proposal, s.engine.last_seq() + 1, &mut s.last_timestamp_ns);
                        if let Err(error) = s.engine.apply(&stamped, &mut events) {
                            tracing::warn!("entry {index}: {error:?}: the rest of the dump shows raw ticks, lots and units");
                            state = None;
                        } else {
                            seq = Some(stamped.seq);
                            timestamp_ns = stamped.timestamp_ns;
                        }
                    }
                    if print {
                        let names = state.as_ref().map(|s| Names { engine: &s.engine, events: &events });
                        commands.push(describe_command(proposal, seq, timestamp_ns, names.as_ref(), json));
                    }
                }
                format!("{} commands", proposals.len())
            }
        };
        if apply {
            if let Some(s) = state.as_mut() {
                s.applied = Some(index);
            }
        }
        if !print {
            return Ok(());
        }
        printed += 1;
        let status = if committed { "committed" } else { "uncommitted (Raft may still cut it)" };
        if json {
            let mut line = serde_json::json!({ "index": index, "term": term, "committed": committed });
            match &entry.payload {
                EntryPayload::Blank => line["kind"] = "blank".into(),
                EntryPayload::Membership(membership) => {
                    line["kind"] = "membership".into();
                    line["membership"] = serde_json::to_value(membership).map_err(|e| e.to_string())?;
                }
                EntryPayload::Normal(Batch::HashMark { seq, node, hash }) => {
                    line["kind"] = "hash_mark".into();
                    line["hash_mark"] =
                        serde_json::json!({ "seq": seq, "node": node, "hash": format!("{hash:016x}") });
                }
                EntryPayload::Normal(Batch::Commands(_)) => {
                    line["kind"] = "commands".into();
                    line["commands"] = serde_json::Value::Array(
                        commands.into_iter().map(|c| serde_json::from_str(&c).unwrap_or_default()).collect(),
                    );
                }
            }
            println!("{line}");
        } else {
            println!("entry {index} term {term} {status}: {kind}");
            for command in commands {
                println!("{command}");
            }
        }
        Ok(())
    });
    let log = match result {
        Ok(log) => log,
        Err(stopped) if stopped.is_empty() => return Ok(ExitCode::SUCCESS),
        Err(error) => return Err(error),
    };
    if let Some(segment) = log.segments.iter().find(|s| s.damage.is_some()) {
        eprintln!(
            "the log ends in damage: {}: {} (exctl journal verify says more)",
            segment.path.display(),
            segment.damage.as_deref().unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One command of an entry: a text line as the dump of a single node's
/// journal prints it (the sequence number, `-` when not applied), or a JSON
/// object (the stamped record, the proposer, the decimals).
fn describe_command(
    proposal: &replication::Proposal,
    seq: Option<u64>,
    timestamp_ns: u64,
    names: Option<&Names<'_>>,
    json: bool,
) -> String {
    if json {
        let mut line = serde_json::json!({
            "seq": seq,
            "timestamp_ns": timestamp_ns,
            "origin": proposal.origin,
            "command": proposal.command,
        });
        if let Some(names) = names {
            let fields = names.decimal_fields(&proposal.command);
            if !fields.is_empty() {
                line["decimal"] = serde_json::Value::Object(fields);
            }
            if let Some(reason) = names.rejected() {
                line["rejected"] = serde_json::Value::String(reason);
            }
        }
        return line.to_string();
    }
    let text = match names {
        Some(names) => names.describe(&proposal.command),
        None => format!("{:?}", proposal.command),
    };
    let seq = seq.map_or("-".to_string(), |seq| seq.to_string());
    format!("{seq:>12}  {}  {text}", crate::time::format_timestamp_ns(timestamp_ns))
}
