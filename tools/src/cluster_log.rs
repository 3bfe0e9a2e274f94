//! exctl on a cluster node's journal, which is a Raft log (segment format
//! 3): what `journal inspect` shows of it, and `replay` through an engine
//! numbered as every node numbers committed commands, checking the state
//! hash marks the leader wrote into the log on the way.
//!
//! Read-only: a running node may hold the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use engine_core::EngineLimits;
use replication::log_file::read_committed;
use replication::openraft::EntryPayload;
use replication::{Batch, Replica};

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
    let mut replica = match purged {
        // A cluster node starts from an empty engine with the default
        // limits; the leader journals the configured ones (a command like
        // any other).
        None => Replica::new(EngineLimits::default()),
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
                         node {node}'s hash mark says {hash:016x}"
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
    let seconds = started.elapsed().as_secs_f64();
    let seq = replica.engine().last_seq();
    println!("raft log {}: replayed {seq} commands in {seconds:.3} s", journal.display());
    println!("hash marks checked: {checked} of {} in the log, all equal", marks.len());
    Ok(replica)
}

/// The replica of the image in `snapshots`, which must cover the log up to
/// `purged` (the entries before are gone) and be at `to` at most.
fn from_image(snapshots: &Path, purged: u64, to: Option<u64>) -> Result<Replica, String> {
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
    println!("starting from the snapshot image of log entry {}, sequence {seq}", at.unwrap_or(0));
    Ok(replica)
}
