//! Data directories written before the project's codec (bincode 2: segment
//! format 1, snapshot file version 2, views version 1) still recover, to the
//! state hash the old code printed, and new records and snapshots go into
//! files of the new formats beside the old ones.
//!
//! `fixtures/v1/` was written by the bincode-era build (see its README):
//! 277 commands of every kind, a snapshot with views at 277 written by
//! `exctl snapshot`, then 150 more commands.

use std::path::{Path, PathBuf};

use engine_core::{AssetId, Command, EngineLimits, StampedCommand, Units, UserId};
use journal::{
    list_snapshots, load_snapshot_with_views, recover, replay, DataDir, JournalConfig, JournalReader,
    JournalWriter, ReadMode, RecoverOptions, SnapshotKeep,
};

/// What the bincode-era `exctl replay` printed for the fixture.
const FIXTURE_LAST_SEQ: u64 = 427;
const FIXTURE_STATE_HASH: u64 = 0x4258_47b4_2107_714e;
const FIXTURE_SNAPSHOT_SEQ: u64 = 277;

fn fixture_copy() -> (tempfile::TempDir, DataDir) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/data");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let data = DataDir::new(dir.path());
    (dir, data)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn options() -> RecoverOptions {
    RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Strict }
}

fn header_version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

#[test]
fn the_bincode_era_fixture_recovers_to_the_hash_the_old_code_printed() {
    let (_dir, data) = fixture_copy();
    // From the old snapshot (file version 2) and the old segment after it.
    let recovery = recover(&data, options(), |_| {}).unwrap();
    let snapshot = recovery.snapshot.as_ref().expect("the old snapshot is used");
    assert_eq!(snapshot.seq, FIXTURE_SNAPSHOT_SEQ);
    assert!(snapshot.views_bytes > 0, "the old snapshot carries views");
    assert!(recovery.skipped_snapshots.is_empty(), "{:?}", recovery.skipped_snapshots);
    assert_eq!(recovery.replayed, FIXTURE_LAST_SEQ - FIXTURE_SNAPSHOT_SEQ);
    assert_eq!(recovery.engine.last_seq(), FIXTURE_LAST_SEQ);
    assert_eq!(recovery.engine.state_hash_of_format_1(), FIXTURE_STATE_HASH);
    recovery.engine.check_invariants().unwrap();

    // From the old segment alone, every record decoded from bincode's layout.
    let mut engine = engine_core::Engine::new(EngineLimits::default());
    let replayed = replay(&data.journal(), &mut engine, None, ReadMode::Strict, &mut |_| {}).unwrap();
    assert_eq!(replayed, FIXTURE_LAST_SEQ);
    assert_eq!(engine.state_hash_of_format_1(), FIXTURE_STATE_HASH);

    let loaded = load_snapshot_with_views(&snapshot.path).unwrap();
    assert_eq!(header_version(&snapshot.path), journal::SNAPSHOT_FILE_VERSION_BINCODE);
    assert_eq!(loaded.engine.last_seq(), FIXTURE_SNAPSHOT_SEQ);
}

#[test]
fn new_records_and_snapshots_go_to_new_format_files_beside_the_old_ones() {
    let (_dir, data) = fixture_copy();
    let old_segment = data.journal().join(journal::segment_file_name(1));
    let old_bytes = std::fs::read(&old_segment).unwrap();
    assert_eq!(header_version(&old_segment), journal::SEGMENT_FORMAT_VERSION_BINCODE);

    let config = JournalConfig::new(data.journal());
    let (mut writer, report) = JournalWriter::open(config.clone()).unwrap();
    assert_eq!(report.next_seq, FIXTURE_LAST_SEQ + 1);
    // Never appended to: a new segment of format 2 starts at the next record.
    let new_segment = data.journal().join(journal::segment_file_name(FIXTURE_LAST_SEQ + 1));
    assert_eq!(writer.current_segment(), new_segment);
    assert_eq!(header_version(&new_segment), journal::SEGMENT_FORMAT_VERSION);
    let more = [
        Command::CreateUser,
        Command::Deposit { user: UserId(4), asset: AssetId(2), amount: Units(1_000) },
        Command::Withdraw { user: UserId(4), asset: AssetId(2), amount: Units(400) },
    ];
    for (i, command) in more.iter().enumerate() {
        let seq = FIXTURE_LAST_SEQ + 1 + i as u64;
        writer.append(&StampedCommand { seq, timestamp_ns: seq, command: *command }).unwrap();
    }
    writer.commit_batch().unwrap();
    drop(writer);
    assert_eq!(std::fs::read(&old_segment).unwrap(), old_bytes, "the old segment is not touched");

    // Both formats read in one pass, in sequence.
    let mut reader = JournalReader::open(&data.journal(), 1, ReadMode::Strict).unwrap();
    let mut expected = 1;
    while let Some(record) = reader.next().unwrap() {
        assert_eq!(record.seq, expected);
        expected += 1;
    }
    let last_seq = FIXTURE_LAST_SEQ + more.len() as u64;
    assert_eq!(expected, last_seq + 1);
    let report = journal::inspect(&data.journal(), |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // A reopen appends to the new segment, not another one.
    let (writer, report) = JournalWriter::open(config).unwrap();
    assert_eq!(report.next_seq, last_seq + 1);
    assert_eq!(writer.current_segment(), new_segment);
    drop(writer);

    // A new snapshot is version 3, and recovery prefers it.
    let recovery = recover(&data, options(), |_| {}).unwrap();
    assert_eq!(recovery.snapshot.as_ref().map(|s| s.seq), Some(FIXTURE_SNAPSHOT_SEQ));
    let hash = recovery.engine.state_hash();
    let info = journal::write_snapshot(&data.snapshots(), &recovery.engine, SnapshotKeep::newest(2)).unwrap();
    assert_eq!(header_version(&info.path), journal::SNAPSHOT_FILE_VERSION);
    assert_eq!(list_snapshots(&data.snapshots()).unwrap().len(), 2);
    let recovery = recover(&data, options(), |_| {}).unwrap();
    assert_eq!(recovery.snapshot.as_ref().map(|s| s.seq), Some(last_seq));
    assert_eq!(recovery.replayed, 0);
    assert_eq!(recovery.engine.state_hash(), hash);
}

/// An old newest segment without records is replaced by a new-format one
/// of the same name (no two segments may start at one sequence number).
#[test]
fn an_empty_old_segment_is_replaced_not_followed() {
    let (_dir, data) = fixture_copy();
    // The fixture's segment header alone, as a v1 segment before any record.
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let old = std::fs::read(data.journal().join(journal::segment_file_name(1))).unwrap();
    let mut empty = old.clone();
    empty[journal::SEGMENT_HEADER_BYTES..].fill(0);
    let path = journal_dir.join(journal::segment_file_name(1));
    std::fs::write(&path, &empty).unwrap();
    let (mut writer, report) = JournalWriter::open(JournalConfig::new(&journal_dir)).unwrap();
    assert_eq!(report.next_seq, 1);
    assert_eq!(writer.current_segment(), path);
    assert_eq!(header_version(&path), journal::SEGMENT_FORMAT_VERSION);
    writer.append(&StampedCommand { seq: 1, timestamp_ns: 1, command: Command::CreateUser }).unwrap();
    writer.commit_batch().unwrap();
    drop(writer);
    assert_eq!(journal::list_segments(&journal_dir).unwrap().len(), 1);
    let mut reader = JournalReader::open(&journal_dir, 1, ReadMode::Strict).unwrap();
    assert_eq!(reader.next().unwrap().map(|c| c.seq), Some(1));
}
