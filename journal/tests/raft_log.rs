//! The Raft log (segment format 3) and `RAFT_STATE`, driven through their
//! public API and damaged on disk the way lost files and crashes damage them.

use std::path::{Path, PathBuf};

use journal::{
    list_raft_segments, EntryKind, JournalError, LogEntry, LogPosition, RaftLog, RaftLogLimits, RaftState,
    RaftStateFile, StoredVote, RAFT_SEGMENTS_FILE_NAME, RAFT_STATE_FILE_NAME,
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
    // Cut short: refused too.
    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(matches!(RaftStateFile::open(dir.path()), Err(JournalError::BadStateFile { .. })));
}
