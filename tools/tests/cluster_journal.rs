//! `exctl journal dump`, `verify` and `repair` on a cluster node's journal
//! (the Raft log): real logs written by the node's own log store
//! (`replication::LogStore`), with hash marks computed by a real replica and
//! a real snapshot image, then damaged the way disks do, and the real
//! `exctl` binary run on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::time::Duration;

use engine_core::EngineLimits;
use journal::{list_raft_segments, DataDir, RaftLogLimits, RAFT_STATE_FILE_NAME};
use replication::openraft::storage::{IOFlushed, RaftLogStorage};
use replication::openraft::EntryPayload;
use replication::types::{Entry, LogId, Membership, TypeConfig, Vote};
use replication::{Batch, ExchangeNode, LogStore, LogStoreConfig, Origin, Proposal, Replica};
use workload::Shape;

fn exctl(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_exctl")).args(args).output().expect("exctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Small segments (so that the log spans several) with the node's largest
/// entry: the node's own notion of a torn tail.
fn config() -> LogStoreConfig {
    LogStoreConfig {
        limits: RaftLogLimits { segment_bytes: 320 * 1024, ..RaftLogLimits::default() },
        ..LogStoreConfig::default()
    }
}

const COMMANDS_PER_BATCH: usize = 100;

/// What [`node`] wrote.
struct Node {
    root: tempfile::TempDir,
    /// The committed index, and the last index (uncommitted entries after).
    committed: u64,
    last: u64,
    /// The engine after the committed entries.
    seq: u64,
    state_hash: u64,
}

impl Node {
    fn dir(&self) -> &str {
        self.root.path().to_str().unwrap()
    }

    fn journal(&self) -> PathBuf {
        DataDir::new(self.root.path()).journal()
    }

    fn segments(&self) -> Vec<(u64, PathBuf)> {
        list_raft_segments(&self.journal()).unwrap()
    }
}

/// A flush callback and where its result arrives.
fn flush_signal() -> (IOFlushed<TypeConfig>, tokio::sync::oneshot::Receiver<std::io::Result<()>>) {
    use replication::openraft::async_runtime::Oneshot;
    let (tx, rx) =
        <replication::openraft::TokioRuntime as replication::openraft::AsyncRuntime>::Oneshot::channel();
    (IOFlushed::signal(tx), rx)
}

/// A one-voter node's data directory as the node writes it: a membership
/// entry, a blank one, `batches` command batches each followed by the
/// leader's hash mark, all committed; then `uncommitted` more batches. With
/// `image_at`, the node's snapshot image of that entry and the log purged
/// through it.
fn node(batches: usize, uncommitted: usize, image_at: Option<u64>) -> Node {
    let root = tempfile::tempdir().unwrap();
    let data = DataDir::new(root.path());
    let count = (batches + uncommitted) * COMMANDS_PER_BATCH;
    let commands =
        workload::generate(Shape::SingleMarket, count, 5).stamped(1_795_608_000_000_000_000, 1_000);
    let mut entries = Vec::new();
    let membership = Membership::new(
        vec![[1u64].into_iter().collect()],
        BTreeMap::from([(1u64, ExchangeNode::default())]),
    )
    .unwrap();
    entries
        .push(Entry { log_id: LogId::new_term_index(1, 0), payload: EntryPayload::Membership(membership) });
    entries.push(Entry { log_id: LogId::new_term_index(1, 1), payload: EntryPayload::Blank });
    let mut replica = Replica::new(EngineLimits::default());
    let mut events = Vec::new();
    let mut image = None;
    let mut apply = |entry: &Entry, replica: &mut Replica, image: &mut Option<Vec<u8>>| {
        replica.apply_entry(entry, &mut events).unwrap();
        events.clear();
        if Some(entry.log_id.index) == image_at {
            *image = Some(replica.image().unwrap().1);
        }
    };
    for entry in &entries {
        apply(entry, &mut replica, &mut image);
    }
    let mut chunks = commands.chunks(COMMANDS_PER_BATCH);
    let batch = |chunk: &[engine_core::StampedCommand]| {
        Batch::Commands(
            chunk
                .iter()
                .map(|c| Proposal {
                    origin: Origin { node: 1, incarnation: 1, request: c.seq },
                    timestamp_ns: c.timestamp_ns,
                    command: c.command,
                    replay_mark: None,
                })
                .collect(),
        )
    };
    for _ in 0..batches {
        let index = entries.len() as u64;
        let entry = Entry {
            log_id: LogId::new_term_index(1, index),
            payload: EntryPayload::Normal(batch(chunks.next().unwrap())),
        };
        apply(&entry, &mut replica, &mut image);
        entries.push(entry);
        let mark = Batch::HashMark {
            seq: replica.engine().last_seq(),
            node: 1,
            hash: replica.engine().state_hash(),
        };
        let entry =
            Entry { log_id: LogId::new_term_index(1, index + 1), payload: EntryPayload::Normal(mark) };
        apply(&entry, &mut replica, &mut image);
        entries.push(entry);
    }
    let committed = entries.len() as u64 - 1;
    for _ in 0..uncommitted {
        let index = entries.len() as u64;
        entries.push(Entry {
            log_id: LogId::new_term_index(2, index),
            payload: EntryPayload::Normal(batch(chunks.next().unwrap())),
        });
    }
    let last = entries.len() as u64 - 1;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut store = LogStore::open(&data.journal(), config()).unwrap();
        let (callback, flushed) = flush_signal();
        store.append(entries, callback).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), flushed).await.unwrap().unwrap().unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(LogId::new_term_index(1, committed))).await.unwrap();
        if let (Some(at), Some(bytes)) = (image_at, &image) {
            replication::write_image_file(&data.snapshots(), bytes).unwrap();
            store.purge(LogId::new_term_index(1, at)).await.unwrap();
        }
        drop(store);
    });
    let (seq, state_hash) = (replica.engine().last_seq(), replica.engine().state_hash());
    Node { root, committed, last, seq, state_hash }
}

/// Whether the node's own log store opens the log (it refuses damage).
fn node_opens(journal: &Path) -> Result<(), String> {
    LogStore::open(journal, config()).map(drop).map_err(|e| e.to_string())
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// The offset of entry `index` in its segment.
fn offset_of(node: &Node, index: u64) -> (PathBuf, usize) {
    let (first, path) = node.segments().into_iter().rev().find(|(first, _)| *first <= index).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let scan = journal::check_raft_segment(&bytes).unwrap();
    (path, scan.entries[(index - first) as usize].0)
}

#[test]
fn verify_and_dump_read_a_sound_log_every_entry_and_every_hash_mark() {
    let node = node(200, 3, None);
    assert!(node.segments().len() >= 2, "the log spans segments");
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(0), "{text}{}", stderr(&verify));
    assert!(text.contains("hash marks checked: 200 of 200 in the log, all equal"), "{text}");
    assert!(text.contains(&format!("state hash {:016x}", node.state_hash)), "{text}");
    assert!(text.contains(&format!("committed: index {} (term 1)", node.committed)), "{text}");
    assert!(text.contains("\nok: "), "{text}");

    // Every entry from the first: kinds, commands numbered from 1 with names.
    let dump = exctl(&["journal", "dump", node.dir(), "--limit", "4"]);
    let text = stdout(&dump);
    assert_eq!(dump.status.code(), Some(0), "{text}{}", stderr(&dump));
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("entry ")).collect();
    assert_eq!(headers.len(), 4, "{text}");
    assert!(headers[0].starts_with("entry 0 term 1 committed: membership"), "{text}");
    assert_eq!(headers[1], "entry 1 term 1 committed: blank");
    assert_eq!(headers[2], format!("entry 2 term 1 committed: {COMMANDS_PER_BATCH} commands"));
    assert!(
        headers[3].contains("hash mark of node 1") && headers[3].contains("(equal to the dump's replay)"),
        "{text}"
    );
    assert!(
        text.contains("           1  2026-11-25T12:00:00.000000000Z  CreateAsset BTC decimals 8"),
        "{text}"
    );

    // From a later index: the names come from the replay before it; the
    // uncommitted entries say so and carry no sequence number.
    let from = (node.last - 2).to_string();
    let dump = exctl(&["journal", "dump", node.dir(), "--from", &from]);
    let text = stdout(&dump);
    assert_eq!(dump.status.code(), Some(0), "{text}{}", stderr(&dump));
    assert_eq!(
        text.lines().filter(|l| l.contains("uncommitted (Raft may still cut it)")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("BTC-USDT") && !text.contains("Ticks("), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("-  2026-")), "{text}");

    // JSON: one object per entry, the commands with their numbers.
    let from = (node.committed - 1).to_string();
    let dump = exctl(&["journal", "dump", node.dir(), "--from", &from, "--limit", "3", "--json"]);
    let lines: Vec<serde_json::Value> =
        stdout(&dump).lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["kind"], "commands");
    assert_eq!(lines[0]["commands"][COMMANDS_PER_BATCH - 1]["seq"], node.seq, "{}", lines[0]);
    assert_eq!(lines[1]["hash_mark"]["hash"], format!("{:016x}", node.state_hash), "{}", lines[1]);
    assert_eq!(
        (lines[2]["committed"].as_bool(), lines[2]["commands"][0]["seq"].is_null()),
        (Some(false), true)
    );
}

#[test]
fn a_log_purged_behind_its_image_verifies_from_the_image_and_not_without_it() {
    let node = node(120, 0, Some(101));
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(0), "{text}{}", stderr(&verify));
    assert!(
        text.contains("image:     entry 101 (term 1)") && text.contains("purged:    index 101"),
        "{text}"
    );
    assert!(text.contains(&format!("state hash {:016x}", node.state_hash)), "{text}");
    // The dump starts from the image: sequence numbers go on from it.
    let dump = stdout(&exctl(&["journal", "dump", node.dir(), "--limit", "1"]));
    assert!(
        dump.starts_with(&format!("entry 102 term 1 committed: {COMMANDS_PER_BATCH} commands")),
        "{dump}"
    );
    assert!(dump.contains(&format!("\n{:>12}  ", 50 * COMMANDS_PER_BATCH + 1)), "{dump}");

    std::fs::remove_dir_all(DataDir::new(node.root.path()).snapshots()).unwrap();
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(2), "{text}");
    assert!(
        text.contains("damage: the log is purged through entry 101")
            && text.contains("holds no snapshot image"),
        "{text}"
    );
    assert!(text.contains("way out: ") && text.contains("re-seed this node"), "{text}");
}

#[test]
fn damage_the_way_disks_do_is_named_precisely_with_the_way_out() {
    // A byte flipped in a committed entry: the node must be re-seeded.
    let node = node(200, 3, None);
    assert!(node.segments().len() >= 2, "entry 5 is in a segment the log moved past");
    let (path, offset) = offset_of(&node, 5);
    flip_byte(&path, offset + 40);
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("damage: {}: damage in a segment the log had moved past at offset {offset}, where entry 5 belongs: frame checksum mismatch (a committed entry)", path.display())), "{text}");
    assert!(text.contains("replay:    not run"), "{text}");
    assert!(
        text.contains("the damage reaches committed entries") && text.contains("wipe its data directory"),
        "{text}"
    );
    // The dump prints what precedes the damage, then refuses the gap.
    let dump = exctl(&["journal", "dump", node.dir(), "--limit", "1000"]);
    assert_eq!(dump.status.code(), Some(2), "{}", stderr(&dump));
    assert!(stdout(&dump).contains("entry 4 term 1"), "{}", stdout(&dump));
    assert!(!stdout(&dump).contains("entry 5 term"), "{}", stdout(&dump));
    assert!(stderr(&dump).contains("entry 5 is missing"), "{}", stderr(&dump));
    // The repair refuses to cut committed entries.
    let repair = exctl(&["journal", "repair", node.dir(), "--after", "4", "--accept-loss"]);
    assert_eq!(repair.status.code(), Some(2));
    assert!(
        stderr(&repair).contains(&format!("entries up to {} are committed", node.committed)),
        "{}",
        stderr(&repair)
    );
    assert!(stderr(&repair).contains("re-seed this node"), "{}", stderr(&repair));

    // A segment cut short mid-record.
    let node = self::node(120, 3, None);
    let (_, first) = node.segments().remove(0);
    let file = std::fs::OpenOptions::new().write(true).open(&first).unwrap();
    file.set_len(1000).unwrap();
    let text = stdout(&exctl(&["journal", "verify", node.dir()]));
    assert!(
        text.contains(&format!(
            "damage: {}: the file is 1000 bytes, but its header says {}",
            first.display(),
            320 * 1024
        )),
        "{text}"
    );
    assert!(text.contains("committed entries are lost or damaged"), "{text}");

    // A middle segment deleted.
    let node = self::node(400, 3, None);
    let segments = node.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1].1).unwrap();
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("entries {}..{} are missing", segments[1].0, segments[2].0 - 1))
            && text.contains("a segment file was removed or lost"),
        "{text}"
    );

    // The state file: both slots damaged.
    let node = self::node(10, 0, None);
    let state = node.journal().join(RAFT_STATE_FILE_NAME);
    let len = std::fs::metadata(&state).unwrap().len() as usize;
    std::fs::write(&state, vec![0xA5; len]).unwrap();
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(2), "{text}");
    assert!(
        text.contains("RAFT_STATE: ") && text.contains("the node's vote and committed index cannot be read"),
        "{text}"
    );
    assert!(text.contains("what is committed or purged is unknown") && text.contains("re-seed"), "{text}");
    let repair = exctl(&["journal", "repair", node.dir(), "--after", "15", "--accept-loss"]);
    assert_eq!(repair.status.code(), Some(2));
    assert!(stderr(&repair).contains("no cut is safe"), "{}", stderr(&repair));
}

#[test]
fn a_torn_tail_is_told_from_damage_and_a_damaged_uncommitted_tail_is_cut_on_the_record() {
    // A torn last entry: the node cuts it when it opens; verify says so (exit 1).
    let node = node(20, 3, None);
    let (path, offset) = offset_of(&node, node.last);
    flip_byte(&path, offset + 40);
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(1), "{text}");
    assert!(text.contains("a torn last entry") && text.contains("the node cuts it when it opens"), "{text}");
    assert!(text.contains("hash marks checked: 20 of 20"), "{text}");
    let dump = exctl(&["journal", "dump", node.dir(), "--from", &(node.last - 1).to_string()]);
    assert_eq!(dump.status.code(), Some(1), "{}", stderr(&dump));
    assert!(stderr(&dump).contains("the log ends in damage"), "{}", stderr(&dump));

    // Uncommitted entries spanning segments, damaged in the older one: no
    // crash does that, and the node refuses to open the log.
    let node = self::node(20, 300, None);
    let segments = node.segments();
    assert!(segments.len() >= 2 && segments[1].0 > node.committed + 1, "{segments:?}");
    let damaged = segments[1].0 - 3;
    let (path, offset) = offset_of(&node, damaged);
    flip_byte(&path, offset + 40);
    let refused = node_opens(&node.journal()).unwrap_err();
    assert!(refused.contains("checksum mismatch"), "{refused}");
    let verify = exctl(&["journal", "verify", node.dir()]);
    let text = stdout(&verify);
    assert_eq!(verify.status.code(), Some(2), "{text}");
    let keep = damaged - 1;
    assert!(
        text.contains(&format!("exctl journal repair {} --after {keep} --accept-loss", node.dir())),
        "{text}"
    );

    // Below the committed index: refused. Without --accept-loss: the plan only.
    let below = exctl(&[
        "journal",
        "repair",
        node.dir(),
        "--after",
        &(node.committed - 1).to_string(),
        "--accept-loss",
    ]);
    assert_eq!(below.status.code(), Some(2));
    assert!(stderr(&below).contains("a cut must keep at least them"), "{}", stderr(&below));
    let plan = exctl(&["journal", "repair", node.dir(), "--after", &keep.to_string()]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        stdout(&plan).contains(&format!("cuts entries {}..={}", damaged, node.last)),
        "{}",
        stdout(&plan)
    );
    assert!(stderr(&plan).contains("refused without --accept-loss"), "{}", stderr(&plan));
    assert!(node_opens(&node.journal()).is_err(), "the plan changed nothing");

    let repair = exctl(&["journal", "repair", node.dir(), "--after", &keep.to_string(), "--accept-loss"]);
    let text = stdout(&repair);
    assert_eq!(repair.status.code(), Some(0), "{text}{}", stderr(&repair));
    assert!(text.contains(&format!("cuts entries {}..={}", damaged, node.last)), "{text}");
    assert!(text.contains(&format!("moves aside segment {}", segments[1].1.display())), "{text}");
    let log = std::fs::read_to_string(node.root.path().join("repairs.log")).unwrap();
    assert!(log.contains(&format!("after index {keep}, asked by ")), "{log}");
    let aside = std::fs::read_dir(node.root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("repair-"))
        .expect("originals kept");
    assert!(aside.path().join("journal").join(segments[1].1.file_name().unwrap()).exists());

    // The node opens the log again and holds the entries kept; verify is
    // clean; a replay reaches the committed state.
    let verify = exctl(&["journal", "verify", node.dir()]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(stdout(&verify).contains(&format!("to {}", position_text(keep))), "{}", stdout(&verify));
    let replay = exctl(&["replay", node.dir()]);
    let text = stdout(&replay);
    assert!(replay.status.success(), "{text}{}", stderr(&replay));
    assert!(
        text.contains(&format!("sequence: {}", node.seq))
            && text.contains(&format!("state hash: {:016x}", node.state_hash)),
        "{text}"
    );
    node_opens(&node.journal()).unwrap();
}

fn position_text(index: u64) -> String {
    format!("index {index} (term 2)")
}
