//! `journal/RAFT_STATE`: what a Raft node must remember across a crash
//! besides its log: the vote it cast, the committed position it learned
//! and (for the replication layer's own bookkeeping) the last purged
//! position. Two checksummed slots written alternately (the layout and the
//! crash argument are in `slot_file.rs`):
//!
//! ```text
//! body (in each slot, 104 bytes):
//! 0       1       8           16             24              32             40            48           56       104
//! | flags | zeros | vote term | vote node id | committed index | committed term | purged index | purged term | zeros |
//! flags: bit 0 vote present, bit 1 vote committed (granted by a quorum), bit 2 committed present,
//!        bit 3 last purged present; every other bit zero. Fields of an absent value are zero.
//! ```
//!
//! The file does not exist on a new node, nor on one whose disk was wiped:
//! [`RaftStateFile::open`] then answers `None`, and the replication layer
//! must not vote until it has caught up (a wiped node could otherwise vote
//! twice in one term).

use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::files::create_private_dir;
use crate::segment::read_u64;
use crate::slot_file::{SlotFile, SLOT_BODY_BYTES};

pub const RAFT_STATE_FILE_NAME: &str = "RAFT_STATE";
const RAFT_STATE_MAGIC: &[u8; 8] = b"EXRAFTST";

const FLAG_VOTE: u8 = 1;
const FLAG_VOTE_COMMITTED: u8 = 2;
const FLAG_COMMITTED: u8 = 4;
const FLAG_PURGED: u8 = 8;

/// A position in the Raft log: an entry's index and the term it was
/// proposed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// What a Raft node must not forget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub vote: Option<StoredVote>,
    /// The highest position known committed (saved lazily: a stale value
    /// is safe, because anything once committed stays committed).
    pub committed: Option<LogPosition>,
    /// For the replication layer; [`RaftLog`](crate::RaftLog) keeps its own
    /// record of what it purged (in `RAFT_SEGMENTS`) so that a purge never
    /// races a vote for this file.
    pub last_purged: Option<LogPosition>,
}

/// The vote a node cast (or, as a candidate or leader, holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredVote {
    pub term: u64,
    pub node_id: u64,
    /// Whether a quorum granted it (the leader's own vote, in openraft's terms).
    pub committed: bool,
}

impl RaftState {
    fn encode(&self) -> [u8; SLOT_BODY_BYTES] {
        let mut body = [0u8; SLOT_BODY_BYTES];
        let mut flags = 0u8;
        if let Some(vote) = self.vote {
            flags |= FLAG_VOTE;
            if vote.committed {
                flags |= FLAG_VOTE_COMMITTED;
            }
            body[8..16].copy_from_slice(&vote.term.to_le_bytes());
            body[16..24].copy_from_slice(&vote.node_id.to_le_bytes());
        }
        for (flag, position, at) in
            [(FLAG_COMMITTED, self.committed, 24), (FLAG_PURGED, self.last_purged, 40)]
        {
            if let Some(position) = position {
                flags |= flag;
                body[at..at + 8].copy_from_slice(&position.index.to_le_bytes());
                body[at + 8..at + 16].copy_from_slice(&position.term.to_le_bytes());
            }
        }
        body[0] = flags;
        body
    }

    /// Decodes a slot's body. The checksum already matched, so anything
    /// odd here was written by another build: refused, not guessed at.
    fn decode(body: &[u8; SLOT_BODY_BYTES]) -> Result<RaftState, &'static str> {
        let flags = body[0];
        if flags & !(FLAG_VOTE | FLAG_VOTE_COMMITTED | FLAG_COMMITTED | FLAG_PURGED) != 0 {
            return Err("its newest slot has flags this build does not know");
        }
        if flags & FLAG_VOTE_COMMITTED != 0 && flags & FLAG_VOTE == 0 {
            return Err("its newest slot marks a vote committed without a vote");
        }
        let absent_is_zero = |flag: u8, range: std::ops::Range<usize>| {
            flags & flag != 0 || body[range].iter().all(|&b| b == 0)
        };
        if body[1..8].iter().any(|&b| b != 0)
            || body[56..].iter().any(|&b| b != 0)
            || !absent_is_zero(FLAG_VOTE, 8..24)
            || !absent_is_zero(FLAG_COMMITTED, 24..40)
            || !absent_is_zero(FLAG_PURGED, 40..56)
        {
            return Err("its newest slot has bytes set where this build writes zeros");
        }
        let position = |flag: u8, at: usize| {
            (flags & flag != 0)
                .then(|| LogPosition { index: read_u64(body, at), term: read_u64(body, at + 8) })
        };
        Ok(RaftState {
            vote: (flags & FLAG_VOTE != 0).then(|| StoredVote {
                term: read_u64(body, 8),
                node_id: read_u64(body, 16),
                committed: flags & FLAG_VOTE_COMMITTED != 0,
            }),
            committed: position(FLAG_COMMITTED, 24),
            last_purged: position(FLAG_PURGED, 40),
        })
    }
}

/// The bytes of a `RAFT_STATE` file, decoded (as [`RaftStateFile::open`]
/// reads them), or why they cannot be trusted. Never panics, whatever the
/// bytes: for the fuzz target.
pub fn decode_raft_state(bytes: &[u8]) -> Result<RaftState, &'static str> {
    let (_, _, body) = crate::slot_file::decode_slots(bytes, RAFT_STATE_MAGIC)?;
    RaftState::decode(&body)
}

/// `journal/RAFT_STATE`, open for saving.
pub struct RaftStateFile {
    dir: PathBuf,
    /// `None` until the first save when the file did not exist.
    slots: Option<SlotFile>,
}

impl RaftStateFile {
    /// Opens `dir/RAFT_STATE`. The state is `None` when the file does not
    /// exist (a fresh or wiped node: the replication layer treats that as
    /// "must not vote until caught up"); the first save creates it. A file
    /// whose two slots are both damaged is refused
    /// ([`JournalError::BadStateFile`]): no crash leaves that.
    ///
    /// ```
    /// use journal::{LogPosition, RaftState, RaftStateFile, StoredVote};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let (mut file, state) = RaftStateFile::open(dir.path()).unwrap();
    /// assert_eq!(state, None);
    /// let state = RaftState {
    ///     vote: Some(StoredVote { term: 3, node_id: 2, committed: false }),
    ///     committed: Some(LogPosition { index: 10, term: 2 }),
    ///     last_purged: None,
    /// };
    /// file.save(&state, true).unwrap();
    /// assert_eq!(RaftStateFile::open(dir.path()).unwrap().1, Some(state));
    /// ```
    pub fn open(dir: &Path) -> Result<(RaftStateFile, Option<RaftState>), JournalError> {
        let path = dir.join(RAFT_STATE_FILE_NAME);
        match SlotFile::open(&path, RAFT_STATE_MAGIC)? {
            None => Ok((RaftStateFile { dir: dir.to_path_buf(), slots: None }, None)),
            Some((slots, body)) => {
                let state = RaftState::decode(&body)
                    .map_err(|why| JournalError::BadStateFile { path: path.clone(), why })?;
                Ok((RaftStateFile { dir: dir.to_path_buf(), slots: Some(slots) }, Some(state)))
            }
        }
    }

    /// Saves `state`; durable on return when `sync` (a vote must be), else
    /// with the next synced save. The first save creates the file, synced
    /// whatever `sync` says.
    pub fn save(&mut self, state: &RaftState, sync: bool) -> Result<(), JournalError> {
        let body = state.encode();
        match &mut self.slots {
            Some(slots) => slots.save(&body, sync),
            None => {
                create_private_dir(&self.dir)?;
                self.slots =
                    Some(SlotFile::create(&self.dir.join(RAFT_STATE_FILE_NAME), RAFT_STATE_MAGIC, &body)?);
                Ok(())
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(RAFT_STATE_FILE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_of_state_round_trips() {
        let position = Some(LogPosition { index: 7, term: 3 });
        for vote in [
            None,
            Some(StoredVote { term: 9, node_id: 0, committed: true }),
            Some(StoredVote { term: 1, node_id: 5, committed: false }),
        ] {
            for committed in [None, position] {
                for last_purged in [None, position, Some(LogPosition { index: 0, term: 0 })] {
                    let state = RaftState { vote, committed, last_purged };
                    assert_eq!(RaftState::decode(&state.encode()), Ok(state));
                }
            }
        }
    }

    #[test]
    fn unknown_flags_and_stray_bytes_are_refused() {
        let mut body = RaftState::default().encode();
        body[0] = 0x10;
        assert!(RaftState::decode(&body).is_err());
        body[0] = FLAG_VOTE_COMMITTED;
        assert!(RaftState::decode(&body).is_err());
        body[0] = 0;
        body[30] = 1; // a committed index without the committed flag
        assert!(RaftState::decode(&body).is_err());
        body[30] = 0;
        body[100] = 1;
        assert!(RaftState::decode(&body).is_err());
    }
}
