//! The journal against the shapes a crash leaves and the damage disks do:
//! round trips across rotations, torn tails at every byte, bit flips, lost
//! segments, damaged snapshots, and recovery equivalence.

use std::path::{Path, PathBuf};

use engine_core::*;
use journal::*;
use workload::Shape;

/// Stamped commands: a seeded single-market workload with every other kind
/// of command mixed in, so that every variant goes through the codec.
fn stream(seed: u64, measured: usize) -> Vec<StampedCommand> {
    let workload = workload::generate(Shape::SingleMarket, measured, seed);
    let cid = ClientOrderId::new("mm-quote:1/a_b.c").unwrap();
    let exotic = [
        Command::CreateApiKey {
            user: UserId(2),
            key: ApiKey::new("Ab3dEfGhIjKlMnOpQrStUvWxYz012345").unwrap(),
            secret: ApiSecret::new("SeCrEt0123456789SeCrEt0123456789").unwrap(),
        },
        Command::RevokeApiKey {
            user: UserId(2),
            key: ApiKey::new("Ab3dEfGhIjKlMnOpQrStUvWxYz012345").unwrap(),
        },
        Command::Withdraw { user: UserId(3), asset: AssetId(1), amount: Units(17) },
        Command::Amend(Amend {
            user: UserId(4),
            order: OrderRef::Client(cid),
            new_qty: Some(Lots(2)),
            new_price: None,
        }),
        Command::CancelAll { user: UserId(5), market: Some(MarketId(0)) },
        Command::CancelAll { user: UserId(5), market: None },
        Command::SetMarketFees { market: MarketId(0), maker_fee_ppm: 100, taker_fee_ppm: 400 },
        Command::SetMarketStatus { market: MarketId(0), status: MarketStatus::Open },
        Command::PlaceOrder(NewOrder {
            user: UserId(4),
            market: MarketId(0),
            side: Side::Buy,
            kind: OrderKind::MarketByQuote { amount: Units(u64::MAX / 3) },
            client_order_id: Some(cid),
            stp: SelfTradePrevention::CancelBoth,
        }),
        Command::PlaceOrder(NewOrder {
            user: UserId(4),
            market: MarketId(0),
            side: Side::Sell,
            kind: OrderKind::Limit { price: Ticks(u64::MAX), qty: Lots(1), tif: TimeInForce::PostOnly },
            client_order_id: Some(cid),
            stp: SelfTradePrevention::Allow,
        }),
    ];
    let mut commands: Vec<Command> = workload.setup.clone();
    for (i, command) in workload.commands.iter().enumerate() {
        commands.push(*command);
        if i % 97 == 0 {
            commands.push(exotic[(i / 97) % exotic.len()]);
        }
    }
    commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| StampedCommand {
            seq: i as u64 + 1,
            timestamp_ns: 1_000 * (i as u64 + 1),
            command,
        })
        .collect()
}

fn config(dir: &Path, segment_bytes: u64, durability: Durability) -> JournalConfig {
    JournalConfig { segment_bytes, durability, ..JournalConfig::new(dir) }
}

fn write_all(dir: &Path, commands: &[StampedCommand], segment_bytes: u64) {
    let (mut writer, report) = JournalWriter::open(config(dir, segment_bytes, Durability::None)).unwrap();
    assert_eq!(report.next_seq, commands.first().map_or(1, |c| c.seq));
    for command in commands {
        writer.append(command).unwrap();
    }
    writer.sync().unwrap();
}

fn read_all(dir: &Path, from: u64) -> Result<Vec<StampedCommand>, JournalError> {
    let mut reader = JournalReader::open(dir, from, ReadMode::Strict)?;
    let mut out = Vec::new();
    while let Some(command) = reader.next()? {
        out.push(command);
    }
    Ok(out)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

#[test]
fn round_trip_across_segment_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let commands = stream(1, 20_000);
    write_all(dir.path(), &commands, SEGMENT_BYTES_MIN);
    assert!(segments(dir.path()).len() > 10, "the stream must span many segments");
    assert_eq!(read_all(dir.path(), 1).unwrap(), commands);
    // From any sequence number, including segment boundaries.
    for from in [2, 1_000, 4_321, commands.len() as u64, commands.len() as u64 + 1] {
        let expected: Vec<_> = commands.iter().filter(|c| c.seq >= from).copied().collect();
        assert_eq!(read_all(dir.path(), from).unwrap(), expected, "from {from}");
    }
    for (first_seq, _) in list_segments(dir.path()).unwrap() {
        assert_eq!(read_all(dir.path(), first_seq).unwrap().first().map(|c| c.seq), Some(first_seq));
    }
    let report = inspect(dir.path(), |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records(), commands.len() as u64);
    assert_eq!(
        end_seq(dir.path()).unwrap(),
        Some(commands.len() as u64),
        "the end, from the newest segment alone"
    );
}

#[test]
fn the_end_of_a_journal_is_read_from_its_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(end_seq(dir.path()).unwrap(), None, "no segment");
    let commands = stream(3, 300);
    write_all(dir.path(), &commands, SEGMENT_BYTES_MIN);
    assert_eq!(end_seq(dir.path()).unwrap(), Some(commands.len() as u64));
    // Appending more moves the end with it.
    let more: Vec<StampedCommand> = stream(4, 50)
        .into_iter()
        .map(|c| StampedCommand { seq: c.seq + commands.len() as u64, ..c })
        .collect();
    write_all(dir.path(), &more, SEGMENT_BYTES_MIN);
    assert_eq!(end_seq(dir.path()).unwrap(), Some((commands.len() + more.len()) as u64));
}

#[test]
fn reopening_continues_where_the_journal_ends() {
    let dir = tempfile::tempdir().unwrap();
    let commands = stream(2, 3_000);
    let (head, tail) = commands.split_at(1_234);
    write_all(dir.path(), head, SEGMENT_BYTES_MIN);
    let (mut writer, report) =
        JournalWriter::open(config(dir.path(), SEGMENT_BYTES_MIN, Durability::Batch)).unwrap();
    assert_eq!(report.next_seq, 1_235);
    assert_eq!(report.cut, None);
    let wrong = StampedCommand { seq: 7, ..tail[0] };
    assert!(matches!(writer.append(&wrong), Err(JournalError::OutOfOrder { expected: 1_235, got: 7 })));
    for command in tail {
        writer.append(command).unwrap();
    }
    writer.commit_batch().unwrap();
    assert_eq!(writer.durable_seq(), commands.len() as u64);
    drop(writer);
    assert_eq!(read_all(dir.path(), 1).unwrap(), commands);
}

/// Writes `commands` and returns the byte range of the last record in the
/// newest segment.
fn write_and_locate_last(dir: &Path, commands: &[StampedCommand]) -> (PathBuf, usize, usize) {
    let (mut writer, _) = JournalWriter::open(config(dir, SEGMENT_BYTES_MIN, Durability::None)).unwrap();
    let (last, rest) = commands.split_last().unwrap();
    for command in rest {
        writer.append(command).unwrap();
    }
    let start = writer.current_offset();
    writer.append(last).unwrap();
    let path = writer.current_segment().to_path_buf();
    let end = writer.current_offset();
    assert!(end > start);
    (path, start, end)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Reopens a damaged copy, checks that exactly the last record was cut and
/// that everything before it is intact, and that appending goes on.
fn assert_recovers_without_last(dir: &Path, commands: &[StampedCommand], expect_cut: bool) {
    let (mut writer, report) = JournalWriter::open(config(dir, SEGMENT_BYTES_MIN, Durability::None)).unwrap();
    let last = commands.last().unwrap();
    assert_eq!(report.next_seq, last.seq);
    assert_eq!(report.cut.is_some(), expect_cut, "{report:?}");
    if let Some(cut) = &report.cut {
        assert_eq!(cut.seq, last.seq);
    }
    writer.append(last).unwrap();
    drop(writer);
    assert_eq!(read_all(dir, 1).unwrap(), commands);
}

#[test]
fn a_tail_cut_at_every_byte_of_the_last_record_is_cut_off() {
    let base = tempfile::tempdir().unwrap();
    let commands = stream(3, 2_000);
    let original = base.path().join("original");
    let (segment, start, end) = write_and_locate_last(&original, &commands);
    let name = segment.file_name().unwrap().to_owned();
    let original_bytes = std::fs::read(&segment).unwrap();
    for cut in start..end {
        if original_bytes[cut..end].iter().all(|&b| b == 0) {
            // Only alignment padding lies past the cut: the record is whole.
            continue;
        }
        let dir = base.path().join(format!("cut-{cut}"));
        copy_dir(&original, &dir);
        // What the disk holds when the process died after writing bytes
        // start..cut of the record: the rest of the preallocated file is zero.
        patch(&dir.join(&name), |bytes| bytes[cut..end].fill(0));
        // The length is written last: unless it survived, nothing is
        // visible, but the written bytes are still cut off.
        let expect_cut = bytes_nonzero(&dir.join(&name), start, cut);
        assert_recovers_without_last(&dir, &commands, expect_cut);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // A file truncated (not just zeroed) inside its last record: segments
    // are preallocated whole, so no crash leaves a short file; refused.
    let dir = base.path().join("truncated");
    copy_dir(&original, &dir);
    let file = std::fs::OpenOptions::new().write(true).open(dir.join(&name)).unwrap();
    file.set_len(((start + end) / 2) as u64).unwrap();
    drop(file);
    match JournalWriter::open(config(&dir, SEGMENT_BYTES_MIN, Durability::None)) {
        Err(JournalError::SegmentSize { segment, capacity_bytes, file_bytes, .. }) => {
            assert_eq!(segment.file_name(), Some(name.as_os_str()));
            assert_eq!((capacity_bytes, file_bytes), (SEGMENT_BYTES_MIN, ((start + end) / 2) as u64));
        }
        other => panic!("expected a refusal of the short file, got {:?}", other.map(|(_, r)| r)),
    }
}

fn bytes_nonzero(path: &Path, from: usize, to: usize) -> bool {
    std::fs::read(path).unwrap()[from..to].iter().any(|&b| b != 0)
}

#[test]
fn a_zeroed_tail_loses_only_the_zeroed_records() {
    let base = tempfile::tempdir().unwrap();
    let commands = stream(4, 2_000);
    let original = base.path().join("original");
    let (segment, start, end) = write_and_locate_last(&original, &commands);
    patch(&segment, |bytes| bytes[start..end].fill(0));
    let (_, report) = JournalWriter::open(config(&original, SEGMENT_BYTES_MIN, Durability::None)).unwrap();
    assert_eq!(report.cut, None);
    assert_eq!(report.next_seq, commands.last().unwrap().seq);
    assert_eq!(read_all(&original, 1).unwrap(), commands[..commands.len() - 1]);
}

#[test]
fn a_bit_flip_in_the_last_record_is_cut_off() {
    let base = tempfile::tempdir().unwrap();
    let commands = stream(5, 2_000);
    let original = base.path().join("original");
    let (segment, start, end) = write_and_locate_last(&original, &commands);
    let name = segment.file_name().unwrap().to_owned();
    for at in start..end {
        for bit in [0, 3, 7] {
            let dir = base.path().join(format!("flip-{at}-{bit}"));
            copy_dir(&original, &dir);
            patch(&dir.join(&name), |bytes| bytes[at] ^= 1 << bit);
            assert_recovers_without_last(&dir, &commands, true);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn a_bit_flip_in_the_middle_is_a_clear_corruption_error() {
    let base = tempfile::tempdir().unwrap();
    let commands = stream(6, 5_000);
    let dir = base.path().join("j");
    write_all(&dir, &commands, SEGMENT_BYTES_MIN);
    let all = segments(&dir);
    let newest = all.last().unwrap().clone();

    // In the middle of the newest segment: the writer refuses to open.
    let mut flipped = base.path().join("newest");
    copy_dir(&dir, &flipped);
    patch(&flipped.join(newest.file_name().unwrap()), |bytes| bytes[SEGMENT_HEADER_BYTES + 8] ^= 0x04);
    match JournalWriter::open(config(&flipped, SEGMENT_BYTES_MIN, Durability::None)) {
        Err(JournalError::Corrupt { segment, offset, seq, .. }) => {
            assert_eq!(segment.file_name(), newest.file_name());
            assert_eq!(offset, SEGMENT_HEADER_BYTES);
            let first: u64 = newest.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(seq, first);
        }
        other => panic!("expected a corruption error, got {:?}", other.map(|(_, r)| r)),
    }

    // In an older segment: the writer opens (it reads only the newest), but
    // reading, recovery and verification stop with the place named.
    flipped = base.path().join("older");
    copy_dir(&dir, &flipped);
    let older = &all[2];
    patch(&flipped.join(older.file_name().unwrap()), |bytes| bytes[SEGMENT_HEADER_BYTES + 200] ^= 0x80);
    let error = read_all(&flipped, 1).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, JournalError::Corrupt { .. }), "{message}");
    assert!(message.contains(older.file_name().unwrap().to_str().unwrap()), "{message}");
    assert!(message.contains("offset"), "{message}");
    let report = inspect(&flipped, |_| {}).unwrap();
    assert!(report.problems.iter().any(|p| matches!(p, Problem::Corrupt { .. })), "{:?}", report.problems);
    assert!(!report.problems.iter().any(Problem::is_torn_tail));
}

#[test]
fn a_missing_segment_is_reported_as_a_gap() {
    let base = tempfile::tempdir().unwrap();
    let commands = stream(7, 5_000);
    let dir = base.path().join("j");
    write_all(&dir, &commands, SEGMENT_BYTES_MIN);
    let all = list_segments(&dir).unwrap();
    let (missing_first, missing) = &all[3];
    std::fs::remove_file(missing).unwrap();
    match read_all(&dir, 1) {
        Err(JournalError::Gap { expected_seq, next_first_seq, .. }) => {
            assert_eq!(expected_seq, *missing_first);
            assert_eq!(next_first_seq, all[4].0);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    let report = inspect(&dir, |_| {}).unwrap();
    assert!(
        matches!(report.problems.as_slice(), [Problem::Gap { expected_seq, .. }] if expected_seq == missing_first)
    );
    // Reading from before the first segment that is left is refused too.
    std::fs::remove_file(&all[0].1).unwrap();
    assert!(matches!(read_all(&dir, 1), Err(JournalError::NotRetained { from_seq: 1, .. })));
}

/// Feeds `commands` to a live engine while journaling them, writing a
/// snapshot every `every` commands; returns the final hash.
fn journal_with_snapshots(
    data: &DataDir,
    commands: &[StampedCommand],
    every: usize,
    keep: usize,
) -> (u64, Vec<u64>) {
    let mut journal_config = config(&data.journal(), SEGMENT_BYTES_MIN, Durability::None);
    journal_config.segment_bytes = 256 * 1024;
    let (mut writer, _, recovery) = open_data_dir(data, journal_config, EngineLimits::default()).unwrap();
    let mut engine = recovery.engine;
    let mut events = Vec::new();
    let mut hashes = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        writer.append(command).unwrap();
        engine.apply(command, &mut events).unwrap();
        events.clear();
        if (i + 1) % every == 0 {
            writer.sync().unwrap();
            write_snapshot(&data.snapshots(), &engine, journal::SnapshotKeep::newest(keep)).unwrap();
            hashes.push(engine.state_hash());
        }
    }
    writer.sync().unwrap();
    (engine.state_hash(), hashes)
}

#[test]
fn snapshot_plus_replay_equals_the_live_engine_at_every_snapshot() {
    let base = tempfile::tempdir().unwrap();
    let data = DataDir::new(base.path());
    let commands = stream(8, 30_000);
    let (live_hash, _) = journal_with_snapshots(&data, &commands, 2_500, 100);
    let snapshots = list_snapshots(&data.snapshots()).unwrap();
    assert!(snapshots.len() >= 10);
    for (seq, path) in &snapshots {
        let (mut engine, info) = load_snapshot(path).unwrap();
        assert_eq!(info.seq, *seq);
        assert_eq!(engine.last_seq(), *seq);
        let replayed = replay(&data.journal(), &mut engine, None, ReadMode::Strict, &mut |_| {}).unwrap();
        assert_eq!(replayed, commands.len() as u64 - seq);
        assert_eq!(engine.state_hash(), live_hash, "from the snapshot at {seq}");
    }
    // And without any snapshot, from the first record.
    std::fs::remove_dir_all(data.snapshots()).unwrap();
    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Strict };
    let recovery = recover(&data, options, |_| {}).unwrap();
    assert!(recovery.snapshot.is_none());
    assert_eq!(recovery.engine.state_hash(), live_hash);
    assert_eq!(recovery.next_seq, commands.len() as u64 + 1);
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_an_older_one() {
    let base = tempfile::tempdir().unwrap();
    let data = DataDir::new(base.path());
    let commands = stream(9, 12_000);
    let (live_hash, _) = journal_with_snapshots(&data, &commands, 4_000, 3);
    let snapshots = list_snapshots(&data.snapshots()).unwrap();
    assert_eq!(snapshots.len(), 3, "keep 3");
    let (newest_seq, newest) = &snapshots[0];
    patch(newest, |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
    });
    assert!(matches!(load_snapshot(newest), Err(SnapshotFileError::PayloadChecksum)));
    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Strict };
    let recovery = recover(&data, options, |_| {}).unwrap();
    assert_eq!(recovery.skipped_snapshots.len(), 1);
    assert!(recovery.skipped_snapshots[0].1.contains("checksum"), "{:?}", recovery.skipped_snapshots);
    assert_eq!(recovery.snapshot.as_ref().map(|s| s.seq), Some(snapshots[1].0));
    assert!(recovery.snapshot.as_ref().unwrap().seq < *newest_seq);
    assert_eq!(recovery.engine.state_hash(), live_hash);

    // Every other kind of damage is refused with its reason, never a panic.
    let (_, second) = &snapshots[1];
    let pristine = std::fs::read(second).unwrap();
    for at in (0..pristine.len()).step_by(pristine.len() / 200 + 1).chain(0..64) {
        let mut damaged = pristine.clone();
        damaged[at] ^= 0x20;
        std::fs::write(second, &damaged).unwrap();
        assert!(load_snapshot(second).is_err(), "damage at byte {at} went unnoticed");
    }
    std::fs::write(second, &pristine[..pristine.len() - 1]).unwrap();
    assert!(matches!(load_snapshot(second), Err(SnapshotFileError::BadHeader(_))));
    std::fs::write(second, b"EXSNAPSH").unwrap();
    assert!(load_snapshot(second).is_err());
}

#[test]
fn recovery_to_a_sequence_and_pruning_covered_segments() {
    let base = tempfile::tempdir().unwrap();
    let data = DataDir::new(base.path());
    let commands = stream(10, 20_000);
    journal_with_snapshots(&data, &commands, 5_000, 2);
    let mut live = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for command in &commands[..7_777] {
        live.apply(command, &mut events).unwrap();
    }
    let options =
        RecoverOptions { limits: EngineLimits::default(), to_seq: Some(7_777), mode: ReadMode::Strict };
    let recovery = recover(&data, options, |_| {}).unwrap();
    assert_eq!(recovery.engine.last_seq(), 7_777);
    assert_eq!(recovery.engine.state_hash(), live.state_hash());

    let oldest_kept = list_snapshots(&data.snapshots()).unwrap().last().unwrap().0;
    let before = list_segments(&data.journal()).unwrap();
    let archived =
        prune_segments(&data.journal(), oldest_kept, &SegmentRetention::Archive(data.archive())).unwrap();
    assert!(!archived.is_empty());
    let after = list_segments(&data.journal()).unwrap();
    assert_eq!(before.len(), after.len() + archived.len());
    assert!(after[0].0 <= oldest_kept + 1, "the records after the oldest snapshot stay");
    assert_eq!(list_segments(&data.archive()).unwrap().len(), archived.len());
    // Recovery from the snapshots still works; reading from 1 does not.
    let options = RecoverOptions { limits: EngineLimits::default(), to_seq: None, mode: ReadMode::Strict };
    let recovery = recover(&data, options, |_| {}).unwrap();
    assert_eq!(recovery.next_seq, commands.len() as u64 + 1);
    assert!(matches!(read_all(&data.journal(), 1), Err(JournalError::NotRetained { .. })));
}

#[test]
fn a_snapshot_ahead_of_the_journal_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let data = DataDir::new(base.path());
    let commands = stream(11, 3_000);
    journal_with_snapshots(&data, &commands, 1_000, 3);
    // Lose the journal's newest records but keep the snapshot that saw them.
    let newest = list_segments(&data.journal()).unwrap().pop().unwrap().1;
    std::fs::remove_file(&newest).unwrap();
    let journal_config = config(&data.journal(), 256 * 1024, Durability::None);
    // The checkpoint names the segment: it is missing, not merely ahead.
    match open_data_dir(&data, journal_config, EngineLimits::default()) {
        Err(RecoveryError::Journal(error @ JournalError::MissingSegment { .. })) => {
            assert!(error.to_string().contains(newest.to_str().unwrap()), "{error}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|(_, r, _)| r)),
    }
}

#[test]
fn a_follower_sees_records_as_they_are_appended_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let commands = stream(12, 6_000);
    let (mut writer, _) =
        JournalWriter::open(config(dir.path(), SEGMENT_BYTES_MIN, Durability::None)).unwrap();
    let mut follower = JournalReader::open(dir.path(), 1, ReadMode::Follow).unwrap();
    let mut seen = Vec::new();
    let mut appended = 0;
    for chunk in commands.chunks(777) {
        assert_eq!(follower.next().unwrap(), None, "nothing new yet");
        for command in chunk {
            writer.append(command).unwrap();
        }
        appended += chunk.len();
        while let Some(command) = follower.next().unwrap() {
            seen.push(command);
        }
        assert_eq!(seen.len(), appended);
    }
    assert_eq!(seen, commands);
    assert!(segments(dir.path()).len() > 3);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = JournalWriter::open(config(dir.path(), SEGMENT_BYTES_MIN, Durability::None)).unwrap();
    match JournalWriter::open(config(dir.path(), SEGMENT_BYTES_MIN, Durability::None)) {
        Err(error @ JournalError::Locked { .. }) => assert!(error.to_string().contains("another process")),
        other => panic!("expected the lock to be refused, got {:?}", other.map(|(_, r)| r)),
    }
    drop(first);
    JournalWriter::open(config(dir.path(), SEGMENT_BYTES_MIN, Durability::None)).unwrap();
}

#[cfg(unix)]
#[test]
fn journal_and_snapshot_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let data = DataDir::new(base.path());
    journal_with_snapshots(&data, &stream(13, 1_000), 1_000, 1);
    let files = segments(&data.journal())
        .into_iter()
        .chain(list_snapshots(&data.snapshots()).unwrap().into_iter().map(|(_, p)| p));
    for path in files {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
}

#[test]
fn a_held_snapshot_survives_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for seq in 1..=50u64 {
        engine
            .apply(&StampedCommand { seq, timestamp_ns: seq, command: Command::CreateUser }, &mut events)
            .unwrap();
        if seq % 10 == 0 {
            let keep = journal::SnapshotKeep { newest: 2, hold_at_or_below: Some(25) };
            write_snapshot(&data.snapshots(), &engine, keep).unwrap();
        }
    }
    let left: Vec<u64> =
        journal::list_snapshots(&data.snapshots()).unwrap().into_iter().map(|(s, _)| s).collect();
    // The two newest, and the newest at or below the hold (20).
    assert_eq!(left, [50, 40, 20]);
}
