//! What a node whose log was new at start may do: vote, and acknowledge a leader's log.
//!
//! A node whose disk was wiped has forgotten the terms it took part in and the entries it
//! acknowledged. Two hazards follow, and this gate holds both back:
//!
//! * **Its vote.** Were it to vote at once, it could vote twice in one term, or help elect a
//!   node that lacks an entry it had acknowledged before losing its disk. It refuses votes and
//!   pre-votes until it has caught up with a leader's log ([`FreshNodeGate::open_votes`]).
//! * **Its acknowledgements.** Say it acknowledged entries of term 3, which a majority with it
//!   committed, and then lost its disk. A leader of term 2 that never heard of term 3 (cut off,
//!   or restarted and restoring its leadership) now finds it with an empty log and no vote;
//!   openraft would accept that leader's appends, and the two of them are a majority of three
//!   in term 2: the entries committed in term 3 are overwritten. So the node accepts no append
//!   and no snapshot until it has learned a **term floor**, then only from leaders of a term at
//!   or above it.
//!
//! # The term floor
//!
//! The node asks the other voters for their current term (a term query, answered by a node's
//! transport without entering Raft: fresh nodes forming a cluster answer each other). It
//! needs answers from `n - m + 1` of the `n - 1` others, `m` being a majority of the `n`
//! voters ([`answers_needed`]): every quorum that acted in some term `T` while this node
//! belonged to it holds at least `m - 1` nodes besides this one, and any `n - m + 1` of the
//! others include one of them, whose term is now at least `T` (a node's term never goes
//! down). The floor is the highest term answered. A leader of a term at or above the floor
//! holds every entry committed in the terms this node took part in (Raft's leader
//! completeness), so acknowledging its log is safe.
//!
//! At three voters that is both others; at five, three of the four. A node configured as a
//! learner needs no floor (its acknowledgements count in no quorum), nor does the node that
//! forms a new cluster (a majority told it no log exists).
//!
//! # Across restarts
//!
//! The gate is closed at start when the log is new, or when the marker file
//! [`CATCHING_UP_FILE_NAME`] in the journal directory says the log was new at an earlier start
//! and has not caught up since: a node that took part of a leader's log and a vote, and was
//! killed before it caught up, must not come back voting (its log may lack entries it had
//! acknowledged before its disk was lost). The marker is written and synced before the node
//! answers anyone, and removed when its votes open. The floor itself is learned again.
//!
//! # Limits
//!
//! One wiped node at a time: a node that answers the query after losing its own disk answers
//! a term it has since learned, not the ones it forgot. Rejoin the next wiped node once the
//! previous one votes again (its `/health` says `votes: true`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// In a journal directory: the log was new at some start and has not caught up with a leader
/// since (the node's votes are closed).
pub const CATCHING_UP_FILE_NAME: &str = "CATCHING_UP";

/// The term floor while it is unknown.
const FLOOR_UNKNOWN: u64 = u64::MAX;

/// How long a fresh node waits between rounds of term queries to voters that did not answer.
pub const TERM_QUERY_RETRY_MS: u64 = 100;

/// Shared between a node's transport (which answers and refuses) and the tasks that learn the
/// floor and open the votes.
#[derive(Clone, Debug)]
pub struct FreshNodeGate(Arc<GateState>);

#[derive(Debug)]
struct GateState {
    votes_open: AtomicBool,
    term_floor: AtomicU64,
    /// The marker file to remove when the votes open (a gate of a node on disk).
    marker: Option<PathBuf>,
}

impl FreshNodeGate {
    /// The gate of a node whose log was new at start (`fresh`: both closed) or not (both open:
    /// it remembers its terms, and openraft's own checks suffice).
    pub fn new(fresh: bool) -> FreshNodeGate {
        FreshNodeGate::with_marker(fresh, None)
    }

    fn with_marker(fresh: bool, marker: Option<PathBuf>) -> FreshNodeGate {
        FreshNodeGate(Arc::new(GateState {
            votes_open: AtomicBool::new(!fresh),
            term_floor: AtomicU64::new(if fresh { FLOOR_UNKNOWN } else { 0 }),
            marker,
        }))
    }

    /// The gate of the node whose Raft log is in `journal_dir` (opened already): closed when
    /// the log is new (`log_was_fresh`) or was new at an earlier start and has not caught up
    /// since (see "Across restarts"); the marker is on disk and synced when this returns.
    pub fn for_journal(journal_dir: &Path, log_was_fresh: bool) -> io::Result<FreshNodeGate> {
        let marker = journal_dir.join(CATCHING_UP_FILE_NAME);
        let fresh = log_was_fresh || marker.try_exists()?;
        if fresh {
            let file = std::fs::File::create(&marker)?;
            file.sync_all()?;
            std::fs::File::open(journal_dir)?.sync_all()?;
        }
        Ok(FreshNodeGate::with_marker(fresh, Some(marker)))
    }

    /// Whether this node's log was new (at this start or an earlier one) and its votes have
    /// not opened since.
    pub fn is_fresh(&self) -> bool {
        !self.votes_open()
    }

    /// Opens the votes once the node has caught up with a leader's log (its term floor is
    /// known by then). On disk, the marker goes first: an error leaves the votes closed.
    pub fn open_votes(&self) -> io::Result<()> {
        assert!(self.term_floor().is_some(), "a node votes only after it has learned its term floor");
        if let Some(marker) = &self.0.marker {
            match std::fs::remove_file(marker) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(dir) = marker.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        self.0.votes_open.store(true, Ordering::Release);
        Ok(())
    }

    pub fn votes_open(&self) -> bool {
        self.0.votes_open.load(Ordering::Acquire)
    }

    /// The lowest term of a leader whose log this node may acknowledge; `None` while unknown.
    pub fn term_floor(&self) -> Option<u64> {
        match self.0.term_floor.load(Ordering::Acquire) {
            FLOOR_UNKNOWN => None,
            floor => Some(floor),
        }
    }

    /// Sets the floor once; a later call leaves the first floor in place and returns it.
    pub fn set_term_floor(&self, floor: u64) -> u64 {
        assert_ne!(floor, FLOOR_UNKNOWN, "a term floor is a term");
        match self.0.term_floor.compare_exchange(FLOOR_UNKNOWN, floor, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => floor,
            Err(first) => first,
        }
    }

    /// Whether an append or a snapshot from a leader of `term` may reach Raft; the reason
    /// when not.
    pub fn admits_leader(&self, term: u64) -> Result<(), String> {
        match self.term_floor() {
            None => Err(format!(
                "this node's log is new and it has not yet learned from the other voters which terms it may \
                 have taken part in before: it acknowledges no leader's log yet (leader of term {term})"
            )),
            Some(floor) if term < floor => Err(format!(
                "the leader's term {term} is below this node's term floor {floor}: a newer term may have \
                 committed entries with this node's help before its log was lost"
            )),
            Some(_) => Ok(()),
        }
    }

    /// What this node answers a term query: its Raft term, or its floor if higher.
    pub fn answer_term(&self, raft_term: u64) -> u64 {
        raft_term.max(self.term_floor().unwrap_or(0))
    }
}

/// How many of the other voters must answer a fresh node's term query, for a node among
/// `voters` voters (itself included) or a learner (`is_voter` false: none).
pub fn answers_needed(voters: usize, is_voter: bool) -> usize {
    if !is_voter || voters <= 1 {
        return 0;
    }
    let majority = voters / 2 + 1;
    (voters - majority + 1).min(voters - 1)
}

/// Asks `peers` for their term until `needed` of them have answered, then sets the gate's
/// floor to the highest answer and returns it. `query(peer)` asks one peer once (`None`: no
/// answer, asked again after [`TERM_QUERY_RETRY_MS`]). Returns at once with the floor if it is
/// already set (by the node forming the cluster, say).
pub async fn learn_term_floor<Q, F>(gate: &FreshNodeGate, peers: &[u64], needed: usize, mut query: Q) -> u64
where
    Q: FnMut(u64) -> F,
    F: Future<Output = Option<u64>>,
{
    assert!(needed <= peers.len(), "{needed} answers needed from {} peers", peers.len());
    let mut answers: BTreeMap<u64, u64> = BTreeMap::new();
    let mut waiting_logged = false;
    loop {
        if let Some(floor) = gate.term_floor() {
            return floor;
        }
        if answers.len() >= needed {
            let floor = answers.values().copied().max().unwrap_or(0);
            let floor = gate.set_term_floor(floor);
            tracing::info!(
                "cluster: term floor {floor} learned from voters {:?}: this node acknowledges leaders of term \
                 {floor} and above",
                answers.keys().collect::<Vec<_>>()
            );
            return floor;
        }
        let unanswered: Vec<u64> = peers.iter().copied().filter(|p| !answers.contains_key(p)).collect();
        let asked = futures_util::future::join_all(unanswered.iter().map(|&peer| {
            let answer = query(peer);
            async move { (peer, answer.await) }
        }))
        .await;
        for (peer, term) in asked {
            if let Some(term) = term {
                answers.insert(peer, term);
            }
        }
        if answers.len() < needed {
            if !waiting_logged {
                tracing::info!(
                    "cluster: this node's log is new; it acknowledges no leader until {needed} of voters {peers:?} \
                     tell it their term (answered so far: {:?})",
                    answers.keys().collect::<Vec<_>>()
                );
                waiting_logged = true;
            }
            tokio::time::sleep(Duration::from_millis(TERM_QUERY_RETRY_MS)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_needed_meet_every_quorum_without_the_node() {
        // (voters, needed): any `needed` of the others meet every quorum minus this node.
        for (voters, needed) in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4)] {
            assert_eq!(answers_needed(voters, true), needed, "{voters} voters");
            let majority = voters / 2 + 1;
            let others = voters - 1;
            // The smallest quorum without this node, and the largest set of others missing it.
            let quorum_rest = majority - 1;
            if quorum_rest > 0 {
                assert!(
                    others - quorum_rest < needed,
                    "{voters} voters: a set of {needed} can miss a quorum"
                );
            }
            assert_eq!(answers_needed(voters, false), 0);
        }
    }

    #[test]
    fn a_fresh_gate_admits_no_leader_until_its_floor_is_known() {
        let gate = FreshNodeGate::new(true);
        assert!(!gate.votes_open());
        assert!(gate.admits_leader(7).is_err());
        assert_eq!(gate.answer_term(2), 2);
        assert_eq!(gate.set_term_floor(5), 5);
        assert_eq!(gate.set_term_floor(9), 5, "the first floor stays");
        assert!(gate.admits_leader(4).unwrap_err().contains("below this node's term floor 5"));
        assert!(gate.admits_leader(5).is_ok());
        assert_eq!(gate.answer_term(2), 5);
        gate.open_votes().unwrap();
        assert!(gate.votes_open());

        let remembered = FreshNodeGate::new(false);
        assert!(remembered.votes_open() && remembered.admits_leader(0).is_ok());
    }

    #[test]
    #[should_panic(expected = "term floor")]
    fn votes_never_open_before_the_floor_is_known() {
        let _ = FreshNodeGate::new(true).open_votes();
    }

    #[test]
    fn a_log_that_was_new_stays_gated_across_restarts_until_its_votes_open() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(CATCHING_UP_FILE_NAME);
        // A node that remembers, no marker: open.
        assert!(!FreshNodeGate::for_journal(dir.path(), false).unwrap().is_fresh());
        assert!(!marker.exists());
        // New log: closed, and marked.
        assert!(FreshNodeGate::for_journal(dir.path(), true).unwrap().is_fresh());
        assert!(marker.exists());
        // Restarted before catching up (the log is not new any more): still closed.
        let gate = FreshNodeGate::for_journal(dir.path(), false).unwrap();
        assert!(gate.is_fresh() && gate.term_floor().is_none());
        gate.set_term_floor(3);
        gate.open_votes().unwrap();
        assert!(!marker.exists());
        assert!(!FreshNodeGate::for_journal(dir.path(), false).unwrap().is_fresh());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_is_the_highest_term_of_enough_answers() {
        use std::sync::Mutex;
        let gate = FreshNodeGate::new(true);
        // Peer 2 never answers; peer 4 answers only when asked a second time.
        let asked = Mutex::new(BTreeMap::<u64, u32>::new());
        let floor = learn_term_floor(&gate, &[2, 3, 4, 5], 3, |peer| {
            let times = {
                let mut asked = asked.lock().unwrap();
                let times = asked.entry(peer).or_insert(0);
                *times += 1;
                *times
            };
            async move {
                match (peer, times) {
                    (3, _) => Some(4),
                    (4, 2..) => Some(7),
                    (5, _) => Some(1),
                    _ => None,
                }
            }
        })
        .await;
        assert_eq!(floor, 7);
        assert_eq!(gate.term_floor(), Some(7));
        let asked = asked.into_inner().unwrap();
        assert_eq!(asked[&3], 1, "an answer is kept, never asked again");
        assert_eq!(asked[&4], 2);

        // Set meanwhile (the node formed the cluster): returned as it is.
        let formed = FreshNodeGate::new(true);
        formed.set_term_floor(0);
        assert_eq!(learn_term_floor(&formed, &[2, 3], 2, |_| async { None }).await, 0);
    }
}
