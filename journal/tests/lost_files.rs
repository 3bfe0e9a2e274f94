//! The journal against what no crash can do: files cut short, segments
//! deleted, a journal zeroed back before a sequence number recorded as
//! durable, snapshots ahead of the journal, a damaged checkpoint. Each is
//! refused with the file, the sequence numbers and the way out; and the
//! way out (`repair`) drops records only on the record.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{Engine, EngineLimits, StampedCommand};
use journal::*;
use workload::Shape;

fn config(dir: &Path, durability: Durability) -> JournalConfig {
    JournalConfig { segment_bytes: SEGMENT_BYTES_MIN, durability, ..JournalConfig::new(dir) }
}

fn commands(count: usize) -> Vec<StampedCommand> {
    workload::generate(Shape::SingleMarket, count, 21).stamped(1_795_608_000_000_000_000, 1)
}

/// Journals `commands` under `batch` (each one committed) and closes the
/// writer, as a clean stop does.
fn write(dir: &Path, commands: &[StampedCommand]) {
    let (mut writer, _) = JournalWriter::open(config(dir, Durability::Batch)).unwrap();
    for command in commands {
        writer.append(command).unwrap();
        writer.commit_batch().unwrap();
    }
}

fn open(dir: &Path) -> Result<(JournalWriter, OpenReport), JournalError> {
    JournalWriter::open(config(dir, Durability::Batch))
}

fn refusal(dir: &Path) -> JournalError {
    match open(dir) {
        Err(error) => error,
        Ok((_, report)) => panic!("the journal in {} opened: {report:?}", dir.display()),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    list_segments(dir).unwrap()
}

/// The end offsets of every record of a segment file.
fn record_ends(path: &Path) -> Vec<(u64, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut ends = Vec::new();
    while let Frame::Record { command, next_offset, .. } = read_frame(&bytes, offset) {
        ends.push((command.seq, next_offset));
        offset = next_offset;
    }
    ends
}

fn name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

fn assert_names(error: &JournalError, what: &[&str]) {
    let message = error.to_string();
    for part in what {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn a_segment_cut_short_anywhere_is_refused_never_cut_as_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    let all = commands(3_000);
    write(&original, &all);
    let listed = segments(&original);
    assert!(listed.len() >= 3, "several segments");
    let (_, newest) = listed.last().unwrap().clone();
    let ends = record_ends(&newest);
    let (last_seq, last_end) = *ends.last().unwrap();
    assert_eq!(last_seq, all.len() as u64);
    let mut cuts = vec![0, 1, 30, SEGMENT_HEADER_BYTES - 1, SEGMENT_HEADER_BYTES];
    for &(_, end) in ends.iter().step_by(ends.len() / 6 + 1) {
        cuts.extend([end, end + 5, end + 24]); // at a boundary, mid-header, mid-payload
    }
    cuts.extend([last_end - 8, last_end, last_end + 8, SEGMENT_BYTES_MIN as usize - 1]);
    for cut in cuts {
        let dir = base.path().join(format!("cut-{cut}"));
        copy_dir(&original, &dir);
        let file = std::fs::OpenOptions::new().write(true).open(dir.join(name(&newest))).unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);
        let error = refusal(&dir);
        assert_names(&error, &[name(&newest), "exctl journal repair"]);
        if cut >= SEGMENT_HEADER_BYTES {
            match &error {
                JournalError::SegmentSize { capacity_bytes, file_bytes, last_seq, .. } => {
                    assert_eq!((*capacity_bytes, *file_bytes), (SEGMENT_BYTES_MIN, cut as u64));
                    let whole = ends.iter().take_while(|(_, end)| *end <= cut).last().map(|(seq, _)| *seq);
                    assert_eq!(*last_seq, whole, "cut at {cut}");
                }
                other => panic!("cut at {cut}: {other}"),
            }
        } else {
            assert!(matches!(error, JournalError::BadSegmentHeader { .. }), "cut at {cut}: {error}");
        }
        // Verification says the same: damage, not a torn tail.
        let report = inspect(&dir, |_| {}).unwrap();
        assert!(!report.problems.is_empty() && !report.problems.iter().all(Problem::is_torn_tail), "{cut}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // An older segment cut short is refused too, though the writer does not
    // read its records.
    let dir = base.path().join("older");
    copy_dir(&original, &dir);
    let (_, older) = &listed[1];
    let file = std::fs::OpenOptions::new().write(true).open(dir.join(name(older))).unwrap();
    file.set_len(40_000).unwrap();
    drop(file);
    assert!(matches!(refusal(&dir), JournalError::SegmentSize { file_bytes: 40_000, .. }));
}

#[test]
fn a_deleted_newest_segment_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &commands(3_000));
    let (first_seq, newest) = segments(dir.path()).pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    let error = refusal(dir.path());
    match &error {
        JournalError::MissingSegment { segment, first_seq: missing, keep_through, .. } => {
            assert_eq!(segment, &newest);
            assert_eq!(*missing, first_seq);
            assert_eq!(*keep_through, Some(first_seq - 1));
        }
        other => panic!("{other}"),
    }
    assert_names(&error, &[name(&newest), &format!("--after {}", first_seq - 1)]);
    let report = inspect(dir.path(), |_| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| matches!(p, Problem::MissingSegment { .. })),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_deleted_middle_segment_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &commands(5_000));
    let listed = segments(dir.path());
    assert!(listed.len() >= 5);
    let (missing_first, missing) = &listed[2];
    std::fs::remove_file(missing).unwrap();
    let error = refusal(dir.path());
    match &error {
        JournalError::Gap { expected_seq, next_first_seq, .. } => {
            assert_eq!(expected_seq, missing_first);
            assert_eq!(*next_first_seq, listed[3].0);
        }
        other => panic!("{other}"),
    }
    assert_names(&error, &[name(missing), name(&listed[3].1)]);
}

#[test]
fn a_deleted_oldest_segment_is_refused_unless_the_exchange_pruned_it() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    write(&original, &commands(4_000));
    let listed = segments(&original);

    let deleted = base.path().join("deleted");
    copy_dir(&original, &deleted);
    std::fs::remove_file(deleted.join(name(&listed[0].1))).unwrap();
    let error = refusal(&deleted);
    assert!(matches!(error, JournalError::MissingSegment { first_seq: 1, .. }), "{error}");
    assert_names(&error, &[name(&listed[0].1), "did not prune"]);
    let report = inspect(&deleted, |_| {}).unwrap();
    assert!(report.problems.iter().any(|p| matches!(p, Problem::MissingSegment { first_seq: 1, .. })));

    // Pruned by the exchange (the checkpoint moves first): opens cleanly.
    let pruned = base.path().join("pruned");
    copy_dir(&original, &pruned);
    let gone = prune_segments(&pruned, listed[2].0 - 1, &SegmentRetention::Delete).unwrap();
    assert_eq!(gone.len(), 2);
    let (_, report) = open(&pruned).unwrap();
    assert_eq!(report.cut, None);
    let checkpoint = read_checkpoint(&pruned).unwrap().unwrap();
    assert_eq!(checkpoint.oldest_first_seq, listed[2].0);
    assert_eq!(checkpoint.segment_count, listed.len() as u64 - 2);
    assert!(inspect(&pruned, |_| {}).unwrap().problems.is_empty());
}

#[test]
fn a_journal_zeroed_back_before_the_durable_point_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    let all = commands(2_000);
    write(&original, &all);
    let durable = read_checkpoint(&original).unwrap().unwrap().durable_seq;
    assert_eq!(durable, all.len() as u64, "a clean close records everything synced");
    let (_, newest) = segments(&original).pop().unwrap();
    let ends = record_ends(&newest);
    for back in [1, 2, ends.len() / 2] {
        let dir = base.path().join(format!("back-{back}"));
        copy_dir(&original, &dir);
        let path = dir.join(name(&newest));
        let mut bytes = std::fs::read(&path).unwrap();
        let (kept_seq, from) = ends[ends.len() - 1 - back];
        bytes[from..].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let error = refusal(&dir);
        match &error {
            JournalError::EndsBeforeDurable { last_seq, durable_seq, damage: None, .. } => {
                assert_eq!((*last_seq, *durable_seq), (kept_seq, durable));
            }
            other => panic!("{other}"),
        }
        assert_names(&error, &[name(&newest), CHECKPOINT_FILE_NAME, &format!("--after {kept_seq}")]);
        let report = inspect(&dir, |_| {}).unwrap();
        assert!(report.problems.iter().any(|p| matches!(p, Problem::EndsBeforeDurable { .. })));
    }
    // Garbage in the shape of a torn tail, but where synced records were.
    let dir = base.path().join("torn-before-durable");
    copy_dir(&original, &dir);
    let path = dir.join(name(&newest));
    let mut bytes = std::fs::read(&path).unwrap();
    let (kept_seq, from) = ends[ends.len() - 2];
    bytes[from..].fill(0);
    bytes[from..from + 20].fill(0xAB);
    std::fs::write(&path, &bytes).unwrap();
    match refusal(&dir) {
        JournalError::EndsBeforeDurable { last_seq, damage: Some(_), .. } => assert_eq!(last_seq, kept_seq),
        other => panic!("{other}"),
    }
    let report = inspect(&dir, |_| {}).unwrap();
    assert!(!report.problems.iter().any(Problem::is_torn_tail), "{:?}", report.problems);
}

#[test]
fn a_torn_tail_after_the_durable_point_is_still_cut() {
    let dir = tempfile::tempdir().unwrap();
    let all = commands(500);
    let synced = all.len() - 100;
    write(dir.path(), &all[..synced]);
    // Appended, never synced (the process dies): after the durable point.
    let (mut writer, _) = open(dir.path()).unwrap();
    for command in &all[synced..] {
        writer.append(command).unwrap();
    }
    let end = writer.current_offset();
    let segment = writer.current_segment().to_path_buf();
    std::mem::forget(writer); // no sync, no final checkpoint: a crash
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[end - 10..end].fill(0xCD);
    std::fs::write(&segment, &bytes).unwrap();
    // The forgotten writer still holds the lock in this process: copy.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let (writer, report) = open(copy.path()).unwrap();
    let last = all.len() as u64;
    assert_eq!(report.cut.as_ref().map(|c| c.seq), Some(last));
    assert_eq!(writer.next_seq(), last);
}

#[test]
fn a_damaged_checkpoint_is_refused_with_its_name() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    write(&original, &commands(1_000));
    let bytes = std::fs::read(checkpoint_path(&original)).unwrap();
    for (label, damaged) in [
        ("flipped", {
            let mut b = bytes.clone();
            b[20] ^= 0x01;
            b
        }),
        ("short", bytes[..40].to_vec()),
        ("empty", Vec::new()),
        ("foreign", b"EXSNAPSH and more bytes to make sixty-four of them, exactly, yes!".to_vec()),
    ] {
        let dir = base.path().join(label);
        copy_dir(&original, &dir);
        std::fs::write(checkpoint_path(&dir), &damaged).unwrap();
        let error = refusal(&dir);
        assert!(matches!(error, JournalError::BadCheckpoint { .. }), "{label}: {error}");
        assert_names(&error, &[CHECKPOINT_FILE_NAME, "exctl journal repair"]);
        let report = inspect(&dir, |_| {}).unwrap();
        assert!(report.problems.iter().any(|p| matches!(p, Problem::BadCheckpoint { .. })), "{label}");
    }
}

#[test]
fn a_journal_from_before_checkpoints_opens_and_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let all = commands(3_000);
    write(dir.path(), &all);
    std::fs::remove_file(checkpoint_path(dir.path())).unwrap();
    let (writer, report) = open(dir.path()).unwrap();
    assert!(report.checkpoint_created);
    assert_eq!(writer.next_seq(), all.len() as u64 + 1);
    drop(writer);
    let checkpoint = read_checkpoint(dir.path()).unwrap().unwrap();
    let listed = segments(dir.path());
    assert_eq!(checkpoint.durable_seq, all.len() as u64);
    assert_eq!(checkpoint.oldest_first_seq, 1);
    assert_eq!(checkpoint.newest_first_seq, listed.last().unwrap().0);
    assert_eq!(checkpoint.segment_count, listed.len() as u64);
    let (_, report) = open(dir.path()).unwrap();
    assert!(!report.checkpoint_created);
}

#[test]
fn the_keeper_records_the_durable_point_off_the_appending_thread() {
    let dir = tempfile::tempdir().unwrap();
    let all = commands(300);
    let journal_config =
        JournalConfig { checkpoint_interval_ms: 20, ..config(dir.path(), Durability::Batch) };
    let (mut writer, _) = JournalWriter::open(journal_config).unwrap();
    for command in &all {
        writer.append(command).unwrap();
    }
    writer.commit_batch().unwrap();
    // Within the interval (with generous slack), while the writer stays open.
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_checkpoint(dir.path()).unwrap().unwrap().durable_seq < all.len() as u64 {
        assert!(Instant::now() < deadline, "the checkpoint never recorded sequence {}", all.len());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(writer);
}

#[test]
fn pruning_while_the_writer_rotates_leaves_a_checkpoint_the_next_open_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let all = commands(20_000);
    let durable = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pruner = {
        let (dir, durable, done) = (dir.path().to_path_buf(), Arc::clone(&durable), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut pruned = 0;
            while !done.load(Ordering::Relaxed) {
                let covered = durable.load(Ordering::Relaxed).saturating_sub(500);
                pruned += prune_segments(&dir, covered, &SegmentRetention::Delete).unwrap().len();
            }
            pruned
        })
    };
    let (mut writer, _) = open(dir.path()).unwrap();
    for chunk in all.chunks(50) {
        for command in chunk {
            writer.append(command).unwrap();
        }
        writer.commit_batch().unwrap();
        durable.store(writer.durable_seq(), Ordering::Relaxed);
    }
    done.store(true, Ordering::Relaxed);
    let pruned = pruner.join().unwrap();
    drop(writer);
    assert!(pruned > 5, "the pruner removed segments while the writer rotated ({pruned})");
    let (writer, report) = open(dir.path()).unwrap();
    assert_eq!(writer.next_seq(), all.len() as u64 + 1, "{report:?}");
    let checkpoint = read_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(checkpoint.segment_count, segments(dir.path()).len() as u64);
}

/// A data directory: the journal of `all`, with a snapshot at each of `at`.
fn data_dir(root: &Path, all: &[StampedCommand], at: &[u64]) -> DataDir {
    let data = DataDir::new(root);
    let (mut writer, _) = JournalWriter::open(config(&data.journal(), Durability::Batch)).unwrap();
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for command in all {
        writer.append(command).unwrap();
        writer.commit_batch().unwrap();
        engine.apply(command, &mut events).unwrap();
        events.clear();
        if at.contains(&command.seq) {
            write_snapshot(&data.snapshots(), &engine, SnapshotKeep::newest(10)).unwrap();
        }
    }
    data
}

fn open_data(data: &DataDir) -> Result<(JournalWriter, OpenReport, Recovery), RecoveryError> {
    open_data_dir(data, config(&data.journal(), Durability::Batch), EngineLimits::default())
}

fn damage_payload(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_snapshot_ahead_of_the_journal_is_refused_even_when_it_does_not_load() {
    let root = tempfile::tempdir().unwrap();
    let all = commands(3_000);
    let data = data_dir(root.path(), &all, &[1_000, 2_500]);
    let newest = data.snapshots().join(snapshot_file_name(2_500));
    // The journal loses its end (and its checkpoint, so that only the
    // snapshot can tell), and the snapshot that saw it does not load.
    std::fs::remove_file(checkpoint_path(&data.journal())).unwrap();
    for (_, path) in segments(&data.journal()) {
        let ends = record_ends(&path);
        if let Some((_, from)) = ends.iter().find(|(seq, _)| *seq == 2_000) {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[*from..].fill(0);
            std::fs::write(&path, bytes).unwrap();
        } else if ends.first().is_some_and(|(seq, _)| *seq > 2_000) {
            std::fs::remove_file(&path).unwrap();
        }
    }
    damage_payload(&newest);
    match open_data(&data) {
        Err(
            error @ RecoveryError::SnapshotAheadOfJournal {
                snapshot_seq: 2_500, journal_next_seq: 2_001, ..
            },
        ) => {
            let message = error.to_string();
            assert!(
                message.contains(newest.to_str().unwrap()) && message.contains("--after 2000"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.map(|(_, r, _)| r)),
    }
    let report = inspect(&data.journal(), |_| {}).unwrap();
    let ahead = snapshots_ahead(&data.snapshots(), &report).unwrap();
    assert!(matches!(
        ahead.as_slice(),
        [Problem::SnapshotAhead { snapshot_seq: 2_500, journal_last_seq: 2_000, .. }]
    ));
}

#[test]
fn a_snapshot_ahead_of_an_empty_journal_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = data_dir(root.path(), &commands(1_000), &[800]);
    std::fs::remove_dir_all(data.journal()).unwrap();
    damage_payload(&data.snapshots().join(snapshot_file_name(800)));
    assert!(matches!(open_data(&data), Err(RecoveryError::SnapshotAheadOfJournal { snapshot_seq: 800, .. })));
    std::fs::remove_dir_all(data.journal()).unwrap();
    std::fs::create_dir(data.journal()).unwrap();
    let report = inspect(&data.journal(), |_| {}).unwrap();
    assert!(matches!(
        snapshots_ahead(&data.snapshots(), &report).unwrap().as_slice(),
        [Problem::SnapshotAhead { snapshot_seq: 800, journal_last_seq: 0, .. }]
    ));
}

fn request(after_seq: u64) -> RepairRequest {
    RepairRequest { after_seq, requested_by: "tester".into(), when_utc: "2026-11-25T12:00:00.5Z".into() }
}

#[test]
fn repair_refuses_while_the_journal_is_held() {
    let root = tempfile::tempdir().unwrap();
    let all = commands(500);
    let data = data_dir(root.path(), &all, &[]);
    let (writer, _) = open(&data.journal()).unwrap();
    assert!(matches!(repair(&data, &request(100)), Err(JournalError::Locked { .. })));
    drop(writer);
    let lock = JournalLock::acquire(&data.journal()).unwrap();
    assert!(matches!(repair(&data, &request(100)), Err(JournalError::Locked { .. })));
    drop(lock);
    assert_eq!(read_checkpoint(&data.journal()).unwrap().unwrap().durable_seq, all.len() as u64, "unchanged");
}

#[test]
fn repair_of_a_cut_segment_keeps_what_is_valid_records_the_rest_and_puts_the_originals_aside() {
    let root = tempfile::tempdir().unwrap();
    let all = commands(4_000);
    let (early, late) = (all.len() as u64 / 5, all.len() as u64 - 100);
    let data = data_dir(root.path(), &all, &[early, late]);
    let listed = segments(&data.journal());
    let (_, middle) = &listed[listed.len() / 2];
    let original_middle = std::fs::read(middle).unwrap();
    let ends = record_ends(middle);
    let (kept_seq, _) = ends[ends.len() / 2];
    let cut = ends[ends.len() / 2].1 + 13;
    std::fs::OpenOptions::new().write(true).open(middle).unwrap().set_len(cut as u64).unwrap();
    assert!(open_data(&data).is_err());

    let too_far = repair(&data, &request(kept_seq + 1)).unwrap_err();
    assert!(
        too_far.to_string().contains(&format!("last valid record, {kept_seq}")),
        "the refusal names the last valid record: {too_far}"
    );
    let plan = plan_repair(&data, kept_seq).unwrap();
    assert_eq!(plan.dropped_range(), Some((kept_seq + 1, all.len() as u64)));
    let report = repair(&data, &request(kept_seq)).unwrap();
    let moved_after = listed.iter().filter(|(first, _)| *first > kept_seq).count();
    assert_eq!(report.plan.moved_segments.len(), moved_after);
    assert_eq!(report.plan.moved_snapshots, vec![data.snapshots().join(snapshot_file_name(late))]);

    // The originals are aside: moved, or copied before the change.
    let aside = report.originals_dir.clone();
    assert!(aside.starts_with(root.path()) && name(&aside).starts_with("repair-20261125T120000Z"));
    assert_eq!(std::fs::read(aside.join("journal").join(name(middle))).unwrap(), &original_middle[..cut]);
    for (first, path) in &listed {
        if *first > kept_seq {
            assert!(aside.join("journal").join(name(path)).exists() && !path.exists());
        }
    }
    assert!(aside.join("snapshots").join(snapshot_file_name(late)).exists());
    assert!(aside.join("journal").join(CHECKPOINT_FILE_NAME).exists());
    // What was dropped is on the record.
    let log = std::fs::read_to_string(root.path().join(REPAIRS_LOG_FILE_NAME)).unwrap();
    assert!(log.contains(&format!("drops {}..{}", kept_seq + 1, all.len())), "{log}");
    assert!(log.contains("asked by tester") && log.contains(name(middle)), "{log}");

    // The result is clean and opens where it was cut.
    let report = inspect(&data.journal(), |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (writer, _, recovery) = open_data(&data).unwrap();
    assert_eq!(writer.next_seq(), kept_seq + 1);
    assert_eq!(recovery.snapshot.map(|s| s.seq), Some(early));
    assert_eq!(std::fs::metadata(middle).unwrap().len(), SEGMENT_BYTES_MIN, "its full size is back");
}

#[test]
fn repair_after_a_deleted_newest_segment_lets_the_journal_go_on() {
    let root = tempfile::tempdir().unwrap();
    let all = commands(3_000);
    let data = data_dir(root.path(), &all, &[]);
    let (first_seq, newest) = segments(&data.journal()).pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    assert!(open_data(&data).is_err());
    let report = repair(&data, &request(first_seq - 1)).unwrap();
    assert_eq!(report.plan.truncated, None, "nothing to cut: the segment before ends there");
    let (mut writer, _, recovery) = open_data(&data).unwrap();
    assert_eq!(recovery.next_seq, first_seq);
    for command in &all[first_seq as usize - 1..] {
        writer.append(command).unwrap();
    }
    writer.commit_batch().unwrap();
}
