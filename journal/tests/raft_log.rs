//! The Raft log (segment format 3) and `RAFT_STATE`, driven through their
//! public API and damaged on disk the way lost files and crashes damage them.

use std::path::{Path, PathBuf};

use journal::{
    check_raft_segment, list_raft_segments, EntryKind, JournalError, LogEntry, LogPosition, RaftLog,
    RaftLogLimits, RaftState, RaftStateFile, StoredVote, RAFT_ENTRY_PAYLOAD_MAX_BYTES,
    RAFT_FRAME_HEADER_BYTES, RAFT_SEGMENTS_FILE_NAME, RAFT_STATE_FILE_NAME,
};

/// Small segments, so that a few dozen entries span several of them.
const SMALL: RaftLogLimits = RaftLogLimits { segment_bytes: 4096, max_entry_bytes: 512 };

fn pos(index: u64, term: u64) -> LogPosition {
    LogPosition { index, term }
}

/// A payload that says which entry (and term) it belongs to, of a length
/// that varies with the index.
fn payload(index: u64, term: u64) -> Vec<u8> {
    let mut bytes = format!("entry {index} term {term};").into_bytes();
    bytes.resize(bytes.len() + (index as usize * 37) % 300, (index % 251) as u8);
    bytes
}

fn kind_of(index: u64) -> EntryKind {
    [EntryKind::Blank, EntryKind::Commands, EntryKind::Membership, EntryKind::HashMark][(index % 4) as usize]
}

fn append(log: &mut RaftLog, index: u64, term: u64) {
    log.append(index, term, kind_of(index), &payload(index, term)).unwrap();
}

fn append_range(log: &mut RaftLog, indexes: std::ops::RangeInclusive<u64>, term: u64) {
    for index in indexes {
        append(log, index, term);
    }
}

fn expected(index: u64, term: u64) -> LogEntry {
    LogEntry { index, term, kind: kind_of(index), payload: payload(index, term) }
}

fn read_all(log: &RaftLog) -> Vec<LogEntry> {
    match (log.first(), log.last()) {
        (Some(first), Some(last)) => log.read_range(first.index, last.index + 1, usize::MAX).unwrap(),
        _ => Vec::new(),
    }
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    list_raft_segments(dir).unwrap()
}

fn refusal(dir: &Path) -> JournalError {
    match RaftLog::open(dir, SMALL) {
        Ok(_) => panic!("the log opened"),
        Err(error) => error,
    }
}

#[test]
fn append_and_read_across_rotations_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!((log.first(), log.last(), log.last_purged()), (None, None, None));
    append_range(&mut log, 1..=60, 1);
    append_range(&mut log, 61..=100, 3);
    assert!(segments(dir.path()).len() > 5, "small segments rotate");
    assert_eq!(log.first(), Some(pos(1, 1)));
    assert_eq!(log.last(), Some(pos(100, 3)));
    let all = read_all(&log);
    assert_eq!(all.len(), 100);
    for entry in &all {
        assert_eq!(*entry, expected(entry.index, if entry.index <= 60 { 1 } else { 3 }));
    }
    // A range in the middle, and max_bytes stopping early (at least one entry).
    let middle = log.read_range(40, 70, usize::MAX).unwrap();
    assert_eq!(middle.first().map(|e| e.index), Some(40));
    assert_eq!(middle.last().map(|e| e.index), Some(69));
    assert_eq!(log.read_range(40, 70, 1).unwrap().len(), 1);
    let some = log.read_range(40, 70, 1000).unwrap();
    assert!(some.len() > 1 && some.len() < 30, "{}", some.len());
    assert!(log.read_range(40, 40, usize::MAX).unwrap().is_empty());
    // Outside first..=last: an error, not an empty answer.
    for (from, to) in [(0, 5), (100, 102), (101, 102)] {
        match log.read_range(from, to, usize::MAX) {
            Err(JournalError::EntriesNotInLog { first: Some(1), last: Some(100), .. }) => {}
            other => panic!("{from}..{to}: {other:?}"),
        }
    }
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(read_all(&log), all);
    assert_eq!(log.open_report().cut, None);
}

#[test]
fn appends_out_of_order_too_large_or_with_a_lower_term_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    // Anything goes first (openraft's first entry has index 0).
    append(&mut log, 0, 1);
    append(&mut log, 1, 2);
    for (index, term, size, why) in [
        (3, 2, 10, "must have index 2"),
        (1, 2, 10, "must have index 2"),
        (2, 1, 10, "term 1 is below the term 2"),
        (2, 2, 513, "above max_entry_bytes 512"),
    ] {
        match log.append(index, term, EntryKind::Commands, &vec![1; size]) {
            Err(error @ JournalError::RaftLogRefused { .. }) => {
                assert!(error.to_string().contains(why), "{error}")
            }
            other => panic!("{index}/{term}: {other:?}"),
        }
    }
    assert_eq!(log.last(), Some(pos(1, 2)));
    log.append(2, 2, EntryKind::Commands, &[1; 512]).unwrap();
    assert!(RaftLog::open(dir.path(), RaftLogLimits { segment_bytes: 100, max_entry_bytes: 512 }).is_err());
}

#[test]
fn the_highest_index_is_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    log.append(u64::MAX - 1, 1, EntryKind::Blank, b"").unwrap();
    log.append(u64::MAX, 1, EntryKind::Blank, b"").unwrap();
    assert!(matches!(log.append(0, 1, EntryKind::Blank, b""), Err(JournalError::RaftLogRefused { .. })));
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!((log.first(), log.last()), (Some(pos(u64::MAX - 1, 1)), Some(pos(u64::MAX, 1))));
    assert_eq!(log.read_range(u64::MAX - 1, u64::MAX, usize::MAX).unwrap().len(), 1);
}

#[test]
fn a_second_log_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert!(matches!(RaftLog::open(dir.path(), SMALL), Err(JournalError::Locked { .. })));
}

#[test]
fn reopen_without_sync_keeps_every_complete_frame_and_cuts_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=10, 1);
    assert_eq!(log.sync_request().run().unwrap(), Some(10));
    append_range(&mut log, 11..=14, 1); // not synced: still in the page cache
    drop(log);
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.last(), Some(pos(14, 1)));
    // A torn last frame: its length was stored, its body only half.
    append(&mut log, 15, 1);
    drop(log);
    let (_, newest) = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let torn_at = end - 20;
    bytes[torn_at..end].fill(0);
    bytes[torn_at - 3] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.last(), Some(pos(14, 1)));
    let (path, _, cut_bytes) = log.open_report().cut.clone().expect("the torn frame is cut");
    assert_eq!(path, newest);
    assert!(cut_bytes > 0);
    append(&mut log, 15, 2);
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.last(), Some(pos(15, 2)));
    assert_eq!(log.read_range(15, 16, usize::MAX).unwrap(), vec![expected(15, 2)]);
    assert_eq!(log.open_report().cut, None);
}

#[test]
fn truncate_in_the_middle_of_a_segment_then_append_a_new_term_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=30, 1);
    let segments_before = segments(dir.path()).len();
    // An index in the middle of the newest segment.
    let newest_first = segments(dir.path()).last().unwrap().0;
    assert!(newest_first < 29);
    log.truncate_after(Some(28)).unwrap();
    assert_eq!(log.last(), Some(pos(28, 1)));
    assert_eq!(segments(dir.path()).len(), segments_before);
    assert!(matches!(log.read_range(29, 30, usize::MAX), Err(JournalError::EntriesNotInLog { .. })));
    append_range(&mut log, 29..=35, 2);
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 35);
    assert_eq!(all[27], expected(28, 1));
    assert_eq!(all[28], expected(29, 2));
    assert_eq!(log.last(), Some(pos(35, 2)));
}

#[test]
fn truncate_across_segments_deletes_the_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=80, 1);
    let before = segments(dir.path());
    let keep = before[1].0 + 1; // in the second segment
    log.truncate_after(Some(keep)).unwrap();
    assert_eq!(segments(dir.path()), before[..2].to_vec());
    append_range(&mut log, keep + 1..=keep + 40, 5);
    drop(log);
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.last(), Some(pos(keep + 40, 5)));
    assert_eq!(read_all(&log).len() as u64, keep + 40);
    // Everything goes; then anything may start the log again.
    log.truncate_after(None).unwrap();
    assert_eq!((log.first(), log.last()), (None, None));
    assert!(segments(dir.path()).is_empty());
    append(&mut log, 7, 9);
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!((log.first(), log.last()), (Some(pos(7, 9)), Some(pos(7, 9))));
}

#[test]
fn purge_then_reopen_returns_no_purged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=50, 1);
    append_range(&mut log, 51..=90, 2);
    let before = segments(dir.path());
    // Through an index in the middle of the third segment.
    let upto = before[2].0 + 2;
    log.purge_through(pos(upto, 1)).unwrap();
    assert_eq!(segments(dir.path()), before[2..].to_vec(), "whole segments go, the partly purged one stays");
    assert_eq!(log.first(), Some(pos(upto + 1, 1)));
    assert_eq!(log.last_purged(), Some(pos(upto, 1)));
    assert!(matches!(log.read_range(upto, upto + 2, usize::MAX), Err(JournalError::EntriesNotInLog { .. })));
    // A purge at or below the last one does nothing.
    log.purge_through(pos(upto - 5, 1)).unwrap();
    assert_eq!(log.last_purged(), Some(pos(upto, 1)));
    // A purge whose term disagrees with the log is refused.
    assert!(matches!(log.purge_through(pos(upto + 1, 2)), Err(JournalError::RaftLogRefused { .. })));
    // Purged entries are never truncated.
    assert!(matches!(log.truncate_after(Some(upto - 1)), Err(JournalError::RaftLogRefused { .. })));
    drop(log);
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.first(), Some(pos(upto + 1, 1)));
    assert_eq!(log.last_purged(), Some(pos(upto, 1)));
    assert_eq!(read_all(&log).first(), Some(&expected(upto + 1, 1)));
    assert_eq!(read_all(&log).len() as u64, 90 - upto);
    // Everything, beyond the last entry (a snapshot installed from a
    // leader): the log is empty and goes on after the snapshot.
    log.purge_through(pos(120, 4)).unwrap();
    assert_eq!((log.first(), log.last(), log.last_purged()), (None, None, Some(pos(120, 4))));
    assert!(segments(dir.path()).is_empty());
    assert!(matches!(log.append(100, 4, EntryKind::Blank, b""), Err(JournalError::RaftLogRefused { .. })));
    append(&mut log, 121, 4);
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(
        (log.first(), log.last(), log.last_purged()),
        (Some(pos(121, 4)), Some(pos(121, 4)), Some(pos(120, 4)))
    );
}

#[test]
fn purged_entries_of_lower_terms_left_in_a_kept_segment_do_not_trip_the_term_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=3, 1);
    append_range(&mut log, 4..=6, 2);
    assert_eq!(segments(dir.path()).len(), 1);
    log.purge_through(pos(5, 2)).unwrap();
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!((log.first(), log.last()), (Some(pos(6, 2)), Some(pos(6, 2))));
}

/// The segment files of `dir` and their bytes.
fn snapshot_segments(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    segments(dir).into_iter().map(|(_, path)| (path.clone(), std::fs::read(&path).unwrap())).collect()
}

fn restore(files: &[(PathBuf, Vec<u8>)]) {
    for (path, bytes) in files {
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn a_truncation_or_purge_cut_short_by_a_crash_is_accepted_or_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=80, 1);
    log.sync_request().run().unwrap();
    let before = snapshot_segments(dir.path());
    assert!(before.len() >= 4);
    let keep = segments(dir.path())[1].0 + 1;
    let newest_first = segments(dir.path()).last().unwrap().0;
    // A truncation records the new newest segment, then deletes newer ones
    // newest first, then zeroes the kept tail: a crash after the record
    // leaves every original byte, or all but the newest files.
    for (label, keep, restored) in [
        ("before any deletion", Some(keep), before.len()),
        ("after deleting the newest", Some(keep), before.len() - 1),
        ("everything, before any deletion", None, before.len()),
        ("everything, after deleting the newest", None, before.len() - 1),
    ] {
        log.truncate_after(keep).unwrap();
        drop(log);
        restore(&before[..restored]);
        log = RaftLog::open(dir.path(), SMALL).unwrap();
        // Valid entries after the truncation point: Raft truncates them again.
        let last = if restored == before.len() { 80 } else { newest_first - 1 };
        assert_eq!((log.first(), log.last()), (Some(pos(1, 1)), Some(pos(last, 1))), "{label}");
        assert_eq!(read_all(&log).len() as u64, last, "{label}");
        restore(&before);
        drop(log);
        log = RaftLog::open(dir.path(), SMALL).unwrap();
        assert_eq!(log.last(), Some(pos(80, 1)));
    }
    // A purge records the last purged position, then deletes segments
    // oldest first: old segments left by a crash are deleted at open.
    let upto = segments(dir.path())[2].0 + 1;
    log.purge_through(pos(upto, 1)).unwrap();
    drop(log);
    restore(&before[..2]);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.open_report().removed.len(), 2);
    assert_eq!(segments(dir.path()).len(), before.len() - 2);
    assert_eq!((log.first(), log.last_purged()), (Some(pos(upto + 1, 1)), Some(pos(upto, 1))));
    // Of everything: the same.
    let mut log = log;
    log.purge_through(pos(200, 3)).unwrap();
    drop(log);
    restore(&before[2..]);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert!(segments(dir.path()).is_empty());
    assert_eq!((log.first(), log.last(), log.last_purged()), (None, None, Some(pos(200, 3))));
}

#[test]
fn the_log_and_its_sync_requests_cross_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_and_sync::<RaftLog>();
    send::<journal::SyncRequest>();
    send_and_sync::<RaftStateFile>();
}

#[test]
fn a_purge_below_the_first_entry_keeps_the_log_openable() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 5..=10, 2);
    log.purge_through(pos(2, 1)).unwrap();
    assert_eq!((log.first(), log.last_purged()), (Some(pos(5, 2)), Some(pos(2, 1))));
    drop(log);
    let log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(
        (log.first(), log.last(), log.last_purged()),
        (Some(pos(5, 2)), Some(pos(10, 2)), Some(pos(2, 1)))
    );
}

#[test]
fn sync_requests_run_on_another_thread_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    assert_eq!(log.sync_request().run().unwrap(), None);
    let (requests, inbox) = std::sync::mpsc::channel::<journal::SyncRequest>();
    let syncer = std::thread::spawn(move || {
        let mut durable = Vec::new();
        for request in inbox {
            let covers = request.index();
            let now = request.run().unwrap();
            assert!(now >= covers, "{now:?} < {covers:?}");
            durable.push(now);
        }
        durable
    });
    for index in 1..=300u64 {
        append(&mut log, index, 1 + index / 100);
        if index % 7 == 0 {
            requests.send(log.sync_request()).unwrap();
        }
    }
    requests.send(log.sync_request()).unwrap();
    drop(requests);
    let durable = syncer.join().unwrap();
    assert!(durable.windows(2).all(|w| w[0] <= w[1]), "durable never goes back: {durable:?}");
    assert_eq!(durable.last(), Some(&Some(300)));
    // A request captured before a truncation does not claim the entries
    // that replaced the truncated ones.
    let stale = log.sync_request();
    log.truncate_after(Some(250)).unwrap();
    append_range(&mut log, 251..=260, 9);
    assert_eq!(stale.run().unwrap(), Some(250));
    assert_eq!(log.sync_request().run().unwrap(), Some(260));
}

#[test]
fn a_flipped_byte_in_a_middle_frame_is_refused_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=40, 1);
    let mut last = 40;
    while last - segments(dir.path()).last().unwrap().0 < 3 {
        last += 1;
        append(&mut log, last, 1);
    }
    drop(log);
    // In the newest segment, a frame that is not the last (nor within one
    // maximum frame of the end: not the shape of a torn tail).
    let (first, newest) = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[64 + 40] ^= 0x01;
    std::fs::write(&newest, &bytes).unwrap();
    match refusal(dir.path()) {
        error @ JournalError::RaftLogDamaged { .. } => {
            let text = error.to_string();
            assert!(text.contains(&format!("where index {first} should be")), "{text}");
            assert!(text.contains("checksum mismatch") && text.contains("rejoins"), "{text}");
        }
        other => panic!("{other}"),
    }
    // In an older segment, even its last frame.
    bytes[64 + 40] ^= 0x01;
    std::fs::write(&newest, &bytes).unwrap();
    let (_, older) = segments(dir.path()).remove(1);
    let mut bytes = std::fs::read(&older).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end] ^= 0x01;
    std::fs::write(&older, &bytes).unwrap();
    let error = refusal(dir.path());
    assert!(error.to_string().contains("moved past"), "{error}");
}

#[test]
fn a_missing_or_cut_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=60, 1);
    drop(log);
    let listed = segments(dir.path());
    let aside = dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for (label, victim) in [("middle", 2), ("oldest", 0), ("newest", listed.len() - 1)] {
        let (first, path) = &listed[victim];
        let moved = aside.join("segment");
        std::fs::rename(path, &moved).unwrap();
        let error = refusal(dir.path());
        let text = error.to_string();
        match label {
            "middle" => assert!(
                text.contains("are missing") && text.contains(&format!("entries {first}..")),
                "{text}"
            ),
            role => assert!(text.contains("is missing") && text.contains(role), "{label}: {text}"),
        }
        std::fs::rename(&moved, path).unwrap();
    }
    // Cut short: no crash changes a segment's size.
    let (_, middle) = &listed[2];
    let bytes = std::fs::read(middle).unwrap();
    std::fs::write(middle, &bytes[..2000]).unwrap();
    let error = refusal(dir.path());
    assert!(error.to_string().contains("cut or copied short"), "{error}");
    std::fs::write(middle, &bytes).unwrap();
    RaftLog::open(dir.path(), SMALL).unwrap();
    // RAFT_SEGMENTS gone while segments exist.
    std::fs::remove_file(dir.path().join(RAFT_SEGMENTS_FILE_NAME)).unwrap();
    let error = refusal(dir.path());
    assert!(error.to_string().contains("the file is missing"), "{error}");
}

#[test]
fn a_bad_header_or_a_wrong_index_sequence_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::open(dir.path(), SMALL).unwrap();
    append_range(&mut log, 1..=40, 1);
    drop(log);
    let listed = segments(dir.path());
    let (_, path) = &listed[1];
    let good = std::fs::read(path).unwrap();
    let mut bytes = good.clone();
    bytes[20] ^= 0x01; // the first index, under the header CRC
    std::fs::write(path, &bytes).unwrap();
    let error = refusal(dir.path());
    assert!(error.to_string().contains("header checksum mismatch"), "{error}");
    // A segment whose frames carry other indexes than its name says: a
    // copy of the next segment's data under this one's header.
    let next = std::fs::read(&listed[2].1).unwrap();
    let mut bytes = good.clone();
    bytes[64..].copy_from_slice(&next[64..]);
    std::fs::write(path, &bytes).unwrap();
    let error = refusal(dir.path());
    assert!(error.to_string().contains("carries index"), "{error}");
    std::fs::write(path, &good).unwrap();
    RaftLog::open(dir.path(), SMALL).unwrap();
}

#[test]
fn raft_state_slots_alternate_and_a_torn_slot_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, state) = RaftStateFile::open(dir.path()).unwrap();
    assert_eq!(state, None, "a fresh node has no state");
    let first = RaftState {
        vote: Some(StoredVote { term: 1, node_id: 1, committed: false }),
        ..RaftState::default()
    };
    file.save(&first, true).unwrap();
    let second = RaftState {
        vote: Some(StoredVote { term: 2, node_id: 3, committed: true }),
        committed: Some(pos(10, 2)),
        last_purged: Some(pos(4, 1)),
    };
    file.save(&second, true).unwrap();
    assert_eq!(RaftStateFile::open(dir.path()).unwrap().1, Some(second));
    let third = RaftState { committed: Some(pos(12, 2)), ..second };
    file.save(&third, false).unwrap();
    drop(file);
    let path = dir.path().join(RAFT_STATE_FILE_NAME);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 256);
    // The third save went to the first slot (the second to the second).
    let mut torn = bytes.clone();
    torn[30..60].fill(0xAB);
    std::fs::write(&path, &torn).unwrap();
    assert_eq!(RaftStateFile::open(dir.path()).unwrap().1, Some(second));
    // Saving after a fallback overwrites the damaged slot, not the good one.
    let (mut file, _) = RaftStateFile::open(dir.path()).unwrap();
    file.save(&first, true).unwrap();
    assert_eq!(RaftStateFile::open(dir.path()).unwrap().1, Some(first));
    // Both slots bad: refused, with the way out.
    let mut both = std::fs::read(&path).unwrap();
    both[30] ^= 1;
    both[128 + 30] ^= 1;
    std::fs::write(&path, &both).unwrap();
    match RaftStateFile::open(dir.path()) {
        Err(error @ JournalError::BadStateFile { .. }) => {
            assert!(error.to_string().contains("neither of its two slots"), "{error}")
        }
        other => panic!("{:?}", other.map(|(_, state)| state)),
    }
    // Cut short or padded: refused too (a huge file unread).
    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(matches!(RaftStateFile::open(dir.path()), Err(JournalError::BadStateFile { .. })));
    std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
    assert!(matches!(RaftStateFile::open(dir.path()), Err(JournalError::BadStateFile { .. })));
}

/// Limits as a node's: a torn tail may span one frame of the largest
/// payload, so every entry of a short log is within one frame of the end
/// (the shape that was cut as "torn" even when committed).
const WIDE: RaftLogLimits =
    RaftLogLimits { segment_bytes: 1 << 20, max_entry_bytes: RAFT_ENTRY_PAYLOAD_MAX_BYTES };

/// A one-segment log of entries 1..=`last` (term 1), written and synced by
/// the log, and `RAFT_STATE` recording `committed` as a node records it:
/// the entries first, then the committed index. Returns the segment and
/// each entry's offset in it (`offsets[i]`: entry `i + 1`).
fn committed_log(dir: &Path, last: u64, committed: Option<u64>) -> (PathBuf, Vec<usize>) {
    let mut log = RaftLog::open(dir, WIDE).unwrap();
    append_range(&mut log, 1..=last, 1);
    assert_eq!(log.sync_request().run().unwrap(), Some(last));
    drop(log);
    record_committed(dir, committed);
    let listed = segments(dir);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (_, path) = listed.into_iter().next().unwrap();
    let scan = check_raft_segment(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(scan.entries.len() as u64, last);
    (path, scan.entries.iter().map(|&(offset, _)| offset).collect())
}

fn record_committed(dir: &Path, committed: Option<u64>) {
    let (mut file, _) = RaftStateFile::open(dir).unwrap();
    let state = RaftState {
        vote: Some(StoredVote { term: 1, node_id: 1, committed: true }),
        committed: committed.map(|index| pos(index, 1)),
        last_purged: None,
    };
    file.save(&state, true).unwrap();
}

fn flip(path: &Path, offset: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset as u64).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset as u64).unwrap();
}

/// What a write that never finished leaves in a preallocated segment: the
/// data ends at `from`, in the middle of a frame, and zeros follow.
fn lose_from(path: &Path, from: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[from..].fill(0);
    std::fs::write(path, &bytes).unwrap();
}

/// Open refuses, naming the segment, the offset, the damaged index, the
/// committed index and the operator's choices; and changes no byte.
fn assert_refused_as_committed(dir: &Path, segment: &Path, offset: usize, index: u64, committed: u64) {
    let before = std::fs::read(segment).unwrap();
    let error = match RaftLog::open(dir, WIDE) {
        Ok(log) => panic!("the log opened, cut: {:?}", log.open_report().cut),
        Err(error) => error,
    };
    assert!(matches!(error, JournalError::RaftLogDamaged { .. }), "{error:?}");
    let text = error.to_string();
    for part in [
        format!("{} at offset {offset} (where index {index} should be)", segment.display()),
        format!("records entries through {committed} (term 1) committed"),
        "nothing was cut".to_string(),
        format!("exctl journal verify {}", dir.display()),
        "exctl journal repair".to_string(),
        "re-seed this node".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} not in: {text}");
    }
    assert!(std::fs::read(segment).unwrap() == before, "a refused open changed the segment");
}

#[test]
fn a_flipped_byte_in_a_committed_entry_near_the_end_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    // Entry 5 of 10, all committed: within one maximum frame of the end,
    // the shape of a torn tail, but RAFT_STATE says it is committed.
    let (segment, offsets) = committed_log(dir.path(), 10, Some(10));
    flip(&segment, offsets[4] + RAFT_FRAME_HEADER_BYTES + 2);
    assert_refused_as_committed(dir.path(), &segment, offsets[4], 5, 10);
    // Committed exactly through the damaged entry: refused too.
    record_committed(dir.path(), Some(5));
    assert_refused_as_committed(dir.path(), &segment, offsets[4], 5, 5);
    // The damage undone, the log opens whole: the refusal cut nothing.
    flip(&segment, offsets[4] + RAFT_FRAME_HEADER_BYTES + 2);
    let log = RaftLog::open(dir.path(), WIDE).unwrap();
    assert_eq!(read_all(&log), (1..=10).map(|i| expected(i, 1)).collect::<Vec<_>>());
    assert_eq!(log.open_report().cut, None);
}

#[test]
fn a_committed_frame_whose_data_ends_midway_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = committed_log(dir.path(), 10, Some(9));
    // Entry 8's frame written halfway, nothing after it: refused while 8
    // (or anything after the cut point) is committed.
    lose_from(&segment, offsets[7] + RAFT_FRAME_HEADER_BYTES + 5);
    assert_refused_as_committed(dir.path(), &segment, offsets[7], 8, 9);
    // A file cut short is refused whatever is committed: no crash changes
    // a preallocated segment's size.
    let whole = std::fs::read(&segment).unwrap();
    for committed in [Some(9), Some(7), None] {
        record_committed(dir.path(), committed);
        let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len((offsets[7] + 20) as u64).unwrap();
        let error = refusal_with(dir.path(), WIDE);
        assert!(error.to_string().contains("cut or copied short"), "{committed:?}: {error}");
        std::fs::write(&segment, &whole).unwrap();
    }
}

/// A log that ends cleanly (on a frame boundary) below the committed
/// index lost synced entries: refused, naming both, and nothing changes.
/// At or above it, the same log opens.
#[test]
fn a_log_that_ends_below_the_committed_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = committed_log(dir.path(), 10, Some(9));
    // Entries 8.. zeroed from their first byte: no torn frame, a clean end at 7.
    lose_from(&segment, offsets[7]);
    let before = std::fs::read(&segment).unwrap();
    let text = refusal_with(dir.path(), WIDE).to_string();
    for part in [
        format!("{}", segment.display()),
        "the log ends at index 7".to_string(),
        "records entries through 9 (term 1) committed".to_string(),
        "entries 8..9 were synced and are gone".to_string(),
        format!("exctl journal verify {}", dir.path().display()),
        "re-seed this node".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} not in: {text}");
    }
    assert!(std::fs::read(&segment).unwrap() == before, "a refused open changed the segment");
    // Committed through the end, or nothing recorded (a new or wiped node): it opens.
    for committed in [Some(7), None] {
        record_committed(dir.path(), committed);
        let log = RaftLog::open(dir.path(), WIDE).unwrap();
        assert_eq!(read_all(&log), (1..=7).map(|i| expected(i, 1)).collect::<Vec<_>>(), "{committed:?}");
    }
}

fn refusal_with(dir: &Path, limits: RaftLogLimits) -> JournalError {
    match RaftLog::open(dir, limits) {
        Ok(_) => panic!("the log opened"),
        Err(error) => error,
    }
}

#[test]
fn the_same_damage_above_the_committed_index_is_cut_and_the_rest_kept() {
    for (label, committed) in [("committed 4", Some(4)), ("nothing committed", None)] {
        // A flipped byte in entry 5.
        let dir = tempfile::tempdir().unwrap();
        let (segment, offsets) = committed_log(dir.path(), 10, committed);
        flip(&segment, offsets[4] + RAFT_FRAME_HEADER_BYTES + 2);
        let mut log = RaftLog::open(dir.path(), WIDE).unwrap();
        let (cut_in, cut_at, _) = log.open_report().cut.clone().expect("the tail is cut");
        assert_eq!((cut_in, cut_at), (segment.clone(), offsets[4]), "{label}");
        assert_eq!(read_all(&log), (1..=4).map(|i| expected(i, 1)).collect::<Vec<_>>(), "{label}");
        append(&mut log, 5, 2);
        drop(log);
        let log = RaftLog::open(dir.path(), WIDE).unwrap();
        assert_eq!(log.last(), Some(pos(5, 2)), "{label}");
        assert_eq!(log.open_report().cut, None, "{label}: cut for good");
    }
    // Entry 8's frame written halfway; committed through 7.
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = committed_log(dir.path(), 10, Some(7));
    lose_from(&segment, offsets[7] + RAFT_FRAME_HEADER_BYTES + 5);
    let log = RaftLog::open(dir.path(), WIDE).unwrap();
    assert_eq!(log.open_report().cut.as_ref().map(|c| c.1), Some(offsets[7]));
    assert_eq!(read_all(&log), (1..=7).map(|i| expected(i, 1)).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_with_an_unreadable_raft_state_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = committed_log(dir.path(), 6, Some(2));
    lose_from(&segment, offsets[5] + 10);
    let state = dir.path().join(RAFT_STATE_FILE_NAME);
    std::fs::write(&state, [0xA5u8; 256]).unwrap();
    let before = std::fs::read(&segment).unwrap();
    let error = refusal_with(dir.path(), WIDE);
    let text = error.to_string();
    assert!(
        text.contains(&format!("at offset {} (where index 6 should be)", offsets[5]))
            && text.contains("whether it holds committed entries is unknown")
            && text.contains("neither of its two slots"),
        "{text}"
    );
    assert!(std::fs::read(&segment).unwrap() == before);
}

mod model {
    //! Random sequences of append, truncate, purge, sync, torn tails and
    //! reopens against a plain in-memory model of a Raft log.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Appends `count` entries, the first in a new term when `new_term`;
        /// an empty log that never purged starts at `start`.
        Append {
            count: u8,
            new_term: bool,
            size: u16,
            start: u8,
        },
        /// Truncates after the entry `back` before the last (`None` when past
        /// the first: everything).
        Truncate {
            back: u8,
        },
        /// Purges through the entry `offset` after the first readable one
        /// (past the last: everything, a snapshot from a leader; before the
        /// first: nothing but the record).
        Purge {
            offset: i8,
        },
        Sync,
        Reopen,
        /// Reopens after a crash tore the frame being written: bytes after
        /// the last frame of the newest segment.
        TornReopen {
            bytes: u16,
            fill: u8,
        },
        Read {
            from: u8,
            len: u8,
            max_bytes: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..12, any::<bool>(), 0u16..=512, 0u8..6)
                .prop_map(|(count, new_term, size, start)| Op::Append { count, new_term, size, start }),
            2 => (0u8..40).prop_map(|back| Op::Truncate { back }),
            2 => (-4i8..60).prop_map(|offset| Op::Purge { offset }),
            1 => Just(Op::Sync),
            2 => Just(Op::Reopen),
            1 => (1u16..500, 1u8..=255).prop_map(|(bytes, fill)| Op::TornReopen { bytes, fill }),
            2 => (0u8..80, 0u8..40, 0u16..2000).prop_map(|(from, len, max_bytes)| Op::Read { from, len, max_bytes }),
        ]
    }

    #[derive(Default)]
    struct Model {
        /// The readable entries, in order.
        entries: Vec<LogEntry>,
        last_purged: Option<LogPosition>,
        /// The term of the last entry appended or purged (terms never go down).
        term: u64,
    }

    impl Model {
        fn first(&self) -> Option<LogPosition> {
            self.entries.first().map(|e| pos(e.index, e.term))
        }
        fn last(&self) -> Option<LogPosition> {
            self.entries.last().map(|e| pos(e.index, e.term))
        }
        fn next_index(&self, start: u8) -> u64 {
            self.last().or(self.last_purged).map_or(start as u64, |p| p.index + 1)
        }
    }

    fn check(log: &RaftLog, model: &Model) {
        assert_eq!(log.first(), model.first());
        assert_eq!(log.last(), model.last());
        assert_eq!(log.last_purged(), model.last_purged);
        assert_eq!(read_all(log), model.entries);
    }

    fn tear(dir: &Path, bytes: usize, fill: u8) {
        let Some((_, newest)) = segments(dir).pop() else { return };
        let mut data = std::fs::read(&newest).unwrap();
        let end = data.iter().rposition(|&b| b != 0).map_or(64, |last| (last + 8) & !7);
        let end = end.max(64);
        let to = (end + bytes).min(data.len()).min(end + SMALL.max_entry_bytes);
        data[end..to].fill(fill);
        std::fs::write(&newest, &data).unwrap();
    }

    fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(RaftLog::open(dir.path(), SMALL).unwrap());
        let mut model = Model::default();
        for op in ops {
            let current = log.as_mut().unwrap();
            match op {
                Op::Append { count, new_term, size, start } => {
                    if new_term || model.term == 0 {
                        model.term += 1;
                    }
                    for n in 0..count as u64 {
                        let index = model.next_index(start);
                        let kind = kind_of(index);
                        let payload = vec![(index % 200) as u8 + 1; (size as usize + n as usize * 31) % 513];
                        current.append(index, model.term, kind, &payload).unwrap();
                        model.entries.push(LogEntry { index, term: model.term, kind, payload });
                    }
                }
                Op::Truncate { back } => {
                    let keep = model.last().and_then(|last| last.index.checked_sub(back as u64));
                    let keep =
                        keep.filter(|keep| model.first().is_some_and(|first| *keep + 1 >= first.index));
                    let allowed = model.last_purged.is_none_or(|p| keep.is_some_and(|keep| keep >= p.index));
                    let result = current.truncate_after(keep);
                    if allowed {
                        result.unwrap();
                        model.entries.retain(|e| keep.is_some_and(|keep| e.index <= keep));
                    } else {
                        assert!(matches!(result, Err(JournalError::RaftLogRefused { .. })), "{result:?}");
                    }
                }
                Op::Purge { offset } => {
                    let Some(first) = model.first().or(model.last_purged) else { continue };
                    let Some(index) = first.index.checked_add_signed(offset as i64) else { continue };
                    let term = match model.entries.iter().find(|e| e.index == index) {
                        Some(entry) => entry.term,
                        // Below the first entry: no later term than it.
                        None if model.first().is_some_and(|first| index < first.index) => {
                            model.last_purged.map_or(first.term, |p| p.term)
                        }
                        None if model.last().is_some_and(|last| index < last.index) => continue,
                        None => model.term.max(1),
                    };
                    let upto = pos(index, term);
                    current.purge_through(upto).unwrap();
                    if model.last_purged.is_none_or(|p| p.index < index) {
                        model.entries.retain(|e| e.index > index);
                        model.last_purged = Some(upto);
                        model.term = model.term.max(term);
                    }
                }
                Op::Sync => {
                    let durable = current.sync_request().run().unwrap();
                    assert_eq!(durable, model.last().map(|p| p.index).or(durable));
                }
                Op::Reopen => {
                    drop(log.take());
                    log = Some(RaftLog::open(dir.path(), SMALL).unwrap());
                }
                Op::TornReopen { bytes, fill } => {
                    drop(log.take());
                    tear(dir.path(), bytes as usize, fill);
                    log = Some(RaftLog::open(dir.path(), SMALL).unwrap());
                }
                Op::Read { from, len, max_bytes } => {
                    let Some(first) = model.first() else { continue };
                    let from = first.index + from as u64;
                    let to = from + len as u64;
                    let result = current.read_range(from, to, max_bytes as usize);
                    let last = model.last().unwrap().index;
                    if len == 0 {
                        assert!(result.unwrap().is_empty());
                    } else if to - 1 > last {
                        assert!(matches!(result, Err(JournalError::EntriesNotInLog { .. })), "{result:?}");
                    } else {
                        let got = result.unwrap();
                        assert!(!got.is_empty());
                        let want: Vec<LogEntry> = model
                            .entries
                            .iter()
                            .filter(|e| e.index >= from && e.index < to)
                            .cloned()
                            .collect();
                        assert_eq!(got[..], want[..got.len()]);
                        let bytes: usize = got.iter().map(|e| e.payload.len()).sum();
                        let before_last = bytes - got.last().unwrap().payload.len();
                        assert!(got.len() == want.len() || bytes >= max_bytes as usize);
                        assert!(before_last < max_bytes as usize || got.len() == 1);
                    }
                }
            }
            check(log.as_ref().unwrap(), &model);
        }
        drop(log.take());
        let log = RaftLog::open(dir.path(), SMALL).unwrap();
        check(&log, &model);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn random_appends_truncations_purges_and_reopens_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            run(ops);
        }
    }
}
